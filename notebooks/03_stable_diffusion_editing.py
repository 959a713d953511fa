# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3 · Editing and interpolation with Stable Diffusion
#
# Exact inversion makes *inversion-based editing* honest: invert an image under a **source**
# prompt, then sample from the inverted latent under a **target** prompt. With the source prompt
# the sampling is the inverse of the inversion, so every change in the output is due to the
# prompt, none to reconstruction drift.
#
# **Parameters.** Set `MODEL_ID` to any Stable Diffusion 1.x/2.x checkpoint (local path or hub id;
# v-prediction models work) and, optionally, `IMAGE_PATH` to your own image. A GPU is strongly
# recommended for the real model.
#
# **Under CI / offline** (environment variable `LMSOLVERS_TINY=1`, or when the checkpoint cannot
# be loaded) the notebook builds *tiny random-weight components* locally
# (`lmsolvers.adapters.tiny`): a Stable-Diffusion-shaped UNet with cross-attention, a VAE and
# random tensors standing in for CLIP prompt embeddings. Every step below then runs in seconds,
# the exactness numbers are real, but the pictures are noise: the weights are random.

# %%
MODEL_ID = "runwayml/stable-diffusion-v1-5"  # any SD 1.x / 2.x diffusers checkpoint
IMAGE_PATH = None  # your image (any size; resized to SIZE); None: generated from SOURCE_PROMPT
SOURCE_PROMPT = "a photo of a cat sitting on a sofa"
TARGET_PROMPT = "a photo of a dog sitting on a sofa"
OTHER_PROMPT = "a watercolor painting of a lighthouse"  # second endpoint of the interpolation
NUM_STEPS = 50
GUIDANCE = 3.0
SIZE = 512
SEED = 0

# %%
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from lmsolvers.adapters import (
    BELMScheduler,
    DiffusionSampler,
    decode_latents,
    edit_latents,
    encode_image,
    interpolate,
)

import lmsolvers as L

# The checkout's root goes on sys.path (the benchmarks package holds the held-out digits
# split): found from this file when run as a script (any working directory), from the
# working directory in a Jupyter kernel (started in the root or in notebooks/).
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = next((p for p in (HERE, *HERE.parents) if (p / "benchmarks" / "digits_data.py").is_file()),
            None)
if ROOT is None:
    raise RuntimeError(f"{HERE} is not inside an lmsolvers checkout: start Jupyter in the "
                       "checkout (or run this file with the checkout's .venv/bin/python)")
sys.path.insert(0, str(ROOT))
# One torch thread unless OMP_NUM_THREADS says otherwise: these models are small, and on a
# shared CPU more threads make them slower, not faster (notebook 4: 25 s with one thread,
# 276 s with two, on a busy 2-core machine; README, "Notebooks").
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)
print(f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS="
      f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")
TINY = os.environ.get("LMSOLVERS_TINY", "") == "1"
device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = None
if not TINY:
    try:
        from diffusers import StableDiffusionPipeline

        dtype = torch.float16 if device == "cuda" else torch.float32
        pipe = StableDiffusionPipeline.from_pretrained(MODEL_ID, torch_dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
    except Exception as err:  # offline, no such checkpoint, …
        print(f"could not load {MODEL_ID!r} ({type(err).__name__}: {err}); "
              "falling back to tiny random-weight components")
        TINY = True
if TINY:
    from lmsolvers.adapters.tiny import tiny_prompt_embeds, tiny_sd_pipeline

    device = "cpu"
    pipe = tiny_sd_pipeline()  # random weights, SD-1.x scheduler config, 8×8×4 latents
    NUM_STEPS, SIZE = 10, 16
    print("TINY MODE: random-weight components built locally; pictures are noise, "
          "the numbers are real")
print(type(pipe.unet).__name__, "on", device, "| scheduler:", type(pipe.scheduler).__name__,
      "| prediction:", pipe.scheduler.config.prediction_type)


# %% [markdown]
# ## Prompt embeddings
#
# The editing functions take prompt *embeddings* (what `pipe.encode_prompt` returns), so any text
# encoder, negative prompt or embedding trick can be used. In tiny mode there is no text encoder:
# fixed random tensors stand in for the three prompts.

# %%
def embed(prompt, seed):
    if TINY:
        return tiny_prompt_embeds(seed)
    cond, _ = pipe.encode_prompt(prompt, device, 1, False)
    return cond


src = embed(SOURCE_PROMPT, 1)
tgt = embed(TARGET_PROMPT, 2)
other = embed(OTHER_PROMPT, 3)
neg = embed("", 4)  # the empty (negative) prompt, for classifier-free guidance
print("prompt embeddings:", tuple(src.shape))


# %% [markdown]
# ## The source image and its VAE latents
#
# `encode_image` takes the posterior *mean* of the VAE (deterministic: the same image always gives
# the same latents, which is what exact inversion wants). Without `IMAGE_PATH` the source image is
# generated from the source prompt with O-BELM.

# %%
def to_pil_tensor(path):
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((SIZE, SIZE))
    t = torch.tensor(list(img.getdata()), dtype=torch.float32).view(SIZE, SIZE, 3)
    return (t.permute(2, 0, 1)[None] / 127.5 - 1.0)


def generate(prompt_embeds, seed):
    s = DiffusionSampler(pipe.unet, pipe.scheduler, NUM_STEPS, guidance_scale=GUIDANCE,
                         prompt_embeds=prompt_embeds, negative_prompt_embeds=neg,
                         disable_progress=True)
    c = pipe.unet.config
    shape = (1, c.in_channels, c.sample_size, c.sample_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return decode_latents(pipe.vae, s.sample(x_T)).float().clamp(-1, 1).cpu()


def show(images, titles):
    fig, axes = plt.subplots(1, len(images), figsize=(2.2 * len(images), 2.4))
    for ax, img, title in zip(axes, images, titles, strict=True):
        ax.imshow(((img[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy())
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    plt.show()


image = to_pil_tensor(IMAGE_PATH) if IMAGE_PATH else generate(src, SEED)
z0 = encode_image(pipe.vae, image.to(device))
print("image", tuple(image.shape), "→ latents", tuple(z0.shape))

# %% [markdown]
# ## Exact inversion under the source prompt (with guidance)
#
# `DiffusionSampler` runs the library's default exact configuration (an exponential BELM in
# data-prediction variables on a log-σ̄ grid designed for the step count, docs/design.md §12)
# with classifier-free guidance in one batched UNet call per step.
# Its state is float64, so the round trip is exact to float64 round-off even through an fp16
# UNet. The classic DDIM inversion on the same model, for comparison:

# %%
sampler = DiffusionSampler(pipe.unet, pipe.scheduler, NUM_STEPS, guidance_scale=GUIDANCE,
                           prompt_embeds=src, negative_prompt_embeds=neg, disable_progress=True)
latent = sampler.invert(z0)
rec = sampler.sample(latent)

z0_64 = z0.double()
a0 = float(sampler.grid.alphas[0])
lat_ddim = L.ddim_inversion(sampler.eps, sampler.grid, z0_64 / a0, disable=True)
rec_ddim = L.sample(sampler.eps, sampler.grid, L.ddim(), lat_ddim, disable=True) * a0


def rel(a, b):
    return float((a - b).norm() / b.norm())


print(f"relative latent error  O-BELM: {rel(rec, z0_64):.1e}   DDIM inversion: "
      f"{rel(rec_ddim, z0_64):.1e}")
assert rel(rec, z0_64) < 1e-10
show([image, decode_latents(pipe.vae, rec_ddim).cpu(), decode_latents(pipe.vae, rec).cpu()],
     ["input", "DDIM inversion → sample", "O-BELM inversion → sample"])

# %% [markdown]
# ## Editing
#
# `edit_latents` samples from the source inversion under the target prompt. `frozen_fraction`
# keeps the first (noisiest) fraction of the sampling steps on the source prompt, i.e. on the
# inverted trajectory itself, which preserves more of the source's layout; `frozen_fraction=1`
# (or target = source) gives back the input exactly. Passing `latent=` reuses the inversion for
# several edits.

# %%
edits = {}
for f in (0.0, 0.2, 0.4, 1.0):
    res = edit_latents(pipe.unet, pipe.scheduler, z0, src, tgt, neg, latent=latent,
                       num_inference_steps=NUM_STEPS, guidance_scale=GUIDANCE,
                       frozen_fraction=f, disable_progress=True)
    edits[f] = res.latents
    print(f"frozen_fraction={f:.1f}: relative change of the latents {rel(res.latents, z0_64):.2f}")
assert rel(edits[1.0], z0_64) < 1e-10
show([image] + [decode_latents(pipe.vae, edits[f]).cpu() for f in (0.0, 0.2, 0.4)],
     ["source", "edit, frozen 0", "edit, frozen 0.2", "edit, frozen 0.4"])

# %% [markdown]
# ## Interpolation
#
# Invert two images and sample from the spherical interpolation of their latents (state by state:
# a latent holds k states). The end points reproduce the inputs exactly. (Both are inverted under
# the source prompt here; use an empty prompt for unconditional interpolation.)

# %%
image_b = generate(other, SEED + 1)
z_b = encode_image(pipe.vae, image_b.to(device))
weights = (0.0, 0.25, 0.5, 0.75, 1.0)
path = interpolate(sampler, z0, z_b, weights)
print("end points: relative errors "
      f"{rel(path[0], z0_64):.1e}, {rel(path[-1], z_b.double()):.1e}")
show([decode_latents(pipe.vae, p).cpu() for p in path], [f"w = {w}" for w in weights])

# %% [markdown]
# ## Drop-in scheduler for the stock pipeline
#
# `BELMScheduler` plugs O-BELM into an unmodified `StableDiffusionPipeline`. A pipeline passes a
# single tensor `latents`, while an exact latent holds k states: `load_latent` stores them in the
# scheduler and returns `x_T`, and the pipeline then reproduces the inverted image. (An `x_T`
# straight from a `BELMInverseScheduler` run is recognised and resumed without `load_latent`;
# when a pipeline run is the inverse and when it is not: docs/design.md §8.) A pipeline walks its
# scheduler's own timesteps, so the inversion to resume there runs on that grid
# (`grid="scheduler"`, plain O-BELM).

# %%
pipe.scheduler = BELMScheduler.from_config(pipe.scheduler.config)
on_pipeline_grid = DiffusionSampler(pipe.unet, pipe.scheduler, NUM_STEPS, grid="scheduler",
                                    guidance_scale=GUIDANCE, prompt_embeds=src,
                                    negative_prompt_embeds=neg, disable_progress=True)
x_T = pipe.scheduler.load_latent(on_pipeline_grid.invert(z0), dtype=pipe.unet.dtype)
out = pipe(prompt_embeds=src, negative_prompt_embeds=neg, guidance_scale=GUIDANCE,
           num_inference_steps=NUM_STEPS, latents=x_T, output_type="latent").images
print(f"stock pipeline from the loaded latent: relative error {rel(out.double(), z0_64):.1e}")

# %% [markdown]
# ## A trained model: editing digits by class under classifier-free guidance
#
# In tiny mode the pictures above are noise. The repository ships a small *trained* model on which
# editing can be judged by eye and by a classifier: `models/digits_cond`, a class-conditional DDPM
# of the 8×8 digits trained with label dropout (classifier-free guidance; class 10 is the learned
# null class; `benchmarks/train_digits_cond.py`). `ClassEmbeddingUNet` presents its class-embedding
# rows as prompt embeddings, so the calls are the ones above: source prompt = class a, target
# prompt = class b, negative prompt = the null class. Held-out digits (never seen in training) are
# inverted under their own class at guidance 3 and regenerated under class a + 3 (mod 10).
#
# Rows: the source digits; DDIM inversion → sampling under the same guidance (the approximate
# inversion drifts); exact inversion → sampling (the input, to round-off); edits with
# `frozen_fraction` 0 and 0.4. Measured over 96 held-out digits, all methods and knobs:
# `benchmarks/results/editing_bench.md` and `benchmarks/results/guidance_roundtrip.md`.

# %%
from diffusers import DDPMScheduler, UNet2DModel
from lmsolvers.adapters import ClassEmbeddingUNet, class_sampler

from benchmarks.digits_data import load_digits_split  # ROOT is on sys.path (first cell)

digits = ClassEmbeddingUNet(UNet2DModel.from_pretrained(ROOT / "models" / "digits_cond").eval())
sched_d = DDPMScheduler.from_pretrained(ROOT / "models" / "digits_cond")
x_test, y_test = load_digits_split("test")
x_src, a = x_test[:8].double(), y_test[:8]
b = (a + 3) % 10
W, N_D = 3.0, 20

s_a = class_sampler(digits, sched_d, N_D, a, W, disable_progress=True)  # default exact sampler
lat_a = s_a.invert(x_src)
rec_a = s_a.sample(lat_a)
s_ddim = class_sampler(digits, sched_d, N_D, a, W, method=L.ddim(), disable_progress=True)
a0_d = float(s_ddim.grid.alphas[0])
lat_ddim_d = L.ddim_inversion(s_ddim.eps, s_ddim.grid, x_src / a0_d, disable=True,
                              context=s_ddim.context)
rec_ddim_d = s_ddim.sample(lat_ddim_d)
print(f"guidance {W}: relative round-trip error  exact: {rel(rec_a, x_src):.1e}   "
      f"DDIM inversion: {rel(rec_ddim_d, x_src):.2f}")
assert rel(rec_a, x_src) < 1e-10

rows = {"source (class a)": x_src, "DDIM inv. → sample": rec_ddim_d,
        "exact inv. → sample": rec_a}
for f in (0.0, 0.4):
    rows[f"edit a → a+3, frozen {f}"] = edit_latents(
        digits, sched_d, x_src, digits.class_embeds(a), digits.class_embeds(b),
        digits.null_embeds(8), latent=lat_a, num_inference_steps=N_D, guidance_scale=W,
        frozen_fraction=f, disable_progress=True).latents
fig, axes = plt.subplots(len(rows), 8, figsize=(8, 1.15 * len(rows)))
for r, (title, imgs) in enumerate(rows.items()):
    for c in range(8):
        axes[r, c].imshow(((imgs[c, 0].float() + 1) / 2).clamp(0, 1), cmap="gray_r", vmin=0,
                          vmax=1, interpolation="nearest")
        axes[r, c].axis("off")
    axes[r, 0].set_title(title, fontsize=8, loc="left")
plt.tight_layout()
plt.show()
