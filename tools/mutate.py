"""Targeted mutation testing of lmsolvers: does the test suite notice a planted bug?

Each mutation replaces one exact snippet of one file with a wrong (or suspicious) variant
and runs the tests that should catch it.  Everything happens in a snapshot of the
checkout in a temporary directory (lmsolvers/, adapters/, tests/, pyproject.toml, copied
once at start): the live checkout is never modified.  ``lmsolvers.adapters`` (a
package-dir mapping of ``adapters/`` in pyproject.toml) is made importable in the copy as
``<tmp>/lmsolvers/adapters``; the script checks that the copy, not the editable install,
is what gets imported.

Outcomes: ``killed`` (the tests fail), ``survived`` (they pass), ``timeout`` (counted as
killed), ``invalid`` (the snippet is not in the file, or occurs more than once: reported,
not counted) and ``baseline-fail`` (the unmutated snapshot already fails those tests: not
counted).  Kill rate = (killed + timeout) / (killed + timeout + survived).

    .venv/bin/python tools/mutate.py --list
    .venv/bin/python tools/mutate.py --only engine-lm_step-drop-eps
    .venv/bin/python tools/mutate.py [--jobs 1] [--timeout 1200] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("lmsolvers", "adapters", "tests", "pyproject.toml")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".hypothesis",
                                ".pytest_cache")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    description: str
    tests: tuple[str, ...]


def M(name: str, file: str, old: str, new: str, description: str, *tests: str) -> Mutation:  # noqa: N802
    return Mutation(name, file, old, new, description, tests)


# test selections (node ids keep the slow adapter suites short)
T_INTEGRATE = "tests/test_integrate.py"
T_EXACT = "tests/test_exactness.py"
T_METHODS = "tests/test_methods.py"
T_BITEXACT = "tests/test_bitexact.py"
T_STABILITY = "tests/test_stability.py"
T_SYMBOLIC = "tests/test_symbolic.py"
T_ROBUST = "tests/test_robustness.py"
T_ADAPTERS = "tests/test_adapters.py"
T_CHECKS = "tests/test_adapters_checks.py"
T_PIPELINE = "tests/test_adapters_pipeline.py"

MUTATIONS: list[Mutation] = [
    # ------------------------------------------------------------ lmsolvers/engine.py
    M("engine-lm_step-drop-eps", "lmsolvers/engine.py",
      "    terms += [(float(bh[j]), w.eps(r + j)) for j in range(1, k + 1) if bh[j] != 0.0]\n",
      "",
      "lm_step drops the ε terms", T_INTEGRATE),
    M("engine-lm_step-eps-sign", "lmsolvers/engine.py",
      "terms += [(float(bh[j]), w.eps(r + j))",
      "terms += [(-float(bh[j]), w.eps(r + j))",
      "lm_step: sign of the ε terms flipped", T_INTEGRATE),
    M("engine-lm_step-a-index", "lmsolvers/engine.py",
      "terms = [(float(a[j - 1]), w[r + j]) for j in range(1, k + 1)]",
      "terms = [(float(a[j]), w[r + j]) for j in range(1, k + 1)]",
      "lm_step uses a[j] instead of a[j-1]", T_INTEGRATE),
    M("engine-lm_step-a-reversed", "lmsolvers/engine.py",
      "terms = [(float(a[j - 1]), w[r + j]) for j in range(1, k + 1)]",
      "terms = [(float(a[k - j]), w[r + j]) for j in range(1, k + 1)]",
      "lm_step pairs the a-coefficients with the nodes in reverse order", T_INTEGRATE),
    M("engine-lm_step_inverse-mul-ak", "lmsolvers/engine.py",
      "inv_ak = 1.0 / float(a[k - 1])",
      "inv_ak = float(a[k - 1])",
      "lm_step_inverse multiplies by a_k instead of dividing", T_INTEGRATE),
    M("engine-lm_step_inverse-a-sign", "lmsolvers/engine.py",
      "terms += [(-float(a[j - 1]) * inv_ak, w[r + j])",
      "terms += [(float(a[j - 1]) * inv_ak, w[r + j])",
      "lm_step_inverse adds the a_j x̄ terms instead of subtracting", T_INTEGRATE),
    M("engine-window-eps-cache-key", "lmsolvers/engine.py",
      "                e = self.on_eps(m, e)\n            self._e[m] = e\n",
      "                e = self.on_eps(m, e)\n            self._e[m + 1] = e\n",
      "Window.eps caches ε of node m under key m+1 (visible for k ≥ 3 only)",
      T_INTEGRATE, T_EXACT),
    M("engine-window-put-keeps-eps", "lmsolvers/engine.py",
      "        self._x[m] = x\n        self._e.pop(m, None)\n",
      "        self._x[m] = x\n",
      "Window.put keeps a stale cached ε of the node it overwrites",
      T_INTEGRATE, T_EXACT),
    M("engine-emit-no-clone-x", "lmsolvers/engine.py",
      '"x": self.window[m].clone()',
      '"x": self.window[m]',
      "Run.emit hands the callback the stored state itself (no copy)", T_EXACT),
    M("engine-emit-no-clone-aux", "lmsolvers/engine.py",
      "info[self.aux_name] = self.window.aux(m).clone()",
      "info[self.aux_name] = self.window.aux(m)",
      "Run.emit hands the callback the stored companion (no copy)", T_EXACT),
    M("engine-all_finite-true", "lmsolvers/engine.py",
      "    return bool(torch.isfinite(t).all())\n",
      "    return True\n",
      "all_finite is always True", T_EXACT, T_ROBUST),
    # ------------------------------------------------------------ lmsolvers/latent.py
    M("latent-grid-top-node-only", "lmsolvers/latent.py",
      "diff = np.flatnonzero(a != b)",
      "diff = np.flatnonzero(a[-1:] != b[-1:])",
      "check_latent compares only the top grid node", T_EXACT),
    M("latent-skip-grid-check", "lmsolvers/latent.py",
      "    if why is not None:\n",
      "    if False:\n",
      "check_latent skips the grid check", T_EXACT),
    M("latent-skip-context-check", "lmsolvers/latent.py",
      "    if ctx != made:\n",
      "    if False:\n",
      "check_latent skips the model-settings (context) check", T_EXACT),
    M("latent-skip-method-key", "lmsolvers/latent.py",
      "    if latent.method_key != method_key:\n",
      "    if False:\n",
      "check_latent skips the method_key check", T_EXACT),
    M("latent-method-name-not-key", "lmsolvers/latent.py",
      "    if latent.method_key != method_key:\n",
      "    if latent.method != method_name:\n",
      "check_latent compares method names instead of exact keys", T_EXACT),
    M("latent-skip-k-check", "lmsolvers/latent.py",
      "    if k is not None and latent.k != k:\n",
      "    if False:\n",
      "check_latent skips the state-count check", T_EXACT, T_CHECKS),
    # ---------------------------------------------------------- lmsolvers/bitexact.py
    M("bitexact-increment-floor", "lmsolvers/bitexact.py",
      "return torch.round(g).to(torch.int64)",
      "return torch.floor(g).to(torch.int64)",
      "increment rounds down instead of to nearest", T_BITEXACT),
    M("bitexact-shift-no-rounding", "lmsolvers/bitexact.py",
      "torch.div(v + (1 << (d - 1)), 1 << d, rounding_mode=\"floor\")",
      "torch.div(v, 1 << d, rounding_mode=\"floor\")",
      "sampling shift floors instead of rounding to nearest", T_BITEXACT),
    M("bitexact-quantize-floor", "lmsolvers/bitexact.py",
      "return torch.round(v).to(torch.int64)",
      "return torch.floor(v).to(torch.int64)",
      "quantize floors instead of rounding to nearest", T_BITEXACT),
    M("bitexact-backward-sign", "lmsolvers/bitexact.py",
      "y = yr * (1 << d) - q if d else yr - q",
      "y = yr * (1 << d) - q if d else yr + q",
      "inverse integer step adds the increment when the shift is 0", T_BITEXACT),
    # ------------------------------------------------------------- lmsolvers/edict.py
    M("edict-ratio-one", "lmsolvers/edict.py",
      "return [float(a[i - 1] / a[i]) for i in range(1, grid.N + 1)]",
      "return [1.0 for i in range(1, grid.N + 1)]",
      "EDICT's model-input ratio α_{i-1}/α_i replaced by 1 (σ̄-consistent variant)",
      T_INTEGRATE),
    M("edict-swap-mixing", "lmsolvers/edict.py",
      "        xs = combine([(p, xi), (q, yi)])\n        ys = combine([(p, yi), (q, xs)])\n",
      "        ys = combine([(p, yi), (q, xi)])\n        xs = combine([(p, xi), (q, ys)])\n",
      "EDICT sampling mixes ȳ first, then x̄", T_INTEGRATE),
    M("edict-alternate-ignored", "lmsolvers/edict.py",
      "return self.alternate and (grid.N - i) % 2 == 1",
      "return False",
      "EDICT ignores the alternate flag", T_INTEGRATE, T_EXACT),
    # ------------------------------------------------------------ lmsolvers/method.py
    M("method-b0-scale", "lmsolvers/method.py",
      "scale = np.stack([windows[0]] + windows, axis=1)",
      "scale = np.stack([windows[-1]] + windows, axis=1)",
      "b_0 scaled by h_k instead of h_1", T_METHODS, T_INTEGRATE),
    M("method-check_invertible-rtol", "lmsolvers/method.py",
      "rtol: float = 1e-12) -> StepCoefficients:",
      "rtol: float = 0.0) -> StepCoefficients:",
      "check_invertible tolerates any non-zero a_k (rtol 0)", T_METHODS, T_ROBUST),
    # -------------------------------------------------------- lmsolvers/exactness.py
    M("exactness-tolerance-flipped", "lmsolvers/exactness.py",
      "    if pred <= tolerance:\n",
      "    if pred >= tolerance:\n",
      "check_exactness tolerance comparison flipped", T_EXACT),
    # -------------------------------------------------------- lmsolvers/parasitic.py
    M("parasitic-direction-swapped", "lmsolvers/parasitic.py",
      '        if direction == "forward":\n            # a perturbation',
      '        if direction == "backward":\n            # a perturbation',
      "companion_growth: forward and backward swapped", T_STABILITY, T_EXACT),
    M("parasitic-norm-max", "lmsolvers/parasitic.py",
      "best = max(best, float(np.linalg.norm(R, 2)))",
      "best = max(best, float(np.abs(R).max()))",
      "companion_growth: spectral norm replaced by the largest entry",
      T_STABILITY, "tests/test_design.py"),
    # --------------------------------------------------------- lmsolvers/families.py
    M("families-bdia-ratio", "lmsolvers/families.py",
      "r = g * vp_alpha(S0 + h1 + h2) / vp_alpha(S0)",
      "r = g * vp_alpha(S0 + h1 + h2) / vp_alpha(S0 + h1)",
      "BDIA's r uses α_{i+1}/α_i instead of α_{i+1}/α_{i-1}", T_METHODS, T_SYMBOLIC),
    # --------------------------------------------------------- lmsolvers/symbolic.py
    M("symbolic-radicals-vanish", "lmsolvers/symbolic.py",
      "        field = _SqrtField(radicands) if radicands else rational\n",
      "        if radicands:\n            return True\n"
      "        field = _SqrtField(radicands) if radicands else rational\n",
      "vanishes() says 'zero' for every expression with a square root",
      T_METHODS, T_SYMBOLIC),
    # -------------------------------------------------------- adapters/scheduler.py
    M("scheduler-x0-sign", "adapters/scheduler.py",
      "return (self._run.window[m] - float(self.grid.sigma_bar[m]) * eps).to(like.dtype)",
      "return (self._run.window[m] + float(self.grid.sigma_bar[m]) * eps).to(like.dtype)",
      "pred_original_sample uses x̄ + σ̄ ε", T_CHECKS),
    M("scheduler-skip-timestep-check", "adapters/scheduler.py",
      "        if t != expected:\n",
      "        if False:\n",
      "scheduler.step skips the timestep order check", T_CHECKS),
    M("scheduler-eps-alpha-vp", "adapters/scheduler.py",
      "        alpha = float(g.alphas[m])\n",
      "        alpha = float((1.0 + float(g.sigma_bar[m]) ** 2) ** -0.5)\n",
      "scheduler's ε conversion takes α = vp_alpha(σ̄) instead of the grid table",
      T_PIPELINE, T_ADAPTERS),
    M("scheduler-to-model-alpha-vp", "adapters/scheduler.py",
      "return (xbar * float(self.grid.alphas[m])).to(like.dtype)",
      "return (xbar * float((1.0 + float(self.grid.sigma_bar[m]) ** 2) ** -0.5))"
      ".to(like.dtype)",
      "scheduler's x = α x̄ takes α = vp_alpha(σ̄) instead of the grid table",
      T_PIPELINE, T_CHECKS),
    M("scheduler-load-latent-alpha-vp", "adapters/scheduler.py",
      "alpha = float(latent.grid.alphas[-1])",
      "alpha = float((1.0 + float(latent.grid.sigma_bar[-1]) ** 2) ** -0.5)",
      "load_latent's x_T takes α = vp_alpha(σ̄_N) instead of the grid table", T_CHECKS),
    # -------------------------------------------------------- adapters/diffusers.py
    M("diffusers-v-prediction-sign", "adapters/diffusers.py",
      "return alpha * out + sigma * x",
      "return alpha * out - sigma * x",
      "v-prediction converted as ε = α v − σ x", T_ADAPTERS),
    M("diffusers-node-alpha-vp", "adapters/diffusers.py",
      "            alpha = float(self.grid.alphas[i])\n",
      "            alpha = float(vp_alpha(sigma_bar))\n",
      "DiffusersEps at grid nodes takes α = vp_alpha(σ̄) instead of the grid table",
      T_ADAPTERS, T_PIPELINE),
]


# ------------------------------------------------------------------------ the copy
def snapshot(dest: Path) -> None:
    """Copy the working files (tracked and untracked) of the checkout into ``dest``."""
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE)
        else:
            shutil.copy2(src, dest / name)


def prepare(base: Path, dest: Path, mutation: Mutation | None) -> str:
    """``dest`` = ``base`` (+ the mutation) with ``lmsolvers/adapters`` = ``adapters/``.

    Returns ``"ok"`` or the reason the mutation is invalid.
    """
    shutil.copytree(base, dest)
    if mutation is not None:
        path = dest / mutation.file
        if not path.is_file():
            return f"file {mutation.file} not found"
        text = path.read_text(encoding="utf-8")
        count = text.count(mutation.old)
        if count != 1:
            return f"snippet found {count} times in {mutation.file}"
        path.write_text(text.replace(mutation.old, mutation.new), encoding="utf-8")
    shutil.copytree(dest / "adapters", dest / "lmsolvers" / "adapters")
    return "ok"


def env_for(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(root), HYPOTHESIS_PROFILE="ci", PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def check_imports(root: Path) -> None:
    """Fail loudly unless the copy (not the editable install) is what gets imported."""
    code = ("import lmsolvers, lmsolvers.adapters; "
            "print(lmsolvers.__file__); print(lmsolvers.adapters.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env_for(root),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the copy does not import:\n{out.stderr}")
    files = out.stdout.split()
    print(f"imports from the copy: lmsolvers -> {files[0]}; adapters -> {files[1]}")
    for f in files:
        if not Path(f).resolve().is_relative_to(root.resolve()):
            raise SystemExit(f"{f} is not in the copy {root}: the live checkout would be tested")


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """``("pass" | "fail" | "timeout", seconds, last output lines)``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           "--no-header", "-rN", *tests]
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, ""
    dt = time.monotonic() - t0
    tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-3:])
    if out.returncode == 0:
        return "pass", dt, tail
    if out.returncode in (4, 5):  # usage error / nothing collected: a bad selection
        return "error", dt, tail
    return "fail", dt, tail


# --------------------------------------------------------------------------- driver
@dataclass
class Result:
    mutation: Mutation
    status: str
    seconds: float = 0.0
    detail: str = ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only this mutation (repeatable; a prefix selects a group)")
    ap.add_argument("--jobs", type=int, default=1, help="mutations run in parallel (default 1)")
    ap.add_argument("--timeout", type=float, default=1200.0,
                    help="seconds per test run; a timeout counts as killed")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)

    names = [m.name for m in MUTATIONS]
    assert len(set(names)) == len(names), "mutation names must be unique"
    if args.list:
        for m in MUTATIONS:  # the snippet counts are read from the live files, read-only
            path = REPO / m.file
            n = path.read_text(encoding="utf-8").count(m.old) if path.is_file() else 0
            ok = "ok" if n == 1 else f"INVALID ({n} matches)"
            print(f"{m.name:34s} {m.file:24s} {ok:8s} {m.description}  [{' '.join(m.tests)}]")
        return 0
    chosen = MUTATIONS
    if args.only:
        chosen = [m for m in MUTATIONS if any(m.name.startswith(o) for o in args.only)]
        if not chosen:
            ap.error(f"no mutation matches {args.only}; see --list")

    tmp = Path(tempfile.mkdtemp(prefix="lmsolvers-mutate-"))
    print(f"working in {tmp}")
    try:
        base = tmp / "base"
        base.mkdir()
        snapshot(base)
        pristine = tmp / "pristine"
        prepare(base, pristine, None)
        check_imports(pristine)

        # baseline: each distinct test selection must pass on the unmutated snapshot
        baseline: dict[tuple[str, ...], tuple[str, float, str]] = {}
        for tests in dict.fromkeys(m.tests for m in chosen):
            baseline[tests] = run_tests(pristine, tests, args.timeout)
            status, dt, tail = baseline[tests]
            print(f"baseline {status:7s} {dt:7.1f}s  {' '.join(tests)}", flush=True)
            if status != "pass":
                print("    " + tail.replace("\n", "\n    "))

        def one(i_m: tuple[int, Mutation]) -> Result:
            i, m = i_m
            if baseline[m.tests][0] != "pass":
                return Result(m, "baseline-fail")
            work = tmp / f"m{i:03d}"
            why = prepare(base, work, m)
            try:
                if why != "ok":
                    return Result(m, "invalid", detail=why)
                status, dt, tail = run_tests(work, m.tests, args.timeout)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            outcome = {"pass": "survived", "fail": "killed", "timeout": "timeout"}.get(
                status, "error")
            return Result(m, outcome, dt, tail)

        results: list[Result] = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for r in pool.map(one, enumerate(chosen)):
                results.append(r)
                print(f"{r.status:13s} {r.seconds:7.1f}s  {r.mutation.name}"
                      + (f"  ({r.detail})" if r.status in ("invalid", "error") else ""),
                      flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print_summary(results)
    return 0


def print_summary(results: list[Result]) -> None:
    killed = sum(r.status in ("killed", "timeout") for r in results)
    survived = sum(r.status == "survived" for r in results)
    valid = killed + survived
    print("\n| mutation | file | description | tests | outcome | s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        m = r.mutation
        tests = ", ".join(t.removeprefix("tests/") for t in m.tests)
        outcome = f"**{r.status}**" if r.status == "survived" else r.status
        if r.detail and r.status in ("invalid", "error"):
            outcome += f" ({r.detail})"
        print(f"| {m.name} | {m.file} | {m.description} | {tests} | {outcome} | "
              f"{r.seconds:.0f} |")
    other = {s: sum(r.status == s for r in results)
             for s in ("invalid", "baseline-fail", "error")}
    rate = f"{100.0 * killed / valid:.1f}%" if valid else "n/a"
    print(f"\nkill rate: {killed}/{valid} = {rate} (killed incl. timeouts / valid); "
          + ", ".join(f"{k}: {v}" for k, v in other.items()) + " (not counted)")
    survivors = [r.mutation.name for r in results if r.status == "survived"]
    if survivors:
        print("survivors: " + ", ".join(survivors))


if __name__ == "__main__":
    sys.exit(main())
