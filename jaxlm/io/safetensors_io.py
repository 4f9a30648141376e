"""Reading and writing Hugging Face safetensors checkpoints: one file, or shards with an index json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxlm.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class TensorStore:
    """Lazy key -> numpy array view over one safetensors file or a sharded set (files opened on demand)."""

    def __init__(self, key_to_file: dict[str, Path]):
        self.key_to_file = key_to_file
        self._handles: dict[Path, object] = {}
        self._shapes: dict[str, tuple] = {}

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TensorStore":
        p = Path(path)
        if not p.exists():
            raise CheckpointError(f"checkpoint not found: {p}")
        if p.is_file():
            files = {p: None}
        elif (p / INDEX_NAME).exists():
            try:
                index = json.loads((p / INDEX_NAME).read_text())
                wmap = index["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{p / INDEX_NAME}: not a valid safetensors index ({e})") from None
            key_to_file = {}
            for k, fname in wmap.items():
                f = p / fname
                if not f.exists():
                    raise CheckpointError(f"{p / INDEX_NAME} lists shard {fname} for key {k!r}, but {f} is missing")
                key_to_file[k] = f
            return cls._check(key_to_file)
        elif (p / SINGLE_NAME).exists():
            files = {p / SINGLE_NAME: None}
        else:
            cands = sorted(p.glob("*.safetensors"))
            if not cands:
                raise CheckpointError(f"no {SINGLE_NAME}, {INDEX_NAME} or *.safetensors in {p}")
            files = {c: None for c in cands}
        key_to_file = {}
        for f in files:
            try:
                with safe_open(f, "numpy") as h:
                    for k in h.keys():
                        key_to_file[k] = f
            except Exception as e:  # noqa: BLE001 - surface as a checkpoint error naming the file
                raise CheckpointError(f"{f}: cannot read as safetensors ({e})") from None
        return cls(key_to_file)

    @classmethod
    def _check(cls, key_to_file):
        store = cls(key_to_file)
        for f in set(key_to_file.values()):
            try:
                store._handle(f)
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"{f}: cannot read as safetensors ({e})") from None
        return store

    def _handle(self, f: Path):
        if f not in self._handles:
            self._handles[f] = safe_open(f, "numpy")
        return self._handles[f]

    def keys(self):
        return self.key_to_file.keys()

    def __contains__(self, k):
        return k in self.key_to_file

    def shape(self, k) -> tuple:
        if k not in self._shapes:
            self._shapes[k] = tuple(self._handle(self.key_to_file[k]).get_slice(k).get_shape())
        return self._shapes[k]

    def __getitem__(self, k) -> np.ndarray:
        if k not in self.key_to_file:
            raise CheckpointError(f"key {k!r} not in checkpoint")
        return self._handle(self.key_to_file[k]).get_tensor(k)


def write_safetensors(tensors: dict[str, np.ndarray], out_dir: str | os.PathLike,
                      max_shard_bytes: int | None = None) -> list[Path]:
    """Write tensors as model.safetensors, or as model-0000i-of-0000n.safetensors + index when over max_shard_bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    total = sum(v.nbytes for v in tensors.values())
    meta = {"format": "pt"}
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, out / SINGLE_NAME, metadata=meta)
        return [out / SINGLE_NAME]
    shards, cur, size = [], {}, 0
    for k in sorted(tensors):
        v = tensors[k]
        if cur and size + v.nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += v.nbytes
    if cur:
        shards.append(cur)
    n = len(shards)
    weight_map, paths = {}, []
    for i, sh in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(sh, out / name, metadata=meta)
        paths.append(out / name)
        weight_map.update({k: name for k in sh})
    (out / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return paths
