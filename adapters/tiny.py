"""Tiny diffusers components with random weights, built offline (tests, examples, docs).

They have the architecture of the real thing (a Stable-Diffusion-style conditional UNet
with cross-attention, a VAE, a DDPM UNet) at a size that runs in milliseconds on a CPU.
No hub download: prompt embeddings are random tensors standing in for a text encoder.
"""

from __future__ import annotations

import torch

__all__ = [
    "SD_SCHEDULER_CONFIG",
    "tiny_conditional_unet",
    "tiny_unet",
    "tiny_vae",
    "tiny_prompt_embeds",
    "tiny_sd_pipeline",
    "run_tiny_pipeline",
]

#: Stable Diffusion 1.x's scheduler config (as in runwayml/stable-diffusion-v1-5).
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, steps_offset=1, clip_sample=False, prediction_type="epsilon",
    timestep_spacing="leading",
)

CROSS_DIM = 32


def tiny_conditional_unet(seed: int = 0, dtype: torch.dtype = torch.float32,
                          sample_size: int = 8):
    """A ``UNet2DConditionModel`` with block_out_channels (32, 64), cross_attention_dim 32."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CROSS_DIM,
        attention_head_dim=8, norm_num_groups=32,
    )
    return _to_dtype(unet, dtype)


def tiny_unet(seed: int = 0, dtype: torch.dtype = torch.float32, sample_size: int = 8,
              channels: int = 3):
    """An unconditional DDPM-style ``UNet2DModel``."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
    )
    return _to_dtype(unet, dtype)


def tiny_vae(seed: int = 0, dtype: torch.dtype = torch.float32):
    """An ``AutoencoderKL`` with 4 latent channels and a spatial factor 2."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
        norm_num_groups=32, sample_size=16,
    )
    return _to_dtype(vae, dtype)


def tiny_prompt_embeds(seed: int, batch: int = 1, tokens: int = 7,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random stand-ins for CLIP text embeddings, shape ``(batch, tokens, 32)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, CROSS_DIM, generator=g).to(dtype)


def tiny_sd_pipeline(unet=None, vae=None, scheduler=None):
    """A stock ``StableDiffusionPipeline`` of tiny components (no text encoder/tokenizer:
    call it with ``prompt_embeds``/``negative_prompt_embeds``)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae if vae is not None else tiny_vae(),
        text_encoder=None, tokenizer=None,
        unet=unet if unet is not None else tiny_conditional_unet(),
        scheduler=scheduler if scheduler is not None else DDIMScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_tiny_pipeline(pipe, embeds: tuple[torch.Tensor, torch.Tensor], latents: torch.Tensor,
                      guidance_scale: float, num_inference_steps: int) -> torch.Tensor:
    """Run a :func:`tiny_sd_pipeline` from ``latents`` with ``embeds = (prompt, negative)``
    embeddings and return the final latents (no decoding)."""
    prompt, negative = embeds
    return pipe(prompt_embeds=prompt, negative_prompt_embeds=negative,
                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                latents=latents, output_type="latent").images


def _to_dtype(module, dtype: torch.dtype):
    import logging

    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)  # the "keep modules in float32" notice is moot here
    try:
        return module.to(dtype).eval()
    finally:
        log.setLevel(level)
