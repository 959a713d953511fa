"""Crash-safe storage of dataset jobs: atomic files, safetensors shards, JSONL manifests.

A dataset job (:mod:`lmsolvers.adapters.jobs`) must survive being killed at any
instant without leaving a file that *looks* complete but is not.  Every result file is
therefore written by :func:`atomic_write_bytes`: the bytes go to a temporary file in
the same directory, are flushed and ``fsync``-ed, the temporary file is renamed over
the destination (``os.replace``, atomic on POSIX within one file system), and the
directory is ``fsync``-ed so the rename itself is durable.  A reader sees either the
old file, no file, or the complete new one — never a prefix.

The temporary name is the destination's name plus ``.tmp``: each shard has exactly one
writer (the rank that owns its batch), so a stale temporary left by a killed process is
simply overwritten by the rerun, and no two ranks ever touch the same temporary.

Shards are safetensors files (a little-endian u64 header length, a JSON header, the raw
tensor bytes).  Their header carries string metadata (the sample ids and the latents'
identity), so a shard can be checked against the manifest without trusting file names.
The metadata is stored as *one* entry, a JSON object with sorted keys: safetensors writes
its metadata map in hash-map order, which differs between processes, and a job must give
the same bytes on every run (resume, 1 vs 2 ranks).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

__all__ = [
    "ShardError",
    "atomic_write_bytes",
    "atomic_write_text",
    "sha256_bytes",
    "sha256_file",
    "shard_bytes",
    "write_shard",
    "read_shard",
    "read_shard_metadata",
    "write_jsonl",
    "read_jsonl",
]

#: the one metadata entry of a shard (module docstring)
_META_KEY = "lmsolvers"
#: safetensors refuses headers larger than this (100 MB); a larger length field is garbage
_MAX_HEADER = 100_000_000


class ShardError(ValueError):
    """A shard or manifest file is missing, truncated, altered or inconsistent."""


def _fsync_dir(directory: Path) -> None:
    # the rename is recorded in the directory: without this a crash can lose it
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (module docstring).

    The parent directory is created if needed.  A concurrent reader sees the old
    content, no file, or ``data`` in full.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (streamed, so multi-GB weight files are fine)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def shard_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors serialisation of ``tensors`` with string ``metadata``.

    Deterministic: the same tensors (bits, shapes, dtypes) and metadata give the same
    bytes in every process (module docstring; tensors are made contiguous CPU copies).
    """
    ts = {k: tensors[k].detach().to("cpu").contiguous() for k in sorted(tensors)}
    meta = {str(k): str(v) for k, v in metadata.items()}
    return _st_save(ts, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})


def write_shard(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                metadata: Mapping[str, str]) -> str:
    """Write a shard atomically; returns the SHA-256 of its bytes (for the manifest)."""
    data = shard_bytes(tensors, metadata)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def _header(data: bytes, path: Path) -> dict[str, Any]:
    if len(data) < 8:
        raise ShardError(f"shard {path}: truncated ({len(data)} bytes, no safetensors header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise ShardError(f"shard {path}: truncated or not a safetensors file (header length "
                         f"{n}, file has {len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise ShardError(f"shard {path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ShardError(f"shard {path}: corrupt safetensors header (not a JSON object)")
    return header


def read_shard_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a shard's header (reads only the header)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ShardError(f"shard {path}: truncated ({len(head)} bytes, no safetensors "
                             "header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise ShardError(f"shard {path}: not a safetensors file (header length {n})")
        data = head + f.read(n)
    return _metadata(data, path)


def _metadata(data: bytes, path: Path) -> dict[str, str]:
    raw = (_header(data, path).get("__metadata__") or {}).get(_META_KEY)
    if raw is None:
        raise ShardError(f"shard {path}: no lmsolvers metadata (not written by a dataset job)")
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ShardError(f"shard {path}: corrupt metadata ({e})") from None
    return {str(k): str(v) for k, v in meta.items()}


def read_shard(path: str | os.PathLike, sha256: str | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A shard's tensors and metadata; with ``sha256``, its bytes are checked first.

    Raises :class:`ShardError` naming the file if it is missing, truncated, altered
    (hash mismatch) or not a valid safetensors file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ShardError(f"shard {path} is missing") from None
    if sha256 is not None:
        got = sha256_bytes(data)
        if got != sha256:
            raise ShardError(f"shard {path} was altered or truncated: SHA-256 {got[:16]}… "
                             f"differs from the manifest's {sha256[:16]}… ({len(data)} bytes)")
    meta = _metadata(data, path)
    try:
        tensors = _st_load(data)
    except Exception as e:  # safetensors raises its own error type
        raise ShardError(f"shard {path}: unreadable safetensors data ({e})") from None
    return tensors, meta


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """Write records as JSON lines (sorted keys, so equal records give equal bytes),
    atomically."""
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a malformed line is a :class:`ShardError` naming
    the file and line."""
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise ShardError(f"{path}:{i}: not a JSON line ({e})") from None
            if not isinstance(rec, dict):
                raise ShardError(f"{path}:{i}: expected a JSON object")
            out.append(rec)
    return out
