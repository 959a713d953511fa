"""A digest of a model's weights, part of a latent's identity (docs/design.md §3).

Two UNets of the same class, config and dtype give different ε when their weights differ,
and so does one UNet after an in-place update of a parameter (fine-tuning, an EMA swap,
``load_state_dict``).  A latent inverted with one and sampled with the other is then not
the inverse (on the digits DDPM at 20 steps: relative error 3e-2 after adding
1e-3·N(0, 1) to one parameter tensor, 3e2 from a fresh UNet of the same config), so
:attr:`~lmsolvers.adapters.DiffusersEps.context` records :func:`weights_digest` and
sampling refuses a latent whose digest differs.

Cost: the digest hashes every parameter and buffer once per model object and state.  A
model's *state key* is, per tensor, its identity, storage address and version counter
(``Tensor._version``, which every in-place operation bumps, under ``no_grad`` too); the
digest is cached under that key in a weak dictionary, so a later call costs one pass over
the parameters' metadata, and the hash is recomputed only when a tensor is replaced or
changed in place.  (Writing through ``tensor.data`` or ``.numpy()`` bypasses the version
counter: such a change is not seen; ``weights_digest(model, refresh=True)`` rehashes.)
Measured by ``python -m benchmarks.overhead`` (first call and cached call, digits UNet and
the tiny SD UNet).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import weakref
from typing import Any

import torch

__all__ = ["weights_digest"]

_LOCK = threading.Lock()
_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, str]] = \
    weakref.WeakKeyDictionary()


def _tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(itertools.chain(model.named_parameters(), model.named_buffers()))


def _state_key(tensors: list[tuple[str, torch.Tensor]]) -> tuple[Any, ...] | None:
    """What changes when a weight is replaced or updated in place; ``None`` when a tensor
    keeps no version counter (inference-mode tensors): then nothing is cached."""
    try:
        # a replaced tensor (``.to``, a new Parameter) has another id or storage; an
        # in-place change (``copy_``, ``add_``, ``resize_``) bumps the version counter
        return tuple((id(t), t.data_ptr(), t._version) for _, t in tensors)
    except RuntimeError:
        return None


def _hash(tensors: list[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(tensors, key=lambda nt: nt[0]):
        data = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{data.dtype}|{tuple(t.shape)}|".encode())
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


def weights_digest(model: torch.nn.Module, refresh: bool = False) -> str:
    """Hex BLAKE2b-128 of every parameter and buffer of ``model`` (names, dtypes, shapes and
    bits, in name order): equal for equal weights, whichever object holds them.

    Cached per model object until a parameter or buffer is replaced or changed in place
    (module docstring); ``refresh=True`` rehashes regardless.
    """
    tensors = _tensors(model)
    key = _state_key(tensors)
    if key is not None and not refresh:
        with _LOCK:
            hit = _CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
    digest = _hash(tensors)
    if key is not None:
        with _LOCK:
            _CACHE[model] = (key, digest)
    return digest
