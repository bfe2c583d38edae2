"""ST-LLM: every spatial-temporal video token into the LLM (arXiv 2404.00308), re-implemented on transformers."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"

from stllm import quiet  # noqa: E402 - library messages the user cannot act on, silenced once (stllm/quiet.py)

quiet.install()


def code_version() -> dict[str, str | None]:
    """stllm.__version__ and the git commit of the source tree when it is a git checkout (recorded in results)."""
    commit = None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
        commit = (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"stllm": __version__, "git_commit": commit}
