"""The one base class of every error that is the user's input, not a bug: a bad file, key, value or folder.

Its message is one line that names the file (or key) and the problem. `python -m stllm` prints it as
`stllm <command>: error: <message>` and exits with status 2, without a traceback (docs/reliability.md);
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class StllmError(Exception):
    """A user-facing error: one line naming the file or key and what is wrong with it."""
