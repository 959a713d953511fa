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
* the dataset jobs behind ``lmsolvers invert-dataset | reconstruct | verify |
  sample-dataset`` (:mod:`lmsolvers.adapters.jobs`, imported on use: docs/jobs.md).

The core never imports this package.
"""

from .diffusers import (
    PREDICTION_TYPES,
    DiffusersEps,
    DiffusionSampler,
    alphas_cumprod_from_config,
    grid_from_scheduler,
    to_epsilon,
    top_prediction,
)
from .editing import (
    EditResult,
    decode_latents,
    edit_image,
    edit_latents,
    encode_image,
    frozen_threshold,
    interpolate,
    slerp_latents,
)
from .guidance import ClassEmbeddingUNet, class_guided_eps, class_sampler
from .scheduler import (
    BELMInverseScheduler,
    BELMScheduler,
    BELMSchedulerOutput,
    InvertedLatentWarning,
    LatentHandoff,
)
from .schedules import Schedule, is_flow_config, schedule_from_scheduler, top_timestep
from .transformers import CONDITIONING_KWARGS, flux_mu, model_family, sd3_mu

__all__ = [
    "PREDICTION_TYPES",
    "DiffusersEps",
    "DiffusionSampler",
    "alphas_cumprod_from_config",
    "grid_from_scheduler",
    "to_epsilon",
    "top_prediction",
    "CONDITIONING_KWARGS",
    "model_family",
    "flux_mu",
    "sd3_mu",
    "BELMScheduler",
    "BELMInverseScheduler",
    "BELMSchedulerOutput",
    "InvertedLatentWarning",
    "LatentHandoff",
    "Schedule",
    "schedule_from_scheduler",
    "top_timestep",
    "is_flow_config",
    "EditResult",
    "encode_image",
    "decode_latents",
    "edit_latents",
    "edit_image",
    "frozen_threshold",
    "slerp_latents",
    "interpolate",
    "ClassEmbeddingUNet",
    "class_guided_eps",
    "class_sampler",
]
