"""Round-trip diagnostics: how far ``sample(invert(x̄_0))`` lands from ``x̄_0``, per dtype.

One row per (grid, dtype, float or bit-exact mode), beside the grid's backward
amplification (docs/design.md §4-§5), and a markdown table of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .bitexact import fixed_point_plan
from .engine import EpsFn
from .grid import Grid
from .integrate import invert, sample
from .markdown import markdown_table
from .method import LMMethod

__all__ = ["RoundTripRow", "roundtrip_report", "format_roundtrip_table"]


@dataclass(frozen=True)
class RoundTripRow:
    """One round trip: ``mode`` is ``"float"`` or ``"bitexact"``.

    ``max_abs``/``rms``: error of ``sample(invert(x̄_0))`` against ``x̄_0`` (float64);
    ``bitwise``: equal to the reference in every bit (``x̄_0`` for float, its fixed-point
    image for bit-exact); ``amplification``: the grid's backward parasitic-mode
    amplification; ``error``: the exception's class name if the round trip failed.
    """

    steps: int
    dtype: str
    mode: str
    max_abs: float
    rms: float
    bitwise: bool
    amplification: float
    error: str = ""


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def roundtrip_report(
    make_eps: Callable[[torch.dtype, Grid], EpsFn],
    method: LMMethod,
    grids: Iterable[Grid],
    x0: torch.Tensor,
    *,
    dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16, torch.float32,
                                     torch.float64),
    bitexact_dtypes: Sequence[torch.dtype] = (torch.float16, torch.float32),
) -> list[RoundTripRow]:
    """Round-trip errors of ``sample(invert(x̄_0))`` per grid and dtype, float and bit-exact.

    ``make_eps(dtype, grid)`` returns ε evaluated in that dtype (a model cast to it) on
    that grid.  The
    errors are measured in float64 against ``x̄_0`` cast to the dtype (so the input's
    own rounding is not counted).  Beside them each row carries the backward
    amplification of the grid (:func:`lmsolvers.stability.amplification`): round-off
    made during inversion grows by up to that factor, which is why some schedules lose
    digits in float and why bit-exact mode does not.
    """
    rows: list[RoundTripRow] = []
    for grid in grids:
        amp = method.amplification(grid, "backward")
        for mode, dts in (("float", dtypes), ("bitexact", bitexact_dtypes)):
            for dt in dts:
                eps = make_eps(dt, grid)
                x = x0.to(dt)
                bx = mode == "bitexact"
                try:
                    lat = invert(eps, grid, method, x, disable=True, bitexact=bx)
                    out = sample(eps, grid, method, lat, disable=True, bitexact=bx)
                except (ArithmeticError, ValueError) as exc:
                    rows.append(RoundTripRow(grid.N, _dtype_name(dt), mode, float("nan"),
                                             float("nan"), False, amp, type(exc).__name__))
                    continue
                ref = x
                if bx:
                    plan = fixed_point_plan(method, grid, dt)
                    ref = plan.dequantize(plan.quantize(x, 0), 0)
                err = out.double() - x.double()
                finite = bool(torch.isfinite(err).all())
                rows.append(RoundTripRow(
                    grid.N, _dtype_name(dt), mode,
                    float(err.abs().max()) if finite else float("inf"),
                    float(err.pow(2).mean().sqrt()) if finite else float("inf"),
                    bool(torch.equal(out, ref)), amp))
    return rows


def format_roundtrip_table(rows: Sequence[RoundTripRow]) -> str:
    """A markdown table: one line per step count, one column per (mode, dtype).

    Cells are the max abs round-trip error (``0`` when bitwise equal to the reference,
    ``ERR(name)`` when the run raised); the last column is the backward amplification.
    """
    cols: list[tuple[str, str]] = []
    for r in rows:
        if (r.mode, r.dtype) not in cols:
            cols.append((r.mode, r.dtype))
    steps = sorted({r.steps for r in rows})
    head = ["steps"] + [dt if m == "float" else f"bit-exact {dt}" for m, dt in cols] + \
        ["amplification"]
    lines: list[list[str]] = []
    for n in steps:
        cells = [str(n)]
        amp = float("nan")
        for m, dt in cols:
            hit = [r for r in rows if r.steps == n and r.mode == m and r.dtype == dt]
            if not hit:
                cells.append("")
                continue
            r = hit[0]
            amp = r.amplification
            if r.error:
                cells.append(f"ERR({r.error})")
            elif r.bitwise and m == "bitexact":
                cells.append(f"bitwise ({r.max_abs:.1e})")
            else:
                cells.append(f"{r.max_abs:.1e}")
        cells.append(f"{amp:.2e}")
        lines.append(cells)
    return markdown_table(head, lines)
