"""lmsolvers: variable-step linear multistep solvers with exact inversion of diffusion sampling.

The core knows nothing about diffusion: it integrates ``dx̄/dσ̄ = ε̄(x̄, σ̄)`` on a
:class:`Grid` of σ̄ nodes (docs/design.md §1).  Bidirectional explicit methods
(BELMs) are algebraically invertible: :func:`invert` returns a :class:`Latent`
from which :func:`sample` reproduces the data up to round-off.

Public names are loaded on first use (PEP 562), so ``import lmsolvers`` and the
command line's ``--help`` do not pay for torch and sympy until they are needed.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: public name -> submodule that defines it (one table; ``__all__`` is its keys)
_EXPORTS: dict[str, str] = {
    "Grid": "grid",
    "LMMethod": "method",
    "StepCoefficients": "method",
    "Integrator": "engine",
    "Latent": "latent",
    "LatentMismatchError": "latent",
    "sample": "integrate",
    "invert": "integrate",
    "ddim_inversion": "integrate",
    "ExactnessWarning": "exactness",
    "ExactnessError": "exactness",
    "SolverInstabilityError": "exactness",
    "predicted_roundtrip_error": "exactness",
    "ddim": "families",
    "obelm": "families",
    "bdia": "families",
    "obelm_landing": "families",
    "design_grid": "griddesign",
    "design_schedule_grid": "griddesign",
    "GridDesign": "griddesign",
    "method_from_name": "registry",
    "edict": "edict",
    "EDICT": "edict",
    "derive_belm": "design",
    "belm": "design",
    "design": "design",
    "order_of": "symbolic",
    "amplification": "stability",
    "is_zero_stable": "stability",
    "stability_report": "stability",
    "analyze": "analysis",
    "belm_table": "table",
    "ExponentialLMMethod": "exponential",
    "exponential_method": "exponential",
    "ebelm": "expdesign",
    "exp_design": "expdesign",
    "solve_exp_order_conditions": "expsymbolic",
    "exp_order_of": "expsymbolic",
    "log_grid": "loggrid",
    "log_schedule_grid": "loggrid",
    "exp_belm_table": "table",
    "BitexactLatent": "bitexact",
    "RepresentationError": "bitexact",
    "FixedPointOverflowError": "bitexact",
    "NondeterminismError": "bitexact",
    "pack_latent": "packing",
    "unpack_latent": "packing",
    "is_packed_latent": "packing",
    "PackedLatentError": "packing",
    "stochastic": "stochastic",
    "StochasticMethod": "stochastic",
}
#: public submodules
_MODULES = ("problems", "sde", "noise")

__all__ = [*_EXPORTS, *_MODULES]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'lmsolvers' has no attribute {name!r}")
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Importing a submodule binds it as an attribute of its package.  Two public
    functions share their module's name (``edict``, ``design``): keep the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return  # lmsolvers.edict stays the function; the module is in sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
