"""Memory and time of gradients through sampling: ``grad="reversible"`` vs ``grad="full"``.

For the digits DDPM (``models/digits_ddpm``, batch 8, gradient w.r.t. the noise ``x_T``)
and a tiny text-conditioned UNet (``lmsolvers.adapters.tiny``, batch 2 with guidance 3,
gradient w.r.t. the noise and the prompt embeddings), O-BELM on the scheduler's grid, N = 10
… 1000 steps.  Each (model, mode, N) runs in a fresh process (one thread) that reports

* peak memory: the rise of the peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over the resident size before the run, for the forward and
  backward pass together;
* graph memory: the distinct storages autograd saved for backward during the forward pass
  (counted with ``saved_tensors_hooks``, each storage once; exact and deterministic);
* time: forward + backward, median of ``--repeats`` runs.

A second table gives the gradient's relative difference reversible vs full (float64
state; the model in float32) per method.  Output: ``benchmarks/results/reversal_memory.md``
(+ ``.json``) and ``reversal_memory.png``.

Run: ``.venv/bin/python -m benchmarks.reversal_memory`` (about 10 minutes on 2 cores;
``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .tables import markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
STEPS = (10, 20, 50, 100, 200, 500, 1000)
#: full autograd is skipped where its graph would exceed this (bytes, extrapolated)
FULL_GRAPH_LIMIT = 6e9


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class SavedGraph:
    """Context manager: ``.bytes`` of the distinct storages autograd saves for backward
    inside it (``saved_tensors_hooks``).  Each storage counts once: a layer saves its weight
    at every step, and that is the same memory."""

    def __enter__(self) -> SavedGraph:
        self.bytes, self._seen = 0, set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in self._seen:
            self._seen.add(st.data_ptr())
            self.bytes += st.nbytes()
        return t


def _setup(model: str, n: int, state_dtype: torch.dtype, method: str = "obelm"):
    """(sampler, noise, extra leaves to differentiate, call kwargs)."""
    from lmsolvers.adapters import DiffusionSampler

    torch.manual_seed(0)
    if model == "digits":
        from diffusers import DDPMScheduler, UNet2DModel

        path = REPO_ROOT / "models" / "digits_ddpm"
        unet = UNet2DModel.from_pretrained(path).eval().requires_grad_(False)
        sched = DDPMScheduler.from_pretrained(path)
        sampler = DiffusionSampler(unet, sched, n, method=method, state_dtype=state_dtype,
                                   disable_progress=True)
        x = torch.randn(8, 1, 8, 8)
        return sampler, x, [], {}
    from diffusers import DDIMScheduler
    from lmsolvers.adapters.tiny import (
        SD_SCHEDULER_CONFIG,
        tiny_conditional_unet,
        tiny_prompt_embeds,
    )

    unet = tiny_conditional_unet().eval().requires_grad_(False)
    # steps_offset 0: SD's offset 1 puts the top timestep of a 1000-step 'leading' grid at
    # t = 1000, outside the table (DDIMScheduler fails there too)
    sched = DDIMScheduler(**dict(SD_SCHEDULER_CONFIG, steps_offset=0))
    emb = tiny_prompt_embeds(1, batch=2).requires_grad_()
    neg = tiny_prompt_embeds(2, batch=2)
    sampler = DiffusionSampler(unet, sched, n, method=method, prompt_embeds=emb,
                               negative_prompt_embeds=neg, guidance_scale=3.0,
                               state_dtype=state_dtype, disable_progress=True)
    x = torch.randn(2, 4, 8, 8)
    return sampler, x, [emb], {}


def _loss_grads(sampler, x, leaves, mode: str):
    xr = x.clone().requires_grad_()
    out = sampler.sample(xr, grad=mode)
    loss = (out.double() ** 2).mean()
    return torch.autograd.grad(loss, [xr] + leaves)


def one(model: str, mode: str, n: int, repeats: int) -> dict:
    """One measurement, in this process (run by ``--one`` in a fresh process)."""
    torch.set_num_threads(1)
    # warm up on a 5-step run (kernels, allocator pools), so every N starts from one state
    warm, x, leaves, _ = _setup(model, 5, torch.float64)
    _loss_grads(warm, x, leaves, mode)
    sampler, x, leaves, _ = _setup(model, n, torch.float64)
    base = _kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    xr = x.clone().requires_grad_()
    with SavedGraph() as saved:
        out = sampler.sample(xr, grad=mode)
    graph_bytes = saved.bytes
    loss = (out.double() ** 2).mean()
    torch.autograd.grad(loss, [xr] + leaves)
    first = time.perf_counter() - t0
    peak = _kib("VmHWM") - base
    del out, loss
    times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        _loss_grads(sampler, x, leaves, mode)
        times.append(time.perf_counter() - t0)
    return {"model": model, "mode": mode, "N": n, "peak_mib": peak / 1024,
            "graph_mib": graph_bytes / 2**20, "seconds": statistics.median(times),
            "times": times}


def _run_child(model: str, mode: str, n: int, repeats: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.reversal_memory", "--one", model, mode, str(n),
         "--repeats", str(repeats)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{model} {mode} N={n} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def accuracy(model: str, n: int, methods: list[str]) -> list[dict]:
    """Relative difference of the reversible gradient from full autograd, per method."""
    torch.set_num_threads(1)
    rows = []
    for state in (torch.float64, torch.float32):
        for name in methods:
            sampler, x, leaves, _ = _setup(model, n, state, name)
            try:
                g_rev = _loss_grads(sampler, x, leaves, "reversible")
            except Exception as err:  # a refusal (ExactnessError) is a result here
                rows.append({"model": model, "method": name, "state": str(state),
                             "error": f"{type(err).__name__}: {str(err)[:90]}"})
                continue
            g_full = _loss_grads(sampler, x, leaves, "full")
            rel = [float((a - b).double().norm() / b.double().norm())
                   for a, b in zip(g_rev, g_full, strict=True)]
            rows.append({"model": model, "method": name, "state": str(state),
                         "rel_noise": rel[0], "rel_embeds": rel[1] if len(rel) > 1 else None,
                         "amplification": sampler.amplification})
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, model in zip(axes, ("digits", "tiny-sd"), strict=True):
        for mode, style in (("full", "o-"), ("reversible", "s-")):
            pts = sorted((r["N"], r["peak_mib"]) for r in rows
                         if r["model"] == model and r["mode"] == mode)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"grad={mode!r}")
        ax.set(xscale="log", yscale="log", xlabel="sampling steps N",
               ylabel="peak memory of the run (MiB)", title=model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    """Measure, print and write the tables and the plot; return the markdown."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "MODE", "N"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N = 5, 10 only; no files")
    ap.add_argument("--out", type=Path, default=RESULTS / "reversal_memory.md")
    args = ap.parse_args(argv)
    if args.one:
        model, mode, n = args.one
        print(json.dumps(one(model, mode, int(n), args.repeats)))
        return ""
    steps = (5, 10) if args.quick else STEPS
    repeats = 1 if args.quick else args.repeats
    rows = []
    for model in ("digits", "tiny-sd"):
        per_step = None
        for n in steps:
            for mode in ("reversible", "full"):
                if mode == "full" and per_step is not None and per_step * n > FULL_GRAPH_LIMIT:
                    continue
                r = _run_child(model, mode, n, repeats)
                rows.append(r)
                print(f"{model:8s} {mode:10s} N={n:5d} peak {r['peak_mib']:9.1f} MiB  graph "
                      f"{r['graph_mib']:9.1f} MiB  {r['seconds']:.2f} s", flush=True)
                if mode == "full":
                    per_step = r["graph_mib"] * 2**20 / n
    table = []
    for model in ("digits", "tiny-sd"):
        for n in steps:
            got = {r["mode"]: r for r in rows if r["model"] == model and r["N"] == n}
            rev, full = got.get("reversible"), got.get("full")
            table.append([model, n, f"{rev['peak_mib']:.1f}", f"{rev['graph_mib']:.2f}",
                          f"{full['peak_mib']:.1f}" if full else "— (skipped)",
                          f"{full['graph_mib']:.1f}" if full else "—",
                          f"{rev['seconds']:.2f}", f"{full['seconds']:.2f}" if full else "—",
                          f"{rev['seconds'] / full['seconds']:.2f}" if full else "—"])
    md = ["# Gradients through sampling: memory and time (O-BELM, float64 state, 1 thread)",
          "", "`python -m benchmarks.reversal_memory`; peak = rise of the peak RSS during "
          "forward + backward; graph = distinct storages autograd saved in the forward pass; "
          f"time = median of {repeats} runs of forward + backward. The reversible run's "
          "graph is the one ε evaluation that finds the tensors to differentiate (constant "
          "in N); the time ratio is noisy on a shared machine.", "",
          markdown_table(["model", "N", "reversible peak MiB", "reversible graph MiB",
                          "full peak MiB", "full graph MiB", "reversible s", "full s",
                          "time ratio"], table)]
    acc = accuracy("digits", 10 if args.quick else 50,
                   ["obelm", "bdia", "edict", "obelm-landing(0.1)", "bdia(0.5)"])
    acc += accuracy("tiny-sd", 10 if args.quick else 50, ["obelm", "edict"])
    md += ["", f"## Gradient error, reversible vs full autograd (N = {10 if args.quick else 50})",
           "", markdown_table(
               ["model", "method", "state", "rel. error ∂/∂x_T", "rel. error ∂/∂embeds",
                "backward amplification"],
               [[r["model"], r["method"], r["state"].replace("torch.", ""),
                 r.get("error") or f"{r['rel_noise']:.2e}",
                 "" if r.get("error") or r.get("rel_embeds") is None
                 else f"{r['rel_embeds']:.2e}",
                 "" if r.get("error") else f"{r['amplification']:.3g}"] for r in acc])]
    text = "\n".join(md) + "\n"
    print(text)
    if not args.quick:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"runs": rows, "accuracy": acc},
                                                            indent=1))
        _plot(rows, args.out.with_suffix(".png"))
    return text


if __name__ == "__main__":
    main()
