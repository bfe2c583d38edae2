"""`python -m stllm bench <name> [args]`: benchmarks that print figures (never timed unit tests)."""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

BENCHMARKS: dict[str, str] = {
    "data": "stllm.data.bench",  # decode + sample + transform throughput vs the raw decoder
    "convert": "stllm.models.bench_convert",  # full-size synthetic checkpoint conversion: peak RSS, time
    "train": "stllm.train.bench",  # step time without masking / masking / masking + MVM
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print("usage: python -m stllm bench {" + ",".join(BENCHMARKS) + "} [args]", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0)
