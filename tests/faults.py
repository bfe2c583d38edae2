"""Helpers of the fault-injection suite (tests/test_faults_*.py): run a public command, check the failure contract.

The contract (docs/reliability.md): a bad input ends the command with exit status 2 and one line on stderr that
names the file or key and the problem, never a traceback; a counted skip leaves rc 0 and says what was skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str


def run_cli(
    *args: str, cwd: str | Path | None = None, timeout: float = 300, env: dict | None = None, stdin: str | None = None
) -> Run:
    """`python -m stllm ARGS` in a subprocess (from `cwd`, default a directory other than the repository)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "stllm", *map(str, args)],
        cwd=cwd or REPO.parent,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that report an error (logging noise and progress bars excluded)."""
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def assert_user_error(run: Run, *needles: str, rc: int = 2) -> str:
    """rc as given, no traceback, and one error line containing every needle (e.g. the file name, the key)."""
    assert run.rc == rc, f"rc {run.rc} != {rc}\nstdout:\n{run.stdout[-2000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = [line for line in error_lines(run.stderr) if all(n in line for n in needles)]
    assert lines, f"no error line containing {needles} in:\n{run.stderr[-3000:]}"
    return lines[0]
