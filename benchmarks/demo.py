"""`make demo`: exact inversion of a real diffusion model, the shipped digits DDPM.

1. samples a grid of digits with O-BELM (20 steps, one network evaluation per step);
2. inverts held-out real digits (never seen in training) with DDIM inversion, BDIA,
   EDICT and O-BELM, regenerates them from the latents, and prints a table of the
   reconstruction error, network evaluations and wall time;
3. writes ``demo_samples.png`` and ``demo_reconstructions.png`` under ``--out``
   (default ``out/demo/`` in the checkout, which git ignores: running the demo must not
   dirty a fresh clone; the printout names the folder).  The reconstruction figure has one
   labelled row per method and, under it, the map of its per-pixel error on a log scale
   (1e-16 … 1): DDIM inversion's drift shows as bright pixels, the exact methods' round-off
   as dark ones.

DDIM inversion is the approximate classic: its "latent" regenerates a different digit.
O-BELM, BDIA and EDICT are exact up to the round-off of the solver state (float64 here;
float32 shown for O-BELM).  Runs in well under 2 minutes on 2 CPU cores.

Usage: ``.venv/bin/python -m benchmarks.demo [--steps 20] [--n-recon 8]`` (``make demo``)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from lmsolvers.adapters.diffusers import DiffusionSampler

import lmsolvers as L

from .digits_classifier import DEFAULT_CLASSIFIER_PATH, load_classifier
from .digits_data import REPO_ROOT, load_digits_split, save_image_grid

MODEL = REPO_ROOT / "models" / "digits_ddpm"
#: Where the figures go by default: ignored by git (.gitignore), unlike benchmarks/results/.
DEFAULT_OUT = REPO_ROOT / "out" / "demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="sampling/inversion steps")
    p.add_argument("--n-samples", type=int, default=64)
    p.add_argument("--n-recon", type=int, default=12, help="held-out digits to invert")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="folder for the two PNG figures (default: out/demo/, git-ignored)")
    return p.parse_args(argv)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter to read)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def save_reconstruction_figure(path: Path, x0: torch.Tensor, recons: list[torch.Tensor],
                               rows: list[dict]) -> None:
    """The held-out digits, then per method its reconstruction and the map of
    ``log10 |rec − x0|`` (one colour scale for all, 1e-16 … 1), each row labelled with the
    method and its largest error."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never open a window
    import matplotlib.pyplot as plt
    import numpy as np

    n = x0.shape[0]
    labels = ["held-out digits"]
    images = [x0]
    for rec, row in zip(recons, rows, strict=True):
        labels += [f"{row['sampler']}: reconstruction", f"|error|, max {row['max']:.1e}"]
        images += [rec, (rec.double() - x0.double()).abs()]
    fig, axes = plt.subplots(len(images), n, figsize=(0.62 * n + 2.4, 0.62 * len(images)),
                             squeeze=False)
    err_im = None
    for r, (img, label) in enumerate(zip(images, labels, strict=True)):
        is_err = label.startswith("|error|")
        for c in range(n):
            ax = axes[r, c]
            a = img[c, 0].detach().double().cpu().numpy()
            if is_err:
                err_im = ax.imshow(np.log10(np.maximum(a, 1e-18)), cmap="magma", vmin=-16,
                                   vmax=0, interpolation="nearest")
            else:
                ax.imshow(a.clip(-1, 1), cmap="gray_r", vmin=-1, vmax=1,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=0.3, right=0.9, wspace=0.05, hspace=0.1)
    if err_im is not None:
        cax = fig.add_axes([0.92, 0.15, 0.015, 0.7])
        fig.colorbar(err_im, cax=cax, label="log10 |reconstruction − input|")
    fig.suptitle("invert held-out digits, regenerate them: each method's error", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the demo; return the table rows."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.time()
    print(f"figures go to {_shown(args.out)}/ (--out to change)")
    unet = UNet2DModel.from_pretrained(MODEL).eval()  # local files only: no network
    sched = DDIMScheduler.from_config(DDPMScheduler.from_pretrained(MODEL).config,
                                      timestep_spacing="trailing")
    n = args.steps

    # 1. samples
    obelm = DiffusionSampler(unet, sched, n, method=L.obelm(), disable_progress=True)
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(args.n_samples, 1, 8, 8, generator=g, dtype=torch.float64)
    t0 = time.time()
    samples = obelm.sample(x_T)
    t_sample = time.time() - t0
    save_image_grid(samples.float(), args.out / "demo_samples.png",
                    title=f"digits DDPM, O-BELM {n} steps ({n} NFE)")
    clf = load_classifier(DEFAULT_CLASSIFIER_PATH)
    with torch.no_grad():
        conf, pred = clf(samples.clamp(-1, 1).float()).softmax(1).max(1)
    print(f"sampled {args.n_samples} digits with O-BELM in {t_sample:.1f} s "
          f"({n} NFE); classifier: {float((conf >= 0.9).float().mean()):.0%} confident "
          f"(p ≥ 0.9), classes {torch.bincount(pred, minlength=10).tolist()}")

    # 2. invert held-out digits and regenerate them
    x_test, y_test = load_digits_split("test")
    x0 = x_test[: args.n_recon].double()
    runs = [
        ("DDIM inversion", L.ddim(), n, torch.float64),
        ("BDIA(γ=1)", L.bdia(1.0), n, torch.float64),
        ("EDICT(p=0.93)", L.edict(0.93), max(1, n // 2), torch.float64),
        ("O-BELM", L.obelm(), n, torch.float64),
        ("O-BELM (fp32 state)", L.obelm(), n, torch.float32),
        ("default (own grid)", None, n, torch.float64),
    ]
    rows, recons = [], [x0]
    counter = {"n": 0}  # network evaluations, counted at the UNet itself
    unet.register_forward_pre_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    for name, method, steps, dtype in runs:
        # method None: the library's default exact configuration on its own designed grid
        s = DiffusionSampler(unet, sched, steps, method=method, state_dtype=dtype,
                             disable_progress=True)
        method = s.method
        counter["n"] = 0
        t0 = time.time()
        if method.why_not_invertible() is not None:  # DDIM: the classic approximation
            # the sampler's model settings go into the latent, as s.invert records them
            lat = L.ddim_inversion(s.eps, s.grid, x0.to(dtype) / float(s.grid.alphas[0]),
                                   disable=True, context=s.context)
        else:
            lat = s.invert(x0)
        rec = s.sample(lat)
        dt = time.time() - t0
        d = rec.double() - x0
        rows.append(dict(sampler=name, steps=steps, nfe=counter["n"],
                         rms=float(d.pow(2).mean().sqrt()), max=float(d.abs().max()), s=dt))
        recons.append(rec.float())

    print(f"\nround trip of {args.n_recon} held-out digits (invert, then regenerate), "
          f"{n}-NFE budget per direction:")
    print(f"{'sampler':22s} {'steps':>5s} {'NFE':>5s} {'RMS error':>10s} {'max error':>10s} "
          f"{'time s':>7s}")
    for r in rows:
        print(f"{r['sampler']:22s} {r['steps']:5d} {r['nfe']:5d} {r['rms']:10.2e} "
              f"{r['max']:10.2e} {r['s']:7.2f}")
    save_reconstruction_figure(args.out / "demo_reconstructions.png", x0, recons[1:], rows)
    print(f"\nheld-out labels {y_test[: args.n_recon].tolist()}; done in "
          f"{time.time() - t_all:.0f} s")
    print(f"wrote {_shown(args.out / 'demo_samples.png')} and "
          f"{_shown(args.out / 'demo_reconstructions.png')}")
    return rows


if __name__ == "__main__":
    main()
