"""Model back-ends of a job: a diffusers model directory or a ``module:function`` entry
point, turned into ε (per batch, for per-sample prompts), the grid, the method, the
model-side context and the model's identity."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmsolvers.engine import Integrator
from lmsolvers.grid import Grid
from lmsolvers.latent import freeze_context
from lmsolvers.registry import method_from_name

from ..diffusers import DiffusionSampler
from ..shards import sha256_file
from .config import JobConfig, JobError, parse_dtype
from .env import resolve_device
from .inputs import entry_point, load_prompt_embeds, module_file_sha

__all__ = ["Backend", "build_backend"]

@dataclass
class Backend:
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
    #: the data range the model was trained on, and where that comes from (``None``: any)
    data_range: tuple[float, float] | None = None
    range_source: str = ""

    def check_range(self, x: torch.Tensor, source: str) -> None:
        """Refuse a sample outside the model's data range (by more than 1 % of its width):
        8-bit pixels in [0, 255] given to a model of [−1, 1] would invert silently into
        meaningless latents."""
        if self.data_range is None or x.numel() == 0:
            return
        lo, hi = self.data_range
        slack = 0.01 * (hi - lo)
        mn, mx = float(x.min()), float(x.max())
        if mn < lo - slack or mx > hi + slack:
            raise ValueError(
                f"{source}: values span [{mn:.4g}, {mx:.4g}], outside the model's data range "
                f"[{lo:g}, {hi:g}] ({self.range_source}; 8-bit images map as x/127.5 − 1); "
                "rescale the data, or pass --data-range LO,HI (or any) for a model trained "
                "on another range")

    def to_xbar0(self, x: torch.Tensor) -> torch.Tensor:
        """``x̄_0 = x_0/α_0`` (the σ̄-ODE state of data, docs/design.md §1)."""
        self.check_input(x)
        return x.to(self.device, self.state_dtype) / float(self.grid.alphas[0])

    def from_xbar0(self, xbar: torch.Tensor) -> torch.Tensor:
        """``x_0 = α_0 x̄_0``."""
        return xbar * float(self.grid.alphas[0])


def _data_range(cfg: JobConfig, ucfg: dict[str, Any], scfg: dict[str, Any],
                cls_name: str) -> tuple[tuple[float, float] | None, str]:
    """The data range samples are checked against: ``--data-range`` if given (``any``: no
    check); else a scheduler config with ``clip_sample`` declares ``±clip_sample_range``;
    else a pixel-space ``UNet2DModel`` (1 or 3 channels) takes diffusers' [−1, 1]."""
    given = cfg.data_range
    if isinstance(given, str):
        if given.strip().lower() == "any":
            return None, ""
        raise JobError(f"data range {given!r}: expected LO,HI or 'any'")
    if given is not None:
        lo, hi = (float(v) for v in given)
        if not lo < hi:
            raise JobError(f"data range {given!r}: LO must be below HI")
        return (lo, hi), "--data-range"
    if scfg.get("clip_sample"):
        r = float(scfg.get("clip_sample_range", 1.0))
        return (-r, r), "the scheduler config's clip_sample_range"
    if cls_name == "UNet2DModel" and ucfg.get("in_channels") in (1, 3):
        return (-1.0, 1.0), "diffusers' range for a pixel-space UNet2DModel"
    return None, ""


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



def _diffusers_backend(cfg: JobConfig, device: torch.device) -> Backend:
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
    mdtype = parse_dtype(cfg.model_dtype, "model dtype")
    try:
        unet = cls.from_pretrained(str(unet_dir), torch_dtype=mdtype).to(device)
    except Exception as e:
        raise JobError(f"model directory {cfg.model} does not load: {type(e).__name__}: "
                       f"{e}") from None
    sdtype = parse_dtype(cfg.state_dtype, "state dtype")
    conditional = "cross_attention_dim" in unet.config and unet.config.get(
        "cross_attention_dim") is not None
    embeds = load_prompt_embeds(cfg)
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
    data_range, range_source = _data_range(cfg, ucfg, scfg, str(cls_name))
    return Backend(base.grid, base.method, dict(base.context), base.state_dtype, device,
                   identity, shape, make_eps,
                   lambda x: base.eps.check_state(x, "the batch"), conditional,
                   data_range, range_source)


def _entry_backend(cfg: JobConfig, device: torch.device) -> Backend:
    fn = entry_point(cfg.eps, "--eps")
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
    identity = {"kind": "entry-point", "entry": cfg.eps, "source_sha256": module_file_sha(
        cfg.eps)}

    def check(x: torch.Tensor) -> None:
        if not x.is_floating_point():
            raise TypeError(f"the batch must be floating point, got {x.dtype}")

    return Backend(grid, method, context, parse_dtype(cfg.state_dtype, "state dtype"), device,
                    identity, tuple(cfg.shape) if cfg.shape else None, lambda _p: eps, check)


def build_backend(cfg: JobConfig) -> Backend:
    """The back-end of a job's settings: a diffusers model directory or an entry point
    (exactly one), after checking steps, batch size and the device's determinism."""
    if (cfg.model is None) == (cfg.eps is None):
        raise JobError("give exactly one of a diffusers model directory (--model) and an "
                       "entry point (--eps module:function)")
    if not (isinstance(cfg.steps, int) and cfg.steps >= 1):
        raise JobError(f"steps must be a positive integer, got {cfg.steps!r}")
    if not (isinstance(cfg.batch_size, int) and cfg.batch_size >= 1):
        raise JobError(f"batch size must be a positive integer, got {cfg.batch_size!r}")
    device = resolve_device(cfg.device)
    b = _diffusers_backend(cfg, device) if cfg.model else _entry_backend(cfg, device)
    if cfg.bitexact and device.type != "cpu" and not cfg.deterministic:
        raise JobError(f"bit-exact mode on {device.type} needs --deterministic")
    return b

