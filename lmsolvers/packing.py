"""A whole exact latent as one tensor, for ecosystems that pass a single tensor around.

An exact latent is k states plus the identity of the run that made them (grid, method,
model settings: docs/design.md §3).  k-diffusion-style sampler functions, and the tools
built on them, hand over one tensor: :func:`pack_latent` writes the whole latent into
one ``float64`` tensor of shape ``(B, L)``, losslessly, and :func:`unpack_latent` reads
it back bit for bit, refusing anything that is not such a tensor or was changed.

**Layout of a row** (one row per sample, so a subset or reordering of rows is still a
valid pack of those samples):

* ``[-224, 160, 1]``: the marker and the format version.  The three values are exact in
  every floating dtype, so a pack cast to float32/float16 is still recognised — and then
  refused, because its states changed.  Gaussian noise never holds them exactly;
* the length in bytes of a JSON header and the header itself, six bytes per entry
  (integers below 2⁴⁸, exact in float64): state shape and dtype, the nodes, the method's
  name and exact key, the model settings (``context``) and the whole grid (every node's
  σ̄, timestep and α, written as ``float.hex`` so nothing is rounded);
* a 16-byte checksum (BLAKE2b of the header and of the row's states, three entries);
* the row's k states, flattened, in float64 (exact for every floating dtype the states
  may have; :func:`unpack_latent` restores theirs).

Anything else — a tensor without the marker, a marker with a malformed header, a row
whose checksum fails (arithmetic, a cast, a lossy transfer), rows of different runs —
raises :class:`PackedLatentError` naming what is wrong.  Exactness itself is checked
later, when the latent is sampled: the grid, method and settings of that run must equal
the recorded ones (:func:`lmsolvers.latent.check_latent`).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch

from .grid import Grid
from .latent import Latent, freeze_context

__all__ = ["PackedLatentError", "pack_latent", "unpack_latent", "is_packed_latent"]

#: the marker and version that open every row (exact in float16 and bfloat16 too)
MARKER = (-224.0, 160.0)
VERSION = 1.0
_BYTES_PER_ENTRY = 6
_CHECKSUM_ENTRIES = 3  # 16 bytes of BLAKE2b in three 6-byte entries
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


class PackedLatentError(ValueError):
    """A tensor is not a packed exact latent, or a packed one was changed."""


# ------------------------------------------------------------------- encoding
def _float_hex(values: np.ndarray | None) -> list[str] | None:
    return None if values is None else [float(v).hex() for v in values]


def _from_hex(values: list[str] | None) -> np.ndarray | None:
    return None if values is None else np.array([float.fromhex(v) for v in values])


def _context_value(value: Any) -> Any:
    if isinstance(value, float):
        return {"float": value.hex()}
    if value is None or isinstance(value, bool | int | str):
        return value
    raise TypeError(f"a packed latent stores context values of type str, int, float, bool or "
                    f"None; got {type(value).__name__} {value!r}")


def _context_from(value: Any) -> Any:
    return float.fromhex(value["float"]) if isinstance(value, dict) else value


def _header(latent: Latent) -> bytes:
    first = latent.states[0]
    g = latent.grid
    head = {
        "shape": list(first.shape[1:]),
        "dtype": str(first.dtype).removeprefix("torch."),
        "nodes": list(latent.nodes),
        "method": latent.method,
        "method_key": latent.method_key,
        "context": [[k, _context_value(v)] for k, v in latent.context],
        "grid": {"sigma_bar": _float_hex(g.sigma_bar), "timesteps": _float_hex(g.timesteps),
                 "alphas": _float_hex(g.alphas)},
    }
    return json.dumps(head, sort_keys=True, separators=(",", ":")).encode()


def _bytes_to_entries(data: bytes) -> np.ndarray:
    pad = (-len(data)) % _BYTES_PER_ENTRY
    raw = np.frombuffer(data + b"\0" * pad, dtype=np.uint8).reshape(-1, _BYTES_PER_ENTRY)
    weights = 256.0 ** np.arange(_BYTES_PER_ENTRY)
    return raw.astype(np.float64) @ weights


def _entries_to_bytes(values: np.ndarray, nbytes: int) -> bytes:
    ints = values.astype(np.int64)
    raw = ((ints[:, None] >> (8 * np.arange(_BYTES_PER_ENTRY))) & 0xFF).astype(np.uint8)
    return raw.tobytes()[:nbytes]


def _checksum(header: bytes, states: torch.Tensor) -> bytes:
    d = hashlib.blake2b(digest_size=16)
    d.update(header)
    d.update(states.detach().contiguous().cpu().numpy().tobytes())
    return d.digest()


# ----------------------------------------------------------------------- API
def pack_latent(latent: Latent) -> torch.Tensor:
    """The whole ``latent`` as one ``float64`` tensor of shape ``(B, L)`` (module docstring):
    lossless, row ``b`` holding sample ``b``'s k states and the run's identity, on the
    states' device.  ``unpack_latent(pack_latent(lat))`` has ``lat``'s states bit for bit
    and its grid, method and context."""
    if not isinstance(latent, Latent):
        raise TypeError(f"expected an lmsolvers Latent, got {type(latent).__name__}")
    if type(latent) is not Latent or not all(st.is_floating_point() for st in latent.states):
        raise TypeError(f"pack_latent packs a float latent; a {type(latent).__name__} carries "
                        "more (bit-exact integer states): keep it as an object")
    states = torch.stack([st.detach() for st in latent.states], dim=1)  # (B, k, ...)
    B = states.shape[0]
    body = states.reshape(B, -1).to(torch.float64)
    header = _header(latent)
    head = np.concatenate([[*MARKER, VERSION, float(len(header))], _bytes_to_entries(header)])
    rows = []
    for b in range(B):
        check = _bytes_to_entries(_checksum(header, body[b]))
        prefix = torch.from_numpy(np.concatenate([head, check])).to(body.device)
        rows.append(torch.cat([prefix, body[b]]))
    return torch.stack(rows)


def _lead(x: Any) -> torch.Tensor | None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2 \
            or x.shape[0] < 1 or x.shape[1] < 4:
        return None
    return x[0, :3].detach().to("cpu", torch.float64)


def _rescaled(lead: torch.Tensor) -> bool:
    """The marker and version multiplied by one factor (a latent format's scale)."""
    v = float(lead[2])
    if not (math.isfinite(v) and v != 0.0):
        return False
    r0, r1 = float(lead[0]) / v, float(lead[1]) / v
    return abs(r0 / MARKER[0] - 1) < 1e-6 and abs(r1 / MARKER[1] - 1) < 1e-6


def is_packed_latent(x: Any) -> bool:
    """Whether ``x`` carries the marker of :func:`pack_latent`, possibly rescaled (cheap:
    reads three entries of the first row; :func:`unpack_latent` verifies everything and
    refuses a changed pack)."""
    lead = _lead(x)
    if lead is None:
        return False
    return bool(lead[0] == MARKER[0] and lead[1] == MARKER[1]) or _rescaled(lead)


def _refuse(what: str) -> PackedLatentError:
    return PackedLatentError(
        f"{what}: an exact latent must reach the sampler unchanged, as invert_* returned it "
        "(no arithmetic, no cast to another dtype, the same rows); invert again to get one")


def unpack_latent(packed: torch.Tensor) -> Latent:
    """The :class:`~lmsolvers.Latent` in a tensor made by :func:`pack_latent`, states in their
    recorded dtype on ``packed``'s device.  Raises :class:`PackedLatentError` if ``packed``
    is not such a tensor, if a row fails its checksum, or if rows come from different runs."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"expected a packed latent tensor, got {type(packed).__name__}")
    lead = _lead(packed)
    if lead is not None and not (lead[0] == MARKER[0] and lead[1] == MARKER[1]) \
            and _rescaled(lead):
        raise _refuse(f"the packed latent was rescaled (its marker is multiplied by "
                      f"{float(lead[2]) / VERSION:.6g}: a latent format's scale factor?)")
    if not is_packed_latent(packed):
        raise PackedLatentError(
            f"this tensor (shape {tuple(packed.shape)}, {packed.dtype}) is not a packed exact "
            "latent: it does not start with the marker pack_latent writes")
    if packed.dtype != torch.float64:
        raise _refuse(f"the packed latent was cast to {packed.dtype}")
    data = packed.detach().cpu().numpy()
    rows, header, shape, dtype = [], None, None, None
    for b in range(data.shape[0]):
        row = data[b]
        if row[0] != MARKER[0] or row[1] != MARKER[1]:
            raise _refuse(f"row {b} of the packed latent lacks the marker (rows of other "
                          "tensors mixed in?)")
        if row[2] != VERSION:
            raise PackedLatentError(f"packed latent format version {row[2]!r}; this lmsolvers "
                                    f"reads version {VERSION!r}")
        nbytes = row[3]
        n_head = -(-int(nbytes) // _BYTES_PER_ENTRY) if nbytes == int(nbytes) and nbytes > 0 \
            else -1
        start = 4 + n_head + _CHECKSUM_ENTRIES
        if n_head < 0 or start > row.size:
            raise _refuse(f"row {b} of the packed latent has a malformed header")
        entries = row[4:4 + n_head]
        if np.any((entries < 0) | (entries >= 2.0 ** 48) | (entries != np.floor(entries))):
            raise _refuse(f"row {b} of the packed latent has a malformed header")
        text = _entries_to_bytes(entries, int(nbytes))
        if header is None:
            header = text
            try:
                head = json.loads(text)
                shape, dtype = tuple(head["shape"]), _DTYPES[head["dtype"]]
                k = len(head["nodes"])
            except (ValueError, KeyError, TypeError):
                raise _refuse("the packed latent's header does not parse") from None
        elif text != header:
            raise PackedLatentError(f"rows 0 and {b} of the packed latent come from different "
                                    "inversions (grid, method or settings differ): pack each "
                                    "run on its own")
        body = torch.from_numpy(row[start:].copy())
        size = k * int(np.prod(shape, dtype=np.int64))
        check = _entries_to_bytes(row[4 + n_head:start], 16)
        if body.numel() != size or _checksum(header, body) != check:
            raise _refuse(f"row {b} of the packed latent fails its checksum")
        rows.append(body.reshape(k, *shape))
    states = torch.stack(rows).to(packed.device)  # (B, k, ...)
    g = head["grid"]
    grid = Grid(_from_hex(g["sigma_bar"]), timesteps=_from_hex(g["timesteps"]),
                alphas=_from_hex(g["alphas"]))
    context = freeze_context({k: _context_from(v) for k, v in head["context"]})
    return Latent(states=tuple(states[:, j].to(dtype).contiguous() for j in range(k)),
                  method=head["method"], method_key=head["method_key"], grid=grid,
                  context=context, nodes=tuple(head["nodes"]))
