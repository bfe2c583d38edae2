"""The README's main claim, as measured by the README's first command: the full quickstart on the default seed.

With every frame's tokens (`all`, with and without masking + MVM) the tiny model answers the three time-order tasks
by option letter; the frame-pooled model (`mean`) stays near chance on them; every variant reads the static colour.
The thresholds leave room for a one-seed run (chance is 50%): README.md and docs/quickstart.md give the tables.
Runs the real command in a subprocess (about 9 minutes on 2 cores), so it is in the `slow` tier.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stllm.quickstart.drawing import TASKS

TEMPORAL = [task for task, (_, temporal) in TASKS.items() if temporal]
STATIC = [task for task, (_, temporal) in TASKS.items() if not temporal]


@pytest.mark.slow
def test_quickstart_shows_the_papers_claim(tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    proc = subprocess.run(
        [sys.executable, "-m", "stllm", "quickstart", "--out", str(out)], capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 0 and not results["fast"]
    strict = results["mvbench_strict_accuracy_percent"]
    assert set(strict) == {"all", "all+mask+MVM", "mean"}
    for variant in ("all", "all+mask+MVM"):
        for task in TEMPORAL:
            assert strict[variant][task] >= 90.0, (variant, task, strict)
    for task in TEMPORAL:
        assert strict["mean"][task] <= 70.0, (task, strict)
    for variant, accuracy in strict.items():
        for task in STATIC:
            assert accuracy[task] >= 85.0, (variant, task, strict)
    # the command tells the newcomer what it did and where the results are
    assert "MVBench scoring" in proc.stdout and str(out / "results.json") in proc.stdout
