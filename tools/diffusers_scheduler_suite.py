"""Run diffusers' own scheduler tests (DDIM's test class) on BELMScheduler / BELMInverseScheduler.

Run by hand, not in CI: it needs a read-only mirror of the diffusers repository (the
``fetch`` tool puts one at /work/.mirror/huggingface+diffusers/repo).  The tool

1. materialises, from the mirror at ``--rev`` (``git show``; nothing is copied into this
   project), ``tests/schedulers/test_schedulers.py``, ``test_scheduler_ddim.py`` and the
   helper modules they import into a temporary directory;
2. writes a module there that subclasses ``DDIMSchedulerTest`` for ``BELMScheduler``
   (method ``ddim``: DDIM's hard-coded numbers must come out, and ``obelm``) and for
   ``BELMInverseScheduler`` (``obelm``), with DDIM's own test config (a DDIM-like config);
3. runs pytest on those classes, deselecting :data:`EXCLUDED` (each with its reason), and
   prints the outcome; ``--with-excluded`` runs the excluded tests too and shows how each
   fails.

Usage::

    .venv/bin/python tools/diffusers_scheduler_suite.py [--mirror DIR] [--rev REV]
        [--with-excluded] [-- pytest args]

The installed diffusers is 0.42.1; the newest stored snapshot of the repository is
0.40.0.dev0 (HEAD of the mirror), whose ``scheduling_ddim.py`` is identical to the
installed one, so its DDIM tests are the ones that apply.  The tool prints both versions.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

MIRROR = Path("/work/.mirror/huggingface+diffusers/repo")
FILES = (
    "tests/__init__.py",
    "tests/testing_utils.py",
    "tests/others/__init__.py",
    "tests/others/test_utils.py",
    "tests/schedulers/__init__.py",
    "tests/schedulers/test_schedulers.py",
    "tests/schedulers/test_scheduler_ddim.py",
)

_OFF_GRID = ("steps at timesteps that are not on the scheduler's grid (DDIM derives the "
             "previous timestep as t − T//N from any integer t); a multistep exact scheduler "
             "indexes its own grid and refuses them (docs/design.md §8)")
_DDIM_NUMBERS = ("compares a full loop with DDIM's hard-coded sums/means: a different method "
                 "(O-BELM) gives different numbers by design; the same test passes with "
                 "method='ddim'")
_INVERSE = ("runs the sampling direction (timesteps descending) or compares with DDIM's "
            "sampling numbers; an inverse scheduler walks the grid upwards")
_VARIANCE = ("DDIM's private _get_variance of the stochastic (η > 0) step; η ≠ 0 has no "
             "exact inverse and is refused")

_ENV = ("environment, not the scheduler: DDIM's compatibles include DPMSolverSDEScheduler, "
        "which needs torchsde (not installed): ImportError for DDIMScheduler itself too "
        "(DDIMControlTest); BELM's from_config round trips across DDIM, DPMSolverMultistep, "
        "Euler and PNDM are in tests/test_scheduler_conformance.py")
_STEP_AT_ZERO = ("check_over_configs steps at time_step = 0, which is not on the grid for "
                 "this config (steps_offset = 1: [981, …, 1]; 'trailing': [999, …, 19]); " +
                 _OFF_GRID)

#: (class, test) → reason; class "*" = every BELM class, "**" = the DDIM control class too
EXCLUDED: dict[tuple[str, str], str] = {
    ("**", "test_compatibles"): _ENV,
    ("*", "test_time_indices"): _OFF_GRID,
    ("*", "test_inference_steps"): _OFF_GRID,
    ("*", "test_variance"): _VARIANCE,
    ("*", "test_eta"): ("steps with η ∈ {0.0, 0.5, 1.0}: η > 0 is a stochastic step with no "
                        "exact inverse and raises ValueError by design"),
    ("*", "test_betas"): ("its last config, beta_start 0.1 / beta_end 2, gives β > 1 and a "
                          "negative ᾱ (DDIM silently computes NaN); the exact schedulers refuse "
                          "it with a ValueError naming β and t"),
    ("BELMSchedulerDDIMMethodTest", "test_steps_offset"): _STEP_AT_ZERO,
    ("BELMSchedulerOBELMTest", "test_steps_offset"): _STEP_AT_ZERO,
    ("BELMSchedulerDDIMMethodTest", "test_timestep_spacing"): _STEP_AT_ZERO,
    ("BELMSchedulerOBELMTest", "test_timestep_spacing"): _STEP_AT_ZERO,
    ("BELMSchedulerOBELMTest", "test_full_loop_no_noise"): _DDIM_NUMBERS,
    ("BELMSchedulerOBELMTest", "test_full_loop_with_v_prediction"): _DDIM_NUMBERS,
    ("BELMSchedulerOBELMTest", "test_full_loop_with_set_alpha_to_one"): _DDIM_NUMBERS,
    ("BELMSchedulerOBELMTest", "test_full_loop_with_no_set_alpha_to_one"): _DDIM_NUMBERS,
    ("BELMSchedulerOBELMTest", "test_full_loop_with_noise"): _DDIM_NUMBERS,
    ("BELMInverseSchedulerTest", "test_full_loop_no_noise"): _INVERSE,
    ("BELMInverseSchedulerTest", "test_full_loop_with_v_prediction"): _INVERSE,
    ("BELMInverseSchedulerTest", "test_full_loop_with_set_alpha_to_one"): _INVERSE,
    ("BELMInverseSchedulerTest", "test_full_loop_with_no_set_alpha_to_one"): _INVERSE,
    ("BELMInverseSchedulerTest", "test_full_loop_with_noise"): _INVERSE,
    ("BELMInverseSchedulerTest", "test_steps_offset"): (
        "asserts DDIM's descending sampling timesteps [801, 601, 401, 201, 1]; the inverse "
        "scheduler's timesteps ascend over the same grid ([0, 1, 201, 401, 601]: node 0 "
        "first, then the sampling timesteps below the top)"),
}

MODULE = '''
"""BELM schedulers under diffusers' DDIM scheduler tests (generated by
tools/diffusers_scheduler_suite.py)."""
import warnings

from lmsolvers.adapters import BELMInverseScheduler, BELMScheduler
from lmsolvers.adapters.scheduler import ClippingIgnoredWarning

from .test_scheduler_ddim import DDIMSchedulerTest as _DDIM

warnings.filterwarnings("ignore", category=ClippingIgnoredWarning)


class _Belm(_DDIM):
    method = "obelm"

    def get_scheduler_config(self, **kwargs):
        config = super().get_scheduler_config(**kwargs)
        config["method"] = self.method
        return config


class BELMSchedulerDDIMMethodTest(_Belm):
    scheduler_classes = (BELMScheduler,)
    method = "ddim"


class BELMSchedulerOBELMTest(_Belm):
    scheduler_classes = (BELMScheduler,)


class BELMInverseSchedulerTest(_Belm):
    scheduler_classes = (BELMInverseScheduler,)


class DDIMControlTest(_DDIM):
    """DDIMScheduler itself: what fails here fails for the environment, not for BELM."""
'''
CLASSES = ("DDIMControlTest", "BELMSchedulerDDIMMethodTest", "BELMSchedulerOBELMTest",
           "BELMInverseSchedulerTest")


def _git(mirror: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(mirror), *args], check=True,
                          capture_output=True, text=True).stdout


def materialise(mirror: Path, rev: str, root: Path) -> str:
    """Write the diffusers test files at ``rev`` under ``root``; return their version."""
    for name in FILES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.write_text(_git(mirror, "show", f"{rev}:{name}"))
        except subprocess.CalledProcessError:
            path.write_text("")  # an __init__.py the revision does not have
    init = _git(mirror, "show", f"{rev}:src/diffusers/__init__.py")
    version = next((ln.split("=")[1].strip().strip('"') for ln in init.splitlines()
                    if ln.startswith("__version__")), "?")
    (root / "tests" / "schedulers" / "test_belm_suite.py").write_text(textwrap.dedent(MODULE))
    return version


def excluded_ids(module: str) -> list[str]:
    ids = []
    for cls in CLASSES:
        for (c, test), _ in EXCLUDED.items():
            if c in (cls, "**") or (c == "*" and cls != "DDIMControlTest"):
                ids.append(f"{module}::{cls}::{test}")
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", type=Path, default=MIRROR)
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--with-excluded", action="store_true",
                    help="also run the excluded tests (expected to fail, reasons below)")
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args(argv)
    import diffusers

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        version = materialise(args.mirror, args.rev, root)
        print(f"diffusers tests at {args.rev} (version {version}); installed diffusers "
              f"{diffusers.__version__}")
        module = "tests/schedulers/test_belm_suite.py"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-W", "ignore::DeprecationWarning", "--rootdir", str(root),
               *[f"{module}::{c}" for c in CLASSES]]
        if not args.with_excluded:
            for node in excluded_ids(module):
                cmd += ["--deselect", node]
        cmd += args.pytest_args
        rc = subprocess.run(cmd, cwd=root).returncode
    print("\nexcluded tests (class, test): reason")
    for (cls, test), why in EXCLUDED.items():
        print(f"  {cls}::{test}: {why}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
