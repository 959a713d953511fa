"""The job directory and its invariants, in one place (docs/jobs.md, "Output").

A job directory holds ``job.json`` (settings, identity, environment, the grid's nodes),
``shards/shard-BBBBBB.safetensors`` (batch B's tensors), ``shards/shard-BBBBBB.jsonl``
(batch B's manifest part, written after its shard) and ``manifest.jsonl`` (every record,
merged at the end).  Every file is written atomically (:mod:`lmsolvers.adapters.shards`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmsolvers import __version__ as LMSOLVERS_VERSION
from lmsolvers.bitexact import BitexactLatent, fixed_point_plan
from lmsolvers.grid import Grid
from lmsolvers.latent import Latent, LatentMismatchError, freeze_context

from ..shards import (
    ShardError,
    atomic_write_bytes,
    atomic_write_text,
    read_jsonl,
    read_shard_metadata,
    sha256_file,
    write_jsonl,
)
from .config import EnvironmentMismatchError, JobConfig, JobError, JobSummary
from .distributed import ProcessGroup
from .env import check_env

if TYPE_CHECKING:
    from .backends import Backend
    from .inputs import Dataset, Prompts

__all__ = ["JOB_FILE", "MANIFEST", "SHARDS", "Job", "batches_of", "check_shard", "claim_out",
           "common_record", "context_json", "done_batch", "finish", "grid_from_record",
           "grid_record", "job_header", "latent_of", "part_path", "plan_key_json",
           "plan_key_tuple", "save_png", "shard_name"]

#: the job record: settings, identity, environment, the grid
JOB_FILE = "job.json"
#: every record of the job, merged from the parts at the end
MANIFEST = "manifest.jsonl"
#: the folder of the shards and their manifest parts
SHARDS = "shards"


def save_png(path: Path, x: torch.Tensor) -> None:
    """Write a ``(C, H, W)`` image in [−1, 1] as an 8-bit PNG (grey or RGB), atomically."""
    from PIL import Image

    a = ((x.detach().double().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    if a.shape[0] == 1:
        im = Image.fromarray(a[0].numpy(), mode="L")
    elif a.shape[0] == 3:
        im = Image.fromarray(a.permute(1, 2, 0).numpy(), mode="RGB")
    else:
        raise ValueError(f"{path}: cannot write a {a.shape[0]}-channel image as PNG")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())



# ------------------------------------------------------------------ the job dir
def grid_record(grid: Grid) -> dict[str, Any]:
    """A grid as ``job.json`` records it: its fingerprint and every node's σ̄, timestep, α."""
    def arr(a: np.ndarray | None) -> list[float] | None:
        return None if a is None else [float(v) for v in a]

    return {"fingerprint": grid.fingerprint(), "sigma_bar": arr(grid.sigma_bar),
            "timesteps": arr(grid.timesteps), "alphas": arr(grid.alphas)}


def grid_from_record(rec: Mapping[str, Any]) -> Grid:
    """The :class:`~lmsolvers.Grid` of ``job.json`` (every node's σ̄, timestep and α),
    checked against its recorded fingerprint."""
    g = Grid(rec["sigma_bar"], rec["timesteps"], rec["alphas"])
    if g.fingerprint() != rec["fingerprint"]:
        raise ShardError("the grid recorded in job.json does not match its own fingerprint "
                         "(job.json was edited)")
    return g


def context_json(ctx: Mapping[str, Any] | Sequence[Any]) -> list[list[Any]]:
    """A model-side context as a JSON-ready sorted list of ``[key, value]`` pairs."""
    items = ctx.items() if isinstance(ctx, Mapping) else ctx
    return [[k, v] for k, v in sorted(items)]


def _cfg_record(cfg: JobConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for k in ("out", "overwrite", "allow_env_mismatch", "progress", "timeout", "images",
              "roundtrip"):
        d.pop(k)
    for k in ("model", "data", "prompt_embeds", "prompts"):
        if d[k] is not None and os.path.exists(d[k]):
            d[k] = os.path.abspath(d[k])
    d["shape"] = list(cfg.shape) if cfg.shape else None
    return d


def job_header(verb: str, cfg: JobConfig, backend: Backend, data: Dataset | None,
                prompts: Prompts, env: dict[str, Any]) -> dict[str, Any]:
    """The content of ``job.json``: the identity a resumed run must match (model, data, method,
    grid, batch size, …), the environment, the settings and the grid."""
    m = backend.method
    plan_key = None
    if cfg.bitexact:
        plan_key = plan_key_json(fixed_point_plan(m, backend.grid, backend.state_dtype,
                                                   frac_bits=cfg.frac_bits).key())
    identity = {
        "verb": verb, "model": backend.identity, "method": m.name, "method_key": m.key,
        "k": m.k, "steps": cfg.steps, "grid": backend.grid.fingerprint(),
        "context": context_json(backend.context), "state_dtype": str(backend.state_dtype),
        "model_dtype": cfg.model_dtype, "bitexact": cfg.bitexact, "plan_key": plan_key,
        "batch_size": cfg.batch_size, "prompts": prompts.identity(),
        "data": None if data is None else data.identity(),
        "num_samples": cfg.num_samples, "seed": cfg.seed if verb == "sample" else None,
    }
    return {"identity": identity, "env": env, "config": _cfg_record(cfg),
            "grid": grid_record(backend.grid), "lmsolvers": LMSOLVERS_VERSION}


def plan_key_json(key: tuple[Any, ...]) -> list[Any]:
    """A bit-exact fixed-point plan key in JSON form."""
    dtype, fb, sb, top = key
    return [dtype, fb, sb, list(top)]


def plan_key_tuple(rec: Sequence[Any]) -> tuple[Any, ...]:
    """A bit-exact fixed-point plan key from its JSON form (:func:`plan_key_json`)."""
    dtype, fb, sb, top = rec
    return (dtype, int(fb), float(sb), tuple(float(v) for v in top))


#: the verb recorded in job.json → the command that writes such a directory
COMMANDS = {"invert": "invert-dataset", "sample": "sample-dataset",
            "reconstruct": "reconstruct"}
#: what a job directory holds besides job.json: never touched by another command
_OWN = (JOB_FILE, MANIFEST, SHARDS, "images")


def _owning_job(path: Path) -> tuple[Path, Path] | None:
    """``(job directory, path relative to it)`` if ``path`` is one of a job directory's own
    files (job.json, the manifest, anything under shards/ or images/, their temporaries),
    else ``None``."""
    path = path.resolve()
    for d in path.parents:
        if (d / JOB_FILE).is_file():
            rel = path.relative_to(d)
            if rel.parts and (rel.parts[0] in _OWN or rel.parts[0].startswith(_OWN)):
                return d, rel
    return None


def check_report_path(report: str | os.PathLike, overwrite: bool) -> None:
    """Refuse a report path that is a directory, an existing file (unless ``overwrite``), or
    one of a job directory's own files (``--overwrite`` included: a report never replaces
    a job's manifest, job.json, shards or images)."""
    path = Path(report)
    owner = _owning_job(path)
    if owner is not None:
        d, rel = owner
        raise JobError(f"report {report} would replace {rel.as_posix()} of the job in {d}: a "
                       "job's own files are never replaced by a report (--overwrite "
                       "included); write the report outside the job's files")
    if path.is_dir():
        raise JobError(f"report {report} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise JobError(f"report {report} exists: never overwritten (pass --overwrite)")


def _prepare_out(out: Path, header: dict[str, Any], overwrite: bool, allow_env: bool,
                 source: Path | None) -> str | None:
    """Rank 0: make ``out`` a directory for this job (or refuse); returns an error message.

    The invariants: a job directory is only ever the output of the command that made it
    (``--overwrite`` replaces a job of the same command, never another command's, never
    the job being read); a directory with files but no job.json is never written into;
    resuming needs the same identity and environment."""
    job = out / JOB_FILE
    verb = header["identity"]["verb"]
    try:
        if out.exists() and not out.is_dir():
            return f"output {out} exists and is not a directory"
        if source is not None:
            src = source.resolve()
            if out.resolve() == src or _owning_job(out) is not None:
                return (f"output {out} is the job being read ({source}) or one of its files: "
                        "a job is never the output of another command, --overwrite included; "
                        "choose another directory")
        elif _owning_job(out) is not None:
            return (f"output {out} lies inside the files of the job in "
                    f"{_owning_job(out)[0]}; choose another directory")
        if job.is_file():
            try:
                old = json.loads(job.read_text())
                old_verb = old.get("identity", {}).get("verb")
            except (ValueError, AttributeError):
                return (f"output {out} holds a {JOB_FILE} that is not a job record: never "
                        "touched; choose another directory")
            if old_verb != verb:
                what = COMMANDS.get(old_verb, repr(old_verb))
                return (f"output {out} is the directory of a {what} job: a job directory is "
                        f"never the output of another command ({COMMANDS[verb]}), --overwrite "
                        "included; choose another directory")
            if overwrite:
                shutil.rmtree(out / SHARDS, ignore_errors=True)
                for name in (MANIFEST, JOB_FILE, "images"):
                    p = out / name
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
            else:
                a, b = old.get("identity", {}), header["identity"]
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                if diff:
                    return (f"output {out} holds results of another job (differs in "
                            f"{', '.join(diff)}); never overwritten: pass --overwrite or "
                            "choose another directory")
                check_env(old.get("env", {}), header["env"], allow_env,
                          f"resuming the job in {out}")
                return None
        elif out.is_dir() and any(out.iterdir()):
            return (f"output {out} is not empty and holds no {JOB_FILE}: refusing to write "
                    "into it (choose a new or empty directory)")
        (out / SHARDS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(job, json.dumps(header, indent=1, sort_keys=True) + "\n")
    except EnvironmentMismatchError as e:
        return str(e)
    except (OSError, ValueError) as e:
        return f"output {out}: {e}"
    return None


def claim_out(g: ProcessGroup, out: Path, header: dict[str, Any], overwrite: bool,
              allow_env: bool, source: Path | None = None) -> None:
    """All ranks: rank 0 prepares ``out`` (:func:`_prepare_out`; ``source`` is the job a
    read-back command reads), every rank raises its refusal as :class:`JobError`, and no
    rank goes on before the directory is ready."""
    err = g.broadcast(_prepare_out(out, header, overwrite, allow_env, source)
                      if g.rank == 0 else None)
    if err:
        raise JobError(err)
    g.barrier()


def shard_name(b: int) -> str:
    """The shard of batch ``b``, relative to the job directory."""
    return f"{SHARDS}/shard-{b:06d}.safetensors"


def part_path(out: Path, b: int) -> Path:
    """The manifest part of batch ``b``."""
    return out / SHARDS / f"shard-{b:06d}.jsonl"


def done_batch(out: Path, b: int, ids: Sequence[str]
               ) -> tuple[list[dict[str, Any]] | None, str | None]:
    """``(records, None)`` if batch ``b`` is complete and is the batch of ``ids``;
    ``(None, None)`` if it was never finished; ``(None, why)`` if its files exist but are
    not this batch's (a part copied from another batch, a shard altered or replaced, a
    truncated file): the caller recomputes it.

    Complete means: the part lists exactly ``ids``, each record says batch ``b``, and the
    shard its ok records name is this batch's, has their recorded size and SHA-256, and
    holds their ids in their order."""
    part = part_path(out, b)
    if not part.is_file():
        return None, None
    try:
        recs = read_jsonl(part)
    except (OSError, ShardError) as e:
        return None, f"its part is unreadable ({e})"
    got = sorted((str(r.get("batch")), str(r.get("id"))) for r in recs)
    if got != sorted((str(b), str(i)) for i in ids):
        return None, (f"its part {part.name} lists (batch, sample) {got[:2]}… but batch {b} "
                      f"holds samples {sorted(ids)[:2]}… (a part of another batch or job)")
    ok = sorted((r for r in recs if r.get("status") == "ok"), key=lambda r: r.get("offset", -1))
    if not ok:
        return recs, None
    names = {r.get("shard") for r in ok}
    shas = {r.get("shard_sha256") for r in ok}
    if names != {shard_name(b)} or len(shas) != 1:
        return None, f"its part {part.name} names shards {sorted(map(str, names))}"
    path = out / shard_name(b)
    try:
        if path.stat().st_size != ok[0].get("shard_bytes") or sha256_file(path) != shas.pop():
            return None, f"its shard {path.name} does not match the part (size or SHA-256)"
        meta = read_shard_metadata(path)
    except (OSError, ShardError) as e:
        return None, f"its shard {path.name} is missing or unreadable ({e})"
    if json.loads(meta.get("ids", "null") or "null") != [r["id"] for r in ok]:
        return None, f"its shard {path.name} holds other samples than its part lists"
    return recs, None


def finish(g: ProcessGroup, out: Path, nbatches: int, summary: JobSummary,
            manifest: Path | None = None) -> JobSummary:
    """Barrier, aggregate the ranks' summaries, rank 0 merges the parts atomically."""
    g.barrier()
    parts = g.gather(dataclasses.asdict(summary))
    if g.rank != 0:
        return summary
    total = JobSummary(summary.verb, world_size=g.world, threads=summary.threads, out=str(out))
    errs = [p["max_error"] for p in parts if p["max_error"] is not None]
    total.max_error = max(errs) if errs else None
    bw = [p["bitwise"] for p in parts if p["bitwise"] is not None]
    total.bitwise = sum(bw) if bw else None
    for p in parts:
        total.total += p["total"]
        total.computed += p["computed"]
        total.skipped += p["skipped"]
        total.failed += p["failed"]
        total.seconds = max(total.seconds, p["seconds"])
        for k, v in p["problems"].items():
            total.problems[k] = total.problems.get(k, 0) + v
    records = []
    missing = []
    for b in range(nbatches):
        part = part_path(out, b)
        if part.is_file():
            records += read_jsonl(part)
        else:
            missing.append(b)
    if missing:
        total.problems["batches missing"] = len(missing)
    else:
        write_jsonl(manifest or out / MANIFEST, records)
    for stale in (out / SHARDS).glob("*.tmp"):  # left by a killed run; every rank is done
        stale.unlink(missing_ok=True)
    return total



def batches_of(n: int, size: int) -> list[range]:
    """The batches of ``n`` samples in batches of ``size``: batch ``b`` holds samples
    ``b·size … (b+1)·size − 1``, whatever the number of ranks (docs/jobs.md, Determinism)."""
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def common_record(header: Mapping[str, Any], backend: Backend) -> dict[str, Any]:
    """The fields every manifest record of a job shares: the latents' identity, the model,
    the dtypes, the environment."""
    i = header["identity"]
    return {"method": i["method"], "method_key": i["method_key"], "grid": i["grid"],
            "context": i["context"], "model": i["model"], "state_dtype": i["state_dtype"],
            "model_dtype": i["model_dtype"], "bitexact": i["bitexact"],
            "plan_key": i["plan_key"], "guidance": backend.context.get("guidance_scale"),
            "env": header["env"], "lmsolvers": LMSOLVERS_VERSION}


# -------------------------------------------------------- reading a job back
#: what the read-back commands use from job.json, and from each manifest record
_HEADER_KEYS = {"invert": ("env", "config", "grid")}
_RECORD_KEYS = ("id", "batch", "status", "source", "env")
_OK_RECORD_KEYS = ("index", "shard", "offset", "shard_sha256", "shard_bytes", "batch_ids",
                   "content_sha256", "method", "method_key", "grid", "context", "nodes",
                   "bitexact", "plan_key")


@dataclass
class Job:
    """A finished job directory: header, manifest records grouped by batch."""

    root: Path
    header: dict[str, Any]
    batches: dict[int, list[dict[str, Any]]]

    @classmethod
    def open(cls, root: str | os.PathLike, verb: str) -> Job:
        """Read a finished job directory, checking that job.json and every manifest record
        have what the read-back commands use (a one-line :class:`JobError` naming the file,
        line and key otherwise: never a ``KeyError``)."""
        root = Path(root)
        job = root / JOB_FILE
        if not job.is_file():
            raise JobError(f"{root} is not a job directory ({job} is missing)")
        try:
            header = json.loads(job.read_text())
        except ValueError as e:
            raise JobError(f"{job}: not valid JSON ({e})") from None
        if not isinstance(header, dict) or not isinstance(header.get("identity"), dict):
            raise JobError(f"{job} is not a job record (no 'identity'); it was edited or "
                           "replaced: rerun the command that made the job")
        got = header["identity"].get("verb")
        if got != verb:
            raise JobError(f"{root} holds a {COMMANDS.get(got, repr(got))} job, not an "
                           f"{COMMANDS[verb]} job")
        for key in _HEADER_KEYS[verb]:
            if not isinstance(header.get(key), dict):
                raise JobError(f"{job} lacks {key!r} (edited or replaced?): the read-back "
                               f"needs it; rerun the {COMMANDS[verb]} command to rebuild it")
        missing = [k for k in ("sigma_bar", "timesteps", "alphas", "fingerprint")
                   if k not in header["grid"]]
        if missing:
            raise JobError(f"{job}: its grid lacks {missing} (edited?): rerun the "
                           f"{COMMANDS[verb]} command")
        man = root / MANIFEST
        if not man.is_file():
            raise JobError(f"{man} is missing: the job did not finish; rerun the same "
                           "command to resume it")
        try:
            recs = read_jsonl(man)
        except ShardError as e:
            raise JobError(str(e)) from None
        batches: dict[int, list[dict[str, Any]]] = {}
        for n, r in enumerate(recs, 1):
            need = _RECORD_KEYS + (_OK_RECORD_KEYS if r.get("status") == "ok" else ())
            lacks = [k for k in need if k not in r]
            if lacks or not isinstance(r.get("batch"), int):
                raise JobError(f"{man}, record {n}: lacks {lacks or ['batch']} — not a "
                               f"manifest of an {COMMANDS[verb]} job (replaced?); rerun the "
                               f"{COMMANDS[verb]} command, which rebuilds it from the parts")
            batches.setdefault(r["batch"], []).append(r)
        return cls(root, header, batches)

    def config(self, **override: Any) -> JobConfig:
        """The job's recorded :class:`JobConfig`, with ``override``'s non-``None`` values."""
        c = dict(self.header["config"])
        c["out"] = str(self.root)
        c["shape"] = tuple(c["shape"]) if c.get("shape") else None
        c.update({k: v for k, v in override.items() if v is not None})
        try:
            return JobConfig(**c)
        except TypeError as e:
            raise JobError(f"{self.root / JOB_FILE}: its config does not fit this version of "
                           f"lmsolvers ({e}); rerun the command that made the job") from None


def latent_of(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str],
               recs: Sequence[Mapping[str, Any]], grid: Grid, backend: Backend,
               where: str) -> Latent:
    """Rebuild the batch's latent from a shard, with the *recorded* identity (method key,
    grid, context), so that sampling's :func:`~lmsolvers.latent.check_latent` compares it
    with the current run and names any difference."""
    r0 = recs[0]
    context = freeze_context({k: v for k, v in r0["context"]})
    nodes = tuple(r0["nodes"])
    if r0["bitexact"]:
        if "fixed" not in tensors:
            raise ShardError(f"{where}: a bit-exact job's shard without integer states")
        fixed = tensors["fixed"].to(backend.device)
        ys = tuple(fixed[:, j].contiguous() for j in range(fixed.shape[1]))
        plan = fixed_point_plan(backend.method, grid, backend.state_dtype,
                                frac_bits=plan_key_tuple(r0["plan_key"])[1])
        states = tuple(plan.dequantize(y, m) for y, m in zip(ys, nodes, strict=True))
        return BitexactLatent(states=states, method=r0["method"], method_key=r0["method_key"],
                              grid=grid, context=context, nodes=nodes, fixed=ys,
                              plan_key=plan_key_tuple(r0["plan_key"]))
    if "states" not in tensors:
        raise ShardError(f"{where}: shard without latent states")
    st = tensors["states"].to(backend.device)
    if st.dtype != backend.state_dtype:
        raise ShardError(f"{where}: states are {st.dtype}, the job's state dtype is "
                         f"{backend.state_dtype}")
    states = tuple(st[:, j].contiguous() for j in range(st.shape[1]))
    return Latent(states=states, method=r0["method"], method_key=r0["method_key"], grid=grid,
                  context=context, nodes=nodes)


def check_shard(meta: Mapping[str, str], recs: Sequence[Mapping[str, Any]],
                 where: str) -> None:
    """Manifest and shard must agree on the ids, their order and the latents' identity."""
    ids = json.loads(meta.get("ids", "null") or "null")
    want = [r["id"] for r in sorted(recs, key=lambda r: r["offset"])]
    if ids != want:
        raise ShardError(f"{where}: manifest/shard disagreement: the shard holds ids {ids}, "
                         f"the manifest lists {want} (shard from another job or batch?)")
    offsets = sorted(r["offset"] for r in recs)
    if offsets != list(range(len(recs))):
        raise ShardError(f"{where}: manifest/shard disagreement: offsets {offsets}")
    r0 = recs[0]
    for key, rec_value in (("method_key", r0["method_key"]), ("grid", r0["grid"]),
                           ("context", json.dumps(r0["context"])),
                           ("nodes", json.dumps(r0["nodes"]))):
        if meta.get(key) != rec_value:
            raise LatentMismatchError(
                f"{where}: this latent file was made with {key} {meta.get(key)!r}, the manifest "
                f"says {rec_value!r}: a latent from another method or grid")
    for r in recs:
        if r["batch_ids"] != ids:
            raise ShardError(f"{where}: record {r['id']!r} lists batch {r['batch_ids']}, the "
                             f"shard holds {ids}")
