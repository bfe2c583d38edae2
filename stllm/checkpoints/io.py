"""Checkpoint file or directory -> (key, tensor) pairs, one shard at a time, refusing anything but plain weights.

Accepted (docs/original.md §5.4, 6.2, 6.3, Q6c [FIX]: the original only read `pytorch_model-XXXXX-of-YYYYY.bin`):
  - HF-Trainer / save_pretrained directories: `model.safetensors.index.json` + shards, `model.safetensors`,
    `pytorch_model.bin.index.json` + shards, `pytorch_model-XXXXX-of-YYYYY.bin` without an index, `pytorch_model.bin`;
  - single files: `.safetensors`, `.bin`, LAVIS `.pth` (`{"model": state_dict}` or a flat state dict).
Pickles are opened with `torch.load(weights_only=True)` only (memory-mapped when the file is a zip archive), so a
file that needs arbitrary code to unpickle is refused. Every failure names the file and what is wrong with it.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from stllm.errors import StllmError

logger = logging.getLogger(__name__)

SHARD_BIN = re.compile(r"pytorch_model-(\d+)-of-(\d+)\.bin")
SHARD_ST = re.compile(r"model-(\d+)-of-(\d+)\.safetensors")
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(StllmError, ValueError):
    """A checkpoint file or directory that cannot be read as plain weights; the message names the file."""


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a valid checkpoint index (needs a 'weight_map'): {err}") from err
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise CheckpointError(f"{index}: lists shard files that do not exist in {index.parent}: {missing}")
    return [index.parent / s for s in shards]


def _numbered_shards(directory: Path, pattern: re.Pattern) -> list[Path]:
    found = sorted(p for p in directory.iterdir() if pattern.fullmatch(p.name))
    if not found:
        return []
    totals = {int(pattern.fullmatch(p.name).group(2)) for p in found}
    if len(totals) != 1:
        raise CheckpointError(f"{directory}: shard files disagree on the shard count: {[p.name for p in found]}")
    total = totals.pop()
    have = {int(pattern.fullmatch(p.name).group(1)) for p in found}
    missing = sorted(set(range(1, total + 1)) - have)
    if missing:
        fmt = "model-{:05d}-of-{:05d}.safetensors" if pattern is SHARD_ST else "pytorch_model-{:05d}-of-{:05d}.bin"
        names = [fmt.format(i, total) for i in missing]
        raise CheckpointError(f"{directory}: {len(missing)} of {total} shards are missing: {names}")
    return found


def list_shards(path: str | Path) -> list[Path]:
    """A checkpoint file or directory -> the weight files to read, in order. Raises CheckpointError if none."""
    path = Path(path)
    if path.is_file():
        if path.name.endswith(".index.json"):
            return _index_shards(path)
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            return _index_shards(path / index)
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single]
    for pattern in (SHARD_ST, SHARD_BIN):
        shards = _numbered_shards(path, pattern)
        if shards:
            return shards
    raise CheckpointError(
        f"{path}: no checkpoint found (looked for model.safetensors[.index.json], "
        f"pytorch_model.bin[.index.json], pytorch_model-XXXXX-of-YYYYY.bin)"
    )


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size and head[8:9] == b"{"


def _load_pickle(path: Path) -> dict:
    with path.open("rb") as f:
        head = f.read(4)
    # mmap needs the zip layout of torch >= 1.6; legacy pickles are read into memory
    mmap = head == _ZIP_MAGIC
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((line for line in first if "Unsupported" in line or "GLOBAL" in line), first[0] if first else "")
        raise CheckpointError(
            f"{path}: refusing to load, this pickle needs more than plain tensors "
            f"(torch.load weights_only=True failed: {detail.strip()})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        what = "truncated or corrupt zip archive" if mmap else "not a torch checkpoint"
        raise CheckpointError(f"{path}: {what} ({type(err).__name__}: {str(err).splitlines()[0]})") from err
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # LAVIS: {"model": state_dict, ...}
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(
            f"{path}: not a state dict (expected a dict of name -> tensor, or LAVIS "
            f"{{'model': state_dict}}; got {type(obj).__name__})"
        )
    return obj


def check_safetensors(path: str | Path) -> dict:
    """A safetensors file -> its header, after checking that the file holds every byte the header describes, so that
    a truncated file fails here (one line naming it) and not half-way through a conversion or a load."""
    path = Path(path)
    size = path.stat().st_size
    header, n = _read_header(path, size)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, the header describes {8 + n + end})")
    return header


_check_safetensors = check_safetensors  # the name the readers below used


def iter_shard(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """One weight file -> (name, tensor) pairs. Tensors of .bin/.pth files are memory-mapped where possible."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
    if _is_safetensors(head, size):
        try:
            _check_safetensors(path)
            with safe_open(str(path), framework="pt") as st:
                for key in st.keys():
                    yield key, st.get_tensor(key)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path}: unreadable safetensors file ({type(err).__name__}: {err})") from err
        return
    if head[:4] == _ZIP_MAGIC or head[:1] == b"\x80":  # zip (torch >= 1.6) or legacy pickle protocol 2+
        state = _load_pickle(path)
        keys = list(state)
        for key in keys:
            yield key, state.pop(key)  # drop our reference as we go; the mapping goes away with `state`
        return
    raise CheckpointError(
        f"{path}: not a checkpoint file (neither safetensors nor a torch pickle/zip; starts with {head[:8]!r})"
    )


def iter_checkpoint(path: str | Path) -> Iterator[tuple[Path, Iterator[tuple[str, torch.Tensor]]]]:
    """Checkpoint file/dir -> (shard path, its (name, tensor) pairs), one shard after the other.

    With an index, every key the index assigns to a shard must be in that shard (checked as each shard ends).
    """
    path = Path(path)
    shards = list_shards(path)
    index = _find_index(path)
    expected: dict[str, set[str]] = {}
    if index is not None:
        for key, shard in json.loads(index.read_text())["weight_map"].items():
            expected.setdefault(shard, set()).add(key)
    for shard in shards:
        yield shard, _checked(shard, expected.get(shard.name))


def _find_index(path: Path) -> Path | None:
    if path.is_file():
        return path if path.name.endswith(".index.json") else None
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            return path / index
    return None


def _checked(shard: Path, keys: set[str] | None) -> Iterator[tuple[str, torch.Tensor]]:
    seen: set[str] = set()
    for key, tensor in iter_shard(shard):
        seen.add(key)
        yield key, tensor
    if keys is not None and keys - seen:
        raise CheckpointError(
            f"{shard}: the index assigns {len(keys - seen)} keys to this shard that it does "
            f"not contain: {sorted(keys - seen)[:20]}"
        )


def _read_header(path: Path, size: int) -> tuple[dict, int]:
    """(header dict, header length). The first 8 bytes of any file read as a length: check it against the file's
    size before reading (a pytorch_model.bin read this way asked for exabytes: MemoryError)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, shorter than a header)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > size - 8:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n} does not fit in {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {type(err).__name__})") from err
    fields = {"dtype", "shape", "data_offsets"}
    if not isinstance(header, dict) or not all(
        name == "__metadata__" or (isinstance(info, dict) and fields <= info.keys()) for name, info in header.items()
    ):
        raise CheckpointError(f"{path}: not a safetensors file (the header is not a table of tensors)")
    return header, n


def safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets), without reading tensors.

    CheckpointError (naming the file) for a file that is not safetensors or whose header is cut off."""
    path = Path(path)
    return _read_header(path, path.stat().st_size)[0]
