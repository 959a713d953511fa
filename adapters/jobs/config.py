"""The settings of a dataset job, its summary, and its errors (docs/jobs.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

__all__ = ["JobConfig", "JobSummary", "JobError", "EnvironmentMismatchError", "format_summary",
           "DTYPES", "parse_dtype"]

#: the dtype names a job accepts (state and model dtypes)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}


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
    data_range:
        ``(lo, hi)``: the range the model's data lies in; a sample outside it fails (8-bit
        pixels given to a [−1, 1] model).  ``None``: the model's own (a scheduler config
        with ``clip_sample``, else [−1, 1] for a pixel-space ``UNet2DModel``, else none);
        ``"any"``: no check.
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
    data_range: tuple[float, float] | str | None = None
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



def parse_dtype(name: str, what: str) -> torch.dtype:
    """The torch dtype of a name in :data:`DTYPES` (``JobError`` naming ``what`` otherwise)."""
    try:
        return DTYPES[str(name).removeprefix("torch.")]
    except KeyError:
        raise JobError(f"{what} {name!r} is not one of {', '.join(DTYPES)}") from None

