"""Library messages that every command would print and the user cannot act on -> silenced, in this one place.

Each filter matches one known message exactly (never a whole logger or warning category), and says why:

- DeepSpeed "Setting accelerator to CPU ...": logged at import on every CPU machine; a CPU run is intended.
- transformers "Passing `repetition_penalty` with `inputs_embeds` ...": the original's chat/QA path feeds the prompt
  as embeddings, so the penalty sees generated tokens only; that is the behaviour we keep (docs/faithfulness.md Q26).
- torch DDP "find_unused_parameters=True was specified ... but did not find any unused parameters": the HF Trainer
  asks for the search because some recipes leave parameters unused in a step; a performance hint, not an error.

FFmpeg's own lines ("moov atom not found", "Invalid NAL unit size") are silenced where the decoder is imported
(stllm/data/video.py): an unreadable video reaches the user as one MediaError line instead.
`install()` is idempotent and cheap (no imports of the libraries it quiets).
"""

from __future__ import annotations

import logging
import warnings

_DEEPSPEED_CPU = "Setting accelerator to CPU"
_installed = False


class _DropMessage(logging.Filter):
    """A logging filter that drops records whose message contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


def install() -> None:
    """Install the filters above (before or after the libraries are imported: filters sit on named loggers)."""
    global _installed
    if _installed:
        return
    _installed = True
    # deepspeed.utils.logging creates the "DeepSpeed" logger with getLogger, so a filter set now stays on it
    logging.getLogger("DeepSpeed").addFilter(_DropMessage(_DEEPSPEED_CPU))
    warnings.filterwarnings("ignore", message=r"Passing `repetition_penalty` with `inputs_embeds`")
    warnings.filterwarnings("ignore", message=r"find_unused_parameters=True was specified in DDP constructor")
