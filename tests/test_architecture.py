"""The package layout keeps its promises (docs/design.md, section 3): imports flow one way, one module per job.

Layers, lowest first: errors, config and the torch-free generation rules; data | models (never each other);
checkpoints; inference; train | eval | testing (never each other); demo | quickstart | bench_gpu; cli. A module
may import its own layer's package and anything below, never above; lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stllm"

# top-level unit -> layer; units of one layer may not import each other unless they are the same unit
LAYERS: dict[str, int] = {
    "stllm": 0,
    "stllm.errors": 0,
    "stllm.config": 1,
    "stllm.generation": 1,
    "stllm.data": 2,
    "stllm.models": 2,
    "stllm.checkpoints": 3,
    "stllm.inference": 4,
    "stllm.train": 5,
    "stllm.eval": 5,
    "stllm.demo": 6,
    "stllm.quickstart": 6,
    "stllm.bench_gpu": 6,
    "stllm.testing": 5,
    "stllm.cli": 7,
    "stllm.__main__": 8,
}


def unit_of(module: str) -> str:
    """stllm.data.video -> stllm.data; stllm.inference -> stllm.inference; stllm -> stllm."""
    parts = module.split(".")
    if len(parts) >= 2 and f"{parts[0]}.{parts[1]}" in LAYERS:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every stllm module a file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("stllm"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stllm"):
            found.add(node.module)
            # `from stllm.demo import web` imports stllm.demo.web
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] == "stllm"}


def files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path: Path) -> None:
    me = unit_of(module_name(path))
    assert me in LAYERS, f"{path}: unit {me} has no layer in this test (add it, with its place in docs/design.md)"
    for imported in imports_of(path):
        other = unit_of(imported)
        if other == me or other not in LAYERS:
            continue
        assert LAYERS[other] < LAYERS[me], (
            f"{module_name(path)} (layer {LAYERS[me]}) imports {imported} ({other}, "
            f"layer {LAYERS[other]}): imports must flow one way (docs/design.md)"
        )


def test_no_library_module_imports_test_fixtures_or_the_quickstart() -> None:
    """stllm.testing (tiny assets) and the quickstart are leaves: only the CLI, the quickstart and bench gpu (offline
    tokenizers for random full-size models) use them; training and evaluation never do."""
    allowed = {"stllm.cli", "stllm.quickstart", "stllm.testing", "stllm.bench_gpu"}
    for path in files():
        me = unit_of(module_name(path))
        for imported in imports_of(path):
            if unit_of(imported) in ("stllm.testing", "stllm.quickstart") and me not in allowed:
                pytest.fail(f"{module_name(path)} imports {imported}")
        assert "tests" not in {m.split(".")[0] for m in _all_imports(path)}, f"{path} imports the tests package"


def _all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_scoring_does_not_import_torch() -> None:
    """Phase 2 (`score`) runs on a laptop without the model stack: no torch through any import."""
    import subprocess
    import sys

    code = "import sys, stllm.eval.score, stllm.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_command_module_has_main() -> None:
    from stllm.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert mains, f"command {name!r}: {module} has no main(argv)"
