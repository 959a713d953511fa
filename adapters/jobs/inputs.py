"""What a job reads: datasets (image folders, tensor files, entry points), images, and
prompts given as embeddings (there is no text encoder offline)."""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..shards import sha256_bytes, sha256_file
from .config import JobConfig, JobError

if TYPE_CHECKING:
    from .backends import Backend

__all__ = ["IMAGE_SUFFIXES", "Dataset", "Prompts", "entry_point", "module_file_sha",
           "load_prompt_embeds", "tensor_sha"]

#: file suffixes read as images in a dataset folder (other files are ignored)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# --------------------------------------------------------------- entry points
def entry_point(spec: str, what: str) -> Callable[..., Any]:
    """``module:function``, imported with the current directory on ``sys.path`` (as
    ``python -m`` does), so a checkout's own modules (``benchmarks.…``) resolve."""
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn:
        raise JobError(f"{what} {spec!r} is neither an existing path nor 'module:function'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise JobError(f"{what} {spec!r}: cannot import module {mod!r} ({e})") from None
    obj = module
    for part in fn.split("."):
        if not hasattr(obj, part):
            raise JobError(f"{what} {spec!r}: module {mod!r} has no attribute {fn!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise JobError(f"{what} {spec!r} is not callable")
    return obj


def module_file_sha(spec: str) -> str | None:
    """SHA-256 of the source file of an entry point's module (``None`` if it has none)."""
    mod = sys.modules.get(spec.partition(":")[0])
    path = getattr(mod, "__file__", None)
    return sha256_file(path) if path and os.path.exists(path) else None



def load_prompt_embeds(cfg: JobConfig) -> dict[str, torch.Tensor]:
    """The named prompt embeddings of ``--prompt-embeds`` as ``(1, tokens, width)`` float
    tensors (``{}`` without the option)."""
    if cfg.prompt_embeds is None:
        return {}
    path = Path(cfg.prompt_embeds)
    try:
        from safetensors.torch import load_file
        raw = load_file(str(path))
    except Exception as e:
        raise JobError(f"prompt embeddings {path}: cannot read ({e})") from None
    out = {}
    for name, t in raw.items():
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3 or t.shape[0] != 1 or not t.is_floating_point():
            raise JobError(f"prompt embeddings {path}: {name!r} has shape {tuple(t.shape)} "
                           f"{t.dtype}; expected float (tokens, width) or (1, tokens, width)")
        out[name] = t
    return out


def tensor_sha(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bits (a sample's or an embedding's content hash)."""
    t = t.detach().to("cpu").contiguous()
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    head = f"{t.dtype}|{tuple(t.shape)}|".encode()
    return sha256_bytes(head + t.view(bits).numpy().tobytes())



# ------------------------------------------------------------------- datasets
class Dataset:
    """An ordered dataset: ids, sources, and per-sample loading (errors name the file)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        path = Path(spec)
        self._rows: Any = None
        if path.is_dir():
            files = sorted((p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                           key=lambda p: p.relative_to(path).as_posix())
            if not files:
                raise JobError(f"dataset folder {spec} holds no images "
                               f"({', '.join(IMAGE_SUFFIXES)})")
            self.kind = "images"
            self.files = files
            self.ids = [p.relative_to(path).as_posix() for p in files]
            self.sources = [str(p) for p in files]
            return
        if path.suffix == ".npy" and path.is_file():
            try:
                self._rows = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise JobError(f"dataset {spec}: not a readable .npy file ({e})") from None
            self.kind = "npy"
        elif path.suffix == ".safetensors" and path.is_file():
            from safetensors import safe_open
            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = list(f.keys())
                    key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
                    if key is None:
                        raise JobError(f"dataset {spec}: holds tensors {keys}; name one "
                                       "'images' or store a single tensor")
                    self._rows = f.get_tensor(key)
            except JobError:
                raise
            except Exception as e:
                raise JobError(f"dataset {spec}: not a readable safetensors file ({e})") from None
            self.kind = "safetensors"
        elif path.exists():
            raise JobError(f"dataset {spec}: expected a folder of images, a .npy or a "
                           ".safetensors file")
        else:
            fn = entry_point(spec, "dataset")
            try:
                rows = fn()
            except Exception as e:
                raise JobError(f"dataset {spec}: the call failed: {type(e).__name__}: "
                               f"{e}") from None
            if not isinstance(rows, torch.Tensor | np.ndarray):
                raise JobError(f"dataset {spec} returned {type(rows).__name__}, expected a "
                               "tensor (N, C, H, W)")
            self._rows = rows
            self.kind = "entry-point"
        shape = tuple(self._rows.shape)
        if len(shape) not in (3, 4) or shape[0] == 0:
            raise JobError(f"dataset {spec} has shape {shape}; expected (N, C, H, W) or "
                           "(N, H, W) with N ≥ 1")
        n = shape[0]
        width = max(6, len(str(n - 1)))
        self.ids = [f"{i:0{width}d}" for i in range(n)]
        self.sources = [f"{spec}[{i}]" for i in range(n)]

    def __len__(self) -> int:
        return len(self.ids)

    def identity(self) -> dict[str, Any]:
        """The sample order (it defines the batches) as a digest, and the count."""
        return {"count": len(self.ids),
                "ids_sha256": sha256_bytes("\n".join(self.ids).encode())}

    def load(self, i: int) -> tuple[torch.Tensor, str]:
        """Sample ``i`` as a float tensor ``(C, H, W)`` and the SHA-256 of its content."""
        if self.kind == "images":
            return _load_image(self.files[i])
        row = self._rows[i]
        t = torch.from_numpy(np.array(row)) if isinstance(row, np.ndarray) else row.clone()
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if not t.is_floating_point():
            raise ValueError(f"{self.sources[i]}: dtype {t.dtype} is not floating point; "
                             "store the data in the model's range as floats")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{self.sources[i]}: contains NaN/Inf")
        return t, tensor_sha(t)


def _load_image(path: Path) -> tuple[torch.Tensor, str]:
    """An 8-bit image as ``x/127.5 − 1`` in [−1, 1] (the diffusers convention), ``(C, H, W)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            if mode not in ("L", "RGB"):
                raise ValueError(f"{path}: image mode {mode!r}; expected 8-bit grey (L) or RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None
    t = torch.from_numpy(arr.astype(np.float32)) / 127.5 - 1.0
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()
    return t, sha256_bytes(data)



def _read_prompts(path: str) -> dict[str, str]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise JobError(f"prompts file {path}: cannot read ({e})") from None
    rows: list[Mapping[str, Any]]
    if p.suffix == ".jsonl":
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as e:
            raise JobError(f"prompts file {path}: bad JSON line ({e})") from None
    elif p.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise JobError(f"prompts file {path}: expected .csv or .jsonl")
    out = {}
    for n, r in enumerate(rows, 1):
        if not isinstance(r, Mapping) or "id" not in r or "prompt" not in r:
            raise JobError(f"prompts file {path}: row {n} needs 'id' and 'prompt'")
        out[str(r["id"])] = str(r["prompt"])
    return out


class Prompts:
    """Per-sample prompt embedding names and tensors (conditional models only)."""

    def __init__(self, cfg: JobConfig, backend: Backend) -> None:
        self.on = backend.conditional
        self.embeds = load_prompt_embeds(cfg) if self.on else {}
        self.table = _read_prompts(cfg.prompts) if (self.on and cfg.prompts) else None
        self.default = cfg.prompt
        if self.on and self.table is None and self.default is None:
            names = [k for k in self.embeds if k != (cfg.negative_prompt or "negative")]
            if len(names) != 1:
                raise JobError(f"{cfg.prompt_embeds} holds embeddings {sorted(self.embeds)}: "
                               "choose one with --prompt, or per sample with --prompts")
            self.default = names[0]
        for name in ([self.default] if self.default else []) + list(
                (self.table or {}).values()):
            if name not in self.embeds:
                raise JobError(f"prompt {name!r} has no embedding in {cfg.prompt_embeds} "
                               f"(it holds {sorted(self.embeds)})")
        self.sha = {k: tensor_sha(v) for k, v in self.embeds.items()}

    def name(self, sample_id: str) -> str | None:
        """The embedding name of a sample (``None`` for an unconditional model)."""
        if not self.on:
            return None
        if self.table is not None:
            if sample_id not in self.table:
                raise ValueError(f"sample {sample_id!r} has no row in the prompts file")
            return self.table[sample_id]
        return self.default

    def identity(self) -> dict[str, Any] | None:
        """What the job records of the prompts: the default, a digest of the table, the
        embeddings' hashes (``None`` for an unconditional model)."""
        if not self.on:
            return None
        return {"default": self.default, "table_sha256": None if self.table is None else
                sha256_bytes(json.dumps(self.table, sort_keys=True).encode()),
                "embeds_sha256": dict(sorted(self.sha.items()))}

    def batch(self, names: Sequence[str | None]) -> torch.Tensor | None:
        """The embeddings of a batch's rows, stacked (``None`` for an unconditional model)."""
        if not self.on:
            return None
        return torch.cat([self.embeds[n] for n in names])

