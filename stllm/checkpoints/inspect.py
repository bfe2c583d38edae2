"""Converted model directory -> a readable (or JSON) description: recipe, sizes, dtypes, tokenizer ids, fingerprint.

Reads config.json (the model is built on the meta device, so nothing is allocated), the safetensors headers
(dtypes and shapes without reading tensors) and processor_config.json. The fingerprint is a sha256 over the
sorted (name, dtype, shape, raw bytes) of every tensor, streamed file by file (`--no-fingerprint` skips it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from stllm.checkpoints.convert import meta_model
from stllm.checkpoints.io import list_shards, safetensors_header
from stllm.models.configuration import StllmConfig

logger = logging.getLogger(__name__)


def tensor_index(model_dir: Path) -> dict[str, tuple[Path, str, list[int]]]:
    """name -> (file, safetensors dtype, shape), from the headers only."""
    index: dict[str, tuple[Path, str, list[int]]] = {}
    for shard in list_shards(model_dir):
        for name, info in safetensors_header(shard).items():
            if name != "__metadata__":
                index[name] = (shard, info["dtype"], info["shape"])
    return index


def fingerprint(index: dict[str, tuple[Path, str, list[int]]]) -> str:
    """sha256 over sorted (name, dtype, shape, bytes); one file open at a time, one tensor in memory at a time."""
    h = hashlib.sha256()
    by_file: dict[Path, list[str]] = {}
    for name, (path, _, _) in index.items():
        by_file.setdefault(path, []).append(name)
    digests: dict[str, bytes] = {}  # per-tensor digests, combined in name order so file layout does not matter
    for path, names in tqdm(sorted(by_file.items()), desc="fingerprint", unit=" files", leave=False):
        with safe_open(str(path), framework="pt") as st:
            for name in names:
                t = st.get_tensor(name)
                _, dtype, shape = index[name]
                d = hashlib.sha256(f"{name}|{dtype}|{shape}|".encode())
                d.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
                digests[name] = d.digest()
                del t
    for name in sorted(digests):
        h.update(digests[name])
    return h.hexdigest()


def describe(model_dir: str | Path, with_fingerprint: bool = True) -> dict[str, Any]:
    """Everything `inspect` prints, as a dict."""
    model_dir = Path(model_dir)
    config = StllmConfig.from_json_file(str(model_dir / "config.json"))
    model = meta_model(config)  # the constructor applies the recipe's freezing (docs/original.md §1.11)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    index = tensor_index(model_dir)
    dtypes: dict[str, int] = {}
    for _, dtype, _ in index.values():
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    expected = set(model.state_dict())
    info: dict[str, Any] = {
        "model_dir": str(model_dir),
        "recipe": config.recipe,
        "video_input": config.video_input,
        "num_frames": config.num_frames,
        "residual_size": config.residual_size if config.video_input == "residual" else None,
        "btadapter": bool(config.btadapter),
        "qformer_text_input": bool(config.qformer_text_input),
        "mvm_decoder": bool(config.mvm_decode),
        "parameters_total": total,
        "parameters_trainable": trainable,
        "tensors_in_files": len(index),
        "tensor_dtypes": dtypes,
        "keys_missing_from_files": sorted(expected - set(index)),
        "keys_not_in_model": sorted(set(index) - expected),
        "tokenizer": None,
        "fingerprint_sha256": None,
    }
    proc = model_dir / "processor_config.json"
    if proc.is_file():
        payload = json.loads(proc.read_text())
        info["tokenizer"] = dict(payload.get("special_token_ids", {}), video_token_id=config.video_token_id)
    if with_fingerprint:
        info["fingerprint_sha256"] = fingerprint(index)
    return info


def format_block(info: dict[str, Any]) -> str:
    def millions(n: int) -> str:
        return f"{n:,} ({n / 1e6:.1f} M)"

    tok = info["tokenizer"]
    lines = [
        f"model dir       {info['model_dir']}",
        f"recipe          {info['recipe']}",
        f"video input     {info['video_input']}"
        + (f" (residual_size {info['residual_size']})" if info["residual_size"] else ""),
        f"frames          {info['num_frames']}",
        f"BT-Adapter      {'on' if info['btadapter'] else 'off'}; Q-Former text input "
        f"{'on' if info['qformer_text_input'] else 'off'}; MVM decoder {'on' if info['mvm_decoder'] else 'off'}",
        f"parameters      {millions(info['parameters_total'])}",
        f"trainable       {millions(info['parameters_trainable'])} (recipe freezing, docs/original.md §1.11)",
        f"tensors         {info['tensors_in_files']} in files; dtypes "
        + ", ".join(f"{k} x{v}" for k, v in sorted(info["tensor_dtypes"].items())),
        "tokenizer       " + (", ".join(f"{k}={v}" for k, v in tok.items()) if tok else "none (no processor files)"),
        f"fingerprint     {info['fingerprint_sha256'] or 'skipped'}",
    ]
    if info["keys_missing_from_files"] or info["keys_not_in_model"]:
        lines.append(
            f"WARNING         missing from files: {info['keys_missing_from_files'][:10]}; "
            f"not in model: {info['keys_not_in_model'][:10]}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stllm inspect", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("model_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of the readable block")
    p.add_argument("--no-fingerprint", action="store_true", help="skip hashing the tensors (fast)")
    args = p.parse_args(argv)
    info = describe(args.model_dir, with_fingerprint=not args.no_fingerprint)
    print(json.dumps(info, indent=2) if args.json else format_block(info))
    return 1 if info["keys_missing_from_files"] or info["keys_not_in_model"] else 0
