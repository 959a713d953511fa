"""SDXL: conditioning under the pipeline's own names, the base → refiner hand-off with BELM in
both halves, and img2img / inpaint pipelines with BELMScheduler.

Tiny random-weight SDXL base and refiner UNets (``addition_embed_type="text_time"``; the
refiner with 5 time ids) built offline, called with prompt and pooled embeddings.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLPipeline,
)
from lmsolvers.adapters import BELMScheduler, DiffusionSampler, edit_latents
from lmsolvers.adapters.tiny import (
    SD_SCHEDULER_CONFIG,
    SDXL_CROSS_DIM,
    SDXL_SCHEDULER_CONFIG,
    tiny_conditional_unet,
    tiny_embeds,
    tiny_prompt_embeds,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
    tiny_sdxl_unet,
)

N = 10
SIZE = (16, 16)  # the tiny pipelines' image size in pixels (8×8 latents, VAE factor 2)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cond():
    pe, pp = tiny_embeds(1, batch=2, width=SDXL_CROSS_DIM)
    ne, np_ = tiny_embeds(2, batch=2, width=SDXL_CROSS_DIM)
    return dict(prompt_embeds=pe, pooled_prompt_embeds=pp, negative_prompt_embeds=ne,
                negative_pooled_prompt_embeds=np_)


@pytest.fixture(scope="module")
def base():
    return tiny_sdxl_pipeline(scheduler=BELMScheduler.from_config(SDXL_SCHEDULER_CONFIG))


class Calls:
    """Records every UNet call's inputs (clones)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: list[dict] = []
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        added = kwargs.get("added_cond_kwargs") or {}
        self.calls.append(dict(sample=args[0].clone(), t=args[1].clone(),
                               enc=kwargs["encoder_hidden_states"].clone(),
                               **{k: v.clone() for k, v in added.items()}))


# sizes that exercise every branch of the pipeline's time ids (negative sizes differ)
SIZES = dict(original_size=(32, 24), crops_coords_top_left=(2, 4), target_size=SIZE,
             negative_original_size=(8, 8), negative_crops_coords_top_left=(0, 2),
             negative_target_size=(12, 16))


@pytest.mark.parametrize("sizes", [{}, SIZES], ids=["default", "custom"])
def test_sdxl_pipeline_equals_diffusion_sampler_bit_for_bit(base, cond, sizes):
    """O-BELM through the stock StableDiffusionXLPipeline equals DiffusionSampler given the
    pipeline's own arguments; every UNet call (latents, timestep, embeddings, pooled
    embeddings, time ids, [uncond, cond] order) is bitwise the pipeline's."""
    x_T = noise(2, 4, 8, 8, seed=1)
    rec = Calls(base.unet)
    try:
        piped = base(latents=x_T, num_inference_steps=N, guidance_scale=3.0,
                     output_type="latent", **cond, **sizes).images
        ours = DiffusionSampler(base.unet, base.scheduler, N, "obelm", guidance_scale=3.0,
                                disable_progress=True, **cond,
                                **({"original_size": SIZE} | sizes)).sample(x_T)
    finally:
        rec.handle.remove()
    assert torch.equal(piped, ours.float())
    calls = rec.calls
    assert len(calls) == 2 * N  # one UNet call per step each (O-BELM's starter reuses ε_N)
    for a, b in zip(calls[:N], calls[N:], strict=True):
        for key in ("sample", "t", "enc", "text_embeds", "time_ids"):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    # the base pipeline's time-id rows: cat([neg, pos]).repeat(B, 1) (crosswise for B > 1,
    # reproduced on purpose); embeddings are [neg, neg, pos, pos]
    neg = [*SIZES["negative_original_size"], *SIZES["negative_crops_coords_top_left"],
           *SIZES["negative_target_size"]]
    want = [neg, [32, 24, 2, 4, 16, 16]] * 2 if sizes else [[16, 16, 0, 0, 16, 16]] * 4
    assert calls[0]["time_ids"].tolist() == want


def test_stock_ddim_and_sampler_ddim_agree_to_round_off(cond):
    pipe = tiny_sdxl_pipeline()  # DDIMScheduler
    x_T = noise(2, 4, 8, 8, seed=2)
    stock = pipe(latents=x_T, num_inference_steps=N, guidance_scale=3.0, output_type="latent",
                 **cond).images
    ours = DiffusionSampler(pipe.unet, pipe.scheduler, N, "ddim", guidance_scale=3.0,
                            original_size=SIZE, disable_progress=True, **cond).sample(x_T)
    assert 0 < rel(ours, stock) < 2e-6


def test_pre_concatenated_added_cond_kwargs_still_work(base, cond):
    """The old calling convention (``unet_kwargs={"added_cond_kwargs": [uncond, cond]}``)
    gives the same ε; mixing it with the new arguments is refused."""
    x_T = noise(2, 4, 8, 8, seed=3)
    new = DiffusionSampler(base.unet, base.scheduler, N, "obelm", guidance_scale=3.0,
                           original_size=SIZE, disable_progress=True, **cond)
    ids = StableDiffusionXLPipeline._get_add_time_ids(base, SIZE, (0, 0), SIZE, torch.float32,
                                                      text_encoder_projection_dim=32)
    added = {"text_embeds": torch.cat([cond["negative_pooled_prompt_embeds"],
                                       cond["pooled_prompt_embeds"]]),
             "time_ids": ids.repeat(4, 1)}
    old = DiffusionSampler(base.unet, base.scheduler, N, "obelm", guidance_scale=3.0,
                           prompt_embeds=cond["prompt_embeds"],
                           negative_prompt_embeds=cond["negative_prompt_embeds"],
                           unet_kwargs={"added_cond_kwargs": added}, disable_progress=True)
    assert torch.equal(new.sample(x_T), old.sample(x_T))
    with pytest.raises(ValueError, match="both give SDXL's added conditioning"):
        DiffusionSampler(base.unet, base.scheduler, N, "obelm", guidance_scale=3.0,
                         unet_kwargs={"added_cond_kwargs": added}, original_size=SIZE, **cond)


def test_missing_sdxl_conditioning_is_a_clear_error(base, cond):
    u, s = base.unet, base.scheduler
    with pytest.raises(ValueError, match="need original_size"):
        DiffusionSampler(u, s, N, "obelm", guidance_scale=3.0, **cond)
    no_pooled = {k: v for k, v in cond.items() if k != "pooled_prompt_embeds"}
    with pytest.raises(ValueError, match="needs pooled_prompt_embeds"):
        DiffusionSampler(u, s, N, "obelm", guidance_scale=3.0, original_size=SIZE, **no_pooled)
    no_neg = {k: v for k, v in cond.items() if k != "negative_pooled_prompt_embeds"}
    with pytest.raises(ValueError, match="needs negative_pooled_prompt_embeds"):
        DiffusionSampler(u, s, N, "obelm", guidance_scale=3.0, original_size=SIZE, **no_neg)
    with pytest.raises(ValueError, match="does not fit this UNet's added embedding"):
        DiffusionSampler(u, s, N, "obelm", original_size=SIZE, prompt_embeds=cond["prompt_embeds"],
                         pooled_prompt_embeds=torch.randn(2, 20))
    with pytest.raises(TypeError, match="not conditioning arguments of a unet model"):
        DiffusionSampler(tiny_sd_pipeline().unet, s, N, "obelm", original_size=SIZE,
                         prompt_embeds=tiny_prompt_embeds(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdxl_round_trip_and_edit(dtype, cond):
    unet = tiny_sdxl_unet(dtype=dtype)
    s = DiffusionSampler(unet, DDIMScheduler(**SDXL_SCHEDULER_CONFIG), N, guidance_scale=3.0,
                         original_size=SIZE, disable_progress=True, **cond)
    x0 = noise(2, 4, 8, 8, seed=4)
    latent = s.invert(x0)
    assert rel(s.sample(latent), x0) <= 1e-10
    same = edit_latents(unet, DDIMScheduler(**SDXL_SCHEDULER_CONFIG), x0, cond["prompt_embeds"],
                        cond["prompt_embeds"], cond["negative_prompt_embeds"],
                        num_inference_steps=N, guidance_scale=3.0, latent=latent,
                        source_pooled_prompt_embeds=cond["pooled_prompt_embeds"],
                        target_pooled_prompt_embeds=cond["pooled_prompt_embeds"],
                        negative_pooled_prompt_embeds=cond["negative_pooled_prompt_embeds"],
                        original_size=SIZE, disable_progress=True)
    assert rel(same.latents, x0) <= 1e-10


def test_sd1x_round_trip_through_a_bf16_unet():
    """The SD 1.x-style UNet in bf16 (fp32/fp16 are in test_adapters.py), float64 state."""
    s = DiffusionSampler(tiny_conditional_unet(dtype=torch.bfloat16),
                         DDIMScheduler(**SD_SCHEDULER_CONFIG), N, "obelm", guidance_scale=3.0,
                         prompt_embeds=tiny_prompt_embeds(1, batch=2),
                         negative_prompt_embeds=tiny_prompt_embeds(2, batch=2),
                         disable_progress=True)
    x0 = noise(2, 4, 8, 8, seed=11)
    assert rel(s.sample(s.invert(x0)), x0) <= 1e-10


def test_base_to_refiner_hand_off_with_belm_in_both_halves(base, cond):
    """``denoising_end`` on the base, ``denoising_start`` on the refiner (5 time ids with
    aesthetic scores), BELMScheduler in both stock pipelines: bitwise DiffusionSampler's
    two sub-range runs; and the chain inverts exactly (refiner latent, then the base from the
    refiner's top state)."""
    refiner = tiny_sdxl_pipeline(unet=tiny_sdxl_unet(seed=1, refiner=True), refiner=True,
                                 scheduler=BELMScheduler.from_config(SDXL_SCHEDULER_CONFIG))
    x_T, d = noise(2, 4, 8, 8, seed=5), 0.7
    x_m = base(latents=x_T, num_inference_steps=N, guidance_scale=3.0, denoising_end=d,
               output_type="latent", **cond).images
    x_0 = refiner(image=x_m, num_inference_steps=N, guidance_scale=3.0, denoising_start=d,
                  output_type="latent", **cond).images
    sb = DiffusionSampler(base.unet, base.scheduler, N, "obelm", guidance_scale=3.0,
                          original_size=SIZE, denoising_end=d, disable_progress=True, **cond)
    sr = DiffusionSampler(refiner.unet, refiner.scheduler, N, "obelm", guidance_scale=3.0,
                          original_size=SIZE, denoising_start=d, disable_progress=True, **cond)
    # the cut at round(1000·(1 − 0.7)) = 300: the base runs t ≥ 300, the refiner below
    assert sb.grid.timesteps.tolist()[0] == 201.0 and sb.grid.timesteps[1] == 301.0
    assert sr.grid.timesteps.tolist()[-1] == 201.0
    y_m = sb.sample(x_T)
    y_0 = sr.sample(x_m)
    assert torch.equal(y_m.float(), x_m) and torch.equal(y_0.float(), x_0)
    lat_r = sr.invert(y_0)
    lat_b = sb.invert(sr.noise_of(lat_r))
    assert rel(sr.sample(lat_r), y_0) <= 1e-10
    assert rel(sb.sample(lat_b), sr.noise_of(lat_r)) <= 1e-10
    with pytest.raises(ValueError, match="denoising_start must be a fraction"):
        DiffusionSampler(base.unet, base.scheduler, N, "obelm", denoising_start=1.5,
                         original_size=SIZE, **cond)


def _sd_variant(cls, sched):
    sd = tiny_sd_pipeline()
    pipe = cls(vae=sd.vae, text_encoder=None, tokenizer=None, unet=sd.unet, scheduler=sched,
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", ["sd-img2img", "sd-inpaint", "sdxl-img2img"])
def test_img2img_and_inpaint_pipelines_run_with_belm(kind, cond):
    """strength 0.6 (a start in mid-schedule after add_noise): BELMScheduler(method='ddim')
    reproduces DDIMScheduler to round-off; O-BELM runs and stays close to it."""
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))  # in [0, 1]
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    outs = {}
    for name in ("ddim", "belm-ddim", "obelm"):
        config = SDXL_SCHEDULER_CONFIG if kind.startswith("sdxl") else SD_SCHEDULER_CONFIG
        sched = DDIMScheduler(**config) if name == "ddim" else BELMScheduler.from_config(
            config, **({"method": "ddim"} if name == "belm-ddim" else {}))
        args = dict(image=image, strength=0.6, num_inference_steps=N, guidance_scale=3.0,
                    generator=torch.Generator().manual_seed(0), output_type="latent")
        if kind == "sdxl-img2img":
            pipe = tiny_sdxl_pipeline(scheduler=sched, img2img=True)
            args.update(cond)
        else:
            pipe = _sd_variant(StableDiffusionImg2ImgPipeline if kind == "sd-img2img"
                               else StableDiffusionInpaintPipeline, sched)
            args.update(prompt_embeds=tiny_prompt_embeds(1, batch=2),
                        negative_prompt_embeds=tiny_prompt_embeds(2, batch=2))
            if kind == "sd-inpaint":
                args["mask_image"] = mask
        with warnings.catch_warnings():
            # the 4-channel inpaint pipeline re-blends the known region every step, which a
            # multistep scheduler reports (its history no longer matches the latents)
            warnings.filterwarnings("ignore", message="latents at timestep",
                                    category=RuntimeWarning)
            outs[name] = pipe(**args).images
    assert 0 < rel(outs["belm-ddim"], outs["ddim"]) < 5e-6
    assert torch.isfinite(outs["obelm"]).all() and rel(outs["obelm"], outs["ddim"]) < 0.2


# ------------------------------------------- class-conditional UNets (the same call layer)
def test_class_conditional_unet_guidance_by_labels():
    """``class_labels``/``negative_class_labels`` batched [null, class] in one call: ε equals
    the two separate calls' guided combination to fp32 round-off, labels matter, and the
    guided round trip is exact."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(32, 64), down_block_types=("DownBlock2D",
                                                                      "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
                       num_class_embeds=11).eval()
    sch = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    labels, null = torch.tensor([3, 5]), torch.tensor([10])
    s = DiffusionSampler(unet, sch, N, "obelm", guidance_scale=3.0, class_labels=labels,
                         negative_class_labels=null, disable_progress=True)
    x = noise(2, 3, 8, 8, seed=12)
    t = int(s.grid.timesteps[-1])
    e = s.eps.model_output(x, t)
    with torch.no_grad():
        e_c = unet(x, t, class_labels=labels).sample
        e_u = unet(x, t, class_labels=null.expand(2)).sample
    torch.testing.assert_close(e, e_u + 3.0 * (e_c - e_u), rtol=1e-5, atol=1e-5)
    x0 = s.sample(x)
    assert rel(s.sample(x, class_labels=torch.tensor([4, 5])), x0) > 1e-3
    assert rel(s.sample(s.invert(x0)), x0) <= 1e-10
    with pytest.raises(ValueError, match="needs negative_class_labels"):
        DiffusionSampler(unet, sch, N, "obelm", guidance_scale=3.0, class_labels=labels)
    with pytest.raises(TypeError, match="1-D integer tensor"):
        DiffusionSampler(unet, sch, N, "obelm", class_labels=torch.tensor([[3.0]]))
