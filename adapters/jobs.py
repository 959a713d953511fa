"""Dataset-scale exact inversion, reconstruction, verification and sampling (docs/jobs.md).

Four jobs, each also a command (``lmsolvers invert-dataset | reconstruct | verify |
sample-dataset``):

* :func:`invert_dataset` inverts every sample of a dataset (a folder of images, a
  ``.npy``/``.safetensors`` tensor file, or a ``module:function`` returning a tensor) to
  its :class:`~lmsolvers.Latent` (the k noisiest σ̄-ODE states ``x̄``; the integer states
  ``Y`` in bit-exact mode) and writes them as safetensors shards plus a JSONL manifest;
* :func:`reconstruct` samples the data back from the shards;
* :func:`verify` checks shards against the manifest (SHA-256, ids, identities), the
  environment against the recorded one, recomputes every reconstruction and reports the
  per-sample round-trip error;
* :func:`sample_dataset` draws samples from per-sample seeds (e.g. for FID).

The model is a diffusers directory (``UNet2DModel``/``UNet2DConditionModel`` with its
``scheduler_config.json``, or a pipeline directory with ``unet/`` and ``scheduler/``),
driven by :class:`~lmsolvers.adapters.DiffusionSampler` and the core's
:func:`~lmsolvers.invert`/:func:`~lmsolvers.sample`; or a Python entry point
``module:function`` called as ``function(steps)`` that returns ``(eps, grid)`` or
``(eps, grid, context)`` for the σ̄-ODE itself.

Exactness needs the *same computation* in both directions: the same grid, method and
model settings (the latent's fingerprint, :func:`~lmsolvers.latent.check_latent`), and
also the same batch composition, thread count, device, deterministic-algorithms flag and
library versions, because each of them can change ε's bits (a batched GEMM may round a
row differently in a batch of another size; inverting with 1 thread and sampling with 2
breaks bitwise equality).  So the batches are formed from the sample order alone —
batch ``b`` holds samples ``b·B … (b+1)·B − 1``, whatever the number of ranks — one
batch is one shard, and every manifest record carries its batch composition and the
environment.  :func:`reconstruct` and :func:`verify` rebuild exactly those batches and
refuse (or, when told, warn about) another environment.

Distribution (``torchrun``; gloo on CPU, nccl on GPU): batch ``b`` belongs to rank
``b mod world_size``; each rank writes its own shards and per-shard manifest parts; the
ranks meet only at the start (rank 0 prepares the directory) and at the end (a barrier;
rank 0 merges the parts into ``manifest.jsonl``).  Every file is written atomically
(:mod:`lmsolvers.adapters.shards`), so a killed job resumes: a batch whose part file
exists is done, every other batch is recomputed — with the same bits, since nothing in a
batch depends on the ranks.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import hashlib
import importlib
import io
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from lmsolvers import __version__ as LMSOLVERS_VERSION
from lmsolvers.bitexact import BitexactLatent, fixed_point_plan
from lmsolvers.engine import Integrator
from lmsolvers.exactness import predicted_roundtrip_error
from lmsolvers.grid import Grid
from lmsolvers.integrate import invert, sample
from lmsolvers.latent import Latent, LatentMismatchError, freeze_context
from lmsolvers.registry import method_from_name

from .diffusers import DiffusionSampler
from .shards import (
    ShardError,
    atomic_write_bytes,
    atomic_write_text,
    read_jsonl,
    read_shard,
    sha256_bytes,
    sha256_file,
    write_jsonl,
    write_shard,
)

__all__ = [
    "JobConfig",
    "JobSummary",
    "JobError",
    "EnvironmentMismatchError",
    "environment",
    "invert_dataset",
    "reconstruct",
    "verify",
    "sample_dataset",
    "format_summary",
    "IMAGE_SUFFIXES",
]

#: file suffixes read as images in a dataset folder (other files are ignored)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}
#: the keys of the environment record that change ε's bits (compared on resume/reconstruct)
_ENV_KEYS = ("threads", "deterministic", "device", "torch", "diffusers", "lmsolvers",
             "cpu_capability", "cuda", "cudnn")
_JOB_FILE = "job.json"
_MANIFEST = "manifest.jsonl"
_SHARDS = "shards"


class JobError(ValueError):
    """A job cannot run as asked (bad arguments, a model that does not load, an output
    directory that holds other results); the message names the file or setting."""


class EnvironmentMismatchError(JobError):
    """The environment (threads, device, versions, …) differs from the recorded one, so ε
    may give other bits and a reconstruction would silently differ."""


# ---------------------------------------------------------------- configuration
@dataclass
class JobConfig:
    """The settings of a dataset job (the command line's options, docs/jobs.md).

    Parameters
    ----------
    out:
        Output directory (created; must be new, empty, or hold the same job).
    model:
        A diffusers model directory, or ``None`` with ``eps``.
    eps:
        ``module:function``: ``function(steps)`` returns ``(eps, grid)`` or
        ``(eps, grid, context)`` of the σ̄-ODE (data is then ``x̄_0`` itself).
    data:
        Dataset: an image folder, a ``.npy``/``.safetensors`` file (``(N, C, H, W)``,
        ``(N, H, W)`` for one channel), or ``module:function`` returning such a tensor.
    method, steps, grid:
        Method name (:func:`~lmsolvers.method_from_name`; ``None``: the sampler's default
        exact configuration), number of steps, and the grid (``None``/``"designed"``/
        ``"scheduler"``, as :class:`~lmsolvers.adapters.DiffusionSampler`).
    guidance, prompt_embeds, prompt, prompts, negative_prompt:
        Classifier-free guidance scale; a safetensors file of named prompt embeddings
        (``(tokens, width)`` or ``(1, tokens, width)``: there is no text encoder offline,
        so prompts are given encoded); the embedding name for every sample, or a
        CSV/JSONL file mapping ``id`` → ``prompt`` (an embedding name) per sample; the
        name of the negative embedding (used for ``guidance > 1``).
    state_dtype, model_dtype:
        dtype of the solver state (and of the stored latents) and of the model.
    bitexact, frac_bits:
        Integer fixed-point inversion (:mod:`lmsolvers.bitexact`) and its resolution.
    batch_size:
        Samples per batch = per shard.  Part of the result: ε may depend on it.
    threads, deterministic, device:
        ``torch.set_num_threads`` per rank, ``torch.use_deterministic_algorithms`` and
        the device (``"cuda"`` means ``cuda:LOCAL_RANK``); all recorded.
    roundtrip:
        Also reconstruct every batch right after inverting it and record the error.
    overwrite, allow_env_mismatch:
        Replace existing results; run (with a warning) in an environment that differs
        from the recorded one.
    num_samples, seed, shape:
        :func:`sample_dataset` only: how many samples, the base seed, and the sample
        shape ``(C, H, W)`` for an entry-point model.
    images:
        Also write PNG images (reconstruct, sample-dataset).
    progress:
        Progress bars on/off (``None``: only on a TTY).
    timeout:
        Seconds the ranks wait for each other in the process group.
    """

    out: str | os.PathLike
    model: str | None = None
    eps: str | None = None
    data: str | None = None
    method: str | None = None
    steps: int = 50
    grid: str | None = None
    guidance: float = 1.0
    prompt_embeds: str | None = None
    prompt: str | None = None
    prompts: str | None = None
    negative_prompt: str | None = None
    state_dtype: str = "float64"
    model_dtype: str = "float32"
    bitexact: bool = False
    frac_bits: int | None = None
    batch_size: int = 8
    threads: int = 1
    deterministic: bool = False
    device: str = "cpu"
    roundtrip: bool = False
    overwrite: bool = False
    allow_env_mismatch: bool = False
    num_samples: int | None = None
    seed: int = 0
    shape: tuple[int, ...] | None = None
    images: bool = False
    progress: bool | None = None
    timeout: float = 86400.0


@dataclass
class JobSummary:
    """What a job did (aggregated over the ranks on rank 0; a rank's own on the others).

    ``computed`` samples were processed by this run, ``skipped`` were already present
    (resume), ``failed`` could not be processed (see the manifest's ``error``);
    ``throughput`` is computed samples per second of wall time; ``max_error`` the largest
    measured round-trip error (``None`` if none was measured); ``problems`` counts
    :func:`verify`'s findings by status.
    """

    verb: str
    total: int = 0
    computed: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    world_size: int = 1
    threads: int = 1
    max_error: float | None = None
    bitwise: int | None = None
    problems: dict[str, int] = field(default_factory=dict)
    out: str = ""

    @property
    def throughput(self) -> float:
        """Computed samples per second."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """No failed sample and no verification problem."""
        return self.failed == 0 and not self.problems


def format_summary(s: JobSummary) -> str:
    """The end-of-job summary table (Markdown)."""
    err = "—" if s.max_error is None else f"{s.max_error:.3g}"
    checked = s.verb == "verify"
    rows = [("samples", str(s.total)),
            ("checked" if checked else "computed now", str(s.computed))]
    if not checked:
        rows.append(("already present (resumed)", str(s.skipped)))
    rows += [("failed" + (" in the job" if checked else ""), str(s.failed)),
             ("ranks × threads", f"{s.world_size} × {s.threads}"),
             ("wall time (after set-up)", f"{s.seconds:.2f} s"),
             ("throughput", f"{s.throughput:.2f} samples/s"),
             ("max round-trip error", err)]
    if s.bitwise is not None:
        rows.append(("bitwise identical round trips", str(s.bitwise)))
    for status, n in sorted(s.problems.items()):
        rows.append((f"problem: {status}", str(n)))
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    lines = [f"| {'lmsolvers ' + s.verb:<{w}} | {'':>{v}} |", f"|{'-' * (w + 2)}|{'-' * (v + 2)}|"]
    lines += [f"| {a:<{w}} | {b:>{v}} |" for a, b in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ environment
def _device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything outside the job's arguments that can change ε's bits, as recorded.

    Thread count, deterministic-algorithms flag, device (type and model name, not the
    index: rank 1's ``cuda:1`` is the same kind of device as rank 0's ``cuda:0``), the
    torch/diffusers/lmsolvers versions, the CPU's vector instruction set, CUDA/cuDNN.
    """
    dev = torch.device(device)
    try:
        import diffusers
        dver = diffusers.__version__
    except ImportError:  # entry-point models need no diffusers
        dver = None
    name = "cpu"
    if dev.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(dev)})"
    elif dev.type != "cpu":
        name = dev.type
    cudnn = torch.backends.cudnn.version() if dev.type == "cuda" else None
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "device": name,
        "torch": torch.__version__,
        "diffusers": dver,
        "lmsolvers": LMSOLVERS_VERSION,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "cudnn": cudnn,
    }


def _env_diff(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    return [f"{k}: {recorded.get(k)!r} recorded, {now.get(k)!r} now" for k in _ENV_KEYS
            if recorded.get(k) != now.get(k)]


def _check_env(recorded: Mapping[str, Any], now: Mapping[str, Any], allow: bool,
               where: str) -> list[str]:
    diff = _env_diff(recorded, now)
    if diff:
        msg = (f"{where}: the environment differs from the one the latents were computed in "
               f"({'; '.join(diff)}); ε may give other bits, so the result would silently "
               "differ")
        if not allow:
            hint = (f" (--threads {recorded.get('threads')})"
                    if recorded.get("threads") != now.get("threads") else "")
            raise EnvironmentMismatchError(
                msg + f". Run with the recorded settings{hint}, or pass --allow-env-mismatch "
                "to go on anyway")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return diff


# --------------------------------------------------------------- process group
class _Group:
    """The torch.distributed process group (or a single process without one)."""

    def __init__(self, device: torch.device, timeout: float) -> None:
        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        elif world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
            self.owned = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (rank order), on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owned:
            dist.destroy_process_group()


@contextlib.contextmanager
def _group(cfg: JobConfig) -> Iterator[_Group]:
    g = _Group(_device(cfg.device), cfg.timeout)
    try:
        yield g
    finally:
        g.close()


def _setup_threads(cfg: JobConfig) -> None:
    if not (isinstance(cfg.threads, int) and cfg.threads >= 1):
        raise JobError(f"threads must be a positive integer, got {cfg.threads!r}")
    torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)


# --------------------------------------------------------------- entry points
def _entry_point(spec: str, what: str) -> Callable[..., Any]:
    """``module:function``, imported with the current directory on ``sys.path`` (as
    ``python -m`` does), so a checkout's own modules (``benchmarks.…``) resolve."""
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn:
        raise JobError(f"{what} {spec!r} is neither an existing path nor 'module:function'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise JobError(f"{what} {spec!r}: cannot import module {mod!r} ({e})") from None
    obj = module
    for part in fn.split("."):
        if not hasattr(obj, part):
            raise JobError(f"{what} {spec!r}: module {mod!r} has no attribute {fn!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise JobError(f"{what} {spec!r} is not callable")
    return obj


def _module_file_sha(spec: str) -> str | None:
    mod = sys.modules.get(spec.partition(":")[0])
    path = getattr(mod, "__file__", None)
    return sha256_file(path) if path and os.path.exists(path) else None


# --------------------------------------------------------------------- models
def _dtype(name: str, what: str) -> torch.dtype:
    try:
        return _DTYPES[str(name).removeprefix("torch.")]
    except KeyError:
        raise JobError(f"{what} {name!r} is not one of {', '.join(_DTYPES)}") from None


@dataclass
class _Backend:
    """One model, ready to invert/sample batches: ε (per batch, for per-sample prompts),
    the grid, the method, the model-side context and the model's identity."""

    grid: Grid
    method: Integrator
    context: dict[str, Any]
    state_dtype: torch.dtype
    device: torch.device
    identity: dict[str, Any]
    sample_shape: tuple[int, ...] | None
    make_eps: Callable[[torch.Tensor | None], Any]
    check_input: Callable[[torch.Tensor], None]
    conditional: bool = False

    def to_xbar0(self, x: torch.Tensor) -> torch.Tensor:
        """``x̄_0 = x_0/α_0`` (the σ̄-ODE state of data, docs/design.md §1)."""
        self.check_input(x)
        return x.to(self.device, self.state_dtype) / float(self.grid.alphas[0])

    def from_xbar0(self, xbar: torch.Tensor) -> torch.Tensor:
        """``x_0 = α_0 x̄_0``."""
        return xbar * float(self.grid.alphas[0])


def _model_paths(model: str) -> tuple[Path, Path]:
    root = Path(model)
    if not root.is_dir():
        raise JobError(f"model directory {model} does not exist (give a diffusers model "
                       "directory or --eps module:function)")
    if (root / "model_index.json").is_file():
        unet, sched = root / "unet", root / "scheduler" / "scheduler_config.json"
    else:
        unet, sched = root, root / "scheduler_config.json"
    for p in (unet / "config.json", sched):
        if not p.is_file():
            raise JobError(f"model directory {model} does not load: {p} is missing (expected a "
                           "diffusers UNet directory with scheduler_config.json, or a pipeline "
                           "directory with unet/ and scheduler/)")
    return unet, sched


def _weights_sha(unet_dir: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in unet_dir.iterdir()
                   if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".ckpt"))
    for p in files:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def _load_prompt_embeds(cfg: JobConfig) -> dict[str, torch.Tensor]:
    if cfg.prompt_embeds is None:
        return {}
    path = Path(cfg.prompt_embeds)
    try:
        from safetensors.torch import load_file
        raw = load_file(str(path))
    except Exception as e:
        raise JobError(f"prompt embeddings {path}: cannot read ({e})") from None
    out = {}
    for name, t in raw.items():
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3 or t.shape[0] != 1 or not t.is_floating_point():
            raise JobError(f"prompt embeddings {path}: {name!r} has shape {tuple(t.shape)} "
                           f"{t.dtype}; expected float (tokens, width) or (1, tokens, width)")
        out[name] = t
    return out


def _tensor_sha(t: torch.Tensor) -> str:
    t = t.detach().to("cpu").contiguous()
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    head = f"{t.dtype}|{tuple(t.shape)}|".encode()
    return sha256_bytes(head + t.view(bits).numpy().tobytes())


def _diffusers_backend(cfg: JobConfig, device: torch.device) -> _Backend:
    import diffusers

    unet_dir, sched_path = _model_paths(cfg.model)
    try:
        ucfg = json.loads((unet_dir / "config.json").read_text())
        scfg = json.loads(sched_path.read_text())
    except ValueError as e:
        raise JobError(f"model directory {cfg.model} does not load: bad JSON ({e})") from None
    cls_name = ucfg.get("_class_name", "UNet2DModel")
    cls = getattr(diffusers, str(cls_name), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise JobError(f"model directory {cfg.model}: {unet_dir / 'config.json'} names class "
                       f"{cls_name!r}, which diffusers {diffusers.__version__} does not have")
    mdtype = _dtype(cfg.model_dtype, "model dtype")
    try:
        unet = cls.from_pretrained(str(unet_dir), torch_dtype=mdtype).to(device)
    except Exception as e:
        raise JobError(f"model directory {cfg.model} does not load: {type(e).__name__}: "
                       f"{e}") from None
    sdtype = _dtype(cfg.state_dtype, "state dtype")
    conditional = "cross_attention_dim" in unet.config and unet.config.get(
        "cross_attention_dim") is not None
    embeds = _load_prompt_embeds(cfg)
    if not conditional and (embeds or cfg.prompt or cfg.prompts):
        raise JobError(f"model {cfg.model} ({cls_name}) takes no prompt: drop --prompt, "
                       "--prompts and --prompt-embeds")
    if conditional and not embeds:
        raise JobError(f"model {cfg.model} ({cls_name}) is conditioned on a prompt: give "
                       "--prompt-embeds (a safetensors file of encoded prompts; there is no "
                       "text encoder offline) and --prompt or --prompts")
    guided = cfg.guidance > 1.0
    neg = None
    if conditional and guided:
        name = cfg.negative_prompt or "negative"
        if name not in embeds:
            raise JobError(f"guidance {cfg.guidance:g} > 1 needs the negative prompt's "
                           f"embedding {name!r} in {cfg.prompt_embeds} (--negative-prompt)")
        neg = embeds[name]
    first = next(iter(embeds.values())) if conditional else None
    try:
        base = DiffusionSampler(unet, scfg, cfg.steps, cfg.method, cfg.guidance,
                                prompt_embeds=first, negative_prompt_embeds=neg,
                                state_dtype=sdtype, grid=cfg.grid, disable_progress=True)
    except (ValueError, TypeError) as e:
        raise JobError(f"model {cfg.model}: {e}") from None

    def make_eps(prompt_embeds: torch.Tensor | None) -> Any:
        if prompt_embeds is None:
            return base.eps
        s = DiffusionSampler(unet, scfg, cfg.steps, base.method, cfg.guidance,
                             prompt_embeds=prompt_embeds, negative_prompt_embeds=neg,
                             state_dtype=sdtype, grid=base.grid, disable_progress=True)
        return s.eps

    size = ucfg.get("sample_size")
    shape = None
    if isinstance(size, int) and isinstance(ucfg.get("in_channels"), int):
        shape = (ucfg["in_channels"], size, size)
    elif isinstance(size, list | tuple) and isinstance(ucfg.get("in_channels"), int):
        shape = (ucfg["in_channels"], *size)
    identity = {
        "kind": "diffusers", "class": cls_name,
        "config_sha256": sha256_file(unet_dir / "config.json"),
        "scheduler_sha256": sha256_file(sched_path),
        "weights_sha256": _weights_sha(unet_dir),
        "config_hash": base.context.get("model_config"),
    }
    return _Backend(base.grid, base.method, dict(base.context), base.state_dtype, device,
                    identity, shape, make_eps,
                    lambda x: base.eps.check_state(x, "the batch"), conditional)


def _entry_backend(cfg: JobConfig, device: torch.device) -> _Backend:
    fn = _entry_point(cfg.eps, "--eps")
    try:
        got = fn(cfg.steps)
    except Exception as e:
        raise JobError(f"--eps {cfg.eps}: calling it with steps = {cfg.steps} failed: "
                       f"{type(e).__name__}: {e}") from None
    if not (isinstance(got, tuple) and len(got) in (2, 3) and callable(got[0])
            and isinstance(got[1], Grid)):
        raise JobError(f"--eps {cfg.eps} must return (eps, grid) or (eps, grid, context), got "
                       f"{type(got).__name__}")
    eps, grid = got[0], got[1]
    context = dict(got[2]) if len(got) == 3 and got[2] is not None else {}
    freeze_context(context)
    if cfg.prompt_embeds or cfg.prompt or cfg.prompts:
        raise JobError("prompts apply to diffusers models only (--model), not to --eps")
    method = method_from_name(cfg.method if cfg.method is not None else "obelm")
    identity = {"kind": "entry-point", "entry": cfg.eps, "source_sha256": _module_file_sha(
        cfg.eps)}

    def check(x: torch.Tensor) -> None:
        if not x.is_floating_point():
            raise TypeError(f"the batch must be floating point, got {x.dtype}")

    return _Backend(grid, method, context, _dtype(cfg.state_dtype, "state dtype"), device,
                    identity, tuple(cfg.shape) if cfg.shape else None, lambda _p: eps, check)


def _backend(cfg: JobConfig) -> _Backend:
    if (cfg.model is None) == (cfg.eps is None):
        raise JobError("give exactly one of a diffusers model directory (--model) and an "
                       "entry point (--eps module:function)")
    if not (isinstance(cfg.steps, int) and cfg.steps >= 1):
        raise JobError(f"steps must be a positive integer, got {cfg.steps!r}")
    if not (isinstance(cfg.batch_size, int) and cfg.batch_size >= 1):
        raise JobError(f"batch size must be a positive integer, got {cfg.batch_size!r}")
    device = _device(cfg.device)
    b = _diffusers_backend(cfg, device) if cfg.model else _entry_backend(cfg, device)
    if cfg.bitexact and device.type != "cpu" and not cfg.deterministic:
        raise JobError(f"bit-exact mode on {device.type} needs --deterministic")
    return b


# ------------------------------------------------------------------- datasets
class _Dataset:
    """An ordered dataset: ids, sources, and per-sample loading (errors name the file)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        path = Path(spec)
        self._rows: Any = None
        if path.is_dir():
            files = sorted((p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                           key=lambda p: p.relative_to(path).as_posix())
            if not files:
                raise JobError(f"dataset folder {spec} holds no images "
                               f"({', '.join(IMAGE_SUFFIXES)})")
            self.kind = "images"
            self.files = files
            self.ids = [p.relative_to(path).as_posix() for p in files]
            self.sources = [str(p) for p in files]
            return
        if path.suffix == ".npy" and path.is_file():
            try:
                self._rows = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise JobError(f"dataset {spec}: not a readable .npy file ({e})") from None
            self.kind = "npy"
        elif path.suffix == ".safetensors" and path.is_file():
            from safetensors import safe_open
            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = list(f.keys())
                    key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
                    if key is None:
                        raise JobError(f"dataset {spec}: holds tensors {keys}; name one "
                                       "'images' or store a single tensor")
                    self._rows = f.get_tensor(key)
            except JobError:
                raise
            except Exception as e:
                raise JobError(f"dataset {spec}: not a readable safetensors file ({e})") from None
            self.kind = "safetensors"
        elif path.exists():
            raise JobError(f"dataset {spec}: expected a folder of images, a .npy or a "
                           ".safetensors file")
        else:
            fn = _entry_point(spec, "dataset")
            try:
                rows = fn()
            except Exception as e:
                raise JobError(f"dataset {spec}: the call failed: {type(e).__name__}: "
                               f"{e}") from None
            if not isinstance(rows, torch.Tensor | np.ndarray):
                raise JobError(f"dataset {spec} returned {type(rows).__name__}, expected a "
                               "tensor (N, C, H, W)")
            self._rows = rows
            self.kind = "entry-point"
        shape = tuple(self._rows.shape)
        if len(shape) not in (3, 4) or shape[0] == 0:
            raise JobError(f"dataset {spec} has shape {shape}; expected (N, C, H, W) or "
                           "(N, H, W) with N ≥ 1")
        n = shape[0]
        width = max(6, len(str(n - 1)))
        self.ids = [f"{i:0{width}d}" for i in range(n)]
        self.sources = [f"{spec}[{i}]" for i in range(n)]

    def __len__(self) -> int:
        return len(self.ids)

    def identity(self) -> dict[str, Any]:
        """The sample order (it defines the batches) as a digest, and the count."""
        return {"count": len(self.ids),
                "ids_sha256": sha256_bytes("\n".join(self.ids).encode())}

    def load(self, i: int) -> tuple[torch.Tensor, str]:
        """Sample ``i`` as a float tensor ``(C, H, W)`` and the SHA-256 of its content."""
        if self.kind == "images":
            return _load_image(self.files[i])
        row = self._rows[i]
        t = torch.from_numpy(np.array(row)) if isinstance(row, np.ndarray) else row.clone()
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if not t.is_floating_point():
            raise ValueError(f"{self.sources[i]}: dtype {t.dtype} is not floating point; "
                             "store the data in the model's range as floats")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{self.sources[i]}: contains NaN/Inf")
        return t, _tensor_sha(t)


def _load_image(path: Path) -> tuple[torch.Tensor, str]:
    """An 8-bit image as ``x/127.5 − 1`` in [−1, 1] (the diffusers convention), ``(C, H, W)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            if mode not in ("L", "RGB"):
                raise ValueError(f"{path}: image mode {mode!r}; expected 8-bit grey (L) or RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None
    t = torch.from_numpy(arr.astype(np.float32)) / 127.5 - 1.0
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()
    return t, sha256_bytes(data)


def _save_png(path: Path, x: torch.Tensor) -> None:
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


def _read_prompts(path: str) -> dict[str, str]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise JobError(f"prompts file {path}: cannot read ({e})") from None
    rows: list[Mapping[str, Any]]
    if p.suffix == ".jsonl":
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as e:
            raise JobError(f"prompts file {path}: bad JSON line ({e})") from None
    elif p.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise JobError(f"prompts file {path}: expected .csv or .jsonl")
    out = {}
    for n, r in enumerate(rows, 1):
        if not isinstance(r, Mapping) or "id" not in r or "prompt" not in r:
            raise JobError(f"prompts file {path}: row {n} needs 'id' and 'prompt'")
        out[str(r["id"])] = str(r["prompt"])
    return out


class _Prompts:
    """Per-sample prompt embedding names and tensors (conditional models only)."""

    def __init__(self, cfg: JobConfig, backend: _Backend) -> None:
        self.on = backend.conditional
        self.embeds = _load_prompt_embeds(cfg) if self.on else {}
        self.table = _read_prompts(cfg.prompts) if (self.on and cfg.prompts) else None
        self.default = cfg.prompt
        if self.on and self.table is None and self.default is None:
            names = [k for k in self.embeds if k != (cfg.negative_prompt or "negative")]
            if len(names) != 1:
                raise JobError(f"{cfg.prompt_embeds} holds embeddings {sorted(self.embeds)}: "
                               "choose one with --prompt, or per sample with --prompts")
            self.default = names[0]
        for name in ([self.default] if self.default else []) + list(
                (self.table or {}).values()):
            if name not in self.embeds:
                raise JobError(f"prompt {name!r} has no embedding in {cfg.prompt_embeds} "
                               f"(it holds {sorted(self.embeds)})")
        self.sha = {k: _tensor_sha(v) for k, v in self.embeds.items()}

    def name(self, sample_id: str) -> str | None:
        if not self.on:
            return None
        if self.table is not None:
            if sample_id not in self.table:
                raise ValueError(f"sample {sample_id!r} has no row in the prompts file")
            return self.table[sample_id]
        return self.default

    def identity(self) -> dict[str, Any] | None:
        if not self.on:
            return None
        return {"default": self.default, "table_sha256": None if self.table is None else
                sha256_bytes(json.dumps(self.table, sort_keys=True).encode()),
                "embeds_sha256": dict(sorted(self.sha.items()))}

    def batch(self, names: Sequence[str | None]) -> torch.Tensor | None:
        if not self.on:
            return None
        return torch.cat([self.embeds[n] for n in names])


# ------------------------------------------------------------------ the job dir
def _grid_record(grid: Grid) -> dict[str, Any]:
    def arr(a: np.ndarray | None) -> list[float] | None:
        return None if a is None else [float(v) for v in a]

    return {"fingerprint": grid.fingerprint(), "sigma_bar": arr(grid.sigma_bar),
            "timesteps": arr(grid.timesteps), "alphas": arr(grid.alphas)}


def _grid_from_record(rec: Mapping[str, Any]) -> Grid:
    g = Grid(rec["sigma_bar"], rec["timesteps"], rec["alphas"])
    if g.fingerprint() != rec["fingerprint"]:
        raise ShardError("the grid recorded in job.json does not match its own fingerprint "
                         "(job.json was edited)")
    return g


def _context_json(ctx: Mapping[str, Any] | Sequence[Any]) -> list[list[Any]]:
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


def _job_header(verb: str, cfg: JobConfig, backend: _Backend, data: _Dataset | None,
                prompts: _Prompts, env: dict[str, Any]) -> dict[str, Any]:
    m = backend.method
    plan_key = None
    if cfg.bitexact:
        plan_key = _plan_key_json(fixed_point_plan(m, backend.grid, backend.state_dtype,
                                                   frac_bits=cfg.frac_bits).key())
    identity = {
        "verb": verb, "model": backend.identity, "method": m.name, "method_key": m.key,
        "k": m.k, "steps": cfg.steps, "grid": backend.grid.fingerprint(),
        "context": _context_json(backend.context), "state_dtype": str(backend.state_dtype),
        "model_dtype": cfg.model_dtype, "bitexact": cfg.bitexact, "plan_key": plan_key,
        "batch_size": cfg.batch_size, "prompts": prompts.identity(),
        "data": None if data is None else data.identity(),
        "num_samples": cfg.num_samples, "seed": cfg.seed if verb == "sample" else None,
    }
    return {"identity": identity, "env": env, "config": _cfg_record(cfg),
            "grid": _grid_record(backend.grid), "lmsolvers": LMSOLVERS_VERSION}


def _plan_key_json(key: tuple[Any, ...]) -> list[Any]:
    dtype, fb, sb, top = key
    return [dtype, fb, sb, list(top)]


def _plan_key_tuple(rec: Sequence[Any]) -> tuple[Any, ...]:
    dtype, fb, sb, top = rec
    return (dtype, int(fb), float(sb), tuple(float(v) for v in top))


def _prepare_out(out: Path, header: dict[str, Any], overwrite: bool,
                 allow_env: bool) -> str | None:
    """Rank 0: make ``out`` a directory for this job (or refuse); returns an error message."""
    job = out / _JOB_FILE
    try:
        if out.exists() and not out.is_dir():
            return f"output {out} exists and is not a directory"
        if job.is_file():
            old = json.loads(job.read_text())
            if overwrite:
                shutil.rmtree(out / _SHARDS, ignore_errors=True)
                for name in (_MANIFEST, _JOB_FILE, "images"):
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
                _check_env(old.get("env", {}), header["env"], allow_env,
                           f"resuming the job in {out}")
                return None
        elif out.is_dir() and any(out.iterdir()):
            return (f"output {out} is not empty and holds no {_JOB_FILE}: refusing to write "
                    "into it (choose a new or empty directory)")
        (out / _SHARDS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(job, json.dumps(header, indent=1, sort_keys=True) + "\n")
    except EnvironmentMismatchError as e:
        return str(e)
    except (OSError, ValueError) as e:
        return f"output {out}: {e}"
    return None


def _claim_out(g: _Group, out: Path, header: dict[str, Any], overwrite: bool,
               allow_env: bool) -> None:
    """All ranks: rank 0 prepares ``out`` (:func:`_prepare_out`), every rank raises its
    refusal as :class:`JobError`, and no rank goes on before the directory is ready."""
    err = g.broadcast(_prepare_out(out, header, overwrite, allow_env) if g.rank == 0 else None)
    if err:
        raise JobError(err)
    g.barrier()


def _shard_name(b: int) -> str:
    return f"{_SHARDS}/shard-{b:06d}.safetensors"


def _part_path(out: Path, b: int) -> Path:
    return out / _SHARDS / f"shard-{b:06d}.jsonl"


def _batch_done(out: Path, b: int) -> list[dict[str, Any]] | None:
    """The records of batch ``b`` if it is complete (its part exists and its shard has the
    recorded size), else ``None``: the batch is (re)computed."""
    part = _part_path(out, b)
    if not part.is_file():
        return None
    try:
        recs = read_jsonl(part)
    except (OSError, ShardError):
        return None
    shard = next((r for r in recs if r.get("shard")), None)
    if shard is not None:
        p = out / shard["shard"]
        if not p.is_file() or p.stat().st_size != shard["shard_bytes"]:
            return None
    return recs


def _finish(g: _Group, out: Path, nbatches: int, summary: JobSummary,
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
        part = _part_path(out, b)
        if part.is_file():
            records += read_jsonl(part)
        else:
            missing.append(b)
    if missing:
        total.problems["batches missing"] = len(missing)
    else:
        write_jsonl(manifest or out / _MANIFEST, records)
    for stale in (out / _SHARDS).glob("*.tmp"):  # left by a killed run; every rank is done
        stale.unlink(missing_ok=True)
    return total


def _progress(g: _Group, cfg: JobConfig, total: int, desc: str) -> Any:
    disable = (not cfg.progress) if cfg.progress is not None else None
    return tqdm(total=total, desc=f"{desc} [rank {g.rank}/{g.world}]", position=g.rank,
                disable=disable, unit="sample", leave=g.rank == 0)


def _batches(n: int, size: int) -> list[range]:
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def _start(cfg: JobConfig, verb: str, data: _Dataset | None
           ) -> tuple[_Backend, _Prompts, dict[str, Any]]:
    _setup_threads(cfg)
    backend = _backend(cfg)
    prompts = _Prompts(cfg, backend)
    env = environment(backend.device)
    return backend, prompts, _job_header(verb, cfg, backend, data, prompts, env)


def _common_record(header: Mapping[str, Any], backend: _Backend) -> dict[str, Any]:
    i = header["identity"]
    return {"method": i["method"], "method_key": i["method_key"], "grid": i["grid"],
            "context": i["context"], "model": i["model"], "state_dtype": i["state_dtype"],
            "model_dtype": i["model_dtype"], "bitexact": i["bitexact"],
            "plan_key": i["plan_key"], "guidance": backend.context.get("guidance_scale"),
            "env": header["env"], "lmsolvers": LMSOLVERS_VERSION}


def _to_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


# ------------------------------------------------------------------- invert
def _invert_batch(cfg: JobConfig, backend: _Backend, data: _Dataset, prompts: _Prompts,
                  common: dict[str, Any], out: Path, b: int, rows: range
                  ) -> tuple[list[dict[str, Any]], list[float], int]:
    recs: list[dict[str, Any]] = []
    xs, ok = [], []
    for i in rows:
        rec = {"id": data.ids[i], "index": i, "source": data.sources[i], "batch": b, **common}
        try:
            x, sha = data.load(i)
            rec["content_sha256"] = sha
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
                    "context": json.dumps(_context_json(latent.context)),
                    "tensor": "fixed" if cfg.bitexact else "states"}
            name = _shard_name(b)
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
    write_jsonl(_part_path(out, b), recs)
    return recs, errors, bitwise


def _count_bitwise(back: torch.Tensor, xbar0: torch.Tensor, backend: _Backend,
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
    data = _Dataset(cfg.data) if cfg.data is not None else None
    if data is None:
        raise JobError("invert-dataset needs a dataset (--data)")
    with _group(cfg) as g:
        backend, prompts, header = _start(cfg, "invert", data)
        _claim_out(g, out, header, cfg.overwrite, cfg.allow_env_mismatch)
        t0 = time.perf_counter()
        common = _common_record(header, backend)
        batches = _batches(len(data), cfg.batch_size)
        summary = JobSummary("invert-dataset", threads=cfg.threads)
        mine = [b for b in range(len(batches)) if b % g.world == g.rank]
        with _progress(g, cfg, sum(len(batches[b]) for b in mine), "invert") as bar:
            for b in mine:
                rows = batches[b]
                summary.total += len(rows)
                done = _batch_done(out, b)
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
        return _finish(g, out, len(batches), summary)


# -------------------------------------------------------- reading a job back
@dataclass
class _Job:
    """A finished job directory: header, manifest records grouped by batch."""

    root: Path
    header: dict[str, Any]
    batches: dict[int, list[dict[str, Any]]]

    @classmethod
    def open(cls, root: str | os.PathLike, verb: str) -> _Job:
        root = Path(root)
        job = root / _JOB_FILE
        if not job.is_file():
            raise JobError(f"{root} is not a job directory ({job} is missing)")
        try:
            header = json.loads(job.read_text())
        except ValueError as e:
            raise JobError(f"{job}: not valid JSON ({e})") from None
        if header.get("identity", {}).get("verb") != verb:
            raise JobError(f"{root} holds a {header.get('identity', {}).get('verb')!r} job, "
                           f"not {verb!r}")
        man = root / _MANIFEST
        if not man.is_file():
            raise JobError(f"{man} is missing: the job did not finish; rerun the same "
                           "command to resume it")
        try:
            recs = read_jsonl(man)
        except ShardError as e:
            raise JobError(str(e)) from None
        batches: dict[int, list[dict[str, Any]]] = {}
        for r in recs:
            batches.setdefault(int(r["batch"]), []).append(r)
        return cls(root, header, batches)

    def config(self, **override: Any) -> JobConfig:
        c = dict(self.header["config"])
        c["out"] = str(self.root)
        c["shape"] = tuple(c["shape"]) if c.get("shape") else None
        c.update({k: v for k, v in override.items() if v is not None})
        return JobConfig(**c)


def _latent_of(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str],
               recs: Sequence[Mapping[str, Any]], grid: Grid, backend: _Backend,
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
                                frac_bits=_plan_key_tuple(r0["plan_key"])[1])
        states = tuple(plan.dequantize(y, m) for y, m in zip(ys, nodes, strict=True))
        return BitexactLatent(states=states, method=r0["method"], method_key=r0["method_key"],
                              grid=grid, context=context, nodes=nodes, fixed=ys,
                              plan_key=_plan_key_tuple(r0["plan_key"]))
    if "states" not in tensors:
        raise ShardError(f"{where}: shard without latent states")
    st = tensors["states"].to(backend.device)
    if st.dtype != backend.state_dtype:
        raise ShardError(f"{where}: states are {st.dtype}, the job's state dtype is "
                         f"{backend.state_dtype}")
    states = tuple(st[:, j].contiguous() for j in range(st.shape[1]))
    return Latent(states=states, method=r0["method"], method_key=r0["method_key"], grid=grid,
                  context=context, nodes=nodes)


def _check_shard(meta: Mapping[str, str], recs: Sequence[Mapping[str, Any]],
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


def _check_prompts(prompts: _Prompts, recs: Sequence[Mapping[str, Any]], where: str) -> None:
    """Every sample's prompt embedding must be the one it was inverted with."""
    for r in recs:
        if r.get("prompt") is not None and prompts.sha.get(r["prompt"]) != r["prompt_sha256"]:
            raise ShardError(f"{where}: the embedding of prompt {r['prompt']!r} (sample "
                             f"{r['id']!r}) changed since the inversion")


def _reconstruct_batch(backend: _Backend, prompts: _Prompts, grid: Grid, job: _Job,
                       recs: list[dict[str, Any]]) -> torch.Tensor:
    """``x_0`` of the batch's ok samples (in shard order) from its shard."""
    where = str(job.root / recs[0]["shard"])
    tensors, meta = read_shard(job.root / recs[0]["shard"], recs[0]["shard_sha256"])
    _check_shard(meta, recs, where)
    latent = _latent_of(tensors, meta, recs, grid, backend, where)
    _check_prompts(prompts, recs, where)
    eps = backend.make_eps(prompts.batch([r.get("prompt") for r in recs]))
    bitexact = bool(recs[0]["bitexact"])
    xbar = sample(eps, backend.grid, backend.method, latent, disable=True,
                  context=backend.context, bitexact=bitexact)
    return xbar


def _open_for_readback(job_dir: str | os.PathLike, threads: int | None,
                       allow_env: bool, device: str | None, progress: bool | None
                       ) -> tuple[_Job, JobConfig]:
    job = _Job.open(job_dir, "invert")
    recorded = job.header["env"]["threads"]
    cfg = job.config(threads=threads if threads is not None else recorded, device=device)
    cfg.allow_env_mismatch, cfg.progress = allow_env, progress
    return job, cfg


def _rebuild(job: _Job, cfg: JobConfig, where: str) -> tuple[_Backend, _Prompts, Grid]:
    _setup_threads(cfg)
    backend = _backend(cfg)
    prompts = _Prompts(cfg, backend)
    grid = _grid_from_record(job.header["grid"])
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
    with _group(cfg) as g:
        _setup_threads(cfg)  # the environment is checked before the (costly) model set-up
        env = environment(_device(cfg.device))
        _check_env(job.header["env"], env, allow_env_mismatch, f"reconstructing {job.root}")
        backend, prompts, grid = _rebuild(job, cfg, str(job.root))
        header = {"identity": {"verb": "reconstruct", "source_job": str(job.root.resolve()),
                               "source_identity": job.header["identity"]},
                  "env": env, "config": {"job": str(job.root)}, "lmsolvers": LMSOLVERS_VERSION}
        _claim_out(g, out, header, overwrite, allow_env_mismatch)
        t0 = time.perf_counter()
        nb = max(job.batches) + 1 if job.batches else 0
        summary = JobSummary("reconstruct", threads=cfg.threads)
        mine = [b for b in sorted(job.batches) if b % g.world == g.rank]
        with _progress(g, cfg, sum(len(job.batches[b]) for b in mine), "reconstruct") as bar:
            for b in mine:
                recs = job.batches[b]
                summary.total += len(recs)
                if _batch_done(out, b) is not None:
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
                        name = _shard_name(b)
                        sha = write_shard(out / name, {"x0": x0},
                                          {"ids": json.dumps([r["id"] for r in okr])})
                        size = (out / name).stat().st_size
                        for n, r in enumerate(okr):
                            outrecs.append({"id": r["id"], "source": r["source"], "batch": b,
                                            "status": "ok", "shard": name, "offset": n,
                                            "shard_sha256": sha, "shard_bytes": size,
                                            "env": env})
                            if images:
                                _save_png(out / "images" / f"{r['id']}.png", x0[n])
                    except Exception as e:
                        for r in okr:
                            outrecs.append({"id": r["id"], "source": r["source"], "batch": b,
                                            "status": "failed",
                                            "error": f"{type(e).__name__}: {e}"})
                outrecs.sort(key=lambda r: r["id"])
                write_jsonl(_part_path(out, b), outrecs)
                summary.computed += len(recs)
                summary.failed += sum(r["status"] != "ok" for r in outrecs)
                bar.update(len(recs))
        summary.seconds = time.perf_counter() - t0
        return _finish(g, out, nb, summary)


# -------------------------------------------------------------------- verify
def _default_tolerance(backend: _Backend, scale: float) -> float:
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


def _verify_batch(backend: _Backend, prompts: _Prompts, grid: Grid, job: _Job,
                  data: _Dataset | None, recs: list[dict[str, Any]], env_diff: list[str],
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
        _check_shard(meta, okr, str(shard))
        latent = _latent_of(tensors, meta, okr, grid, backend, str(shard))
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
                                frac_bits=_plan_key_tuple(okr[0]["plan_key"])[1])
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
    if report is not None and Path(report).exists() and not overwrite:
        raise JobError(f"report {report} exists: never overwritten (pass --overwrite)")
    with _group(cfg) as g:
        backend, prompts, grid = _rebuild(job, cfg, str(job.root))
        env = environment(backend.device)
        data = None
        if recompute and job.header["config"].get("data") is not None:
            try:
                data = _Dataset(job.header["config"]["data"])
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
        with _progress(g, cfg, sum(len(job.batches[b]) for b in mine), "verify") as bar:
            for b in mine:
                recs = job.batches[b]
                env_diff = _env_diff(recs[0]["env"], env) if not allow_env_mismatch else []
                got = _verify_batch(backend, prompts, grid, job, data, recs, env_diff,
                                    tolerance, recompute)
                rows += got
                summary.total += len(recs)
                summary.computed += len(recs)
                bar.update(len(recs))
        if g.rank == 0:  # shards on disk that no record names
            named = {r["shard"] for rs in job.batches.values() for r in rs if r.get("shard")}
            for p in sorted((job.root / _SHARDS).glob("*.safetensors")):
                name = f"{_SHARDS}/{p.name}"
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
    with _group(cfg) as g:
        backend, prompts, header = _start(cfg, "sample", None)
        if backend.sample_shape is None:
            raise JobError("the sample shape is unknown: give --shape C,H,W")
        _claim_out(g, out, header, cfg.overwrite, cfg.allow_env_mismatch)
        t0 = time.perf_counter()
        common = _common_record(header, backend)
        width = max(6, len(str(cfg.num_samples - 1)))
        ids = [f"{i:0{width}d}" for i in range(cfg.num_samples)]
        batches = _batches(cfg.num_samples, cfg.batch_size)
        summary = JobSummary("sample-dataset", threads=cfg.threads)
        mine = [b for b in range(len(batches)) if b % g.world == g.rank]
        with _progress(g, cfg, sum(len(batches[b]) for b in mine), "sample") as bar:
            for b in mine:
                rows = batches[b]
                summary.total += len(rows)
                if _batch_done(out, b) is not None:
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
                    name = _shard_name(b)
                    sha = write_shard(out / name, {"x0": x0},
                                      {"ids": json.dumps([ids[i] for i in rows])})
                    size = (out / name).stat().st_size
                    for n, i in enumerate(rows):
                        rec = {"id": ids[i], "index": i, "batch": b, "status": "ok",
                               "seed": cfg.seed, "generator_seed": _sample_seed(cfg.seed, i),
                               "shard": name, "offset": n, "shard_sha256": sha,
                               "shard_bytes": size, "content_sha256": _tensor_sha(x0[n]),
                               "batch_ids": [ids[j] for j in rows], **common}
                        if names[n] is not None:
                            rec["prompt"], rec["prompt_sha256"] = names[n], prompts.sha[names[n]]
                        recs.append(rec)
                        if cfg.images:
                            _save_png(out / "images" / f"{ids[i]}.png", x0[n])
                except Exception as e:
                    recs = [{"id": ids[i], "index": i, "batch": b, "status": "failed",
                             "error": f"{type(e).__name__}: {e}", **common} for i in rows]
                write_jsonl(_part_path(out, b), recs)
                summary.computed += len(rows)
                summary.failed += sum(r["status"] != "ok" for r in recs)
                bar.update(len(rows))
        summary.seconds = time.perf_counter() - t0
        return _finish(g, out, len(batches), summary)
