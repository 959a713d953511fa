"""diffusers adapters for lmsolvers (installed as ``lmsolvers.adapters``; needs ``diffusers``).

* :func:`grid_from_scheduler`, :class:`DiffusersEps`, :class:`DiffusionSampler`
  (:mod:`lmsolvers.adapters.diffusers`);
* :func:`model_family`, :data:`CONDITIONING_KWARGS`, :func:`flux_mu`, :func:`sd3_mu`: how SD,
  SDXL, SD3 and FLUX models are called as their pipelines call them
  (:mod:`lmsolvers.adapters.transformers`);
* :func:`schedule_from_scheduler`, :class:`Schedule`, :func:`top_timestep`,
  :func:`is_flow_config`: DDPM-family and flow-matching schedules, α = 0 top nodes
  (:mod:`lmsolvers.adapters.schedules`);
* :class:`BELMScheduler`, :class:`BELMInverseScheduler`, their x_T hand-off
  (:class:`LatentHandoff`, :class:`InvertedLatentWarning`) (:mod:`lmsolvers.adapters.scheduler`);
* :func:`edit_latents`, :func:`edit_image`, :func:`interpolate`, :func:`encode_image`,
  :func:`decode_latents` (:mod:`lmsolvers.adapters.editing`);
* :class:`ClassEmbeddingUNet`, :func:`class_guided_eps`, :func:`class_sampler`
  (:mod:`lmsolvers.adapters.guidance`: classifier-free guidance of class-conditional UNets);
* the exact samplers in k-diffusion's / ComfyUI's calling convention, ``sample_exact``,
  ``sample_obelm``, … and their ``invert_*`` twins (:mod:`lmsolvers.adapters.kdiffusion`,
  imported on use; it needs no diffusers unless a diffusers model is wrapped);
* the dataset jobs behind ``lmsolvers invert-dataset | reconstruct | verify |
  sample-dataset`` (:mod:`lmsolvers.adapters.jobs`, imported on use: docs/jobs.md).

The core never imports this package.  Names are loaded on first use (PEP 562), so
``import lmsolvers.adapters`` — and the k-diffusion functions, which need no diffusers — do
not pay for importing diffusers until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it (one table; ``__all__`` is its keys)
_EXPORTS: dict[str, str] = {
    "PREDICTION_TYPES": "diffusers",
    "DiffusersEps": "diffusers",
    "DiffusionSampler": "diffusers",
    "alphas_cumprod_from_config": "diffusers",
    "grid_from_scheduler": "diffusers",
    "to_epsilon": "diffusers",
    "top_prediction": "diffusers",
    "CONDITIONING_KWARGS": "transformers",
    "model_family": "transformers",
    "flux_mu": "transformers",
    "sd3_mu": "transformers",
    "BELMScheduler": "scheduler",
    "BELMInverseScheduler": "scheduler",
    "BELMSchedulerOutput": "scheduler",
    "InvertedLatentWarning": "scheduler",
    "LatentHandoff": "scheduler",
    "Schedule": "schedules",
    "schedule_from_scheduler": "schedules",
    "top_timestep": "schedules",
    "is_flow_config": "schedules",
    "EditResult": "editing",
    "encode_image": "editing",
    "decode_latents": "editing",
    "edit_latents": "editing",
    "edit_image": "editing",
    "frozen_threshold": "editing",
    "slerp_latents": "editing",
    "interpolate": "editing",
    "ClassEmbeddingUNet": "guidance",
    "class_guided_eps": "guidance",
    "class_sampler": "guidance",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmsolvers.adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
