"""Denoiser calls as the stock diffusers pipelines make them: SD1.x/2.x and SDXL UNets,
SD3 and FLUX transformers (docs/adapters.md; docs/design.md §8, §9).

A *call* turns a model-space state ``x`` (``(B, C, H, W)``, the model's dtype and device)
and a node's model timestep ``t`` into the model output the pipeline's scheduler would
receive, classifier-free guidance included, so that :class:`~lmsolvers.adapters.DiffusersEps`
converts exactly the tensor the pipeline steps with.  Each call reproduces its pipeline's
calling convention bit for bit:

* :class:`UNetCall` – ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (and the
  img2img/inpaint/refiner variants): one batched call on ``[uncond, cond]``; for SDXL the
  ``added_cond_kwargs`` (``text_embeds`` = pooled embeddings, ``time_ids``) are built from the
  pipeline's own arguments with the pipeline's own ``_get_add_time_ids``;
* :class:`SD3Call` – ``StableDiffusion3Pipeline``: ``timestep = t.expand(2B)`` (``t = σ·1000``
  in float32), ``pooled_projections``, one batched call on ``[uncond, cond]``;
* :class:`FluxCall` – ``FluxPipeline``: packed latents (``_pack_latents``), ``img_ids`` /
  ``txt_ids``, ``timestep = t.expand(B).to(dtype) / 1000``, the ``guidance`` embedding of
  guidance-distilled models (``guidance_scale``), and true CFG (``true_cfg_scale > 1`` with
  negative embeddings: two calls, as the pipeline makes them).

Guidance rule (all pipelines): classifier-free guidance only for a scale ``> 1``.
"""

from __future__ import annotations

import math
import numbers
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "CONDITIONING_KWARGS",
    "model_family",
    "make_call",
    "UNetCall",
    "SD3Call",
    "FluxCall",
    "flux_mu",
    "sd3_mu",
]

#: The conditioning arguments each family takes, under the pipelines' own names.
CONDITIONING_KWARGS: dict[str, tuple[str, ...]] = {
    "unet": ("guidance_scale", "prompt_embeds", "negative_prompt_embeds", "class_labels",
             "negative_class_labels", "unet_kwargs"),
    "sdxl": ("guidance_scale", "prompt_embeds", "negative_prompt_embeds",
             "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "add_time_ids",
             "negative_add_time_ids", "original_size", "crops_coords_top_left", "target_size",
             "negative_original_size", "negative_crops_coords_top_left", "negative_target_size",
             "aesthetic_score", "negative_aesthetic_score", "unet_kwargs"),
    "sd3": ("guidance_scale", "prompt_embeds", "negative_prompt_embeds",
            "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "joint_attention_kwargs"),
    "flux": ("guidance_scale", "true_cfg_scale", "prompt_embeds", "negative_prompt_embeds",
             "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "joint_attention_kwargs"),
}


def model_family(model: torch.nn.Module) -> str:
    """``"flux"`` (``FluxTransformer2DModel``), ``"sd3"`` (``SD3Transformer2DModel``), ``"sdxl"``
    (a ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``) or ``"unet"`` (any
    other model called as ``model(x, t, …).sample``)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    if isinstance(model, FluxTransformer2DModel):
        return "flux"
    if isinstance(model, SD3Transformer2DModel):
        return "sd3"
    cfg = getattr(model, "config", None)
    if isinstance(cfg, Mapping) and cfg.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "unet"


def _model_config(model: torch.nn.Module) -> Mapping[str, Any]:
    cfg = getattr(model, "config", None)
    return cfg if isinstance(cfg, Mapping) else {}


def _dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters())
    return p.dtype, p.device


def check_scale(w: Any, name: str = "guidance_scale") -> float:
    """A finite real guidance scale as ``float`` (``TypeError``/``ValueError`` otherwise)."""
    if isinstance(w, bool) or not isinstance(w, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(w).__name__}")
    w = float(w)
    if not math.isfinite(w):
        raise ValueError(f"{name} must be a finite number, got {w}; diffusers pipelines guide "
                         f"for {name} > 1 (typically 1 to 15)")
    return w


def _check_embeds(emb: Any, name: str, dims: int, width: int | None, model: str,
                  width_name: str) -> None:
    if not isinstance(emb, torch.Tensor) or not emb.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(emb).__name__}")
    shown = "width" if width is None else str(width)
    shape = "(batch, tokens, " + shown + ")" if dims == 3 else "(batch, " + shown + ")"
    if emb.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {shape}, got shape {tuple(emb.shape)}")
    if width is not None and emb.shape[-1] != width:
        raise ValueError(f"{name} has width {emb.shape[-1]} but the model's {width_name} = "
                         f"{width} ({model}): encode the prompt with this model's text encoder(s)")


def _rows(emb: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """``emb`` for a state batch ``batch``: as is, or a batch-1 embedding broadcast."""
    if emb.shape[0] == batch:
        return emb
    if emb.shape[0] == 1:
        return emb.expand(batch, *emb.shape[1:])
    raise ValueError(f"{name} has batch {emb.shape[0]} but the state has batch {batch}; give "
                     "one embedding per state, or batch 1")


class _Call:
    """Common parts: the model, guidance and the embeddings' checks."""

    family = "unet"

    def __init__(self, model: torch.nn.Module, guidance_scale: float) -> None:
        self.model = model
        self.dtype, self.device = _dtype_device(model)
        self.config = _model_config(model)
        self.guidance_scale = check_scale(guidance_scale)
        self.cfg_scale = self.guidance_scale if self.guidance_scale > 1.0 else 1.0
        self._batched: list[tuple[str, torch.Tensor]] = []  # (name, tensor) checked vs batch

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def _to_model(self, emb: torch.Tensor) -> torch.Tensor:
        return emb.to(self.device, self.dtype)

    def check_batch(self, batch: int, name: str) -> None:
        for what, emb in self._batched:
            if emb.shape[0] not in (1, batch):
                raise ValueError(f"{what} has batch {emb.shape[0]} but {name} has batch {batch}; "
                                 "give one embedding per state, or batch 1")

    def context(self) -> dict[str, Any]:
        return {"guidance_scale": self.cfg_scale}

    @staticmethod
    def _combine(e_u: torch.Tensor, e_c: torch.Tensor, w: float) -> torch.Tensor:
        # the pipelines' formula, evaluated in the model's dtype
        return e_u + w * (e_c - e_u)


# ------------------------------------------------------------------------- UNets
class UNetCall(_Call):
    """``unet(x, t, encoder_hidden_states=…, added_cond_kwargs=…)`` as the SD/SDXL pipelines
    call it.

    SDXL (``addition_embed_type="text_time"``): ``added_cond_kwargs = {"text_embeds": pooled,
    "time_ids": time_ids}``, batched ``[negative, positive]`` when guided.  The time ids are
    ``add_time_ids`` / ``negative_add_time_ids`` when given, else built by the pipeline's own
    ``_get_add_time_ids`` from ``original_size`` (the image size in pixels, ``(height,
    width)``; required), ``crops_coords_top_left`` (default ``(0, 0)``), ``target_size``
    (default ``original_size``) and their ``negative_…`` counterparts — with
    ``StableDiffusionXLPipeline``'s rule, or, for a refiner UNet whose added embedding takes
    5 ids (``requires_aesthetics_score``), ``StableDiffusionXLImg2ImgPipeline``'s with
    ``aesthetic_score`` (default 6.0) and ``negative_aesthetic_score`` (default 2.5).

    Class-conditional UNets (``num_class_embeds``/``class_embed_type``): ``class_labels``
    (and, for guidance, ``negative_class_labels``, the null class) batched
    ``[negative, positive]`` like the embeddings.

    Backward compatibility: ``unet_kwargs={"added_cond_kwargs": …}`` is passed through as
    before (already batched ``[uncond, cond]`` when guided); combining it with the pooled
    embeddings or time ids is an error.
    """

    def __init__(self, model: torch.nn.Module, *, guidance_scale: float = 1.0,
                 prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None,
                 class_labels: torch.Tensor | None = None,
                 negative_class_labels: torch.Tensor | None = None,
                 unet_kwargs: Mapping[str, Any] | None = None, **sdxl: Any) -> None:
        super().__init__(model, guidance_scale)
        self.family = model_family(model)
        self.unet_kwargs = dict(unet_kwargs or {})
        name = type(model).__name__
        width = self._embedding_width()
        self._labels = self._neg_labels = None
        if class_labels is not None:
            for lab, what in ((class_labels, "class_labels"),
                              (negative_class_labels, "negative_class_labels")):
                if lab is not None and (not isinstance(lab, torch.Tensor) or lab.dim() != 1
                                        or lab.is_floating_point()):
                    raise TypeError(f"{what} must be a 1-D integer tensor (one class per state, "
                                    f"or one for all), got {getattr(lab, 'shape', type(lab))}")
            if self.guided and negative_class_labels is None:
                raise ValueError(f"guidance_scale = {self.guidance_scale:g} with class_labels "
                                 "needs negative_class_labels (the null class)")
            self._labels = class_labels.to(self.device)
            self._batched.append(("class_labels", self._labels))
            if self.guided:
                self._neg_labels = negative_class_labels.to(self.device)
                self._batched.append(("negative_class_labels", self._neg_labels))
        elif negative_class_labels is not None:
            raise ValueError("negative_class_labels without class_labels")
        if prompt_embeds is None:
            if negative_prompt_embeds is not None or self.guided and class_labels is None:
                raise ValueError("classifier-free guidance (guidance_scale > 1 or negative "
                                 "embeddings) needs prompt_embeds")
            self._cond = self._uncond = None
        else:
            if self.guided and negative_prompt_embeds is None:
                raise ValueError(
                    f"guidance_scale = {self.guidance_scale:g} needs negative_prompt_embeds "
                    "(the text encoder's embedding of the negative or empty prompt)")
            _check_embeds(prompt_embeds, "prompt_embeds", 3, width, name, "cross_attention_dim")
            self._cond = self._to_model(prompt_embeds)
            self._batched.append(("prompt_embeds", self._cond))
            self._uncond = None
            if self.guided:
                _check_embeds(negative_prompt_embeds, "negative_prompt_embeds", 3, width, name,
                              "cross_attention_dim")
                self._uncond = self._to_model(negative_prompt_embeds)
                self._batched.append(("negative_prompt_embeds", self._uncond))
                if self._uncond.shape[1:] != self._cond.shape[1:]:
                    raise ValueError(f"negative_prompt_embeds {tuple(self._uncond.shape)} and "
                                     f"prompt_embeds {tuple(self._cond.shape)} differ in shape")
        self._added: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None] | None = None
        self._interleave_ids = False
        given = {k: v for k, v in sdxl.items() if v is not None}
        if self.family == "sdxl" and "added_cond_kwargs" not in self.unet_kwargs:
            self._added = self._sdxl_added(**given)
        elif given:
            if "added_cond_kwargs" in self.unet_kwargs:
                raise ValueError(
                    f"unet_kwargs['added_cond_kwargs'] and {sorted(given)} both give SDXL's added "
                    "conditioning: pass the pipeline's arguments (pooled_prompt_embeds, "
                    "original_size, …) and no added_cond_kwargs")
            raise TypeError(f"{sorted(given)} are SDXL conditioning, but this "
                            f"{type(model).__name__} has no addition_embed_type='text_time'")

    def _embedding_width(self) -> int | None:
        cfg = self.config
        width = cfg.get("encoder_hid_dim") if cfg.get("encoder_hid_dim_type") else None
        width = cfg.get("cross_attention_dim") if width is None else width
        return width if isinstance(width, int) and not isinstance(width, bool) else None

    def _sdxl_added(self, *, pooled_prompt_embeds: torch.Tensor | None = None,
                    negative_pooled_prompt_embeds: torch.Tensor | None = None,
                    add_time_ids: torch.Tensor | None = None,
                    negative_add_time_ids: torch.Tensor | None = None,
                    original_size: Sequence[int] | None = None,
                    crops_coords_top_left: Sequence[int] = (0, 0),
                    target_size: Sequence[int] | None = None,
                    negative_original_size: Sequence[int] | None = None,
                    negative_crops_coords_top_left: Sequence[int] = (0, 0),
                    negative_target_size: Sequence[int] | None = None,
                    aesthetic_score: float = 6.0, negative_aesthetic_score: float = 2.5,
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """(positive, negative-or-None) ``added_cond_kwargs``, each with batch-1 or batch-B
        rows."""
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        if self._cond is None:
            raise ValueError("an SDXL UNet needs prompt_embeds (and pooled_prompt_embeds)")
        if pooled_prompt_embeds is None:
            raise ValueError("an SDXL UNet needs pooled_prompt_embeds (the pooled output of "
                             "text_encoder_2, as StableDiffusionXLPipeline.encode_prompt returns)")
        _check_embeds(pooled_prompt_embeds, "pooled_prompt_embeds", 2, None, "SDXL", "")
        proj = int(pooled_prompt_embeds.shape[-1])
        if self.guided:
            if negative_pooled_prompt_embeds is None:
                raise ValueError(f"guidance_scale = {self.guidance_scale:g} needs "
                                 "negative_pooled_prompt_embeds")
            _check_embeds(negative_pooled_prompt_embeds, "negative_pooled_prompt_embeds", 2,
                          proj, "SDXL", "pooled width")
        unet = self.model
        expected = int(unet.add_embedding.linear_1.in_features)
        per_id = int(self.config["addition_time_embed_dim"])
        n_ids, rem = divmod(expected - proj, per_id)
        if rem or n_ids not in (5, 6):
            raise ValueError(
                f"pooled_prompt_embeds has width {proj}, which does not fit this UNet's added "
                f"embedding ({expected} inputs = {per_id}·(5 or 6 time ids) + pooled width)")
        # StableDiffusionXLPipeline batches its time ids as cat([neg, pos]).repeat(B, 1), i.e.
        # [neg, pos, neg, pos, …] against embeddings [neg × B, pos × B]: for B > 1 with
        # negative sizes ≠ positive ones its rows are paired crosswise.  Reproduced on purpose
        # (ε must be the pipeline's bit for bit); the img2img/refiner pipeline pairs them
        # per half, and so do explicitly given add_time_ids.
        self._interleave_ids = add_time_ids is None and n_ids == 6
        if add_time_ids is None:
            if original_size is None:
                raise ValueError(
                    "SDXL's time ids need original_size (the image size in pixels, (height, "
                    "width); the pipelines' default is the generated image's size) or add_time_ids")
            orig, crops = tuple(original_size), tuple(crops_coords_top_left)
            tgt = orig if target_size is None else tuple(target_size)
            if n_ids == 5:  # the refiner: StableDiffusionXLImg2ImgPipeline's rule
                shim = types.SimpleNamespace(
                    unet=unet, config=types.SimpleNamespace(requires_aesthetics_score=True))
                pos, neg = StableDiffusionXLImg2ImgPipeline._get_add_time_ids(
                    shim, orig, crops, tgt, aesthetic_score, negative_aesthetic_score,
                    orig if negative_original_size is None else tuple(negative_original_size),
                    tuple(negative_crops_coords_top_left),
                    tgt if negative_target_size is None else tuple(negative_target_size),
                    dtype=self.dtype, text_encoder_projection_dim=proj)
            else:  # StableDiffusionXLPipeline's rule
                shim = types.SimpleNamespace(unet=unet)
                pos = StableDiffusionXLPipeline._get_add_time_ids(
                    shim, orig, crops, tgt, dtype=self.dtype, text_encoder_projection_dim=proj)
                neg = pos
                if negative_original_size is not None and negative_target_size is not None:
                    neg = StableDiffusionXLPipeline._get_add_time_ids(
                        shim, tuple(negative_original_size),
                        tuple(negative_crops_coords_top_left), tuple(negative_target_size),
                        dtype=self.dtype, text_encoder_projection_dim=proj)
        else:
            pos = add_time_ids
            neg = add_time_ids if negative_add_time_ids is None else negative_add_time_ids
        for ids, what in ((pos, "add_time_ids"), (neg, "negative_add_time_ids")):
            if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[-1] != n_ids:
                raise ValueError(f"{what} must be a (batch, {n_ids}) tensor for this UNet, got "
                                 f"{getattr(ids, 'shape', type(ids).__name__)}")
        pos_kw = {"text_embeds": self._to_model(pooled_prompt_embeds),
                  "time_ids": pos.to(self.device)}
        self._batched += [("pooled_prompt_embeds", pos_kw["text_embeds"]),
                          ("add_time_ids", pos_kw["time_ids"])]
        if not self.guided:
            return pos_kw, None
        neg_kw = {"text_embeds": self._to_model(negative_pooled_prompt_embeds),
                  "time_ids": neg.to(self.device)}
        self._batched += [("negative_pooled_prompt_embeds", neg_kw["text_embeds"]),
                          ("negative_add_time_ids", neg_kw["time_ids"])]
        return pos_kw, neg_kw

    def check_state(self, x: torch.Tensor, name: str) -> None:
        cfg = self.config
        c, size = cfg.get("in_channels"), cfg.get("sample_size")
        expects = "" if c is None else (
            f"; this model ({type(self.model).__name__}) expects (B, {c}, H, W) with {c} channels"
            + ("" if size is None else f", sample_size {size}"))
        if x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D (B, C, H, W) tensor, got shape "
                             f"{tuple(x.shape)}{expects}")
        if c is not None and x.shape[1] != c:
            raise ValueError(f"{name} has {x.shape[1]} channels but the model takes "
                             f"in_channels = {c}: expected shape (B, {c}, H, W), got "
                             f"{tuple(x.shape)}")
        factor = self.size_multiple()
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"{name} is {x.shape[2]}×{x.shape[3]}, but this {type(self.model).__name__} "
                f"downsamples by {factor}: height and width must be multiples of {factor}"
                + ("" if size is None else f" (it was trained at sample_size {size})")
                + "; resize or pad the images")
        self.check_batch(x.shape[0], name)

    def size_multiple(self) -> int:
        """What height and width must be multiples of: a ``UNet2DModel`` halves them in
        every down block but the last and cannot upsample back to an odd size (a
        ``UNet2DConditionModel`` forwards the sizes to its up blocks, so any size works)."""
        blocks = self.config.get("down_block_types")
        if type(self.model).__name__ != "UNet2DModel" or not blocks:
            return 1
        return 2 ** (len(blocks) - 1)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        kw = dict(self.unet_kwargs)
        if not self.guided:
            if self._cond is not None:
                kw["encoder_hidden_states"] = _rows(self._cond, b, "prompt_embeds")
            if self._labels is not None:
                kw["class_labels"] = _rows(self._labels, b, "class_labels")
            if self._added is not None:
                kw["added_cond_kwargs"] = {k: _rows(v, b, k) for k, v in self._added[0].items()}
            return self.model(x, t, **kw).sample
        if self._cond is not None:
            kw["encoder_hidden_states"] = torch.cat(
                [_rows(self._uncond, b, "negative_prompt_embeds"),
                 _rows(self._cond, b, "prompt_embeds")])
        if self._labels is not None:
            kw["class_labels"] = torch.cat([_rows(self._neg_labels, b, "negative_class_labels"),
                                            _rows(self._labels, b, "class_labels")])
        if self._added is not None:
            pos, neg = self._added
            added = {k: torch.cat([_rows(neg[k], b, k), _rows(pos[k], b, k)]) for k in pos}
            if self._interleave_ids:  # the base pipeline's row order (see _sdxl_added)
                added["time_ids"] = torch.cat([neg["time_ids"], pos["time_ids"]]).repeat(b, 1)
            kw["added_cond_kwargs"] = added
        out = self.model(torch.cat([x] * 2), t, **kw).sample
        e_u, e_c = out.chunk(2)
        return self._combine(e_u, e_c, self.guidance_scale)


# -------------------------------------------------------------------- transformers
class _TransformerCall(_Call):
    """Prompt, pooled and negative embeddings of an MMDiT (SD3, FLUX)."""

    def __init__(self, model: torch.nn.Module, guidance_scale: float, cfg_scale: float,
                 prompt_embeds: torch.Tensor | None, negative_prompt_embeds: torch.Tensor | None,
                 pooled_prompt_embeds: torch.Tensor | None,
                 negative_pooled_prompt_embeds: torch.Tensor | None,
                 joint_attention_kwargs: Mapping[str, Any] | None, cfg_name: str) -> None:
        super().__init__(model, guidance_scale)
        self.cfg_scale = cfg_scale if cfg_scale > 1.0 else 1.0
        self.joint_attention_kwargs = None if joint_attention_kwargs is None else dict(
            joint_attention_kwargs)
        name = type(model).__name__
        if prompt_embeds is None or pooled_prompt_embeds is None:
            raise ValueError(f"{name} needs prompt_embeds and pooled_prompt_embeds (as the "
                             "pipeline's encode_prompt returns them)")
        cfg = self.config
        _check_embeds(prompt_embeds, "prompt_embeds", 3, cfg.get("joint_attention_dim"), name,
                      "joint_attention_dim")
        _check_embeds(pooled_prompt_embeds, "pooled_prompt_embeds", 2,
                      cfg.get("pooled_projection_dim"), name, "pooled_projection_dim")
        self._cond = self._to_model(prompt_embeds)
        self._pooled = self._to_model(pooled_prompt_embeds)
        self._batched += [("prompt_embeds", self._cond), ("pooled_prompt_embeds", self._pooled)]
        self._uncond = self._neg_pooled = None
        if self.guided:
            if negative_prompt_embeds is None or negative_pooled_prompt_embeds is None:
                raise ValueError(f"{cfg_name} = {self.cfg_scale:g} needs negative_prompt_embeds "
                                 "and negative_pooled_prompt_embeds")
            _check_embeds(negative_prompt_embeds, "negative_prompt_embeds", 3,
                          cfg.get("joint_attention_dim"), name, "joint_attention_dim")
            _check_embeds(negative_pooled_prompt_embeds, "negative_pooled_prompt_embeds", 2,
                          cfg.get("pooled_projection_dim"), name, "pooled_projection_dim")
            self._uncond = self._to_model(negative_prompt_embeds)
            self._neg_pooled = self._to_model(negative_pooled_prompt_embeds)
            self._batched += [("negative_prompt_embeds", self._uncond),
                              ("negative_pooled_prompt_embeds", self._neg_pooled)]

    def check_state(self, x: torch.Tensor, name: str) -> None:
        c = self.latent_channels
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"{name} must be (B, {c}, H, W) latents for this "
                             f"{type(self.model).__name__}, got shape {tuple(x.shape)}")
        p = self.patch
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"{name} has spatial size {tuple(x.shape[2:])}, not divisible by the "
                             f"patch size {p} of {type(self.model).__name__}")
        self.check_batch(x.shape[0], name)

    latent_channels: int
    patch: int


class SD3Call(_TransformerCall):
    """``SD3Transformer2DModel`` as ``StableDiffusion3Pipeline`` calls it: classifier-free
    guidance for ``guidance_scale > 1`` in one call on ``[uncond, cond]`` (embeddings and
    pooled projections concatenated ``[negative, positive]``), ``timestep = t.expand(2B)``
    with the scheduler's float32 timestep ``t = σ·num_train_timesteps``."""

    family = "sd3"

    def __init__(self, model: torch.nn.Module, *, guidance_scale: float = 1.0,
                 prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None,
                 negative_pooled_prompt_embeds: torch.Tensor | None = None,
                 joint_attention_kwargs: Mapping[str, Any] | None = None) -> None:
        w = check_scale(guidance_scale)
        super().__init__(model, w, w, prompt_embeds, negative_prompt_embeds,
                         pooled_prompt_embeds, negative_pooled_prompt_embeds,
                         joint_attention_kwargs, "guidance_scale")
        self.latent_channels = int(self.config["in_channels"])
        self.patch = int(self.config.get("patch_size", 1))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        enc, pooled = _rows(self._cond, b, "prompt_embeds"), _rows(self._pooled, b,
                                                                    "pooled_prompt_embeds")
        if self.guided:
            enc = torch.cat([_rows(self._uncond, b, "negative_prompt_embeds"), enc])
            pooled = torch.cat([_rows(self._neg_pooled, b, "negative_pooled_prompt_embeds"),
                                pooled])
            x = torch.cat([x] * 2)
        out = self.model(hidden_states=x, timestep=t.expand(x.shape[0]),
                         encoder_hidden_states=enc, pooled_projections=pooled,
                         joint_attention_kwargs=self.joint_attention_kwargs,
                         return_dict=False)[0]
        if not self.guided:
            return out
        e_u, e_c = out.chunk(2)
        return self._combine(e_u, e_c, self.cfg_scale)


class FluxCall(_TransformerCall):
    """``FluxTransformer2DModel`` as ``FluxPipeline`` calls it, on unpacked ``(B, C, H, W)``
    latents: ``_pack_latents`` in, ``_unpack_latents`` out (a permutation: elementwise solver
    arithmetic commutes with it), ``img_ids`` from ``_prepare_latent_image_ids``, ``txt_ids``
    zeros, ``timestep = t.expand(B).to(dtype) / 1000``; ``guidance`` = ``guidance_scale`` as a
    float32 embedding input for guidance-distilled models (``config.guidance_embeds``; FLUX-dev's
    default 3.5), ignored otherwise (as the pipeline does); true classifier-free guidance for
    ``true_cfg_scale > 1`` with negative embeddings (two calls, ``ε_u + s (ε_c − ε_u)``)."""

    family = "flux"

    def __init__(self, model: torch.nn.Module, *, guidance_scale: float = 3.5,
                 true_cfg_scale: float = 1.0, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None,
                 negative_pooled_prompt_embeds: torch.Tensor | None = None,
                 joint_attention_kwargs: Mapping[str, Any] | None = None) -> None:
        s = check_scale(true_cfg_scale, "true_cfg_scale")
        has_neg = negative_prompt_embeds is not None and negative_pooled_prompt_embeds is not None
        if s > 1.0 and not has_neg:
            warnings.warn(f"true_cfg_scale = {s:g} without negative_prompt_embeds and "
                          "negative_pooled_prompt_embeds: no classifier-free guidance, as in "
                          "FluxPipeline", RuntimeWarning, stacklevel=4)
        # the pipeline's rule: true CFG iff true_cfg_scale > 1 and a negative prompt is given
        super().__init__(model, guidance_scale, s if has_neg else 1.0, prompt_embeds,
                         negative_prompt_embeds, pooled_prompt_embeds,
                         negative_pooled_prompt_embeds, joint_attention_kwargs, "true_cfg_scale")
        self.distilled = bool(self.config.get("guidance_embeds", False))
        self.latent_channels = int(self.config["in_channels"]) // 4
        self.patch = 2

    def context(self) -> dict[str, Any]:
        return {"guidance_scale": self.guidance_scale if self.distilled else None,
                "true_cfg_scale": self.cfg_scale}

    def _one(self, packed: torch.Tensor, ts: torch.Tensor, guidance: torch.Tensor | None,
             enc: torch.Tensor, pooled: torch.Tensor, img_ids: torch.Tensor) -> torch.Tensor:
        txt_ids = torch.zeros(enc.shape[1], 3, device=self.device, dtype=self.dtype)
        return self.model(hidden_states=packed, timestep=ts, guidance=guidance,
                          pooled_projections=pooled, encoder_hidden_states=enc, txt_ids=txt_ids,
                          img_ids=img_ids, joint_attention_kwargs=self.joint_attention_kwargs,
                          return_dict=False)[0]

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, self.device,
                                                         self.dtype)
        ts = t.expand(b).to(self.dtype) / 1000
        guidance = torch.full([1], self.guidance_scale, device=self.device,
                              dtype=torch.float32).expand(b) if self.distilled else None
        out = self._one(packed, ts, guidance, _rows(self._cond, b, "prompt_embeds"),
                        _rows(self._pooled, b, "pooled_prompt_embeds"), img_ids)
        if self.guided:
            neg = self._one(packed, ts, guidance, _rows(self._uncond, b, "negative_prompt_embeds"),
                            _rows(self._neg_pooled, b, "negative_pooled_prompt_embeds"), img_ids)
            out = self._combine(neg, out, self.cfg_scale)
        # vae_scale_factor 1: the latent (not pixel) size is passed
        return FluxPipeline._unpack_latents(out, h, w, 1)


def make_call(model: torch.nn.Module, **conditioning: Any) -> _Call:
    """The call of ``model``'s family (:func:`model_family`) with the given conditioning
    (the family's :data:`CONDITIONING_KWARGS`; any other name is a ``TypeError``)."""
    family = model_family(model)
    allowed = CONDITIONING_KWARGS[family]
    unknown = sorted(k for k in conditioning if k not in allowed)
    if unknown:
        raise TypeError(f"{unknown} are not conditioning arguments of a {family} model "
                        f"({type(model).__name__}); it takes {', '.join(allowed)}")
    if family == "sd3":
        return SD3Call(model, **conditioning)
    if family == "flux":
        return FluxCall(model, **conditioning)
    sdxl = {k: v for k, v in conditioning.items()
            if k not in CONDITIONING_KWARGS["unet"] and v is not None}
    base = {k: v for k, v in conditioning.items() if k in CONDITIONING_KWARGS["unet"]}
    return UNetCall(model, **base, **sdxl)


def flux_mu(scheduler_config: Mapping[str, Any], latent_height: int, latent_width: int) -> float:
    """FluxPipeline's ``mu`` for unpacked ``(H, W)`` latents: ``calculate_shift`` of the packed
    sequence length ``(H/2)(W/2)`` with the config's ``base_/max_image_seq_len`` and
    ``base_/max_shift`` (defaults 256, 4096, 0.5, 1.15, as the pipeline)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = scheduler_config
    return calculate_shift((latent_height // 2) * (latent_width // 2),
                           c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                           c.get("base_shift", 0.5), c.get("max_shift", 1.15))


def sd3_mu(scheduler_config: Mapping[str, Any], latent_height: int, latent_width: int,
           patch_size: int) -> float:
    """StableDiffusion3Pipeline's ``mu`` (for dynamic-shifting configs): ``calculate_shift`` of
    ``(H/p)(W/p)`` with defaults 256, 4096, 0.5, 1.16, as the pipeline."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = scheduler_config
    return calculate_shift((latent_height // patch_size) * (latent_width // patch_size),
                           c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                           c.get("base_shift", 0.5), c.get("max_shift", 1.16))
