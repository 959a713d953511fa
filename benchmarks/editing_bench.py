"""An offline editing benchmark: change the class of held-out digits by inversion.

For a held-out digit ``x_0`` of class a (the test split of :mod:`benchmarks.digits_data`)
and a target class b ≠ a (a seeded draw per digit, so the pairs cover the 90 ordered pairs
about evenly), invert ``x_0`` under class a and regenerate under class b with the trained
class-conditional DDPM (``models/digits_cond``; :mod:`lmsolvers.adapters.guidance`).

Methods (inversion → regeneration; all on an N-step grid, DDIM-type steps unless exact):

* exact (``lmsolvers.adapters.edit_latents``, unchanged): O-BELM, the library default,
  EDICT(0.93), BDIA(1) — inversion under the source class at the edit's guidance;
* exact and stochastic: the default configuration's stochastic form at η = 0.5
  (``eta=0.5``, one noise seed for inversion and regeneration; docs/design.md §13);
* edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024;
  :mod:`benchmarks.edit_friendly`): independent noisy x̄_m, N stored noise maps, DDPM
  regeneration under the target with the same maps (exact by construction, O(N) memory);
* DDIM inversion under the guided source ε, DDIM regeneration;
* negative-prompt inversion (Miyake et al. 2023): DDIM inversion under the conditional ε,
  regeneration with the source class as the negative embedding;
* null-text inversion (Mokady et al. 2023; :func:`benchmarks.guidance_roundtrip.
  nulltext_inversion`): the per-step optimised null embeddings stay the negative embeddings
  of the regeneration;
* Direct-Inversion style (Ju et al. 2024, "PnP Inversion"): a source branch that follows the
  guidance-1 inversion trajectory x*_m exactly, and a target branch that receives the same
  per-step correction.  In ε form (each ε enters a linear multistep step linearly):
  ``ε'_m(x) = ε_b,w(x, σ̄_m) + [ε*_m − ε_a,w(x*_m, σ̄_m)]``, where ε*_m is the ε with which the
  method's sampling step maps the inverted states to the next inverted state (O-BELM: the
  conditional ε the exact inversion evaluated at node m; DDIM: the ε it evaluated at node
  m − 1, i.e. ``(x*_m − x*_{m−1})/h_m``).  With the source class in place of b this
  reproduces ``x_0`` to round-off at every w.  Two pivots: DDIM inversion ("DI + DDIM") and
  O-BELM's exact inversion ("DI + O-BELM").  With an exact inversion at the edit's own
  guidance the bracket vanishes identically: there, DI *is* the plain exact edit.

Knobs (the library's, :func:`~lmsolvers.adapters.edit_latents`): ``frozen_fraction`` f (the
first ⌊f N⌉ sampling steps keep the source class: nodes m ≥ N − n_f + 1, the same rule for
every method here: :func:`~lmsolvers.adapters.frozen_threshold`) swept at guidance
``--w-curve``, and the guidance scale w swept at f = 0.

Metrics, per edit (images in [−1, 1]):

* **success**: the classifier (``models/digits_classifier``) says b;
* **background ink**: RMS change in the pixels that neither the source digit nor class b uses
  (source pixel ≤ −0.75, i.e. intensity ≤ 2/16, and the class-b mean image of the train split
  ≤ −0.75): ink there is damage no edit a → b needs;
* **style-feature distance**: ``‖P (f(x̂) − f(x_0))‖ / ‖P f(x_0)‖`` with f the classifier's
  64-d penultimate features and P the projector onto the null space of its 10 × 64 output
  layer — the part of the features the class logits do not see (stroke width, slant, size);
* **SSIM** to the source (3 × 3 windows, data range 2, the standard constants): SSIM's
  structure term compares local normalised patterns, and on 8 × 8 digits a 3 × 3 window is
  about one stroke wide, so it scores whether strokes stay where and as thick as they were.

Success vs preservation (SSIM) per method: ``editing_tradeoff.png``; table:
``editing_bench.md`` (+ ``.json``).  Medians/means with percentile-bootstrap 95 % intervals.

Usage::

    .venv/bin/python -m benchmarks.editing_bench           # ~20 min on one thread
    .venv/bin/python -m benchmarks.editing_bench --quick   # seconds (the test's run)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lmsolvers.adapters import (
    ClassEmbeddingUNet,
    class_guided_eps,
    class_sampler,
    edit_latents,
    frozen_threshold,
)

import lmsolvers

from .digits_classifier import DEFAULT_CLASSIFIER_PATH, load_classifier
from .digits_data import load_digits_split, save_image_grid
from .edit_friendly import ef_invert, ef_sample
from .guidance_roundtrip import (
    EXACT,
    MODEL,
    RESULTS,
    EvalCounter,
    load_model,
    method_arg,
    nulltext_inversion,
    per_node_eps,
    pivot_inversion,
)
from .samplers import bootstrap_ci, resample_index
from .tables import markdown_table

BACKGROUND = -0.75  # pixel value of intensity 2/16
FROZEN = (0.0, 0.4, 0.7, 0.85, 0.95)
GUIDANCE = (1.0, 3.0, 5.0, 7.5)
STOCHASTIC = "ours, stochastic (η = 0.5)"
EDIT_FRIENDLY = "edit-friendly DDPM"
METHODS = (*EXACT, STOCHASTIC, "DDIM inversion", "negative-prompt inv.", "null-text inv.",
           "DI + DDIM", "DI + O-BELM", EDIT_FRIENDLY)
#: η and noise seed of the stochastic exact edit, and the seed of edit-friendly's x̄_m draws
STOCHASTIC_ETA, NOISE_SEED = 0.5, 11


# ---------------------------------------------------------------------- pairs
def edit_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` held-out digits (seeded choice), their classes a and seeded targets b ≠ a."""
    x, y = load_digits_split("test")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=gen)[:n]
    a = y[idx]
    b = (a + torch.randint(1, 10, a.shape, generator=gen)) % 10  # uniform over b ≠ a
    return x[idx], a, b


def class_means() -> torch.Tensor:
    """Mean train image of each class, (10, 1, 8, 8)."""
    x, y = load_digits_split("train")
    return torch.stack([x[y == c].mean(0) for c in range(10)])


# -------------------------------------------------------------------- metrics
def ssim3(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Mean SSIM over 3 × 3 windows (valid positions), per image; data range 2 ([−1, 1])."""
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2
    x, y = x.double(), y.double()

    def mean(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(t, 3, stride=1)

    mx, my = mean(x), mean(y)
    vx, vy = mean(x * x) - mx**2, mean(y * y) - my**2
    cov = mean(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).numpy()


class Metrics:
    """The edit metrics of the module docstring for sources ``x0`` and targets ``b``."""

    def __init__(self, clf: torch.nn.Module, x0: torch.Tensor, b: torch.Tensor) -> None:
        self.clf, self.x0, self.b = clf, x0.float(), b
        w = clf.head[-1].weight.double()  # (10, 64)
        self.proj = torch.eye(w.shape[1], dtype=torch.float64) - w.T @ torch.linalg.solve(
            w @ w.T, w)
        self.mask = (self.x0 <= BACKGROUND) & (class_means()[b] <= BACKGROUND)
        self.f0 = self._style(self.x0)

    def _style(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.clf.features(x.float()).double() @ self.proj

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        x = x.float()
        with torch.no_grad():
            pred = self.clf(x).argmax(1)
        d2 = ((x - self.x0) ** 2 * self.mask).flatten(1).sum(1)
        bg = torch.sqrt(d2 / self.mask.flatten(1).sum(1).clamp(min=1)).double()
        feat = (self._style(x) - self.f0).norm(dim=1) / self.f0.norm(dim=1)
        return {"success": (pred == self.b).double().numpy(), "background": bg.numpy(),
                "style": feat.numpy(), "ssim": ssim3(x, self.x0)}


# ------------------------------------------------------------------ the edits
class Editor:
    """Runs every method's edit of ``x0`` (class a → b), caching inversions per guidance."""

    def __init__(self, m: ClassEmbeddingUNet, scheduler: Any, x0: torch.Tensor,
                 a: torch.Tensor, b: torch.Tensor, steps: int, nt_iters: int, nt_lr: float,
                 counter: EvalCounter) -> None:
        self.m, self.scheduler, self.x0, self.a, self.b = m, scheduler, x0.double(), a, b
        self.counter = counter
        #: inversion cost per cache key: (forward evaluations per edit, seconds per edit)
        self.costs: dict[Any, tuple[float, float]] = {}
        self.steps, self.nt_iters, self.nt_lr = steps, nt_iters, nt_lr
        self.src_e, self.tgt_e = m.class_embeds(a), m.class_embeds(b)
        self.null_e = m.null_embeds(x0.shape[0])
        self.cache: dict[Any, Any] = {}
        self.grid = class_sampler(m, scheduler, steps, a, 1.0, method=lmsolvers.ddim()).grid

    def cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        """``fn()`` once per key (an inversion), its cost recorded in :attr:`costs`."""
        if key not in self.cache:
            rows0, t = self.counter.rows, time.perf_counter()
            self.cache[key] = fn()
            n = self.x0.shape[0]
            self.costs[key] = ((self.counter.rows - rows0) / n, (time.perf_counter() - t) / n)
        return self.cache[key]

    def inversion_key(self, name: str, w: float) -> Any:
        """The cache key of the inversion a method's edit at guidance ``w`` uses."""
        if name in EXACT or name in (STOCHASTIC, EDIT_FRIENDLY):
            return (name, w)
        if name == "null-text inv." and w > 1.0:
            return ("nulltext", w)
        if name in ("DDIM inversion", "null-text inv."):
            return ("ddim", w)
        return ("pivot", "obelm" if name == "DI + O-BELM" else "ddim")

    # exact methods and DDIM inversion through edit_latents
    def _edit_latents(self, method: Any, w: float, f: float, latent: Any = None,
                      negative: torch.Tensor | None = None) -> torch.Tensor:
        res = edit_latents(self.m, self.scheduler, self.x0, self.src_e, self.tgt_e,
                           self.null_e if negative is None else negative,
                           num_inference_steps=self.steps, method=method, guidance_scale=w,
                           frozen_fraction=f, latent=latent, disable_progress=True)
        return res.latents, res.latent

    def exact(self, name: str, w: float, f: float) -> torch.Tensor:
        method = method_arg(EXACT[name])
        # the source sampler edit_latents builds (same grid, method and settings)
        lat = self.cached((name, w), lambda: class_sampler(
            self.m, self.scheduler, self.steps, self.a, w, method=method,
            disable_progress=True).invert(self.x0))
        out, _ = self._edit_latents(method, w, f, lat)
        return out

    def stochastic(self, w: float, f: float) -> torch.Tensor:
        """The default configuration's stochastic form (η = STOCHASTIC_ETA), inverted under
        the source class with the noise of NOISE_SEED and regenerated with the same noise."""
        lat = self.cached((STOCHASTIC, w), lambda: class_sampler(
            self.m, self.scheduler, self.steps, self.a, w, eta=STOCHASTIC_ETA,
            disable_progress=True).invert(self.x0, seed=NOISE_SEED))
        res = edit_latents(self.m, self.scheduler, self.x0, self.src_e, self.tgt_e, self.null_e,
                           num_inference_steps=self.steps, guidance_scale=w, frozen_fraction=f,
                           latent=lat, disable_progress=True, eta=STOCHASTIC_ETA,
                           seed=NOISE_SEED)
        return res.latents

    def edit_friendly(self, w: float, f: float) -> torch.Tensor:
        """Edit-friendly DDPM inversion (benchmarks.edit_friendly) under the source class at
        guidance w, regenerated with its N noise maps under the target (the first ⌊fN⌉ steps
        keep the source class: the paper's skip)."""
        src = class_guided_eps(self.m, self.scheduler, None, self.a, w, grid=self.grid)
        tgt = class_guided_eps(self.m, self.scheduler, None, self.b, w, grid=self.grid)
        lat = self.cached((EDIT_FRIENDLY, w), lambda: ef_invert(src, self.grid, self._x0bar(),
                                                                NOISE_SEED))
        thr = frozen_threshold(self.grid, f)

        def eps(x: torch.Tensor, s: float) -> torch.Tensor:
            return src(x, s) if s >= thr else tgt(x, s)

        return ef_sample(eps, self.grid, lat) * float(self.grid.alphas[0])

    def _x0bar(self) -> torch.Tensor:
        return self.x0 / float(self.grid.alphas[0])

    def ddim(self, w: float, f: float) -> torch.Tensor:
        s = class_sampler(self.m, self.scheduler, self.steps, self.a, w,
                          method=lmsolvers.ddim(), disable_progress=True)
        lat = self.cached(("ddim", w), lambda: lmsolvers.ddim_inversion(
            s.eps, s.grid, self._x0bar(), disable=True, context=s.context))
        out, _ = self._edit_latents(lmsolvers.ddim(), w, f, lat)
        return out

    def _pivot(self, kind: str) -> tuple[Any, dict, dict]:
        """Guidance-1 inversion: latent, trajectory and ε*_m per node (module docstring)."""
        return self.cached(("pivot", kind), lambda: self._invert_pivot(kind))

    def _invert_pivot(self, kind: str) -> tuple[Any, dict, dict]:
        if kind == "ddim":
            lat, traj, used = pivot_inversion(self.m, self.scheduler, self.grid, self._x0bar(),
                                              self.a)
            star = {i: used[i - 1] for i in range(1, self.grid.N + 1)}
        else:
            e1 = class_guided_eps(self.m, self.scheduler, None, self.a, 1.0, grid=self.grid)
            node = {float(s): i for i, s in enumerate(self.grid.sigma_bar)}
            star = {}

            def eps(x: torch.Tensor, s: float) -> torch.Tensor:
                out = e1(x, s)
                star[node[float(s)]] = out
                return out

            traj = {0: self._x0bar()}
            lat = lmsolvers.invert(eps, self.grid, lmsolvers.obelm(), self._x0bar(),
                                   disable=True, context=e1.context,
                                   callback=lambda d: traj.__setitem__(d["node"], d["x"]))
        return lat, traj, star

    def npi(self, w: float, f: float) -> torch.Tensor:
        lat, _, _ = self._pivot("ddim")
        s = class_sampler(self.m, self.scheduler, self.steps, self.a, w, method=lmsolvers.ddim(),
                          negative_class_labels=self.a, disable_progress=True)
        # the NPI recipe samples the guidance-1 latent under other settings on purpose
        out, _ = self._edit_latents(lmsolvers.ddim(), w, f, lat.with_context(s.context),
                                    negative=self.src_e)
        return out

    def nulltext(self, w: float, f: float) -> torch.Tensor:
        if w <= 1.0:  # nothing to optimise: null-text is DDIM inversion at guidance 1
            return self.ddim(w, f)
        nt = self.cached(("nulltext", w), lambda: nulltext_inversion(
            self.m, self.scheduler, self.grid, self._x0bar(), self.a, w, iters=self.nt_iters,
            lr=self.nt_lr))
        src = per_node_eps(self.m, self.scheduler, self.grid, self.a, w, nt.embeds)
        tgt = per_node_eps(self.m, self.scheduler, self.grid, self.b, w, nt.embeds)
        thr = frozen_threshold(self.grid, f)

        def eps(x: torch.Tensor, s: float) -> torch.Tensor:
            return src(x, s) if s >= thr else tgt(x, s)

        xbar = lmsolvers.sample(eps, self.grid, lmsolvers.ddim(), nt.latent.x_N, disable=True)
        return xbar * float(self.grid.alphas[0])

    def direct(self, kind: str, w: float, f: float) -> torch.Tensor:
        lat, traj, star = self._pivot(kind)
        method = lmsolvers.ddim() if kind == "ddim" else lmsolvers.obelm()
        src = class_guided_eps(self.m, self.scheduler, None, self.a, w, grid=self.grid)
        tgt = class_guided_eps(self.m, self.scheduler, None, self.b, w, grid=self.grid)
        node = {float(s): i for i, s in enumerate(self.grid.sigma_bar)}
        thr = frozen_threshold(self.grid, f)

        def eps(x: torch.Tensor, s: float) -> torch.Tensor:
            i = node[float(s)]
            branch = src if s >= thr else tgt
            # the source branch's own ε at the inverted state is replaced by ε*_m
            return branch(x, s) + (star[i] - src(traj[i], s))

        xbar = lmsolvers.sample(eps, self.grid, method, lat.with_context(None), disable=True)
        return xbar * float(self.grid.alphas[0])

    def run(self, name: str, w: float, f: float) -> torch.Tensor:
        """The edit of ``name`` at guidance ``w`` and frozen fraction ``f``."""
        if name in EXACT:
            return self.exact(name, w, f)
        return {STOCHASTIC: lambda: self.stochastic(w, f),
                EDIT_FRIENDLY: lambda: self.edit_friendly(w, f),
                "DDIM inversion": lambda: self.ddim(w, f),
                "negative-prompt inv.": lambda: self.npi(w, f),
                "null-text inv.": lambda: self.nulltext(w, f),
                "DI + DDIM": lambda: self.direct("ddim", w, f),
                "DI + O-BELM": lambda: self.direct("obelm", w, f)}[name]()


def reference_rows(clf: torch.nn.Module, n: int, seed: int, reps: int) -> list[dict]:
    """The scale of the metrics: the same metrics for a *real* held-out digit of class b
    (another image, no preservation at all: what a perfect edit that ignored the source would
    score) and of class a (the spread within a class)."""
    x0, a, b = edit_pairs(n, seed)
    xt, yt = load_digits_split("test")
    gen = torch.Generator().manual_seed(seed + 1000)
    idx = resample_index(n, reps, seed)
    rows = []
    for name, cls in (("real digit of class b (reference)", b),
                      ("real digit of class a (reference)", a)):
        pick = []
        for i, c in enumerate(cls.tolist()):
            pool = [j for j in torch.nonzero(yt == c).flatten().tolist()
                    if not torch.equal(xt[j], x0[i])]
            pick.append(xt[pool[int(torch.randint(len(pool), (1,), generator=gen))]])
        met = Metrics(clf, x0, cls)(torch.stack(pick))
        rows.append(dict(method=name, guidance=float("nan"), frozen=float("nan"),
                         success=summarise(met["success"], idx, _mean),
                         ssim=summarise(met["ssim"], idx, _median),
                         background=summarise(met["background"], idx, _median),
                         style=summarise(met["style"], idx, _median)))
    return rows


# ---------------------------------------------------------------------- driver
def summarise(vals: np.ndarray, idx: np.ndarray, stat: Callable[[np.ndarray], np.ndarray]
              ) -> dict[str, float]:
    """``stat`` of ``vals`` with its bootstrap interval."""
    lo, hi = bootstrap_ci(vals, stat, idx)
    return {"value": float(stat(vals[None])[0]), "lo": lo, "hi": hi}


def _mean(a: np.ndarray) -> np.ndarray:
    return a.mean(-1)


def _median(a: np.ndarray) -> np.ndarray:
    return np.median(a, -1)


def settings(w_curve: float, frozen: Sequence[float], guidance: Sequence[float]
             ) -> list[tuple[float, float]]:
    """The (w, f) cells: the frozen-fraction curve at ``w_curve`` and the guidance sweep at
    f = 0 (shared cell once)."""
    cells = [(w_curve, f) for f in frozen] + [(w, 0.0) for w in guidance]
    return list(dict.fromkeys(cells))


def plot(rows: list[dict], path: Path, w_curve: float, refs: Sequence[dict] = ()) -> None:
    """Success vs SSIM per method: the frozen-fraction curve (left) and the guidance sweep;
    ``refs`` (:func:`reference_rows`) as black stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cmap = plt.get_cmap("tab10")
    for k, meth in enumerate(methods):
        style = "-" if meth in EXACT or meth.startswith("DI") else "--"
        for ax, sel, lab in ((axes[0], lambda r: r["guidance"] == w_curve, "frozen"),
                             (axes[1], lambda r: r["frozen"] == 0.0, "guidance")):
            pts = sorted((r for r in rows if r["method"] == meth and sel(r)),
                         key=lambda r: r[lab])
            if not pts:
                continue
            xs = [r["ssim"]["value"] for r in pts]
            ys = [r["success"]["value"] for r in pts]
            ax.plot(xs, ys, style, marker="o", color=cmap(k % 10), label=meth)
            for r, xv, yv in zip(pts, xs, ys, strict=True):
                ax.annotate(f"{r[lab]:g}", (xv, yv), fontsize=6, xytext=(2, 2),
                            textcoords="offset points")
    for ax in axes:
        for r, mk in zip(refs, ("*", "P"), strict=False):
            ax.plot([r["ssim"]["value"]], [r["success"]["value"]], mk, color="black",
                    markersize=10, label=r["method"])
    axes[0].set_title(f"frozen fraction f (labels) at guidance {w_curve:g}")
    axes[1].set_title("guidance w (labels) at f = 0")
    for ax in axes:
        ax.set_xlabel("preservation: SSIM to the source (3×3 windows)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("edit success (classifier says the target class)")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle("Editing digits a → b by inversion (class-conditional DDPM)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_markdown(rows: list[dict], config: dict) -> str:
    """The table: one row per (method, w, f)."""
    head = ["method", "w", "f", "success [95% CI]", "SSIM", "background ink (RMS)",
            "style-feature dist.", "NFE inv. + edit", "ms inv. + edit"]

    def ci(d: dict, fmt: str = ".2f") -> str:
        return f"{d['value']:{fmt}} [{d['lo']:{fmt}}, {d['hi']:{fmt}}]"

    body = [[r["method"], f"{r['guidance']:g}", f"{r['frozen']:g}", ci(r["success"]),
             ci(r["ssim"]), ci(r["background"], ".3f"), ci(r["style"]),
             f"{r['nfe_inversion']:.0f} + {r['nfe_edit']:.0f}",
             f"{1e3 * r['seconds_inversion']:.0f} + {1e3 * r['seconds_edit']:.0f}"]
            for r in rows]
    refs = config.get("references", [])
    ref_body = [[r["method"], "—", "—", ci(r["success"]), ci(r["ssim"]),
                 ci(r["background"], ".3f"), ci(r["style"]), "—", "—"] for r in refs]
    return (
        "# Editing benchmark: digit class a → b by inversion (class-conditional DDPM)\n\n"
        f"{config['n']} held-out digits, each with a seeded target class b ≠ a; N = "
        f"{config['steps']} steps; null-text: {config['nt_iters']} Adam steps per node.  "
        "success: mean (classifier says b); SSIM (3×3 windows, to the source), background "
        "ink (RMS change where neither the source nor class b's mean image has ink) and "
        "style-feature distance (classifier features the logits do not see, relative): "
        "medians; all with percentile-bootstrap 95 % intervals.  NFE: forward evaluations per "
        "edit, inversion + regeneration (one inversion serves every cell of a method at "
        "one guidance; null-text's counts its optimisation's forwards, each also with a "
        "backward pass).  f: frozen fraction (edit_latents' knob); w: guidance of "
        "inversion and regeneration (DI, negative-prompt and null-text invert at w = 1).\n\n"
        + markdown_table(head, body)
        + "\n\n## The scale: the same metrics for another real digit (no editing at all)\n\n"
        "A different held-out digit of class b in place of the edit scores what an edit that "
        "ignores the source would; one of class a, the spread within a class.\n\n"
        + (markdown_table(head, ref_body) if ref_body else "(not computed)") + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER_PATH)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="a few edits, few steps (tests)")
    p.add_argument("--n", type=int, default=96, help="edits (held-out digits)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--w-curve", type=float, default=3.0, help="guidance of the f curve")
    p.add_argument("--nt-iters", type=int, default=10)
    p.add_argument("--nt-lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--from-json", type=Path, default=None,
                   help="re-render table and plot from a record (adds the reference rows)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.nt_iters, args.reps = 4, 3, 1, 200
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run every method over the knob settings, write table, JSON, plot and pictures."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    clf = load_classifier(args.classifier)
    if args.from_json is not None:
        record = json.loads(args.from_json.read_text())
        c = record["config"]
        c["references"] = reference_rows(clf, c["n"], c["seed"], c["reps"])
        (args.out / "editing_bench.md").write_text(to_markdown(record["rows"], c))
        (args.out / "editing_bench.json").write_text(json.dumps(record, indent=1) + "\n")
        plot(record["rows"], args.out / "editing_tradeoff.png", c["w_curve"], c["references"])
        return record
    m, scheduler = load_model(args.model)
    x0, a, b = edit_pairs(args.n, args.seed)
    metrics = Metrics(clf, x0, b)
    counter = EvalCounter(m)
    editor = Editor(m, scheduler, x0, a, b, args.steps, args.nt_iters, args.nt_lr, counter)
    frozen = (0.0, 0.5) if args.quick else FROZEN
    guidance = (1.0, 3.0) if args.quick else GUIDANCE
    cells = settings(args.w_curve, frozen, guidance)
    idx = resample_index(args.n, args.reps, args.seed)
    config = dict(n=args.n, steps=args.steps, w_curve=args.w_curve, frozen=list(frozen),
                  guidance=list(guidance), nt_iters=args.nt_iters, nt_lr=args.nt_lr,
                  seed=args.seed, reps=args.reps, quick=args.quick,
                  pairs=[[int(p), int(q)] for p, q in zip(a, b, strict=True)])
    rows: list[dict] = []
    pictures: dict[str, torch.Tensor] = {}
    t0 = time.time()
    for name in METHODS:
        for w, f in cells:
            key = editor.inversion_key(name, w)
            fresh = key not in editor.cache
            counter.rows = 0
            t = time.perf_counter()
            out = editor.run(name, w, f)
            nfe, sec = counter.rows / args.n, (time.perf_counter() - t) / args.n
            inv_nfe, inv_sec = editor.costs[key]
            if fresh:  # this call paid the inversion: keep the regeneration apart
                nfe, sec = nfe - inv_nfe, sec - inv_sec
            met = metrics(out)
            row = dict(method=name, guidance=w, frozen=f, nfe_edit=nfe, seconds_edit=sec,
                       nfe_inversion=inv_nfe, seconds_inversion=inv_sec,
                       success=summarise(met["success"], idx, _mean),
                       ssim=summarise(met["ssim"], idx, _median),
                       background=summarise(met["background"], idx, _median),
                       style=summarise(met["style"], idx, _median))
            rows.append(row)
            if f == 0.0 and w == args.w_curve:
                pictures[name] = out[:8].float()
            print(f"[{time.time() - t0:6.0f}s] {name} w={w:g} f={f:g}: success "
                  f"{row['success']['value']:.2f} ssim {row['ssim']['value']:.2f} "
                  f"nfe {inv_nfe:.0f}+{nfe:.0f}", flush=True)
    config["references"] = reference_rows(clf, args.n, args.seed, args.reps)
    record = {"config": config, "rows": rows}
    (args.out / "editing_bench.md").write_text(to_markdown(rows, config))
    (args.out / "editing_bench.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(rows, args.out / "editing_tradeoff.png", args.w_curve, config["references"])
    grid_imgs = torch.cat([x0[:8].float(), *pictures.values()])
    save_image_grid(grid_imgs, args.out / "editing_examples.png", ncols=8,
                    title="row 1: sources; then one row per method: " + ", ".join(pictures)
                    + f" (w = {args.w_curve:g}, f = 0)")
    return record


if __name__ == "__main__":
    main()
