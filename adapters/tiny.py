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
    "POOLED_DIM",
    "SDXL_CROSS_DIM",
    "SDXL_SCHEDULER_CONFIG",
    "SD3_SCHEDULER_CONFIG",
    "FLUX_SCHEDULER_CONFIG",
    "tiny_sdxl_unet",
    "tiny_flow_vae",
    "tiny_sd3_transformer",
    "tiny_flux_transformer",
    "tiny_embeds",
    "tiny_sdxl_pipeline",
    "tiny_sd3_pipeline",
    "tiny_flux_pipeline",
    "tiny_clip_tokenizer",
    "tiny_clip_text_encoder",
    "tiny_t5",
    "tiny_text_encoders",
    "tiny_pipeline",
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


# --------------------------------------------------------------- SDXL, SD3, FLUX
#: pooled-embedding width of the tiny SDXL/SD3/FLUX components (text_encoder_2's projection)
POOLED_DIM = 32
#: cross-attention width of the tiny SDXL UNets
SDXL_CROSS_DIM = 64
#: SDXL's scheduler config (as in stabilityai/stable-diffusion-xl-base-1.0)
SDXL_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, steps_offset=1, clip_sample=False, prediction_type="epsilon",
    timestep_spacing="leading",
)
#: SD3's scheduler config (stabilityai/stable-diffusion-3-medium-diffusers: shift 3)
SD3_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
#: FLUX.1-dev's scheduler config (dynamic shifting: mu from the image sequence length)
FLUX_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
)


def tiny_sdxl_unet(seed: int = 0, dtype: torch.dtype = torch.float32, sample_size: int = 8,
                   refiner: bool = False):
    """An SDXL-style ``UNet2DConditionModel`` (``addition_embed_type="text_time"``, pooled
    width 32, cross-attention 64); ``refiner=True``: the refiner's 5 time ids
    (``original_size + crops + aesthetic_score``) instead of the base's 6."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    n_ids = 5 if refiner else 6
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), cross_attention_dim=SDXL_CROSS_DIM,
        projection_class_embeddings_input_dim=8 * n_ids + POOLED_DIM, norm_num_groups=32,
    )
    return _to_dtype(unet, dtype)


def tiny_flow_vae(seed: int = 0, dtype: torch.dtype = torch.float32):
    """An SD3/FLUX-style ``AutoencoderKL`` (no quant convs, a ``shift_factor``), 4 latent
    channels, spatial factor 2."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
        norm_num_groups=32, sample_size=16, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )
    return _to_dtype(vae, dtype)


def tiny_sd3_transformer(seed: int = 0, dtype: torch.dtype = torch.float32,
                         sample_size: int = 8):
    """An ``SD3Transformer2DModel`` (1 joint block, patch 2, text width 32, pooled 32)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=CROSS_DIM,
        caption_projection_dim=32, pooled_projection_dim=POOLED_DIM, pos_embed_max_size=16,
    )
    return _to_dtype(model, dtype)


def tiny_flux_transformer(seed: int = 0, dtype: torch.dtype = torch.float32,
                          guidance_embeds: bool = True):
    """A ``FluxTransformer2DModel`` (1 double + 1 single block) on 4-channel latents packed
    2×2 (in_channels 16); ``guidance_embeds`` as FLUX.1-dev (False: FLUX.1-schnell)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=CROSS_DIM, pooled_projection_dim=POOLED_DIM,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8),
    )
    return _to_dtype(model, dtype)


def tiny_embeds(seed: int, batch: int = 1, tokens: int = 7, width: int = CROSS_DIM,
                pooled: int | None = POOLED_DIM, dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random stand-ins for ``(prompt_embeds, pooled_prompt_embeds)`` of shapes
    ``(batch, tokens, width)`` and ``(batch, pooled)`` (``pooled=None``: no pooled)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, tokens, width, generator=g).to(dtype)
    return emb, None if pooled is None else torch.randn(batch, pooled, generator=g).to(dtype)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(unet=None, vae=None, scheduler=None, refiner: bool = False,
                       img2img: bool = False):
    """A stock ``StableDiffusionXLPipeline`` (``img2img`` or ``refiner``:
    ``StableDiffusionXLImg2ImgPipeline``, the refiner with ``requires_aesthetics_score``) of
    tiny components, without text encoders: call it with ``prompt_embeds``,
    ``pooled_prompt_embeds`` and their negatives."""
    from diffusers import (
        DDIMScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    parts = dict(vae=vae if vae is not None else tiny_vae(),
                 text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                 unet=unet if unet is not None else tiny_sdxl_unet(refiner=refiner),
                 scheduler=scheduler if scheduler is not None else DDIMScheduler(
                     **SDXL_SCHEDULER_CONFIG))
    if refiner or img2img:
        pipe = StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=refiner,
                                                force_zeros_for_empty_prompt=not refiner)
    else:
        pipe = StableDiffusionXLPipeline(**parts)
    return _quiet(pipe)


def tiny_sd3_pipeline(transformer=None, vae=None, scheduler=None):
    """A stock ``StableDiffusion3Pipeline`` of tiny components without text encoders: call
    it with ``prompt_embeds``/``pooled_prompt_embeds`` (and negatives)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return _quiet(StableDiffusion3Pipeline(
        transformer=transformer if transformer is not None else tiny_sd3_transformer(),
        scheduler=scheduler if scheduler is not None else FlowMatchEulerDiscreteScheduler(
            **SD3_SCHEDULER_CONFIG),
        vae=vae if vae is not None else tiny_flow_vae(), text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None))


def tiny_flux_pipeline(transformer=None, vae=None, scheduler=None):
    """A stock ``FluxPipeline`` of tiny components without text encoders: call it with
    ``prompt_embeds``/``pooled_prompt_embeds``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    return _quiet(FluxPipeline(
        transformer=transformer if transformer is not None else tiny_flux_transformer(),
        scheduler=scheduler if scheduler is not None else FlowMatchEulerDiscreteScheduler(
            **FLUX_SCHEDULER_CONFIG),
        vae=vae if vae is not None else tiny_flow_vae(), text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None))


# ------------------------------------------------------ text encoders and tokenizers
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` over single characters (no merges), from a vocabulary written to
    a temporary directory at run time (``CLIPTokenizer.from_pretrained`` would need the
    hub); 77 tokens as CLIP."""
    import json
    import os
    import tempfile

    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(_CHARS)}
    vocab.update({c + "</w>": len(_CHARS) + i for i, c in enumerate(_CHARS)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    d = tempfile.mkdtemp(prefix="lmsolvers-tiny-clip-")
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"),
                         model_max_length=77)


def tiny_clip_text_encoder(seed: int = 0, hidden: int = CROSS_DIM,
                           projection: int | None = None, dtype: torch.dtype = torch.float32):
    """A 2-layer ``CLIPTextModel`` (``projection=None``) or ``CLIPTextModelWithProjection``
    over :func:`tiny_clip_tokenizer`'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    n = 2 * len(_CHARS) + 2
    cfg = CLIPTextConfig(vocab_size=n, hidden_size=hidden, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         projection_dim=projection or hidden, bos_token_id=n - 2,
                         eos_token_id=n - 1, pad_token_id=n - 1)
    torch.manual_seed(seed)
    model = CLIPTextModel(cfg) if projection is None else CLIPTextModelWithProjection(cfg)
    return model.to(dtype).eval()


def tiny_t5(seed: int = 0, d_model: int = CROSS_DIM, dtype: torch.dtype = torch.float32):
    """``(T5TokenizerFast, T5EncoderModel)``: a character-level tokenizer (``tokenizers``
    WordLevel, built in memory) and a 1-layer encoder of width ``d_model``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({c: 3 + i for i, c in enumerate(_CHARS)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = T5TokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                          unk_token="<unk>", extra_ids=0)
    torch.manual_seed(seed)
    enc = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=37,
                                  num_layers=1, num_heads=4))
    return tok, enc.to(dtype).eval()


def tiny_text_encoders(family: str) -> dict:
    """Tokenizers and text encoders for :func:`tiny_pipeline` (``pipe.encode_prompt`` then
    works offline, with the widths the tiny denoisers take)."""
    if family == "sd":
        return dict(tokenizer=tiny_clip_tokenizer(), text_encoder=tiny_clip_text_encoder(1))
    if family == "sdxl":
        return dict(tokenizer=tiny_clip_tokenizer(), text_encoder=tiny_clip_text_encoder(1),
                    tokenizer_2=tiny_clip_tokenizer(),
                    text_encoder_2=tiny_clip_text_encoder(2, projection=POOLED_DIM))
    if family == "sd3":  # CLIP-L + CLIP-G widths 16 + 16 = joint_attention_dim; no T5
        return dict(tokenizer=tiny_clip_tokenizer(),
                    text_encoder=tiny_clip_text_encoder(1, hidden=16, projection=16),
                    tokenizer_2=tiny_clip_tokenizer(),
                    text_encoder_2=tiny_clip_text_encoder(2, hidden=16, projection=16))
    if family == "flux":
        tok2, enc2 = tiny_t5(2)
        return dict(tokenizer=tiny_clip_tokenizer(), text_encoder=tiny_clip_text_encoder(1),
                    tokenizer_2=tok2, text_encoder_2=enc2)
    raise ValueError(f"unknown family {family!r}; expected 'sd', 'sdxl', 'sd3' or 'flux'")


def tiny_pipeline(family: str):
    """A complete stock pipeline of tiny components *with* tokenizers and text encoders:
    ``StableDiffusionPipeline`` ("sd"), ``StableDiffusionXLPipeline`` ("sdxl"),
    ``StableDiffusion3Pipeline`` ("sd3", without T5) or ``FluxPipeline`` ("flux"), standing in
    for ``from_pretrained`` in offline examples (docs/adapters.md)."""
    from diffusers import (
        DDIMScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    text = tiny_text_encoders(family)
    if family == "sd":
        pipe = StableDiffusionPipeline(
            vae=tiny_vae(), unet=tiny_conditional_unet(),
            scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, **text)
    elif family == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=tiny_vae(), unet=tiny_sdxl_unet(),
                                         scheduler=DDIMScheduler(**SDXL_SCHEDULER_CONFIG), **text)
    elif family == "sd3":
        pipe = StableDiffusion3Pipeline(
            transformer=tiny_sd3_transformer(), vae=tiny_flow_vae(),
            scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
            text_encoder_3=None, tokenizer_3=None, **text)
    else:
        pipe = FluxPipeline(transformer=tiny_flux_transformer(), vae=tiny_flow_vae(),
                            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
                            **text)
    return _quiet(pipe)
