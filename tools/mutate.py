"""Targeted mutation testing of lmsolvers: does the test suite notice a planted bug?

Each mutation replaces one exact snippet of one file with a wrong (or suspicious) variant
and runs the tests that should catch it.  Everything happens in a snapshot of the
checkout in a temporary directory (lmsolvers/, adapters/ — the jobs package included —,
tests/, pyproject.toml, copied once at start; models/ and benchmarks/, which the tests
only read, are linked): the live checkout is never modified.  ``lmsolvers.adapters`` (a
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
#: read by the tests (the digits models, the benchmarks' data split), never written: linked
LINKED = ("models", "benchmarks")
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
T_CONF = "tests/test_scheduler_conformance.py"
T_FLOW = "tests/test_scheduler_flow.py"
T_CLI = "tests/test_cli.py"


def jobs(*names: str) -> tuple[str, ...]:
    """Node ids of tests/test_jobs.py (the module's fixtures run once per selection)."""
    return tuple(f"tests/test_jobs.py::{n}" for n in names)


J_OUTPUT = "test_a_job_directory_is_never_the_output_of_another_command"
J_DAMAGED = "test_a_damaged_job_record_is_a_one_line_error"
J_RESUME = "test_resume_recomputes_batches_whose_files_are_not_their_own"
J_FAILED = "test_resume_checks_the_parts_of_failed_batches_too"
J_DATA = "test_resume_refuses_data_that_changed"
J_RANGE = "test_data_outside_the_models_range_fails_per_sample"
J_BAD = "test_bad_images_are_reported_and_the_job_goes_on"
J_THREADS = "test_thread_count_mismatch_is_detected"
J_TWO = "test_two_gloo_ranks_give_bitwise_the_same_files"

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
      "                return float(\"inf\")\n"
      "            best = max(best, float(np.linalg.norm(R, 2)))",
      "                return float(\"inf\")\n"
      "            best = max(best, float(np.abs(R).max()))",
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
      "alpha=-alpha * sbar).mul_(1.0 / alpha)",
      "alpha=alpha * sbar).mul_(1.0 / alpha)",
      "pred_original_sample uses (x + σ ε)/α", T_CHECKS),
    M("scheduler-skip-timestep-check", "adapters/scheduler.py",
      "            if t != self._ts_values[i]:\n                self._index_of(t)",
      "            if False:\n                self._index_of(t)",
      "scheduler.step skips the timestep order check", T_CHECKS),
    M("scheduler-alpha-vp", "adapters/scheduler.py",
      "self._alpha = [float(v) for v in sch.grid.alphas]",
      "self._alpha = [float((1.0 + float(s) ** 2) ** -0.5) for s in sch.grid.sigma_bar]",
      "scheduler's α (ε conversion, x = α x̄) from vp_alpha(σ̄) instead of the grid table",
      T_FLOW),
    M("scheduler-repeated-final-step-allowed", "adapters/scheduler.py",
      "        elif self._step_index == n and n and t == self._ts_values[-1] and (\n",
      "        elif False and (\n",
      "a step at timesteps[-1] after a finished run starts a new run",
      f"{T_CONF}::test_a_repeated_final_step_is_an_error"),
    M("scheduler-handed-off-rows-dropped", "adapters/scheduler.py",
      "        if self._given:  # rows resumed from a handed-off latent\n"
      "            xr = self._given_rows(r, xr)\n",
      "",
      "rows of a partly handed-off batch lose their latent's lower states",
      f"{T_CONF}::test_handoff_resumes_the_inverted_rows_of_a_mixed_batch"),
    M("scheduler-handoff-per-step", "adapters/scheduler.py",
      "self.handoff.register(nxt, part, run=self._handoff_run)",
      "self.handoff.register(nxt, part)",
      "every inversion step takes a place of its own in the hand-off registry",
      f"{T_CONF}::test_handoff_capacity_counts_inversions_not_steps"),
    # -------------------------------------------------------- adapters/handoff.py
    M("handoff-no-dtype-variants", "adapters/handoff.py",
      "    for d in HANDOFF_DTYPES:\n        have = probes",
      "    for d in (torch.float64,):\n        have = probes",
      "the hand-off does not recognise a cast (or cast round trip) of an inverted row",
      f"{T_CONF}::test_handoff_resumes_any_selection_of_inverted_rows_exactly"),
    M("handoff-remember-keeps-oldest", "adapters/handoff.py",
      "self.rows[self.rows.shape[0] - max(n, 0):]",
      "self.rows[:max(n, 0)]",
      "the registry remembers the oldest evicted rows instead of the newest",
      f"{T_CONF}::test_handoff_remembers_the_last_rows_of_evicted_inversions"),
    M("handoff-no-whole-row-check", "adapters/handoff.py",
      "j = next((j for j in js if _same_row(out[j], x[i])), None)",
      "j = js[0]",
      "a row whose probe matches is resumed without comparing the whole row",
      f"{T_CONF}::test_handoff_warns_for_rows_it_cannot_resume_and_resumes_the_rest"),
    M("handoff-earlier-nodes-forgotten", "adapters/handoff.py",
      "                if len(inv.earlier):\n",
      "                if False:\n",
      "an earlier node of an inversion that went on is not recognised (no warning)",
      f"{T_CONF}::test_handoff_capacity_counts_inversions_not_steps"),
    # ------------------------------------------------ adapters/weights.py, diffusers.py
    M("weights-version-ignored", "adapters/weights.py",
      "return tuple((id(t), t.data_ptr(), t._version) for _, t in tensors)",
      "return tuple((id(t), t.data_ptr()) for _, t in tensors)",
      "the weights digest is not recomputed after an in-place update",
      f"{T_ADAPTERS}::test_a_latent_carries_a_digest_of_the_model_weights"),
    M("diffusers-context-without-weights", "adapters/diffusers.py",
      '            "model_weights": weights_digest(self.model),\n',
      "",
      "a latent's context does not record the model's weights",
      f"{T_ADAPTERS}::test_a_latent_carries_a_digest_of_the_model_weights"),
    M("transformers-any-size", "adapters/transformers.py",
      "        return 2 ** (len(blocks) - 1)\n",
      "        return 1\n",
      "a UNet2DModel accepts sizes its down blocks cannot take (error from inside the UNet)",
      f"{T_CHECKS}::test_an_image_size_the_unet_cannot_take_is_a_one_line_error"),
    # ------------------------------------------------------ adapters/jobs/ (the package)
    M("jobs-store-other-verb-overwritten", "adapters/jobs/store.py",
      "            if old_verb != verb:\n",
      "            if False:\n",
      "--overwrite replaces another command's job directory", *jobs(J_OUTPUT)),
    M("jobs-store-source-as-output", "adapters/jobs/store.py",
      "            if out.resolve() == src or _owning_job(out) is not None:\n",
      "            if False:\n",
      "reconstruct may write into the job it reads", *jobs(J_OUTPUT)),
    M("jobs-store-report-over-job-files", "adapters/jobs/store.py",
      "    if owner is not None:\n        d, rel = owner\n",
      "    if False:\n        d, rel = owner\n",
      "a verify report may replace a job's own files", *jobs(J_OUTPUT)),
    M("jobs-store-part-ids-unchecked", "adapters/jobs/store.py",
      "    if got != sorted((str(b), str(i)) for i in ids):\n",
      "    if False:\n",
      "resume takes a part of another batch as done (shows where no shard is named)",
      *jobs(J_FAILED)),
    M("jobs-store-shard-hash-unchecked", "adapters/jobs/store.py",
      'if path.stat().st_size != ok[0].get("shard_bytes") or sha256_file(path) != shas.pop():',
      'if path.stat().st_size != ok[0].get("shard_bytes"):',
      "resume takes an altered shard of the recorded size as done", *jobs(J_RESUME)),
    M("jobs-store-records-unchecked", "adapters/jobs/store.py",
      '            if lacks or not isinstance(r.get("batch"), int):\n',
      "            if False:\n",
      "a manifest that is not one (a report) is read as one", *jobs(J_DAMAGED)),
    M("jobs-verbs-data-change-ignored", "adapters/jobs/verbs.py",
      "            if now != sha:\n",
      "            if False:\n",
      "resume mixes two versions of the data", *jobs(J_DATA)),
    M("jobs-verbs-one-rank-only", "adapters/jobs/verbs.py",
      "        mine = [b for b in range(len(batches)) if b % g.world == g.rank]\n"
      "        finished = _finished(g, out, mine, lambda b: [data.ids[i] for i in batches[b]],",
      "        mine = [b for b in range(len(batches)) if b % g.world == 0]\n"
      "        finished = _finished(g, out, mine, lambda b: [data.ids[i] for i in batches[b]],",
      "invert-dataset: every rank takes rank 0's batches", *jobs(J_TWO)),
    M("jobs-backends-range-unchecked", "adapters/jobs/backends.py",
      "        if mn < lo - slack or mx > hi + slack:\n",
      "        if False:\n",
      "data outside the model's range is inverted silently", *jobs(J_RANGE)),
    M("jobs-inputs-image-scale", "adapters/jobs/inputs.py",
      "/ 127.5 - 1.0",
      "/ 255.0",
      "8-bit images are read as x/255 instead of x/127.5 − 1", *jobs(J_BAD)),
    M("jobs-env-threads-ignored", "adapters/jobs/env.py",
      'ENV_KEYS = ("threads", "deterministic",',
      'ENV_KEYS = ("deterministic",',
      "the thread count is not compared with the recorded one", *jobs(J_THREADS)),
    # ------------------------------------------------------------ the core's refusals
    M("engine-in-place-eps-allowed", "lmsolvers/engine.py",
      "        changed = before is not None and _version(x) != before\n",
      "        changed = False\n",
      "an ε that changes its input in place is not refused", T_ROBUST),
    M("integrate-swapped-arguments", "lmsolvers/integrate.py",
      "    if isinstance(eps, Grid) and callable(grid):\n",
      "    if False:\n",
      "sample(grid, eps, …) fails deep inside the run", T_ROBUST),
    M("integrate-reversible-under-no-grad", "lmsolvers/integrate.py",
      "    if grad is not None and not torch.is_grad_enabled():\n",
      '    if grad == "full" and not torch.is_grad_enabled():\n',
      "grad='reversible' inside no_grad returns a tensor without a gradient", T_ROBUST),
    M("cli-order-ignored", "lmsolvers/cli.py",
      "    if args.order is not None:\n        # the whole variable-step family",
      "    if False:\n        # the whole variable-step family",
      "derive --order prints a design of another order", f"{T_CLI}::test_derive_order_prints"
      "_the_family_of_that_order"),
    M("plots-off-axes-unmarked", "lmsolvers/plots.py",
      "    off = sorted((z for z in roots if max(abs(z.real), abs(z.imag)) > lim), key=abs)\n",
      "    off = []\n",
      "roots beyond the axes are clipped without a mark",
      f"{T_CLI}::test_plot_command_writes_a_root_plot"),
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
    for name in LINKED:
        (dest / name).symlink_to(REPO / name, target_is_directory=True)
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
