"""Methods by name: the one registry every entry point (core, sampler, scheduler, CLI) uses.

A name is what ``method.name`` prints, so a method can be written to a config and read
back: ``"ddim"``, ``"obelm"``, ``"bdia"`` (γ = 1), ``"bdia(0.5)"``, ``"edict"``
(p = 0.93), ``"edict(0.93)"``, ``"belm3"`` (the default design), ``"belm3-forward"``,
``"belm3-bidirectional"``, ``"belm3-max"`` (the maximal-order, not zero-stable method),
``"obelm-landing(0.1)"``, and the designed exponential BELMs ``"ebelm3"`` … ``"ebelm6"``
(data-prediction variables, docs/design.md §12) with an optional landing,
``"ebelm3(eps, 0.1)"``; any of them followed by ``"+eta(<eta>)"`` (optionally
``"+eta(<eta>, sde, relation)"``: the noise law and the drift design) is its stochastic
sampler (:func:`lmsolvers.stochastic`).
Parameters are parsed with ``float`` (``repr`` round-trips exactly), so
``method_from_name(m.name)`` has ``m``'s exact identity.
"""

from __future__ import annotations

import re
from typing import Any

from .design import belm, design
from .edict import edict
from .engine import Integrator
from .expdesign import EXP_KS, ebelm
from .exponential import LANDINGS
from .families import bdia, ddim, obelm, obelm_landing
from .sde import NOISE_LAWS
from .stochastic import DRIFTS, StochasticMethod

__all__ = ["method_from_name", "METHOD_NAMES"]

#: the forms a name can take (for error messages and documentation)
METHOD_NAMES = ("ddim", "obelm", "bdia", "bdia(<gamma>)", "edict", "edict(<p>)",
                "edict(<p>, alternate)", "obelm-landing", "obelm-landing(<gamma>)",
                "belm<k>", "belm<k>-forward", "belm<k>-bidirectional", "belm<k>-max",
                "ebelm<k>", "ebelm<k>(<landing>, <gamma>)",
                "<method>+eta(<eta>)", "<method>+eta(<eta>, sde)",
                "<method>+eta(<eta>, relation)")

_PARAM = re.compile(r"^(bdia|edict|obelm-landing)\((.+)\)$")
_ETA = re.compile(r"^(.+)\+eta\(([^,()]+)((?:,\s*[\w-]+)*)\)$")
_BELM = re.compile(r"^belm(\d+)(?:-(forward|bidirectional|max|none))?$")
_EBELM = re.compile(r"^ebelm(\d+)(?:\((.+)\))?$")


def method_from_name(method: Any) -> Any:
    """The core method (an :class:`~lmsolvers.LMMethod` or :class:`~lmsolvers.EDICT`) for
    ``method``: a name (see the module docstring) or an already built method, returned as is.

    Raises ``ValueError`` naming the accepted forms for an unknown name, and ``TypeError``
    for anything that is neither a name nor a method.
    """
    if isinstance(method, Integrator):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a name or an lmsolvers method (LMMethod, EDICT), got "
                        f"{type(method).__name__}")
    name = method.strip().lower()
    m = _ETA.match(name)
    if m:  # a stochastic sampler: "<method>+eta(<eta>[, <law>][, <drift>])"
        try:
            eta = float(m.group(2))
        except ValueError:
            raise ValueError(f"method {method!r}: {m.group(2)!r} is not a number") from None
        opts = {"law": "ddim", "drift": "time"}
        for word in filter(None, (w.strip() for w in m.group(3).split(","))):
            key = "law" if word in NOISE_LAWS else "drift" if word in DRIFTS else None
            if key is None:
                raise ValueError(f"method {method!r}: {word!r} is neither a noise law "
                                 f"({', '.join(NOISE_LAWS)}) nor a drift ({', '.join(DRIFTS)})")
            opts[key] = word
        return StochasticMethod(method_from_name(m.group(1)), eta, **opts)
    if name == "ddim":
        return ddim()
    if name == "obelm":
        return obelm()
    if name == "bdia":
        return bdia()
    if name == "edict":
        return edict()
    if name == "obelm-landing":
        return obelm_landing()
    m = _PARAM.match(name)
    if m:
        args = [a.strip() for a in m.group(2).split(",")]
        alternate = m.group(1) == "edict" and args[1:] == ["alternate"]
        if len(args) != 1 + alternate:
            raise ValueError(f"method {method!r}: unexpected arguments; names are "
                             f"{', '.join(METHOD_NAMES)}")
        try:
            value = float(args[0])
        except ValueError:
            raise ValueError(f"method {method!r}: {args[0]!r} is not a number") from None
        if m.group(1) == "obelm-landing":
            return obelm_landing(value)
        return bdia(value) if m.group(1) == "bdia" else edict(value, alternate)
    m = _EBELM.match(name)
    if m:
        k = int(m.group(1))
        if k not in EXP_KS:
            raise ValueError(f"method {method!r}: exponential BELMs are designed for k in "
                             f"{EXP_KS}")
        if m.group(2) is None:
            return ebelm(k)
        args = [a.strip() for a in m.group(2).split(",")]
        if len(args) != 2 or args[0] not in LANDINGS:
            raise ValueError(f"method {method!r}: write ebelm<k>(<landing>, <gamma>) with a "
                             f"landing in {LANDINGS}")
        try:
            gamma = float(args[1])
        except ValueError:
            raise ValueError(f"method {method!r}: {args[1]!r} is not a number") from None
        return ebelm(k, args[0], gamma)
    m = _BELM.match(name)
    if m:
        k, kind = int(m.group(1)), m.group(2) or "bidirectional"
        if k == 2:
            return obelm()
        return design(k, "none").method if kind in ("max", "none") else belm(k, kind)
    raise ValueError(f"unknown method {method!r}; names are {', '.join(METHOD_NAMES)}")
