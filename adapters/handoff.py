"""The x_T hand-off between the scheduler pair: which rows of a tensor are inverted states,
and of which inversion (docs/design.md §8).

A k-step method's latent is k states; a DDIMInverse-style workflow hands the pipeline one
tensor, the inverse scheduler's last output.  :class:`LatentHandoff` remembers, per
*inversion* (one run of a :class:`~lmsolvers.adapters.BELMInverseScheduler`), the latent of
the node it reached, and recognises that output again by *content*, row by row: pipelines
copy latents, cast them (``.to(fp16)``), take part of a batch (``x_T[1:]``), reorder,
repeat or concatenate batches.  A forward run that starts from such a tensor resumes every
row it can match exactly, from the row of the full latent it came from.

**Identifying rows cheaply.**  Hashing the whole output at every inversion step would cost
more than the step (4×64×64 float32: ~0.3 ms for four dtypes against ~40 µs for the
step).  So a step records only a *probe* of each output row — 64 elements strided over
the row, gathered into a small tensor (one op) — and everything else happens once, when a
forward run starts:

* *candidates*: a row of the forward run's tensor is a candidate for an output row when
  its probe equals the output row's probe rounded to one of the floating dtypes a pipeline
  may cast to (float16, bfloat16, float32, float64; compared as float64 values), for rows
  of the same shape.  A row that is an output row, a cast of one, or a cast round trip
  (``x_T.half().float()``) is a candidate.  The comparison is one vectorised pass over the
  stored probes.
* *verification*: a candidate is accepted only if the whole row equals the inversion's
  output row (recomputed from the latent's top state exactly as the scheduler computed
  it, ``α x̄`` rounded to the output dtype) after the same rounding.  A candidate whose
  row differs elsewhere (an inverted state edited since) counts as *seen*, not resumable.

*Scope and lifetime.*  One registry per process (``BELMScheduler.handoff``), shared by the
pair; an instance can carry its own.  It keeps the latest latent of the last ``capacity``
inversions (default 4; each k states in the state dtype, on their device until evicted or
:meth:`LatentHandoff.clear`), least recently used first out, and the probes of output rows
it can no longer resume: every earlier node of a kept inversion, and the last ``remember``
rows (per row shape; default 4096 rows × 64 values) of evicted ones.  A run from those
warns (:class:`~lmsolvers.adapters.InvertedLatentWarning`) instead of silently sampling
from one state.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmsolvers.latent import Latent

__all__ = ["LatentHandoff", "HandoffMatch", "PROBE_SIZE", "HANDOFF_DTYPES"]

#: elements per row a step records (strided over the row)
PROBE_SIZE = 64
#: the dtypes a pipeline may cast a handed-off tensor to (identification only)
HANDOFF_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_INDEX: dict[tuple[int, torch.device], torch.Tensor] = {}


def _probe(x: torch.Tensor) -> torch.Tensor:
    """``(B, ≤ PROBE_SIZE)``: a strided sample of each row of ``x``, copied (one gather)."""
    flat = x.detach().reshape(x.shape[0], -1)
    key = (flat.shape[1], flat.device)
    index = _INDEX.get(key)
    if index is None:
        step = max(1, key[0] // PROBE_SIZE)
        index = _INDEX.setdefault(key, torch.arange(0, key[0], step, device=key[1])[:PROBE_SIZE])
    return flat.index_select(1, index)


def _in_any_dtype(probes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(R, M)`` booleans: row probe r equals stored probe m rounded to one of the handed-off
    dtypes (values compared in float64)."""
    want = rows.to(torch.float64).unsqueeze(1)
    hit = torch.zeros(rows.shape[0], probes.shape[0], dtype=torch.bool, device=rows.device)
    for d in HANDOFF_DTYPES:
        have = probes.to(d).to(torch.float64).to(rows.device).unsqueeze(0)
        hit |= (have == want).all(-1)
    return hit


class _Probes:
    """Probes of output rows that can no longer be resumed (one row shape), oldest first:
    appended in O(1) per step, merged into one tensor, with its roundings to every handed-off
    dtype, only when a forward run looks."""

    __slots__ = ("pending", "rows", "rounded", "count")

    def __init__(self) -> None:
        self.pending: list[torch.Tensor] = []
        self.rows: torch.Tensor | None = None  # (M, P) float64, oldest first
        self.rounded: torch.Tensor | None = None  # (dtypes, M, P) float64
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, probe: torch.Tensor) -> None:
        self.pending.append(probe)
        self.count += probe.shape[0]

    def move_to(self, other: _Probes) -> None:
        """Append these rows, oldest first, to ``other`` (no copy, no merge)."""
        if self.rows is not None:
            other.add(self.rows)
        for probe in self.pending:
            other.add(probe)

    def keep_last(self, n: int) -> None:
        """Forget all but the newest ``n`` rows."""
        self._merge()
        if self.rows is not None and self.rows.shape[0] > n:
            self.rows, self.rounded = self.rows[self.rows.shape[0] - max(n, 0):], None
            self.count = self.rows.shape[0]

    def _merge(self) -> None:
        if not self.pending:
            return
        dev = self.pending[0].device if self.rows is None else self.rows.device
        if len({(q.dtype, q.device) for q in self.pending}) == 1:  # one cat, one cast
            new = torch.cat(self.pending).to(dev, torch.float64)
        else:
            new = torch.cat([q.to(dev, torch.float64) for q in self.pending])
        self.rows = new if self.rows is None else torch.cat([self.rows, new])
        self.rounded = None
        self.pending.clear()

    def seen(self, mine: torch.Tensor) -> list[bool]:
        """For each row probe of ``mine``: whether it is one of these rows, in any dtype."""
        self._merge()
        if self.rows is None or self.rows.shape[0] == 0:
            return [False] * mine.shape[0]
        if self.rounded is None:
            self.rounded = torch.stack([self.rows.to(d).to(torch.float64)
                                        for d in HANDOFF_DTYPES])
        want = mine.to(self.rows.device, torch.float64).unsqueeze(1)
        hit = torch.zeros(mine.shape[0], dtype=torch.bool, device=want.device)
        for have in self.rounded:  # one dtype at a time: (R, M, P) booleans at most
            hit |= (have.unsqueeze(0) == want).all(-1).any(-1)
        return hit.tolist()


def _same_row(out_row: torch.Tensor, x_row: torch.Tensor) -> bool:
    """``x_row`` is ``out_row``, or ``out_row`` cast to a handed-off dtype (and back)."""
    if out_row.shape != x_row.shape:
        return False
    for d in (x_row.dtype, *HANDOFF_DTYPES):
        if torch.equal(out_row.to(d).to(x_row.dtype), x_row):
            return True
    return False


class _Inversion:
    """One inversion run: the latent of the node it reached and the output it returned."""

    __slots__ = ("make_latent", "dtype", "shape", "probe", "latent", "earlier")

    def __init__(self, make_latent: Callable[[], Latent], dtype: torch.dtype,
                 shape: tuple[int, ...], probe: torch.Tensor) -> None:
        self.make_latent, self.dtype, self.shape, self.probe = make_latent, dtype, shape, probe
        self.latent: Latent | None = None
        #: probes of the outputs of this inversion's earlier nodes (seen, not resumable)
        self.earlier = _Probes()

    def get_latent(self) -> Latent:
        if self.latent is None:
            self.latent = self.make_latent()
        return self.latent

    def output(self, device: torch.device) -> torch.Tensor:
        """The tensor the inversion returned, recomputed from its top state as the
        scheduler computed it (``α x̄`` rounded to the output dtype)."""
        lat = self.get_latent()
        alpha = float(lat.grid.alphas[lat.nodes[-1]])
        out = torch.empty(self.shape, dtype=self.dtype, device=lat.states[-1].device)
        return torch.mul(lat.states[-1], alpha, out=out).to(device)


@dataclass
class HandoffMatch:
    """What :meth:`LatentHandoff.match` found for each row of a tensor.

    ``rows[i]`` is ``(latent, j)`` when row i is row j of the output of the inversion whose
    latest latent is ``latent`` (exactly, or after a cast), else ``None``; ``seen[i]`` says
    whether row i was ever an inversion's output (resumable or not)."""

    rows: list[tuple[Latent, int] | None]
    seen: list[bool] = field(default_factory=list)

    @property
    def any_seen(self) -> bool:
        """Whether some row is, or was, an inversion's output."""
        return any(self.seen)


class LatentHandoff:
    """The registry through which :class:`~lmsolvers.adapters.BELMInverseScheduler` hands
    full latents to :class:`~lmsolvers.adapters.BELMScheduler` (module docstring: what is
    kept, how rows are recognised, for how long).

    ``capacity`` counts inversions (each keeps the latent of the node it reached),
    ``remember`` output rows that can no longer be resumed but still warn.
    """

    def __init__(self, capacity: int = 4, remember: int = 4096) -> None:
        self.capacity = int(capacity)
        self.remember = int(remember)
        self._lock = threading.Lock()
        self._runs: OrderedDict[int, _Inversion] = OrderedDict()
        # probes of outputs that can no longer be resumed, per row shape, oldest first
        self._seen: dict[tuple[int, ...], _Probes] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._runs)

    def new_run(self) -> int:
        """A token for one inversion: its steps register under it, so each inversion holds
        one place in the registry, however many steps it takes."""
        return next(self._ids)

    def register(self, x_top: torch.Tensor, latent: Latent | Callable[[], Latent],
                 run: int | None = None) -> None:
        """Record ``x_top`` (an inversion step's output, model space) as the output whose
        full latent is ``latent`` (or a callable building it on demand).  Under ``run``
        (:meth:`new_run`) it replaces that inversion's previous node, which is remembered
        as seen; without, it is an inversion of its own."""
        make = latent if callable(latent) else (lambda: latent)
        probe = _probe(x_top)
        with self._lock:
            if run is not None and self._runs and next(reversed(self._runs)) == run:
                # the inversion went on (the common case, once per step: kept lean): its
                # previous node is only seen from now on
                inv = self._runs[run]
                inv.earlier.add(inv.probe)
                inv.make_latent, inv.latent, inv.probe = make, None, probe
                inv.dtype, inv.shape = x_top.dtype, tuple(x_top.shape)
                return
            entry = _Inversion(make, x_top.dtype, tuple(x_top.shape), probe)
            key = next(self._ids) if run is None else run
            old = self._runs.pop(key, None)
            if old is not None:
                entry.earlier = old.earlier
                entry.earlier.add(old.probe)
            self._runs[key] = entry
            while len(self._runs) > max(self.capacity, 0):
                self._forget(self._runs.popitem(last=False)[1])

    def _forget(self, inv: _Inversion) -> None:
        """Keep only the probes of an evicted inversion's outputs (lock held): the last
        ``remember`` rows per row shape."""
        bank = self._seen.setdefault(inv.shape[1:], _Probes())
        inv.earlier.move_to(bank)
        bank.add(inv.probe)
        if len(bank) > max(self.remember, 0):
            bank.keep_last(max(self.remember, 0))

    def match(self, x: torch.Tensor) -> HandoffMatch:
        """Which rows of ``x`` are (casts of) rows of a registered inversion's output, and
        which were ever an inversion's output (class docstring)."""
        if x.dim() == 0 or x.shape[0] == 0:
            return HandoffMatch([], [])
        row_shape = tuple(x.shape[1:])
        mine = _probe(x)
        rows: list[tuple[Latent, int] | None] = [None] * x.shape[0]
        with self._lock:
            bank = self._seen.get(row_shape)
            seen = bank.seen(mine) if bank is not None else [False] * x.shape[0]
            for rid, inv in reversed(self._runs.items()):  # the most recent first
                if inv.shape[1:] != row_shape:
                    continue
                if len(inv.earlier):
                    earlier = inv.earlier.seen(mine)
                    seen = [a or b for a, b in zip(seen, earlier, strict=True)]
                hits = _in_any_dtype(inv.probe, mine)
                if not bool(hits.any()):
                    continue
                out = inv.output(x.device)
                for i in range(x.shape[0]):
                    if rows[i] is not None:
                        continue
                    js = hits[i].nonzero().flatten().tolist()
                    if not js:
                        continue
                    seen[i] = True
                    j = next((j for j in js if _same_row(out[j], x[i])), None)
                    if j is not None:
                        rows[i] = (inv.get_latent(), j)
                        self._runs.move_to_end(rid)
        return HandoffMatch(rows, seen)

    def lookup(self, x: torch.Tensor) -> tuple[Latent | None, bool]:
        """``(latent, seen)``: the latent of ``x`` when every row of it is a row of one
        registered inversion's output (its rows gathered in ``x``'s order: a subset,
        reordering or repetition of the inverted batch, in any handed-off dtype), else
        ``None``; ``seen``: whether some row was ever an inversion's output."""
        m = self.match(x)
        if not m.rows or any(r is None for r in m.rows):
            return None, m.any_seen
        latents = {id(r[0]) for r in m.rows if r is not None}
        if len(latents) != 1:
            return None, True
        return gather_rows(m.rows), True  # type: ignore[arg-type]

    def clear(self) -> None:
        """Forget every registered latent and remembered output."""
        with self._lock:
            self._runs.clear()
            self._seen.clear()


def gather_rows(rows: list[tuple[Latent, int]]) -> Latent:
    """The latent whose row i is row ``rows[i][1]`` of latent ``rows[i][0]`` (the latents
    share their identity: grid, method, context and nodes, checked by the caller)."""
    first = rows[0][0]
    states = tuple(torch.stack([lat.states[s][j] for lat, j in rows])
                   for s in range(first.k))
    return first.with_states(states)
