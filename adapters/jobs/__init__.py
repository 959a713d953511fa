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

The package holds one idea per module: :mod:`~lmsolvers.adapters.jobs.config` (the
settings, the summary, the errors), :mod:`~lmsolvers.adapters.jobs.env` (what
outside the arguments changes ε's bits), :mod:`~lmsolvers.adapters.jobs.distributed` (the
process group), :mod:`~lmsolvers.adapters.jobs.backends` (models → ε, grid, method),
:mod:`~lmsolvers.adapters.jobs.inputs` (datasets, images, prompts),
:mod:`~lmsolvers.adapters.jobs.store` (the job directory and its invariants: what may be
written where, what a finished batch is, the manifest) and
:mod:`~lmsolvers.adapters.jobs.verbs` (the four jobs).
"""

from __future__ import annotations

from .config import EnvironmentMismatchError, JobConfig, JobError, JobSummary, format_summary
from .env import environment
from .inputs import IMAGE_SUFFIXES
from .verbs import invert_dataset, reconstruct, sample_dataset, verify

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
