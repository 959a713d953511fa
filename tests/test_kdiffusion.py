"""The exact samplers in k-diffusion's / ComfyUI's calling convention (issue 22).

The conventions are written into reference denoisers here, from the formulas of the tools
that define them (their code is not copied):

* k-diffusion ``k_diffusion/external.py``: ``DiscreteSchedule`` (``sigmas = sqrt((1 − ᾱ)/ᾱ)``
  ascending, ``sigma_to_t`` linear in log σ or nearest when quantised, ``get_sigmas(n)``:
  ``t = linspace(T − 1, 0, n)``, σ log-linear between table entries, then 0),
  ``DiscreteEpsDDPMDenoiser.forward`` (``c_in = 1/sqrt(σ² + 1)``, ``D = x − σ ε(c_in x, t)``)
  and ``DiscreteVDDPMDenoiser.forward`` (``c_skip = 1/(σ² + 1)``, ``c_out = −σ/sqrt(σ² + 1)``,
  ``D = c_skip x + c_out v(c_in x, t)``);
* k-diffusion ``k_diffusion/sampling.py``: samplers call ``model(x, sigmas[i] * s_in,
  **extra_args)`` with ``s_in = x.new_ones([batch])``; ``sample_euler`` (no churn) steps
  ``x += (x − D)/σ_i · (σ_{i+1} − σ_i)``; callbacks get ``{'x', 'i', 'sigma', 'sigma_hat',
  'denoised'}`` once per step, after the model call at the step's ``x``;
* ComfyUI ``comfy/model_sampling.py``: ``CONST`` (``calculate_input(σ, x) = x``,
  ``calculate_denoised = x − σ·out``, ``noise_scaling = σ n + (1 − σ) x_0``) with
  ``ModelSamplingDiscreteFlow.timestep(σ) = σ·1000``; ``EPS`` (``x/sqrt(σ² + 1)``,
  ``x − σ·out``); ``comfy/samplers.py``: ``KSAMPLER(fn)`` calls
  ``fn(model_k, noise, sigmas, extra_args=…, callback=…, disable=…)``, and ComfyUI's
  ``k_callback`` reads ``i``, ``denoised`` and ``x``.

What "bitwise equal to DiffusionSampler" means: :class:`DiffusersDenoiser` hands the
k-diffusion functions ε straight from the UNet (the same DiffusersEps, at the same node
timesteps and α), so a run equals ``DiffusionSampler``'s bit for bit — latents, samples and
sampling from noise.  A denoiser that only returns ``D`` (k-diffusion's, ComfyUI's) gives ε
as ``(x̄ − D)/σ̄``, which rounds differently from the UNet's ε: such runs are exact round
trips in themselves and agree with ``DiffusionSampler`` to round-off, not bit for bit.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from lmsolvers.adapters import DiffusionSampler
from lmsolvers.adapters import kdiffusion as K

import lmsolvers as L
from benchmarks.digits_data import REPO_ROOT, load_digits_split

DDPM = REPO_ROOT / "models" / "digits_ddpm"
FLOW = REPO_ROOT / "models" / "digits_flow"


# --------------------------------------------------------------- the models
@pytest.fixture(scope="module")
def ddpm():
    return UNet2DModel.from_pretrained(DDPM).eval(), DDPMScheduler.from_pretrained(DDPM)


@pytest.fixture(scope="module")
def flow():
    return (UNet2DModel.from_pretrained(FLOW).eval(),
            FlowMatchEulerDiscreteScheduler.from_pretrained(FLOW))


@pytest.fixture(scope="module")
def digits():
    """16 held-out digits, float64."""
    return load_digits_split("test")[0][:16].double()


def _net(unet):
    """The UNet as k-diffusion's inner model ``net(x, t)`` (float32 model, state dtype out)."""
    def net(x, t):
        with torch.no_grad():
            return unet(x.float(), t).sample.to(x.dtype)
    return net


class KDiscreteDenoiser:
    """k-diffusion's DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser (external.py), from their
    formulas: the k-diffusion user's wrapper of an ε- or v-network with an ᾱ table."""

    def __init__(self, net, alphas_cumprod, kind="eps", quantize=False):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.net, self.kind, self.quantize = net, kind, quantize

    def sigma_to_t(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        if self.quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape)
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).view(sigma.shape)

    def __call__(self, x, sigma, **extra_args):
        s = sigma.view(-1, *([1] * (x.dim() - 1)))
        c_in = 1 / (s**2 + 1) ** 0.5
        out = self.net(x * c_in, self.sigma_to_t(sigma), **extra_args)
        if self.kind == "eps":
            return x + out * (-s)
        return out * (-s / (s**2 + 1) ** 0.5) + x / (s**2 + 1)


class ConstDenoiser:
    """ComfyUI's CONST model sampling (comfy/model_sampling.py) around a flow network:
    the model sees x itself at timestep σ·1000, ``D = x − σ v``."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x, sigma, **extra_args):
        s = sigma.view(-1, *([1] * (x.dim() - 1)))
        return x - self.net(x, (sigma * 1000).float(), **extra_args) * s


def _rel(a, b):
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


# ------------------------------------------------------------ the conventions
def test_diffusers_denoiser_follows_k_diffusions_discrete_denoisers(ddpm):
    """Called as a k-diffusion model, DiffusersDenoiser is DiscreteEpsDDPMDenoiser (at table
    sigmas and between them), and its get_sigmas is DiscreteSchedule.get_sigmas."""
    unet, sched = ddpm
    den = K.DiffusersDenoiser(unet, sched)
    ref = KDiscreteDenoiser(_net(unet), den.alphas_cumprod)  # the float64 table
    assert den.model_sampling == "eps"
    torch.testing.assert_close(den.sigmas, ref.sigmas, rtol=1e-6, atol=0)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (float(den.sigmas[0]), float(den.sigmas[417]), 3.3, float(den.sigmas[-1])):
        s_in = x.new_ones([3]) * sigma
        torch.testing.assert_close(den(x * (1 + sigma), s_in), ref(x * (1 + sigma), s_in),
                                   rtol=1e-5, atol=1e-5 * (1 + sigma))
    # DiscreteSchedule.get_sigmas(n): t = linspace(T − 1, 0, n), log-linear σ, append 0
    T = den.sigmas.numel()
    t = torch.linspace(T - 1, 0, 7, dtype=torch.float64)
    lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
    want = ((1 - w) * ref.log_sigmas[lo] + w * ref.log_sigmas[hi]).exp()
    got = den.get_sigmas(7)
    assert got.shape == (8,) and got[-1] == 0
    torch.testing.assert_close(got[:-1], want, rtol=1e-6, atol=0)


def test_v_prediction_and_sample_models_through_the_denoiser():
    """A v-prediction UNet: DiffusersDenoiser equals DiscreteVDDPMDenoiser's formula; an
    x₀ ('sample') model's D is its output."""
    from lmsolvers.adapters.tiny import tiny_unet

    unet = tiny_unet(seed=3)
    sched = DDPMScheduler(prediction_type="v_prediction")
    den = K.DiffusersDenoiser(unet, sched)
    ref = KDiscreteDenoiser(_net(unet), den.alphas_cumprod, kind="v")
    x = torch.randn(2, unet.config.in_channels, 8, 8,
                    generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for sigma in (float(den.sigmas[10]), 7.5):
        s_in = x.new_ones([2]) * sigma
        torch.testing.assert_close(den(x, s_in), ref(x, s_in), rtol=1e-5, atol=1e-5)
    den_x0 = K.DiffusersDenoiser(unet, DDPMScheduler(prediction_type="sample"))
    sigma = float(den.sigmas[300])
    t = int(np.argmin(np.abs(den.sigmas.numpy() - sigma)))
    with torch.no_grad():
        out = unet((x / (1 + sigma**2) ** 0.5).float(), t).sample.double()
    torch.testing.assert_close(den_x0(x, x.new_ones([2]) * sigma), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_sampling", ["eps", "const"])
def test_oracle_denoiser_recovers_the_noise_and_the_data(model_sampling):
    """The mapping to the σ̄-ODE in closed form: for one data point x₀, D ≡ x₀ is the exact
    denoiser.  Its ε̄ is the noise n of x = x₀ + σ n ('eps') or of ComfyUI's CONST
    noise_scaling x = σ n + (1 − σ) x₀; every consistent method then samples x₀ back
    exactly (the flow x̄ = x₀ + σ̄ n is linear in σ̄), CONST entering from σ = 1."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    n = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)

    def oracle(x, sigma, **kw):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype  # sigma * s_in
        return x0.clone()

    if model_sampling == "eps":
        sigmas = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.3, 0.0], dtype=torch.float64)
        x_T = x0 + sigmas[0] * n
    else:
        sigmas = torch.tensor([1.0, 0.9, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
        x_T = n  # noise_scaling at σ = 1
    eps, grid = K.denoiser_eps(oracle, sigmas, model_sampling=model_sampling)
    for m in (1, 3):
        s = float(sigmas.flip(0)[m])
        x = s * n + (1 - s) * x0 if model_sampling == "const" else x0 + s * n
        xbar = x / (1 - s) if model_sampling == "const" else x
        torch.testing.assert_close(eps(xbar, float(grid.sigma_bar[m])), n, rtol=1e-12,
                                   atol=1e-12)
    for method in ("ddim", "obelm", "bdia(0.9)", "belm3"):  # EDICT: not consistent (§2)
        out = K.sample(oracle, x_T, sigmas, method, model_sampling=model_sampling,
                       disable=True)
        # round-off of states of size σ_max·|n| (80 for 'eps'), no truncation error
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-14 * float(sigmas[0]) * 64)


def test_model_sampling_is_detected_along_comfyuis_inner_model_chain():
    """ComfyUI hands samplers ``model_k`` (KSamplerX0Inpaint) whose ``inner_model`` chain
    reaches a model with a ``model_sampling`` object of a class deriving from EPS or CONST;
    the detection goes by those class names (no ComfyUI import)."""
    EPS = type("EPS", (), {})
    CONST = type("CONST", (), {})
    Flux = type("ModelSamplingFlux", (CONST,), {})
    VPred = type("V_PREDICTION", (EPS,), {})

    class Node:
        def __init__(self, inner=None, ms=None):
            self.inner_model, self.model_sampling = inner, ms

        def __call__(self, x, sigma, **kw):
            return x

    assert K._model_sampling_of(Node(Node(Node(ms=Flux()))), "auto") == "const"
    assert K._model_sampling_of(Node(Node(ms=VPred())), "auto") == "eps"
    assert K._model_sampling_of(Node(), "auto") == "eps"  # a plain k-diffusion denoiser
    with pytest.raises(ValueError, match="neither EPS-like nor CONST"):
        K._model_sampling_of(Node(ms=type("IMG_TO_IMG_X", (), {})()), "auto")
    with pytest.raises(ValueError, match="model_sampling must be"):
        K._model_sampling_of(Node(), "flow")


# ------------------------------------------- the three-line loop, exact and bitwise
METHODS = [None, "obelm", "bdia(0.9)", "edict(0.93)"]


@pytest.mark.parametrize("method", METHODS)
def test_three_line_loop_is_exact_and_equals_diffusion_sampler_bitwise(ddpm, digits, method):
    """wrap the model, get sigmas, call invert_*/sample_*: the held-out digits come back to
    ≤ 1e-12 (float64), and every tensor equals DiffusionSampler's on the same grid and
    method — the latent's states, grid, method and settings, the reconstruction, and a
    sample from noise."""
    unet, sched = ddpm
    den = K.DiffusersDenoiser(unet, sched)                      # 1. wrap the model
    sigmas = K.get_sigmas_designed(den, 10)                     # 2. get sigmas
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", L.ExactnessWarning)     # BDIA(0.9) amplifies (§4)
        packed = K.invert(den, digits, sigmas, method, disable=True)  # 3. invert / sample
        x0 = K.sample(den, packed, sigmas, method, disable=True)
        default = DiffusionSampler(unet, sched, 10, disable_progress=True)
        assert np.array_equal(default.grid.sigma_bar[::-1], sigmas.numpy())
        ds = default if method is None else DiffusionSampler(
            unet, sched, 10, method=method, grid=default.grid, disable_progress=True)
        ref = ds.invert(digits)
    # the bar for the default and O-BELM; BDIA within its predicted bound; EDICT's
    # second network call reads a state each direction recomputes (x_inter), so it is exact
    # only to the network's sensitivity: 2.3e-9 here, far above its predicted 4e-16
    bound = {None: 1e-12, "obelm": 1e-12, "edict(0.93)": 1e-8}.get(
        method, L.predicted_roundtrip_error(ds.method, ds.grid, torch.float64))
    assert _rel(x0, digits) <= bound
    lat = L.unpack_latent(packed)
    assert lat.grid.fingerprint() == ref.grid.fingerprint()
    assert (lat.method_key, lat.context, lat.nodes) == (ref.method_key, ref.context, ref.nodes)
    assert all(torch.equal(a, b) for a, b in zip(lat.states, ref.states, strict=True))
    assert torch.equal(x0, ds.sample(ref))
    # from noise: DiffusionSampler takes x_T = α_N x̄_N, the k-diffusion state is x̄_N
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5),
                      dtype=torch.float64)
    xbar_N = x_T / float(ds.grid.alphas[-1])
    assert torch.equal(K.sample(den, xbar_N, sigmas, method, disable=True), ds.sample(x_T))


def test_the_wrappers_are_the_generic_functions(ddpm, digits):
    unet, sched = ddpm
    den = K.DiffusersDenoiser(unet, sched)
    sigmas = K.get_sigmas_designed(den, 6)
    x = digits[:4]
    pairs = [(K.invert_exact, K.sample_exact, None), (K.invert_obelm, K.sample_obelm, "obelm"),
             (lambda *a, **k: K.invert_bdia(*a, gamma=0.9, **k),
              lambda *a, **k: K.sample_bdia(*a, gamma=0.9, **k), "bdia(0.9)"),
             (lambda *a, **k: K.invert_edict(*a, p=0.9, **k),
              lambda *a, **k: K.sample_edict(*a, p=0.9, **k), "edict(0.9)")]
    for inv, smp, name in pairs:
        packed = inv(den, x, sigmas, disable=True)
        assert torch.equal(packed, K.invert(den, x, sigmas, name, disable=True))
        assert torch.equal(smp(den, packed, sigmas, disable=True),
                           K.sample(den, packed, sigmas, name, disable=True))
    assert L.unpack_latent(packed).method == "edict(0.9)"
    assert L.unpack_latent(K.invert_belm(den, x, sigmas, k=3, disable=True)).method == \
        L.belm(3).name


def test_a_denoiser_that_returns_only_D_round_trips_exactly(ddpm, digits):
    """k-diffusion's own denoiser (D only): ε = (x̄ − D)/σ̄ is not the UNet's ε bit for bit,
    but ε is deterministic, so the round trip is exact and the samples agree with the
    native path to round-off.  Inversion from sigmas ending in 0 evaluates the model at
    σ_min instead of 0 (the σ_min rule), with no NaN."""
    unet, sched = ddpm
    den = K.DiffusersDenoiser(unet, sched)
    kd = KDiscreteDenoiser(_net(unet), den.alphas_cumprod)
    sigmas = K.get_sigmas_designed(den, 10)
    packed = K.invert_obelm(kd, digits, sigmas, disable=True)
    assert _rel(K.sample_obelm(kd, packed, sigmas, disable=True), digits) <= 1e-12
    x_T = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3),
                      dtype=torch.float64) * float(sigmas[0])
    a = K.sample_obelm(kd, x_T, sigmas, disable=True)
    b = K.sample_obelm(den, x_T, sigmas, disable=True)
    assert not torch.equal(a, b) and _rel(a, b) < 1e-6  # k-diffusion's float32 UNet input
    # the σ_min rule: ε̄ at σ̄ = 0 is ε̄ at the least noisy sigma given
    eps, grid = K.denoiser_eps(kd, sigmas)
    smin = float(sigmas[-2])
    assert eps.sigma_min == smin and grid.sigma_bar[0] == 0.0
    assert torch.equal(eps(digits, 0.0), eps(digits, smin))
    assert bool(torch.isfinite(eps(digits, 0.0)).all())
    assert torch.equal(K.denoiser_eps(kd, sigmas, sigma_min=0.5)[0](digits, 0.0),
                       eps(digits, 0.5))


def test_invert_takes_comfyuis_flipped_sigmas_too(ddpm, digits):
    unet, sched = ddpm
    den = K.DiffusersDenoiser(unet, sched)
    sigmas = den.get_sigmas(8)
    a = K.invert_obelm(den, digits[:4], sigmas, disable=True)
    assert torch.equal(a, K.invert_obelm(den, digits[:4], sigmas.flip(0), disable=True))
    with pytest.raises(ValueError, match="sampling order"):
        K.sample_obelm(den, a, sigmas.flip(0), disable=True)


# -------------------------------------------------------------- flow (CONST)
def test_const_flow_model_equals_diffusion_sampler_and_round_trips(flow, digits):
    """The digits flow model as ComfyUI's CONST model: sigmas from σ = 1 (the α = 0 top node:
    entry step, not a grid node).  Native ε: bitwise DiffusionSampler (samples from noise,
    latents); ComfyUI's D-only CONST formula: exact round trip, the same samples to the
    float32 rounding of its timestep."""
    unet, sched = flow
    den = K.DiffusersDenoiser(unet, sched)
    assert den.model_sampling == "const"
    sigmas = den.get_sigmas(10)
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    ds = DiffusionSampler(unet, sched, 10, method="obelm", disable_progress=True)
    x_T = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(4),
                      dtype=torch.float64)
    native = K.sample_obelm(den, x_T, sigmas, disable=True)
    assert torch.equal(native, ds.sample(x_T))
    packed = K.invert_obelm(den, digits, sigmas, disable=True)
    ref = ds.invert(digits)
    lat = L.unpack_latent(packed)
    assert lat.grid.fingerprint() == ref.grid.fingerprint()
    assert all(torch.equal(a, b) for a, b in zip(lat.states, ref.states, strict=True))
    assert _rel(K.sample_obelm(den, packed, sigmas, disable=True), digits) <= 1e-12

    comfy = ConstDenoiser(_net(unet))
    kw = dict(model_sampling="const", disable=True)
    assert _rel(K.sample_obelm(comfy, x_T, sigmas, **kw), native) < 1e-4
    packed = K.invert_obelm(comfy, digits, sigmas, **kw)
    assert _rel(K.sample_obelm(comfy, packed, sigmas, **kw), digits) <= 1e-12
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        K.sample_obelm(comfy, x_T, sigmas * 2, **kw)


# ------------------------------------------------------------------ callbacks
@pytest.mark.parametrize("method", ["ddim", "obelm", "edict", "belm3"])
def test_callbacks_carry_k_diffusions_keys_once_per_step(method):
    """One call per step with k-diffusion's keys, after the model call at the step's state:
    ``sigma`` is ``sigmas[i]`` itself and ``denoised`` is the model's D at ``x``.  For DDIM
    (k-diffusion's Euler) consecutive payloads satisfy sample_euler's update."""
    calls = []

    def model(x, sigma, **kw):
        calls.append(x.clone())
        return torch.tanh(x) / (1 + sigma.view(-1, 1, 1) ** 2)

    sigmas = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0], dtype=torch.float64)
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64) * 14.6
    got = []
    out = K.sample(model, x, sigmas, method, callback=got.append, disable=True)
    assert [p["i"] for p in got] == list(range(len(sigmas) - 1))
    for p in got:
        assert {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(p)
        assert p["sigma"] is not None and torch.equal(p["sigma"], sigmas[p["i"]])
        assert torch.equal(p["sigma_hat"], p["sigma"])
        s_in = p["x"].new_ones([2]) * p["sigma"]
        assert torch.equal(p["denoised"], model(p["x"], s_in))
    if method == "ddim":
        for p, q in zip(got, got[1:], strict=False):
            d = (p["x"] - p["denoised"]) / p["sigma"]
            torch.testing.assert_close(q["x"], p["x"] + d * (q["sigma"] - p["sigma"]),
                                       rtol=1e-13, atol=1e-13)
        d = (got[-1]["x"] - got[-1]["denoised"]) / got[-1]["sigma"]
        torch.testing.assert_close(out, got[-1]["x"] - d * got[-1]["sigma"], rtol=1e-13,
                                   atol=1e-13)
    if method == "ddim":
        return  # no exact inversion
    # from a latent the first k − 1 steps are already done; inversion reports its N steps
    back = []
    packed = K.invert(model, out, sigmas, method, callback=back.append, disable=True)
    assert [p["i"] for p in back] == list(range(len(sigmas) - 1))
    resumed = []
    K.sample(model, packed, sigmas, method, callback=resumed.append, disable=True)
    span = L.method_from_name(method).span
    assert [p["i"] for p in resumed] == list(range(span - 1, len(sigmas) - 1))


def test_callback_of_the_const_entry_step(flow):
    unet, sched = flow
    den = K.DiffusersDenoiser(unet, sched)
    sigmas = den.get_sigmas(5)
    got = []
    K.sample_obelm(den, torch.randn(1, 1, 8, 8, dtype=torch.float64), sigmas,
                   callback=got.append, disable=True)
    assert [p["i"] for p in got] == [0, 1, 2, 3, 4]
    assert [float(p["sigma"]) for p in got] == [float(s) for s in sigmas[:-1]]
    assert math.isinf(got[0]["sigma_bar"])


# -------------------------------------------------------------- packed latents
def test_packed_latent_is_lossless_and_refuses_changes(ddpm, digits):
    unet, sched = ddpm
    den = K.DiffusersDenoiser(unet, sched)
    sigmas = den.get_sigmas(6)
    packed = K.invert_obelm(den, digits[:5], sigmas, disable=True)
    assert packed.dtype == torch.float64 and packed.shape[0] == 5
    assert L.is_packed_latent(packed) and not L.is_packed_latent(torch.randn(5, 400))
    lat = L.unpack_latent(packed)
    again = L.pack_latent(lat)
    assert torch.equal(again, packed)
    # rows are self-contained: a subset of the batch is the latent of those samples, but
    # a UNet run on another batch size rounds differently (exactness condition 3, §4)
    sub = L.unpack_latent(packed[[3, 1]])
    assert all(torch.equal(a, b[[3, 1]]) for a, b in zip(sub.states, lat.states, strict=True))
    assert _rel(K.sample_obelm(den, packed[[3, 1]], sigmas, disable=True), digits[[3, 1]]) < 1e-5
    # changed packs are refused, never used as noise
    for changed, match in ((packed.float().double(), "checksum|header"), (packed.float(), "cast"),
                           (packed * 2, "rescaled"), (packed / 0.18215, "rescaled")):
        with pytest.raises(L.PackedLatentError, match=match):
            K.sample_obelm(den, changed, sigmas, disable=True)
    bad = packed.clone()
    bad[2, -1] = torch.nextafter(bad[2, -1], torch.tensor(math.inf, dtype=bad.dtype))  # 1 ulp
    with pytest.raises(L.PackedLatentError, match="row 2 .* checksum"):
        L.unpack_latent(bad)
    with pytest.raises(L.PackedLatentError, match="different inversions"):
        a, b = (L.pack_latent(lat.with_context({"tag": v})) for v in ("a", "b"))
        L.unpack_latent(torch.cat([a[:1], b[1:]]))
    # another grid or method: the latent's identity is checked before any model call
    with pytest.raises(L.LatentMismatchError, match="grid"):
        K.sample_obelm(den, packed, den.get_sigmas(7), disable=True)
    with pytest.raises(L.LatentMismatchError, match="method"):
        K.sample_bdia(den, packed, sigmas, disable=True)
    with pytest.raises(TypeError, match="float latent"):
        L.pack_latent(L.invert(lambda x, s: torch.zeros_like(x), L.Grid.power(4, 2.0),
                               "obelm", torch.ones(2, 3), bitexact=True))


def test_get_sigmas_designed_from_k_diffusion_and_comfyui_models(ddpm):
    """The designed grid from a k-diffusion DiscreteSchedule's ``sigmas`` or ComfyUI's
    ``model_sampling.sigmas`` (found along ``inner_model``), or an ᾱ table; flow refused."""
    unet, sched = ddpm
    den = K.DiffusersDenoiser(unet, sched)
    ac = den.alphas_cumprod
    want = K.get_sigmas_designed(den, 8)
    assert torch.equal(K.get_sigmas_designed(ac, 8), want)
    kd = KDiscreteDenoiser(_net(unet), ac)
    got = K.get_sigmas_designed(kd, 8)
    assert got[-1] == 0 and got.shape == (9,)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)  # ᾱ from σ̄: round-off

    class Holder:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    EPS = type("EPS", (), {})
    sampling = type("ModelSamplingDiscrete", (EPS,), {})()
    sampling.sigmas = kd.sigmas.float()
    comfy = Holder(inner_model=Holder(inner_model=Holder(model_sampling=sampling)))
    assert K.get_sigmas_designed(comfy, 8).shape == (9,)
    with pytest.raises(ValueError, match="CONST"):
        K.get_sigmas_designed(Holder(model_sampling="const"), 8)


def test_bad_sigmas_are_clear_errors(ddpm):
    den = K.DiffusersDenoiser(*ddpm)
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    for sigmas, match in (([3.0, 3.0, 0.0], "monotone"), ([3.0], "at least 2"),
                          ([[3.0, 0.0]], "1-D"), ([3.0, float("nan"), 0.0], "finite")):
        with pytest.raises(ValueError, match=match):
            K.sample_obelm(den, x, sigmas, disable=True)


# ----------------------------------------------- the benchmark's k-diffusion peers
def test_benchmark_peers_follow_k_diffusions_formulas(ddpm):
    """benchmarks/kdiffusion_bench.py writes k-diffusion's sample_euler and sample_dpmpp_2m
    from sampling.py; checked against independent implementations of the same methods:
    Euler is DDIM (explicit Euler in σ̄), DPM-Solver++(2M) is diffusers'
    DPMSolverMultistepScheduler (data prediction, order 2, first order onto σ = 0)."""
    from diffusers import DPMSolverMultistepScheduler

    from benchmarks.kdiffusion_bench import sample_dpmpp_2m, sample_euler

    unet, sched = ddpm
    den = K.DiffusersDenoiser(unet, sched)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7),
                      dtype=torch.float64)
    sigmas = den.get_sigmas(12)
    torch.testing.assert_close(sample_euler(den, x_T * float(sigmas[0]), sigmas),
                               K.sample(den, x_T * float(sigmas[0]), sigmas, "ddim",
                                        disable=True), rtol=1e-12, atol=1e-12)
    cfg = {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}
    cfg.update(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
               lower_order_final=True, timestep_spacing="trailing")
    dpm = DPMSolverMultistepScheduler.from_config(cfg)
    dpm.set_timesteps(8)
    x = x_T
    for t in dpm.timesteps:
        with torch.no_grad():
            e = unet(x.float(), t).sample.double()
        x = dpm.step(e, t, x).prev_sample
    s = dpm.sigmas.double()
    ours = sample_dpmpp_2m(den, x_T * (1 + float(s[0]) ** 2) ** 0.5, s)
    assert _rel(ours, x.double()) < 1e-4
