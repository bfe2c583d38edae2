"""Converted model directory -> a readable (or JSON) description: recipe, sizes, dtypes, tokenizer ids, fingerprint.

Reads config.json (the model is built on the meta device, so nothing is allocated), the safetensors headers
(dtypes and shapes without reading tensors) and processor_config.json. The fingerprint is a sha256 over the
sorted (name, dtype, shape, raw bytes) of every tensor, streamed file by file (`--no-fingerprint` skips it); the
same pass finds tensors holding NaN or inf.

Exit status: 0 when the files hold exactly the model's tensors, at the model's shapes, all finite; 1 (with a
WARNING line) when a tensor is missing, extra, of the wrong shape or non-finite; 2 (one error line, through
`python -m stllm`) when the folder cannot be read: absent, no or bad config.json, truncated or non-safetensors
weight files.
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
from stllm.checkpoints.io import CheckpointError, check_safetensors, list_shards
from stllm.models.configuration import StllmConfig

logger = logging.getLogger(__name__)


def tensor_index(model_dir: Path) -> dict[str, tuple[Path, str, list[int]]]:
    """name -> (file, safetensors dtype, shape), from the headers only. CheckpointError (naming the file) for a
    truncated file or one that is not safetensors (save_pretrained and `convert` write safetensors)."""
    index: dict[str, tuple[Path, str, list[int]]] = {}
    for shard in list_shards(model_dir):
        if shard.suffix != ".safetensors":
            raise CheckpointError(
                f"{shard}: inspect reads safetensors weight files only (`python -m stllm convert` writes them "
                "from .bin/.pth checkpoints)"
            )
        for name, info in check_safetensors(shard).items():  # the header, once the file size is checked
            if name != "__metadata__":
                index[name] = (shard, info["dtype"], info["shape"])
    return index


def model_config(model_dir: Path) -> StllmConfig:
    """A model folder's config.json -> StllmConfig; CheckpointError (one line) for an absent folder or a bad file."""
    if not model_dir.exists():
        raise CheckpointError(f"{model_dir}: no such model folder")
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a folder (inspect takes a model folder)")
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: not a model folder (config.json not found)")
    try:
        return StllmConfig.from_json_file(str(path))
    except (OSError, ValueError, TypeError, KeyError) as err:  # missing, not UTF-8 / JSON (ValueErrors), bad values
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: not a readable StllmConfig ({type(err).__name__}: {detail})") from err


def fingerprint(index: dict[str, tuple[Path, str, list[int]]]) -> str:
    """sha256 over sorted (name, dtype, shape, bytes); one file open at a time, one tensor in memory at a time."""
    return scan(index)[0]


def scan(index: dict[str, tuple[Path, str, list[int]]]) -> tuple[str, list[str]]:
    """Read every tensor once -> (fingerprint, names of floating-point tensors holding NaN or inf)."""
    h = hashlib.sha256()
    non_finite: list[str] = []
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
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    non_finite.append(name)
                del t
    for name in sorted(digests):
        h.update(digests[name])
    return h.hexdigest(), sorted(non_finite)


def describe(model_dir: str | Path, with_fingerprint: bool = True) -> dict[str, Any]:
    """Everything `inspect` prints, as a dict."""
    model_dir = Path(model_dir)
    config = model_config(model_dir)
    model = meta_model(config)  # the constructor applies the recipe's freezing (docs/original.md §1.11)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    index = tensor_index(model_dir)
    dtypes: dict[str, int] = {}
    for _, dtype, _ in index.values():
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    expected = set(shapes)
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
        # name -> [shape in the files, shape in the model]
        "shape_mismatches": {
            name: [index[name][2], shapes[name]]
            for name in sorted(expected & set(index))
            if index[name][2] != shapes[name]
        },
        "non_finite_tensors": None,  # None: not checked (--no-fingerprint reads no tensors)
        "tokenizer": None,
        "fingerprint_sha256": None,
    }
    proc = model_dir / "processor_config.json"
    if proc.is_file():
        payload = json.loads(proc.read_text())
        info["tokenizer"] = dict(payload.get("special_token_ids", {}), video_token_id=config.video_token_id)
    if with_fingerprint:
        info["fingerprint_sha256"], info["non_finite_tensors"] = scan(index)
    return info


def problems(info: dict[str, Any]) -> list[str]:
    """What makes the folder unfit to load (describe's output) -> one phrase each; [] when it fits."""
    out = []
    if info["keys_missing_from_files"]:
        out.append(f"{len(info['keys_missing_from_files'])} missing from files: {info['keys_missing_from_files'][:10]}")
    if info["keys_not_in_model"]:
        out.append(f"{len(info['keys_not_in_model'])} not in model: {info['keys_not_in_model'][:10]}")
    if info["shape_mismatches"]:
        shown = [f"{k} {f} in files, {m} in model" for k, (f, m) in list(info["shape_mismatches"].items())[:10]]
        out.append(f"{len(info['shape_mismatches'])} of the wrong shape: {shown}")
    if info["non_finite_tensors"]:
        out.append(f"{len(info['non_finite_tensors'])} holding NaN or inf: {info['non_finite_tensors'][:10]}")
    return out


def _non_finite_line(names: list[str] | None) -> str:
    if names is None:
        return "not checked (--no-fingerprint)"
    return f"{len(names)} tensors hold NaN or inf" if names else "none (every tensor finite)"


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
        f"NaN / inf       {_non_finite_line(info['non_finite_tensors'])}",
    ]
    found = problems(info)
    if found:
        lines.append("WARNING         the files do not fit the model: " + "; ".join(found))
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
    return 1 if problems(info) else 0
