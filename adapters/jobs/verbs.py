"""The four jobs: :func:`invert_dataset`, :func:`reconstruct`, :func:`verify`,
:func:`sample_dataset` (docs/jobs.md).  Each runs in every rank of a ``torchrun`` job (or
alone), writes only through :mod:`~lmsolvers.adapters.jobs.store`, and returns a
:class:`~lmsolvers.adapters.jobs.JobSummary`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lmsolvers import __version__ as LMSOLVERS_VERSION
from lmsolvers.bitexact import fixed_point_plan
from lmsolvers.exactness import predicted_roundtrip_error
from lmsolvers.grid import Grid
from lmsolvers.integrate import invert, sample
from lmsolvers.latent import Latent, LatentMismatchError

from ..shards import ShardError, read_shard, write_jsonl, write_shard
from .backends import Backend, build_backend
from .config import JobConfig, JobError, JobSummary
from .distributed import ProcessGroup, process_group, progress_bar
from .env import check_env, env_diff, environment, resolve_device, setup_threads
from .inputs import Dataset, Prompts, tensor_sha
from .store import (
    SHARDS,
    Job,
    batches_of,
    check_report_path,
    check_shard,
    claim_out,
    common_record,
    context_json,
    done_batch,
    finish,
    grid_from_record,
    job_header,
    latent_of,
    part_path,
    plan_key_tuple,
    save_png,
    shard_name,
)

__all__ = ["invert_dataset", "reconstruct", "verify", "sample_dataset"]

def _start(cfg: JobConfig, verb: str, data: Dataset | None
           ) -> tuple[Backend, Prompts, dict[str, Any]]:
    setup_threads(cfg)
    backend = build_backend(cfg)
    prompts = Prompts(cfg, backend)
    env = environment(backend.device)
    return backend, prompts, job_header(verb, cfg, backend, data, prompts, env)



def _finished(g: ProcessGroup, out: Path, mine: Sequence[int],
              ids_of: Callable[[int], Sequence[str]],
              check: Callable[[list[dict[str, Any]]], str | None] | None = None
              ) -> dict[int, list[dict[str, Any]]]:
    """Every rank: the records of its batches that are already complete (resume).

    A batch whose files exist but are not its own (:func:`~.store.done_batch`: a part
    copied from another batch, an altered shard) is recomputed, with a warning.
    ``check(records)`` may refuse a complete batch (the data it was computed from changed):
    then every rank raises that :class:`JobError`, so none waits at a barrier for the
    others."""
    done: dict[int, list[dict[str, Any]]] = {}
    errors: list[str] = []
    for b in mine:
        recs, why = done_batch(out, b, ids_of(b))
        if why is not None:
            warnings.warn(f"{out}: batch {b} is not what this job wrote ({why}); recomputing "
                          "it", RuntimeWarning, stacklevel=3)
        if recs is None:
            continue
        err = check(recs) if check is not None else None
        if err is not None:
            errors.append(err)
            break
        done[b] = recs
    errors = [e for rank in g.gather(errors) for e in rank]
    if errors:
        raise JobError(errors[0])
    return done


def _unchanged_sources(data: Dataset) -> Callable[[list[dict[str, Any]]], str | None]:
    """The resume check of an inversion: every sample of a finished batch still has the
    content it was inverted from (else the job would mix two versions of the data)."""

    def check(recs: list[dict[str, Any]]) -> str | None:
        for r in recs:
            sha = r.get("content_sha256")
            if sha is None:  # it failed to load: nothing was computed from it
                continue
            try:
                now = data.load(int(r["index"]))[1]
            except (OSError, ValueError, TypeError) as e:
                now = f"unreadable: {e}"
            if now != sha:
                return (f"the data changed since this job started: {r['source']} is not the "
                        f"sample that was inverted (content SHA-256 {sha[:12]}… recorded); "
                        "restore the data, or pass --overwrite to start afresh")
        return None

    return check


# ------------------------------------------------------------------- invert
def _invert_batch(cfg: JobConfig, backend: Backend, data: Dataset, prompts: Prompts,
                  common: dict[str, Any], out: Path, b: int, rows: range
                  ) -> tuple[list[dict[str, Any]], list[float], int]:
    recs: list[dict[str, Any]] = []
    xs, ok = [], []
    for i in rows:
        rec = {"id": data.ids[i], "index": i, "source": data.sources[i], "batch": b, **common}
        try:
            x, sha = data.load(i)
            rec["content_sha256"] = sha
            backend.check_range(x, data.sources[i])
            if backend.sample_shape is not None and tuple(x.shape) != backend.sample_shape:
                raise ValueError(f"{data.sources[i]}: shape {tuple(x.shape)} but the model takes "
                                 f"{backend.sample_shape} (channels, height, width)")
            if xs and x.shape != xs[0].shape:
                raise ValueError(f"{data.sources[i]}: shape {tuple(x.shape)} differs from the "
                                 f"batch's {tuple(xs[0].shape)}")
            name = prompts.name(data.ids[i])
            if name is not None:
                rec["prompt"], rec["prompt_sha256"] = name, prompts.sha[name]
            xs.append(x)
            ok.append(len(recs))
        except (OSError, ValueError, TypeError) as e:
            rec.update(status="failed", error=str(e))
        recs.append(rec)
    errors: list[float] = []
    bitwise = 0
    if ok:
        ids = [recs[j]["id"] for j in ok]
        try:
            x = torch.stack(xs)
            xbar0 = backend.to_xbar0(x)
            eps = backend.make_eps(prompts.batch([recs[j].get("prompt") for j in ok]))
            latent = invert(eps, backend.grid, backend.method, xbar0, disable=True,
                            context=backend.context, bitexact=cfg.bitexact,
                            frac_bits=cfg.frac_bits)
            if cfg.bitexact:
                tensors = {"fixed": torch.stack(latent.fixed, dim=1)}
            else:
                tensors = {"states": torch.stack(latent.states, dim=1)}
            if cfg.roundtrip:
                back = sample(eps, backend.grid, backend.method, latent, disable=True,
                              context=backend.context, bitexact=cfg.bitexact)
                err = (back - xbar0).abs().flatten(1).amax(1) * float(backend.grid.alphas[0])
                errors = [float(e) for e in err]
                if cfg.bitexact:
                    bitwise = _count_bitwise(back, xbar0, backend, cfg)
            meta = {"ids": json.dumps(ids), "batch": str(b), "method_key": latent.method_key,
                    "grid": latent.grid.fingerprint(), "nodes": json.dumps(list(latent.nodes)),
                    "context": json.dumps(context_json(latent.context)),
                    "tensor": "fixed" if cfg.bitexact else "states"}
            name = shard_name(b)
            data_bytes_sha = write_shard(out / name, tensors, meta)
            size = (out / name).stat().st_size
            for n, j in enumerate(ok):
                recs[j].update(status="ok", shard=name, offset=n, shard_sha256=data_bytes_sha,
                               shard_bytes=size, batch_ids=ids, nodes=list(latent.nodes))
                if errors:
                    recs[j]["roundtrip_error"] = errors[n]
        except Exception as e:  # the batch fails, the job goes on
            for j in ok:
                recs[j].update(status="failed", error=f"batch {b} ({', '.join(ids)}): "
                               f"{type(e).__name__}: {e}")
            errors = []
    write_jsonl(part_path(out, b), recs)
    return recs, errors, bitwise


def _count_bitwise(back: torch.Tensor, xbar0: torch.Tensor, backend: Backend,
                   cfg: JobConfig) -> int:
    """Samples whose bit-exact round trip returned bitwise the fixed-point image of x̄_0."""
    plan = fixed_point_plan(backend.method, backend.grid, backend.state_dtype,
                            frac_bits=cfg.frac_bits)
    image = plan.dequantize(plan.quantize(xbar0, 0), 0)
    same = (back.view(back.shape[0], -1) == image.view(image.shape[0], -1)).all(1)
    return int(same.sum())


def invert_dataset(cfg: JobConfig) -> JobSummary:
    """Invert every sample of ``cfg.data`` to its latent; shards + manifest under ``cfg.out``.

    Run it in every rank of a ``torchrun`` job (or alone).  Resumes a killed job with the
    same settings; refuses an output directory with other results unless ``overwrite``.
    Raises :class:`JobError` for a job that cannot run (bad model, arguments, output);
    a bad sample is recorded as failed and the job goes on.
    """
    out = Path(cfg.out)
    data = Dataset(cfg.data) if cfg.data is not None else None
    if data is None:
        raise JobError("invert-dataset needs a dataset (--data)")
    with process_group(cfg) as g:
        backend, prompts, header = _start(cfg, "invert", data)
        claim_out(g, out, header, cfg.overwrite, cfg.allow_env_mismatch)
        t0 = time.perf_counter()
        common = common_record(header, backend)
        batches = batches_of(len(data), cfg.batch_size)
        summary = JobSummary("invert-dataset", threads=cfg.threads)
        mine = [b for b in range(len(batches)) if b % g.world == g.rank]
        finished = _finished(g, out, mine, lambda b: [data.ids[i] for i in batches[b]],
                             _unchanged_sources(data))
        with progress_bar(g, cfg, sum(len(batches[b]) for b in mine), "invert") as bar:
            for b in mine:
                rows = batches[b]
                summary.total += len(rows)
                done = finished.get(b)
                if done is not None:
                    summary.skipped += len(rows)
                    summary.failed += sum(r["status"] != "ok" for r in done)
                    errs = [r["roundtrip_error"] for r in done if "roundtrip_error" in r]
                else:
                    recs, errs, bw = _invert_batch(cfg, backend, data, prompts, common, out,
                                                   b, rows)
                    summary.computed += len(rows)
                    summary.failed += sum(r["status"] != "ok" for r in recs)
                    if cfg.bitexact and cfg.roundtrip:
                        summary.bitwise = (summary.bitwise or 0) + bw
                if errs:
                    summary.max_error = max([summary.max_error or 0.0, *errs])
                bar.update(len(rows))
        summary.seconds = time.perf_counter() - t0
        return finish(g, out, len(batches), summary)



def _reconstruct_batch(backend: Backend, prompts: Prompts, grid: Grid, job: Job,
                       recs: list[dict[str, Any]]) -> torch.Tensor:
    """``x_0`` of the batch's ok samples (in shard order) from its shard."""
    where = str(job.root / recs[0]["shard"])
    tensors, meta = read_shard(job.root / recs[0]["shard"], recs[0]["shard_sha256"])
    check_shard(meta, recs, where)
    latent = latent_of(tensors, meta, recs, grid, backend, where)
    _check_prompts(prompts, recs, where)
    eps = backend.make_eps(prompts.batch([r.get("prompt") for r in recs]))
    bitexact = bool(recs[0]["bitexact"])
    xbar = sample(eps, backend.grid, backend.method, latent, disable=True,
                  context=backend.context, bitexact=bitexact)
    return xbar


def _open_for_readback(job_dir: str | os.PathLike, threads: int | None,
                       allow_env: bool, device: str | None, progress: bool | None
                       ) -> tuple[Job, JobConfig]:
    job = Job.open(job_dir, "invert")
    recorded = job.header["env"].get("threads", 1)
    cfg = job.config(threads=threads if threads is not None else recorded, device=device)
    cfg.allow_env_mismatch, cfg.progress = allow_env, progress
    return job, cfg


def _rebuild(job: Job, cfg: JobConfig, where: str) -> tuple[Backend, Prompts, Grid]:
    setup_threads(cfg)
    backend = build_backend(cfg)
    prompts = Prompts(cfg, backend)
    grid = grid_from_record(job.header["grid"])
    i = job.header["identity"]
    if backend.grid.fingerprint() != i["grid"]:
        raise LatentMismatchError(f"{where}: the model and settings now give grid "
                                  f"{backend.grid.fingerprint()}, the latents were made on "
                                  f"{i['grid']} (scheduler config changed?)")
    if backend.identity != i["model"]:
        raise JobError(f"{where}: the model changed since the inversion "
                       f"({backend.identity} now, {i['model']} recorded)")
    return backend, prompts, grid


def reconstruct(job_dir: str | os.PathLike, out: str | os.PathLike, *,
                threads: int | None = None, allow_env_mismatch: bool = False,
                overwrite: bool = False, images: bool = False, device: str | None = None,
                progress: bool | None = None) -> JobSummary:
    """Sample every inverted sample of ``job_dir`` back to data; shards of ``x0`` (the state
    dtype) and a manifest under ``out`` (PNG images too with ``images``).

    Each batch is rebuilt exactly as inverted (the recorded batch composition) and sampled
    with the recorded thread count (``threads`` overrides it: a different value raises
    :class:`EnvironmentMismatchError` unless ``allow_env_mismatch``, then it warns).
    """
    job, cfg = _open_for_readback(job_dir, threads, allow_env_mismatch, device, progress)
    out = Path(out)
    with process_group(cfg) as g:
        setup_threads(cfg)  # the environment is checked before the (costly) model set-up
        env = environment(resolve_device(cfg.device))
        check_env(job.header["env"], env, allow_env_mismatch, f"reconstructing {job.root}")
        backend, prompts, grid = _rebuild(job, cfg, str(job.root))
        header = {"identity": {"verb": "reconstruct", "source_job": str(job.root.resolve()),
                               "source_identity": job.header["identity"]},
                  "env": env, "config": {"job": str(job.root)}, "lmsolvers": LMSOLVERS_VERSION}
        claim_out(g, out, header, overwrite, allow_env_mismatch, source=job.root)
        t0 = time.perf_counter()
        nb = max(job.batches) + 1 if job.batches else 0
        summary = JobSummary("reconstruct", threads=cfg.threads)
        mine = [b for b in sorted(job.batches) if b % g.world == g.rank]
        finished = _finished(g, out, mine, lambda b: [r["id"] for r in job.batches[b]])
        with progress_bar(g, cfg, sum(len(job.batches[b]) for b in mine), "reconstruct") as bar:
            for b in mine:
                recs = job.batches[b]
                summary.total += len(recs)
                if b in finished:
                    summary.skipped += len(recs)
                    bar.update(len(recs))
                    continue
                okr = sorted((r for r in recs if r["status"] == "ok"), key=lambda r: r["offset"])
                outrecs = [{"id": r["id"], "source": r["source"], "batch": b,
                            "status": "failed", "error": r.get("error", "")}
                           for r in recs if r["status"] != "ok"]
                if okr:
                    try:
                        x0 = backend.from_xbar0(_reconstruct_batch(backend, prompts, grid, job,
                                                                   okr))
                        name = shard_name(b)
                        sha = write_shard(out / name, {"x0": x0},
                                          {"ids": json.dumps([r["id"] for r in okr])})
                        size = (out / name).stat().st_size
                        for n, r in enumerate(okr):
                            outrecs.append({"id": r["id"], "source": r["source"], "batch": b,
                                            "status": "ok", "shard": name, "offset": n,
                                            "shard_sha256": sha, "shard_bytes": size,
                                            "env": env})
                            if images:
                                save_png(out / "images" / f"{r['id']}.png", x0[n])
                    except Exception as e:
                        for r in okr:
                            outrecs.append({"id": r["id"], "source": r["source"], "batch": b,
                                            "status": "failed",
                                            "error": f"{type(e).__name__}: {e}"})
                outrecs.sort(key=lambda r: r["id"])
                write_jsonl(part_path(out, b), outrecs)
                summary.computed += len(recs)
                summary.failed += sum(r["status"] != "ok" for r in outrecs)
                bar.update(len(recs))
        summary.seconds = time.perf_counter() - t0
        return finish(g, out, nb, summary)


# -------------------------------------------------------------------- verify
def _default_tolerance(backend: Backend, scale: float) -> float:
    """10 × the library's predicted relative round-trip error ``u·R``
    (:func:`~lmsolvers.predicted_roundtrip_error`) × ``max(1, scale)``.

    Round-off is relative to the magnitudes the run handles, so ``scale`` is the largest
    model-space magnitude at the run's ends: ``max(|x_0|, |α_m x̄_m|)`` over the sample and
    its latent states.  (A latent can be far larger than the noise it stands for when the
    method's parasitic mode grows during inversion; its round trip then loses accordingly.)
    """
    pred = predicted_roundtrip_error(backend.method, backend.grid, backend.state_dtype)
    return 10.0 * pred * max(1.0, scale)


def _latent_scale(latent: Latent, n: int) -> float:
    """``max_m |α_m x̄_m|`` over the latent states of row ``n`` (model space)."""
    return max(float((st[n].abs().max()) * float(latent.grid.alphas[m]))
               for st, m in zip(latent.states, latent.nodes, strict=True))


def _verify_batch(backend: Backend, prompts: Prompts, grid: Grid, job: Job,
                  data: Dataset | None, recs: list[dict[str, Any]], env_diff: list[str],
                  tolerance: float | None, recompute: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    okr = sorted((r for r in recs if r["status"] == "ok"), key=lambda r: r["offset"])
    for r in recs:
        if r["status"] != "ok":
            out.append({"id": r["id"], "batch": r["batch"], "status": "failed-in-job",
                        "message": r.get("error", "")})
    if not okr:
        return out
    shard = job.root / okr[0]["shard"]

    def all_(status: str, message: str) -> list[dict[str, Any]]:
        return out + [{"id": r["id"], "batch": r["batch"], "shard": r["shard"],
                       "status": status, "message": message} for r in okr]

    try:
        tensors, meta = read_shard(shard, okr[0]["shard_sha256"])
        check_shard(meta, okr, str(shard))
        latent = latent_of(tensors, meta, okr, grid, backend, str(shard))
    except LatentMismatchError as e:
        return all_("identity-mismatch", str(e))
    except ShardError as e:
        status = "missing-shard" if "missing" in str(e) else (
            "hash-mismatch" if "SHA-256" in str(e) else "shard-mismatch")
        return all_(status, str(e))
    if env_diff:
        return all_("env-mismatch", "; ".join(env_diff))
    try:
        _check_prompts(prompts, okr, str(shard))
    except ShardError as e:
        return all_("prompt-changed", str(e))
    if not recompute:
        return out + [{"id": r["id"], "batch": r["batch"], "shard": r["shard"],
                       "status": "ok", "message": "shard checked, not recomputed"}
                      for r in okr]
    xs, bad = [], {}
    for r in okr:
        try:
            if data is None:
                raise ValueError("dataset not available")
            x, sha = data.load(int(r["index"]))
            if sha != r["content_sha256"]:
                bad[r["id"]] = ("source-changed", f"{r['source']}: content SHA-256 differs from "
                                "the inverted sample's")
            xs.append(x)
        except (OSError, ValueError, TypeError) as e:
            bad[r["id"]] = ("source-unreadable", str(e))
            xs.append(None)
    try:
        eps = backend.make_eps(prompts.batch([r.get("prompt") for r in okr]))
        xbar = sample(eps, backend.grid, backend.method, latent, disable=True,
                      context=backend.context, bitexact=bool(okr[0]["bitexact"]))
    except LatentMismatchError as e:
        return all_("identity-mismatch", str(e))
    except Exception as e:
        return all_("reconstruct-failed", f"{type(e).__name__}: {e}")
    x0 = backend.from_xbar0(xbar)
    plan = None
    if okr[0]["bitexact"]:
        plan = fixed_point_plan(backend.method, grid, backend.state_dtype,
                                frac_bits=plan_key_tuple(okr[0]["plan_key"])[1])
    for n, r in enumerate(okr):
        rec = {"id": r["id"], "batch": r["batch"], "shard": r["shard"]}
        if r["id"] in bad:
            rec.update(status=bad[r["id"]][0], message=bad[r["id"]][1])
            out.append(rec)
            continue
        x = xs[n].to(backend.device, backend.state_dtype)
        e = float((x0[n] - x).abs().max())
        rec["error"] = _to_float(e)
        if plan is not None:
            xb = backend.to_xbar0(x.unsqueeze(0))
            image = plan.dequantize(plan.quantize(xb, 0), 0)
            same = bool(torch.equal(xbar[n:n + 1], image))
            rec["bitwise"] = same
            rec["status"] = "ok" if same else "not-bitwise"
        else:
            scale = max(float(x.abs().max()), _latent_scale(latent, n))
            tol = tolerance if tolerance is not None else _default_tolerance(backend, scale)
            rec["scale"], rec["tolerance"] = scale, tol
            rec["status"] = "ok" if e <= tol else "error-too-large"
        out.append(rec)
    return out


def verify(job_dir: str | os.PathLike, *, report: str | os.PathLike | None = None,
           tolerance: float | None = None, threads: int | None = None,
           allow_env_mismatch: bool = False, recompute: bool = True,
           device: str | None = None, progress: bool | None = None,
           overwrite: bool = False) -> tuple[JobSummary, list[dict[str, Any]]]:
    """Check an inversion job and measure its round trips; returns the summary and the
    per-sample report (also written as JSONL to ``report``).

    Per batch: the shard's SHA-256 against the manifest (missing, truncated or altered
    shards), the shard header against the manifest (ids, order, method, grid, context),
    shards in the directory that no record names, the environment against the recorded
    one (a difference is reported as ``env-mismatch`` and the batch is not recomputed,
    unless ``allow_env_mismatch``), the source's content hash, and — recomputing the
    reconstruction with the recorded batch — the max-abs round-trip error per sample
    (``tolerance`` default: 10× the predicted relative error
    :func:`~lmsolvers.predicted_roundtrip_error` times the largest model-space magnitude of
    the sample and its latent states; bit-exact jobs must reproduce the fixed-point image
    of x̄_0 bitwise).  ``summary.problems`` counts every status but ``ok``.
    """
    job, cfg = _open_for_readback(job_dir, threads, allow_env_mismatch, device, progress)
    if report is not None:
        check_report_path(report, overwrite)
    with process_group(cfg) as g:
        backend, prompts, grid = _rebuild(job, cfg, str(job.root))
        env = environment(backend.device)
        data = None
        if recompute and job.header["config"].get("data") is not None:
            try:
                data = Dataset(job.header["config"]["data"])
                if data.identity() != job.header["identity"]["data"]:
                    raise JobError(f"dataset {data.spec} has changed (other samples or order) "
                                   "since the inversion")
            except JobError as e:
                if g.rank == 0:
                    warnings.warn(str(e), RuntimeWarning, stacklevel=2)
                data = None
        g.barrier()
        t0 = time.perf_counter()
        summary = JobSummary("verify", threads=cfg.threads)
        mine = [b for b in sorted(job.batches) if b % g.world == g.rank]
        rows: list[dict[str, Any]] = []
        with progress_bar(g, cfg, sum(len(job.batches[b]) for b in mine), "verify") as bar:
            for b in mine:
                recs = job.batches[b]
                differs = env_diff(recs[0]["env"], env) if not allow_env_mismatch else []
                got = _verify_batch(backend, prompts, grid, job, data, recs, differs,
                                    tolerance, recompute)
                rows += got
                summary.total += len(recs)
                summary.computed += len(recs)
                bar.update(len(recs))
        if g.rank == 0:  # shards on disk that no record names
            named = {r["shard"] for rs in job.batches.values() for r in rs if r.get("shard")}
            for p in sorted((job.root / SHARDS).glob("*.safetensors")):
                name = f"{SHARDS}/{p.name}"
                if name not in named:
                    rows.append({"id": None, "batch": None, "shard": name,
                                 "status": "orphan-shard",
                                 "message": f"{p} is in no manifest record"})
        for r in rows:
            if r["status"] == "failed-in-job":
                summary.failed += 1
            elif r["status"] != "ok":
                summary.problems[r["status"]] = summary.problems.get(r["status"], 0) + 1
            if r.get("error") is not None:
                summary.max_error = max(summary.max_error or 0.0, r["error"])
            if "bitwise" in r:
                summary.bitwise = (summary.bitwise or 0) + int(r["bitwise"])
        summary.seconds = time.perf_counter() - t0
        g.barrier()
        everything = g.gather((dataclasses.asdict(summary), rows))
        if g.rank != 0:
            return summary, rows
        total = JobSummary("verify", world_size=g.world, threads=cfg.threads,
                           out=str(job.root))
        all_rows: list[dict[str, Any]] = []
        for s, rs in everything:
            all_rows += rs
            total.total += s["total"]
            total.computed += s["computed"]
            total.failed += s["failed"]
            total.seconds = max(total.seconds, s["seconds"])
            if s["max_error"] is not None:
                total.max_error = max(total.max_error or 0.0, s["max_error"])
            if s["bitwise"] is not None:
                total.bitwise = (total.bitwise or 0) + s["bitwise"]
            for k, v in s["problems"].items():
                total.problems[k] = total.problems.get(k, 0) + v
        all_rows.sort(key=lambda r: (r["batch"] is None, r["batch"] or 0, str(r["id"])))
        if report is not None:
            write_jsonl(report, all_rows)
        return total, all_rows



# ------------------------------------------------------------------ sampling
def _sample_seed(seed: int, i: int) -> int:
    """The generator seed of sample ``i``: a hash of (seed, i), so samples do not depend on
    the batching or the ranks and jobs with nearby seeds do not share noise."""
    d = hashlib.sha256(f"lmsolvers-sample:{seed}:{i}".encode()).digest()
    return int.from_bytes(d[:8], "little") & ((1 << 63) - 1)


def sample_dataset(cfg: JobConfig) -> JobSummary:
    """Draw ``cfg.num_samples`` samples; shards of ``x0`` (state dtype) + manifest.

    Sample ``i``'s noise ``x_T`` is ``torch.randn`` (float32, CPU) from a generator seeded
    by a hash of ``(cfg.seed, i)``, cast to the state dtype: independent of the batch size
    and of the ranks.  Resumable like :func:`invert_dataset`.
    """
    out = Path(cfg.out)
    if not (isinstance(cfg.num_samples, int) and cfg.num_samples >= 1):
        raise JobError(f"sample-dataset needs a positive number of samples, got "
                       f"{cfg.num_samples!r}")
    with process_group(cfg) as g:
        backend, prompts, header = _start(cfg, "sample", None)
        if backend.sample_shape is None:
            raise JobError("the sample shape is unknown: give --shape C,H,W")
        claim_out(g, out, header, cfg.overwrite, cfg.allow_env_mismatch)
        t0 = time.perf_counter()
        common = common_record(header, backend)
        width = max(6, len(str(cfg.num_samples - 1)))
        ids = [f"{i:0{width}d}" for i in range(cfg.num_samples)]
        batches = batches_of(cfg.num_samples, cfg.batch_size)
        summary = JobSummary("sample-dataset", threads=cfg.threads)
        mine = [b for b in range(len(batches)) if b % g.world == g.rank]
        finished = _finished(g, out, mine, lambda b: [ids[i] for i in batches[b]])
        with progress_bar(g, cfg, sum(len(batches[b]) for b in mine), "sample") as bar:
            for b in mine:
                rows = batches[b]
                summary.total += len(rows)
                if b in finished:
                    summary.skipped += len(rows)
                    bar.update(len(rows))
                    continue
                recs = []
                try:
                    names = [prompts.name(ids[i]) for i in rows]
                    noise = torch.stack([torch.randn(
                        backend.sample_shape, generator=torch.Generator().manual_seed(
                            _sample_seed(cfg.seed, i))) for i in rows])
                    xbarN = noise.to(backend.device, backend.state_dtype) / float(
                        backend.grid.alphas[-1])
                    eps = backend.make_eps(prompts.batch(names))
                    xbar0 = sample(eps, backend.grid, backend.method, xbarN, disable=True,
                                   context=backend.context, bitexact=cfg.bitexact,
                                   frac_bits=cfg.frac_bits)
                    x0 = backend.from_xbar0(xbar0)
                    name = shard_name(b)
                    sha = write_shard(out / name, {"x0": x0},
                                      {"ids": json.dumps([ids[i] for i in rows])})
                    size = (out / name).stat().st_size
                    for n, i in enumerate(rows):
                        rec = {"id": ids[i], "index": i, "batch": b, "status": "ok",
                               "seed": cfg.seed, "generator_seed": _sample_seed(cfg.seed, i),
                               "shard": name, "offset": n, "shard_sha256": sha,
                               "shard_bytes": size, "content_sha256": tensor_sha(x0[n]),
                               "batch_ids": [ids[j] for j in rows], **common}
                        if names[n] is not None:
                            rec["prompt"], rec["prompt_sha256"] = names[n], prompts.sha[names[n]]
                        recs.append(rec)
                        if cfg.images:
                            save_png(out / "images" / f"{ids[i]}.png", x0[n])
                except Exception as e:
                    recs = [{"id": ids[i], "index": i, "batch": b, "status": "failed",
                             "error": f"{type(e).__name__}: {e}", **common} for i in rows]
                write_jsonl(part_path(out, b), recs)
                summary.computed += len(rows)
                summary.failed += sum(r["status"] != "ok" for r in recs)
                bar.update(len(rows))
        summary.seconds = time.perf_counter() - t0
        return finish(g, out, len(batches), summary)


def _to_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _check_prompts(prompts: Prompts, recs: Sequence[Mapping[str, Any]], where: str) -> None:
    """Every sample's prompt embedding must be the one it was inverted with."""
    for r in recs:
        if r.get("prompt") is not None and prompts.sha.get(r["prompt"]) != r["prompt_sha256"]:
            raise ShardError(f"{where}: the embedding of prompt {r['prompt']!r} (sample "
                             f"{r['id']!r}) changed since the inversion")

