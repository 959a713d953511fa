"""Classifier-free guidance for class-conditional diffusers UNets (``UNet2DModel`` with
``num_class_embeds``), through the prompt-embedding path of the library's adapters.

:class:`~lmsolvers.adapters.DiffusersEps` guides text-conditional UNets: one batched call on
``[uncond, cond]`` with ``encoder_hidden_states``, combined as ``ε_u + w (ε_c − ε_u)`` in the
model's dtype (``lmsolvers.adapters.transformers.UNetCall``).  A class-conditional
``UNet2DModel`` takes ``class_labels`` instead, and looks each label up in an
``nn.Embedding`` table whose row is added to the timestep embedding.  Its conditioning *is*
that row, so :class:`ClassEmbeddingUNet` presents the model as one conditioned on "prompt
embeddings" of shape ``(batch, 1, D)`` — the class-embedding rows — and every adapter of the
library then works unchanged and bit for bit as with labels:

* ``DiffusersEps(ClassEmbeddingUNet(unet), grid, scheduler, guidance_scale=w,
  prompt_embeds=m.class_embeds(c), negative_prompt_embeds=m.null_embeds(B))`` is
  ``ε̄(x̄, σ̄) = ε_u + w (ε_c − ε_u)`` in one batched call (guidance only for ``w > 1``, as the
  pipelines);
* :class:`~lmsolvers.adapters.DiffusionSampler` (the default exact configuration, any
  method) and :func:`~lmsolvers.adapters.edit_latents` (editing with ``frozen_fraction``)
  take the same arguments;
* the approximate inversions users reach for act on the same objects: negative-prompt
  inversion (Miyake et al. 2023) passes the source class's row as the negative embedding, and
  null-text inversion (Mokady et al. 2023) optimises the negative embedding per step.

:func:`class_guided_eps` and :func:`class_sampler` build these from labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .diffusers import DiffusersEps, DiffusionSampler
from .schedules import grid_from_scheduler

__all__ = ["ClassEmbeddingUNet", "class_guided_eps", "class_sampler"]


class ClassEmbeddingUNet(torch.nn.Module):
    """A class-conditional ``UNet2DModel`` called with class-embedding rows as
    ``encoder_hidden_states``.

    ``forward(x, t, encoder_hidden_states=E)`` with ``E`` of shape ``(B, 1, D)`` runs the UNet
    with ``E[:, 0]`` in place of its class-table look-up (``D`` = the table's width, the
    timestep-embedding width).  ``E = class_embeds(labels)`` gives exactly the output of
    ``unet(x, t, class_labels=labels)`` (the same floats enter the same sum), while any other
    ``E`` — an optimised null embedding — conditions the model on a vector that is no row of
    the table.  Gradients flow to ``E``.

    Parameters
    ----------
    unet:
        A diffusers ``UNet2DModel`` with ``num_class_embeds`` (an ``nn.Embedding`` table,
        ``class_embed_type=None``).
    null_class:
        The table row of the unconditional ("null") class of classifier-free guidance;
        default the last row (``num_class_embeds − 1``).
    """

    def __init__(self, unet: torch.nn.Module, null_class: int | None = None) -> None:
        super().__init__()
        table = getattr(unet, "class_embedding", None)
        if not isinstance(table, torch.nn.Embedding):
            raise TypeError(
                f"{type(unet).__name__} has no class-embedding table (class_embedding = "
                f"{type(table).__name__}); build the UNet2DModel with num_class_embeds and "
                "class_embed_type=None")
        n = table.num_embeddings
        null_class = n - 1 if null_class is None else int(null_class)
        if not 0 <= null_class < n:
            raise ValueError(f"null_class {null_class} is not a row of the {n}-row class table")
        self.unet = unet
        #: the unconditional class's row index
        self.null_class = null_class
        #: number of table rows (the null class included)
        self.num_class_embeds = n
        #: width D of a class embedding
        self.embedding_dim = table.embedding_dim
        self._override: torch.Tensor | None = None
        table.register_forward_hook(self._replace_lookup)
        # what the adapters read: the UNet's config, with the "prompt" width D declared as
        # cross_attention_dim so that embeddings of the wrong width are refused
        self._config = {**dict(unet.config), "cross_attention_dim": self.embedding_dim,
                        "class_conditioning": "ClassEmbeddingUNet"}

    @property
    def config(self) -> Mapping[str, Any]:
        """The wrapped UNet's config plus ``cross_attention_dim = D``."""
        return self._config

    def _replace_lookup(self, module: torch.nn.Module, args: Any, output: torch.Tensor
                        ) -> torch.Tensor | None:
        if self._override is None:
            return None  # a plain class_labels call
        return self._override.to(output.dtype)

    def class_embeds(self, labels: torch.Tensor | int, batch: int | None = None
                     ) -> torch.Tensor:
        """The table rows of ``labels`` as ``(B, 1, D)`` "prompt embeddings" (a detached
        copy).  An ``int`` label gives batch ``batch`` (default 1)."""
        table = self.unet.class_embedding.weight
        if isinstance(labels, int):
            labels = torch.full((1 if batch is None else batch,), labels, dtype=torch.long)
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} "
                             f"of shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_class_embeds):
            raise ValueError(f"labels must lie in 0..{self.num_class_embeds - 1}, got "
                             f"{labels.min().item()}..{labels.max().item()}")
        return table.detach()[labels.to(table.device)].clone().unsqueeze(1)

    def null_embeds(self, batch: int = 1) -> torch.Tensor:
        """The null class's row as ``(batch, 1, D)`` (the negative embedding of CFG)."""
        return self.class_embeds(self.null_class, batch)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float,
                encoder_hidden_states: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, return_dict: bool = True) -> Any:
        """The UNet's output for class-embedding rows ``encoder_hidden_states`` (``(B, 1, D)``)
        or, without them, for ``class_labels``."""
        if encoder_hidden_states is None:
            return self.unet(sample, timestep, class_labels=class_labels,
                             return_dict=return_dict)
        if class_labels is not None:
            raise ValueError("give class_labels or encoder_hidden_states (class-embedding "
                             "rows), not both")
        e = encoder_hidden_states
        b = sample.shape[0]
        if e.dim() != 3 or e.shape[1] != 1 or e.shape[2] != self.embedding_dim:
            raise ValueError(f"encoder_hidden_states must be (batch, 1, {self.embedding_dim}) "
                             f"class-embedding rows, got shape {tuple(e.shape)}")
        if e.shape[0] != b:
            raise ValueError(f"encoder_hidden_states has batch {e.shape[0]} but the sample has "
                             f"batch {b}")
        self._override = e[:, 0]
        try:
            # any valid label: the hook replaces the look-up by the given rows
            dummy = torch.zeros(b, dtype=torch.long, device=sample.device)
            return self.unet(sample, timestep, class_labels=dummy, return_dict=return_dict)
        finally:
            self._override = None


def _as_wrapper(model: torch.nn.Module) -> ClassEmbeddingUNet:
    return model if isinstance(model, ClassEmbeddingUNet) else ClassEmbeddingUNet(model)


def class_guided_eps(model: torch.nn.Module, scheduler: Any, num_inference_steps: int | None,
                     class_labels: torch.Tensor | int, guidance_scale: float = 1.0, *,
                     negative_class_labels: torch.Tensor | int | None = None,
                     negative_embeds: torch.Tensor | None = None, grid: Any = None,
                     prediction_type: str | None = None) -> DiffusersEps:
    """``ε̄(x̄, σ̄) = ε_u + w (ε_c − ε_u)`` of a class-conditional UNet on a grid.

    ``ε_c`` is conditioned on ``class_labels``; ``ε_u`` on ``negative_embeds`` if given
    (``(B, 1, D)``: e.g. null-text-optimised rows), else on ``negative_class_labels``
    (default: the null class).  ``w = guidance_scale``; as in the pipelines, guidance
    applies only for ``w > 1`` (``w = 1``: ``ε_c`` alone, one network evaluation).  The grid
    is ``grid`` or the scheduler's own for ``num_inference_steps``.  Returns a
    :class:`~lmsolvers.adapters.DiffusersEps` (one batched ``[uncond, cond]`` call per ε).
    """
    m = _as_wrapper(model)
    if grid is None:
        grid = grid_from_scheduler(scheduler, num_inference_steps)
    pos = m.class_embeds(class_labels, None)
    if negative_embeds is None:
        neg_labels = m.null_class if negative_class_labels is None else negative_class_labels
        negative_embeds = m.class_embeds(neg_labels, pos.shape[0] if isinstance(neg_labels, int)
                                  else None)
    elif negative_class_labels is not None:
        raise ValueError("give negative_class_labels or negative_embeds, not both")
    return DiffusersEps(m, grid, scheduler, guidance_scale=guidance_scale, prompt_embeds=pos,
                        negative_prompt_embeds=negative_embeds, prediction_type=prediction_type)


def class_sampler(model: torch.nn.Module, scheduler: Any, num_inference_steps: int,
                  class_labels: torch.Tensor | int, guidance_scale: float = 1.0, *,
                  negative_class_labels: torch.Tensor | int | None = None,
                  method: Any = None, **kwargs: Any) -> DiffusionSampler:
    """A :class:`~lmsolvers.adapters.DiffusionSampler` conditioned on class labels with
    classifier-free guidance (``method=None``: the default exact configuration, O-BELM with
    the damped landing on the designed grid); ``kwargs`` as the sampler's (``state_dtype``,
    ``grid``, ``disable_progress``).  Per-run overrides pass embeddings
    (``sampler.sample(latent, prompt_embeds=m.class_embeds(b))``)."""
    m = _as_wrapper(model)
    pos = m.class_embeds(class_labels, None)
    neg_labels = m.null_class if negative_class_labels is None else negative_class_labels
    neg = m.class_embeds(neg_labels, pos.shape[0] if isinstance(neg_labels, int) else None)
    return DiffusionSampler(m, scheduler, num_inference_steps, method,
                            guidance_scale=guidance_scale, prompt_embeds=pos,
                            negative_prompt_embeds=neg, **kwargs)
