"""trainval.md section 5 stays true: its documented tiny-recipe commands, run as written (output folders moved
under a temporary directory), log the losses of its table at the documented steps, to 2 decimals."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINVAL = REPO / "trainval.md"
ROWS = {"loss (lm + mvm)": "loss", "lm_loss": "lm_loss", "mvm_loss": "mvm_loss"}


def tiny_section() -> str:
    text = TRAINVAL.read_text()
    start = text.index("**Tiny recipe**")
    return text[start : text.index("**Masking cost**", start)]


def documented_commands(section: str) -> list[list[str]]:
    """The ```bash block of the section -> argument lists (line continuations joined)."""
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "trainval.md: no bash block in the tiny-recipe section"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def documented_table(section: str) -> dict[str, dict[int, float]]:
    """The markdown table of the section -> {log key: {step: value}}."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines() if line.startswith("|")
    ]
    steps = [int(c) for c in rows[0][1:]]
    table = {ROWS[row[0]]: dict(zip(steps, map(float, row[1:]))) for row in rows[2:] if row[0] in ROWS}
    assert set(table) == set(ROWS.values()), f"trainval.md table rows: {[r[0] for r in rows]}"
    return table


def test_table_and_commands_parse():
    section = tiny_section()
    commands = documented_commands(section)
    assert [c[:4] for c in commands] == [
        ["python", "-m", "stllm", "tiny-model"],
        ["python", "-m", "stllm", "toy-data"],
        ["python", "-m", "stllm", "train"],
    ]
    table = documented_table(section)
    assert sorted(table["loss"]) == list(range(10, 101, 10))


@pytest.mark.slow
def test_documented_tiny_run_logs_the_documented_losses(tmp_path):
    section = tiny_section()
    for command in documented_commands(section):
        # the documented /tmp/... folders, moved under this test's own folder
        args = [a.replace("/tmp/", f"{tmp_path}/") for a in command[3:]]
        proc = subprocess.run(
            [sys.executable, "-m", "stllm", *args], cwd=REPO, capture_output=True, text=True, timeout=1200
        )
        assert proc.returncode == 0, f"{command}: {proc.stderr[-3000:]}"
    history = json.loads((tmp_path / "tiny_run" / "trainer_state.json").read_text())["log_history"]
    logged = {h["step"]: h for h in history if "loss" in h}
    for key, expected in documented_table(section).items():
        for step, value in expected.items():
            # the table is rounded to 2 decimals: the logged value must round to it
            assert abs(logged[step][key] - value) <= 0.005 + 1e-9, (key, step, logged[step][key], value)
