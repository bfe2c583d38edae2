"""(name, tensor) stream -> safetensors shards of bounded size + `model.safetensors.index.json` (save_pretrained
layout).

The writer holds only references to the tensors of the shard being filled and writes each tensor's bytes
straight from its storage (no serialised copy of the shard in memory), so converting a 16 GB checkpoint needs
about one output shard of memory on top of the source shard being read (docs/design.md decision 3, docs/original.md
§5.4).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
INDEX_NAME = "model.safetensors.index.json"


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / 1024 -> bytes (decimal units, as transformers' max_shard_size)."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    t = text.strip().upper().replace("IB", "B")
    for unit, scale in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * scale)
    return int(t)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write one safetensors file, streaming each tensor's bytes (format: 8-byte header size, JSON, raw data)."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors.values():
            if t.numel():
                f.write(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)


class ShardWriter:
    """Collect (name, tensor) until `max_bytes`, then write a shard; `finish` names the shards and writes the index."""

    def __init__(self, out_dir: str | Path, max_bytes: int) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffered = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.buffer or any(name in keys for _, keys in self.files):
            raise ValueError(f"tensor {name!r} written twice")
        n = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffered + n > self.max_bytes:
            self.flush()
        self.buffer[name] = tensor
        self.buffered += n
        self.total += n

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.out_dir / f".partial-{len(self.files) + 1:05d}.safetensors"
        write_safetensors(path, self.buffer)
        logger.info("wrote %s (%d tensors, %.2f GB)", path.name, len(self.buffer), self.buffered / 1e9)
        self.files.append((path, list(self.buffer)))
        self.buffer, self.buffered = {}, 0

    def finish(self) -> list[Path]:
        """Rename shards to model-0000i-of-0000n.safetensors (or model.safetensors) and write the index."""
        self.flush()
        n = len(self.files)
        final: list[Path] = []
        weight_map: dict[str, str] = {}
        for i, (path, keys) in enumerate(self.files, start=1):
            name = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
            path.rename(self.out_dir / name)
            final.append(self.out_dir / name)
            weight_map.update({k: name for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2))
        return final

    def abort(self) -> None:
        """Remove the shards written so far (after a failed conversion nothing half-done is left behind)."""
        for path, _ in self.files:
            path.unlink(missing_ok=True)
        self.files, self.buffer = [], {}
