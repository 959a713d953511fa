"""lmsolvers: variable-step linear multistep solvers with exact inversion of diffusion sampling.

The core knows nothing about diffusion: it integrates ``dx̄/dσ̄ = ε̄(x̄, σ̄)`` on a
:class:`Grid` of σ̄ nodes (shared/DESIGN.md).  Bidirectional explicit methods
(BELMs) are algebraically invertible: :func:`invert` returns a :class:`Latent`
from which :func:`sample` reproduces the data up to round-off.
"""

from . import problems
from .analysis import analyze
from .bitexact import (
    BitexactLatent,
    FixedPointOverflowError,
    NondeterminismError,
    RepresentationError,
)
from .design import belm, derive_belm, design
from .edict import EDICT, edict
from .families import bdia, ddim, obelm
from .grid import Grid
from .integrate import Latent, ddim_inversion, invert, sample
from .method import LMMethod, StepCoefficients
from .stability import amplification, is_zero_stable, stability_report
from .symbolic import order_of
from .table import belm_table

__all__ = [
    "Grid",
    "LMMethod",
    "StepCoefficients",
    "Latent",
    "sample",
    "invert",
    "ddim_inversion",
    "ddim",
    "obelm",
    "bdia",
    "edict",
    "EDICT",
    "derive_belm",
    "order_of",
    "amplification",
    "problems",
    "BitexactLatent",
    "RepresentationError",
    "FixedPointOverflowError",
    "NondeterminismError",
    "is_zero_stable",
    "stability_report",
    "belm",
    "design",
    "analyze",
    "belm_table",
]

__version__ = "0.1.0"
