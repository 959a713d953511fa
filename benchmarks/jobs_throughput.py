"""Throughput of the dataset jobs on the digits DDPM: 1 and 2 processes (torchrun, gloo).

``python -m benchmarks.jobs_throughput`` inverts the 360 held-out digits
(models/digits_split.json) with ``lmsolvers invert-dataset`` and verifies them with
``lmsolvers verify`` (which recomputes every reconstruction), once per repeat with 1 and
with 2 processes launched by ``torchrun --standalone`` (gloo, one thread per process),
and writes ``benchmarks/results/jobs_throughput.md``: images/s of the compute phase
(after the model set-up; median over the repeats with a 95 % percentile-bootstrap
interval), the end-to-end time of the command (process start, imports, model load and
grid design included), and whether the 2-process files are bitwise those of 1 process.

This module is also the dataset entry point of the README's commands:
``--data benchmarks.jobs_throughput:held_out_digits`` (:func:`held_out_digits`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.default_config import bootstrap
from benchmarks.digits_data import REPO_ROOT, load_digits_split
from benchmarks.tables import markdown_table

RESULTS = REPO_ROOT / "benchmarks" / "results" / "jobs_throughput.md"
MODEL = REPO_ROOT / "models" / "digits_ddpm"


def held_out_digits() -> torch.Tensor:
    """The 360 held-out digits (models/digits_split.json), ``(360, 1, 8, 8)`` in [−1, 1]:
    ``lmsolvers invert-dataset --data benchmarks.jobs_throughput:held_out_digits``."""
    return load_digits_split("test")[0]


def _worker(args: argparse.Namespace) -> None:
    """One rank of a timed job (run under torchrun); rank 0 writes the summary as JSON."""
    from dataclasses import asdict

    from lmsolvers.adapters.jobs import JobConfig, invert_dataset, verify

    if args.worker == "invert":
        s = invert_dataset(JobConfig(
            out=args.out, model=str(MODEL), data="benchmarks.jobs_throughput:held_out_digits",
            steps=args.steps, batch_size=args.batch_size, threads=1, progress=False))
    else:
        s, _ = verify(args.out, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.summary).write_text(json.dumps({**asdict(s), "throughput": s.throughput,
                                                  "ok": s.ok}))


def _run(nproc: int, worker: str, out: Path, summary: Path, args: argparse.Namespace
         ) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), "-m", "benchmarks.jobs_throughput", "--worker", worker, "--out", str(out),
           "--summary", str(summary), "--steps", str(args.steps), "--batch-size",
           str(args.batch_size)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(summary.read_text()), wall


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=30)
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=("invert", "verify"), default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--summary", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    rows, raw = [], {}
    first: dict[int, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for rep in range(args.repeats):
            for nproc in (1, 2):  # interleaved, so a load change hits both alike
                out = tmp / f"job{nproc}"
                shutil.rmtree(out, ignore_errors=True)
                si, wi = _run(nproc, "invert", out, tmp / "s.json", args)
                sv, wv = _run(nproc, "verify", out, tmp / "v.json", args)
                if not (si["ok"] and sv["ok"]):
                    raise RuntimeError(f"{nproc} processes: a job failed: {si} {sv}")
                raw.setdefault(nproc, []).append((si["throughput"], sv["throughput"], wi, wv,
                                                  sv["max_error"]))
                if rep == 0:
                    first[nproc] = _files(out)
                print(f"repeat {rep}: {nproc} process(es): invert {si['throughput']:.1f} img/s, "
                      f"verify {sv['throughput']:.1f} img/s, end-to-end {wi:.1f} s + {wv:.1f} s",
                      flush=True)
    same = first[1] == first[2]
    base = None
    for nproc in (1, 2):
        a = np.array(raw[nproc])
        inv = bootstrap(a[:, 0], args.boot, 0)
        ver = bootstrap(a[:, 1], args.boot, 1)
        base = base or inv["median"]
        rows.append([nproc, f"{inv['median']:.1f} [{inv['median_lo']:.1f}, {inv['median_hi']:.1f}]",
                     f"{inv['median'] / base:.2f}×",
                     f"{ver['median']:.1f} [{ver['median_lo']:.1f}, {ver['median_hi']:.1f}]",
                     f"{np.median(a[:, 2]):.1f}", f"{np.median(a[:, 3]):.1f}",
                     f"{a[:, 4].max():.1e}"])
    table = markdown_table(
        ["processes", "invert-dataset images/s", "speed-up", "verify images/s",
         "invert-dataset end-to-end s", "verify end-to-end s", "max round-trip error"], rows)
    load = os.getloadavg()
    text = (
        "# Dataset-job throughput on the digits DDPM\n\n"
        f"`python -m benchmarks.jobs_throughput --repeats {args.repeats} --steps {args.steps} "
        f"--batch-size {args.batch_size}`: the 360 held-out digits, default exact "
        f"configuration with {args.steps} steps, batches of {args.batch_size} (one shard "
        "each), float64 state, one torch thread per process, `torchrun --standalone` with "
        "gloo. images/s: compute phase (after the model set-up), median over "
        f"{args.repeats} repeats [95 % bootstrap interval]; verify recomputes every "
        "reconstruction. End-to-end: the whole command, process start and imports "
        "included (median).\n\n"
        f"{table}\n\n"
        f"Files (shards, manifest, job.json) of 2 processes bitwise identical to 1 process: "
        f"**{'yes' if same else 'NO'}**.\n\n"
        f"Machine: {os.cpu_count()} cores shared with other work (load average "
        f"{load[0]:.1f} at the end), {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}. The scaling model: docs/jobs.md.\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
