"""The documented commands, run as written (issue #17): docs/evaluation.md's command block, README.md's "Using it" rows
for eval/score/tiny-model/chat/inspect and docs/demo.md's CPU one-shot chat, from a directory other than the
repository, on a tiny model, tiny benchmark folders in each official layout (MSVD-QA in the two-folder form) and a
local OpenAI-compatible judge on 127.0.0.1. Only the placeholders the docs name are replaced."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.eval_layouts import REPO, build_mcqa, build_open_qa, build_vcgbench, write_video
from tests.test_eval_judge import FakeJudge

pytestmark = pytest.mark.slow  # several tiny-model evaluations: minutes on 2 cores

KEY = "sk-test-SECRET-4242"  # the key FakeJudge accepts


def doc_block(path: Path, heading: str) -> list[str]:
    """The first ```bash block after `heading` -> its commands (continuation lines joined, comments dropped)."""
    text = path.read_text()
    block = text[text.index(heading) :].split("```bash\n", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


@pytest.fixture(scope="module")
def judge() -> Iterator[str]:
    FakeJudge.attempts, FakeJudge.requests = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory outside the repository holding the benchmark folders (two-folder MSVD-QA)."""
    work = tmp_path_factory.mktemp("walk")
    data = work / "data"
    build_mcqa(data / "MVBench")
    build_vcgbench(data / "vcgbench")
    build_open_qa(data / "msvd_src", "msvd")
    (data / "msvd_qa" / "annotations").mkdir(parents=True)
    (data / "msvd_src" / "test_qa.json").rename(data / "msvd_qa" / "annotations" / "test_qa.json")
    (data / "msvd_src" / "videos").rename(data / "msvd_qa" / "videos")
    build_open_qa(data / "msrvtt_qa", "msrvtt")
    build_open_qa(data / "activitynet_qa", "anet")
    write_video(work / "v.mp4")
    write_video(work / "my_video.mp4")
    return work


def _run(command: str, cwd: Path, env: dict[str, str], subs: dict[str, str]) -> subprocess.CompletedProcess:
    for placeholder, value in subs.items():
        command = command.replace(placeholder, value)
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{command}\nrc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc


def test_documented_commands(workdir: Path, judge: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONWARNINGS": "ignore"}
    env.pop("OPENAI_API_KEY", None)
    model = workdir / "runs" / "tiny"
    subs = {
        "checkpoints/stllm-qa": str(model),
        "checkpoints/stllm-conversation": str(model),
        "/data/": f"{workdir}/data/",
        "configs/eval/": f"{REPO}/configs/eval/",
        "scripts/eval/": f"{REPO}/scripts/eval/",
        "https://api.openai.com/v1": judge,
        "export OPENAI_API_KEY=...": f"export OPENAI_API_KEY={KEY}",
    }
    # README "Using it": the CPU row (tiny model + chat), inspect
    readme = (REPO / "README.md").read_text()
    row = re.search(r"\| try everything on a CPU \| `([^`]+)`", readme)
    assert row, "README's CPU row changed"
    _run(row.group(1).replace("runs/tiny", str(model)), workdir, env, {})
    _run(f"python -m stllm inspect {model}", workdir, env, {})
    # docs/demo.md: the CPU one-shot chat (the interactive one reads stdin; the page is tests/test_demo_gradio.py)
    demo = [c for c in doc_block(REPO / "docs" / "demo.md", "### On a CPU") if "--question" in c]
    assert demo
    for command in demo:
        _run(command.replace("runs/tiny_model", str(model)).replace("demo.py", f"{REPO}/demo.py"), workdir, env, {})
    # docs/evaluation.md: the command block, as written (torchrun is tests/test_eval_runner.py's)
    commands = [c for c in doc_block(REPO / "docs" / "evaluation.md", "## Commands") if not c.startswith("torchrun")]
    script = "set -e\n" + "\n".join(commands)  # one shell: `export` carries to the next lines, as in a terminal
    _run(script, workdir, {**env, "JUDGE_BASE_URL": judge}, subs)
    out = workdir / "eval_outputs"
    for bench in ("mvbench", "mvbench_smoke", "vcgbench", "msvd_qa", "msrvtt_qa", "anet_qa"):
        assert (out / bench / "predictions.jsonl").is_file(), bench
    for bench in ("mvbench", "vcgbench", "msvd_qa", "msrvtt_qa", "anet_qa"):
        res = json.loads((out / bench / "results.json").read_text())
        assert res["metrics"]["item_errors"] == 0, (bench, res["metrics"])
        if res["judge"]:
            assert res["judge"]["failures"] == 0, (bench, res["judge"])
    smoke = [json.loads(line) for line in (out / "mvbench_smoke" / "predictions.jsonl").read_text().splitlines()]
    assert [r["task"] for r in smoke] == ["Action Sequence", "Episodic Reasoning"]
    # README "Using it": the eval and score rows
    for task in ("evaluate (phase 1", "score (phase 2"):
        cmd = re.search(re.escape(task) + r"[^|]*\| `([^`]+)`", readme)
        assert cmd, task
        _run(
            cmd.group(1).replace("OUT", str(model)),
            workdir,
            env,
            {**subs, "data_root=/data/MVBench": f"data_root={workdir}/data/MVBench"},
        )
