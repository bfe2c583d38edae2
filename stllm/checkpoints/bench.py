"""Key list of a released checkpoint -> synthetic full-size checkpoint -> `convert --from-stllm`: peak RSS and time.

`python -m stllm bench convert [--recipe qa] [--dtype float16] [--workdir DIR] [--keep]` writes random tensors
with the released shapes (the key list `original_key_list` derives from the recipe's preset, or `--keys FILE`) as
HF-Trainer shards (`pytorch_model-0000k-of-0000n.bin`, <= 10 GB each, + index, with the duplicated embedding alias,
docs/original.md §5.4/6.1), then converts them in a child process (so building the synthetic files does not count)
with the same code path as `python -m stllm convert --from-stllm`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from stllm.checkpoints.convert import RECIPES
from stllm.checkpoints.keymap import original_key_list
from stllm.checkpoints.writer import parse_size
from stllm.models.configuration import preset_config

logger = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def status_kb(field: str) -> int:
    """A `/proc/self/status` field (VmHWM, VmRSS, RssAnon, RssFile) in kB; 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def build_synthetic(keys: list, out: Path, dtype: torch.dtype | None, max_bytes: int) -> int:
    """Random tensors with the listed shapes -> sharded .bin files + pytorch_model.bin.index.json; returns bytes."""
    out.mkdir(parents=True, exist_ok=True)
    groups: list[list] = [[]]
    size = 0
    for entry in keys:
        name, shape, dt = entry[0], entry[1], DTYPES.get(entry[2], torch.float16)
        n = torch.Size(shape).numel() * (dtype or dt).itemsize
        if name == "model.stllm_model.embed_tokens.weight":
            n = 0  # an alias: torch.save stores the shared storage once when both names land in one shard
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape, dtype or dt))
        size += n
    total, weight_map, embed = 0, {}, None
    for i, group in enumerate(tqdm(groups, desc="synthetic shards"), start=1):
        fname = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
        shard = {}
        for name, shape, dt in group:
            if name == "model.stllm_model.embed_tokens.weight" and embed is not None:
                shard[name] = embed  # docs/faithfulness.md Q24: the same tensor registered twice
            else:
                shard[name] = torch.empty(shape, dtype=dt).uniform_(-0.05, 0.05)
                total += shard[name].numel() * shard[name].element_size()
            if name == "model.embed_tokens.weight":
                embed = shard[name]
            weight_map[name] = fname
        torch.save(shard, out / fname)
        del shard
    (out / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    return total


def _child(argv: list[str]) -> int:
    """Run `convert` and report this process's memory high-water marks as one JSON line."""
    from stllm.checkpoints.convert import main as convert_main

    peak = {"anon_kb": 0}
    stop = threading.Event()

    def sample() -> None:  # RssAnon excludes the memory-mapped source pages the kernel can drop at will
        while not stop.is_set():
            peak["anon_kb"] = max(peak["anon_kb"], status_kb("RssAnon"))
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    convert_main(argv)
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    print("BENCH " + json.dumps({"vm_hwm_kb": status_kb("VmHWM"), "peak_anon_kb": peak["anon_kb"], "seconds": seconds}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m stllm bench convert", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--recipe", choices=("qa", "conversation"), default="qa")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    p.add_argument(
        "--keys",
        type=Path,
        help="JSON key list [[name, shape, dtype], ...] (default: generated from the recipe's preset, "
        "the same list as tests/data/checkpoint-keys/keys_{recipe}_fullsize.json)",
    )
    p.add_argument("--workdir", type=Path, help="where the synthetic files go (default: a temporary dir)")
    p.add_argument("--source-shard-size", default="10GB", help="HF-Trainer shard size of the synthetic source")
    p.add_argument("--max-shard-size", default="2GB", help="output shard size passed to convert")
    p.add_argument("--keep", action="store_true", help="keep the synthetic source and the converted output")
    args = p.parse_args(argv)
    if args.keys is None:
        keys = [list(entry) for entry in original_key_list(preset_config(RECIPES[args.recipe]))]
    elif args.keys.is_file():
        keys = json.loads(args.keys.read_text())
    else:
        raise SystemExit(f"{args.keys} not found")
    dtype = DTYPES[args.dtype]
    need = 2 * sum(math.prod(int(n) for n in k[1]) for k in keys) * dtype.itemsize
    work = Path(tempfile.mkdtemp(prefix="stllm-bench-convert-", dir=args.workdir))
    free = shutil.disk_usage(work).free
    if free < need * 1.05:
        shutil.rmtree(work)
        raise SystemExit(f"{work}: {free / 1e9:.1f} GB free, the benchmark needs {need / 1e9:.1f} GB")
    src, out = work / "source", work / "converted"
    try:
        t0 = time.perf_counter()
        size = build_synthetic(keys, src, dtype, parse_size(args.source_shard_size))
        logger.info("built %.2f GB synthetic checkpoint in %.0f s", size / 1e9, time.perf_counter() - t0)
        cmd = [
            sys.executable,
            "-m",
            "stllm",
            "bench",
            "convert",
            "--child",
            "--from-stllm",
            str(src),
            "--recipe",
            args.recipe,
            "--out",
            str(out),
            "--dtype",
            args.dtype,
            "--max-shard-size",
            args.max_shard_size,
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"conversion failed:\n{proc.stderr[-4000:]}")
        figures = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("BENCH "))[6:])
        children_max_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out_size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        shards = sorted(f.name for f in src.glob("*.bin"))
        print(
            f"source checkpoint      {size / 1e9:.2f} GB ({len(keys)} keys, {len(shards)} shards: "
            f"{', '.join(shards)}), dtype {args.dtype}"
        )
        print(
            f"converted output       {out_size / 1e9:.2f} GB ({len(list(out.glob('*.safetensors')))} safetensors "
            f"shards of <= {args.max_shard_size})"
        )
        print(f"peak RSS (VmHWM)       {figures['vm_hwm_kb'] / 1e6:.2f} GB  (includes memory-mapped source pages)")
        print(f"peak anonymous RSS     {figures['peak_anon_kb'] / 1e6:.2f} GB  (sampled every 0.1 s)")
        print(f"ru_maxrss of children  {children_max_kb / 1e6:.2f} GB")
        print(f"conversion time        {figures['seconds']:.1f} s (process wall time {wall:.1f} s)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0
