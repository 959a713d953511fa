"""The reverse SDE of the σ̄-ODE, its one-step noise laws and how noise enters a multistep
relation, derived symbolically (docs/design.md §13).

**The SDE family.**  Data diffused as ``x̄ = x₀ + σ̄ n`` (``x̄ = x/α``, §1) is the forward
process ``dx̄ = sqrt(2σ̄) dW`` in the time σ̄, with score ``∇ log p = −ε̄/σ̄``.  Every
``η ≥ 0`` gives a reverse-time SDE with the same marginals (Song et al. 2021, eq. 6 with the
drift/diffusion split of Karras et al. 2022)::

    dx̄ = (1 + η²) ε̄(x̄, σ̄) dσ̄ + η sqrt(2σ̄) dW̄,       dσ̄ < 0                (1)

η = 0 is the probability-flow ODE, η = 1 the reverse diffusion (DDPM).

**One step with the data prediction frozen.**  With ``ε̄ = (x̄ − D)/σ̄`` and D constant on a
step from σ̄ = s down to t (q = t/s), (1) is linear and its solution is Gaussian:

    x̄_t = D + ρ (x̄_s − D) + c z,   ρ = q^{1+η²},   c² = t² (1 − q^{2η²})        (law "sde")

(:func:`frozen_transition`).  Written with ``ε̄_s``: ``x̄_t = x̄_s − s (1 − ρ) ε̄_s + c z``.
It is SA-Solver's first-order step (Xue et al., NeurIPS 2023, noise ``σ_t sqrt(1 −
e^{−2τ²h})``, τ = η) and, at η = 1, SDE-DPM-Solver++(1) (Lu et al. 2022, the
``sde-dpmsolver++`` update ``x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) x̂₀ + σ_t
sqrt(1 − e^{−2h}) z``) and DDPM's posterior step (:func:`dpmpp_sde_step`).  DDIM's η-family
(Song et al. 2021, "Denoising diffusion implicit models", eq. 12 with σ_t(η) of eq. 16) is
the same form with another ratio (:func:`ddim_step`):

    ρ = q sqrt(1 − η² + η² q²),   c² = η² t² (1 − q²)                         (law "ddim")

Both laws keep the marginal of a point mass exactly (``ρ² s² + c² = t²``), agree at η = 0
(DDIM) and η = 1 (DDPM), and agree with (1) to first order in the step
(:func:`weak_order_one_conditions`); they differ by O(h²) per step in between.

**The time change.**  Both laws are DDIM's deterministic step in a new time τ with
``τ_t/τ_s = ρ``: ``x̄_t = x̄_s − (τ_s − τ_t)(σ̄_s/τ_s) ε̄_s + c z``.  For the "sde" law
``τ = σ̄^{1+η²}`` and (1) reads ``dx̄/dτ = ε̃ + noise`` with ``ε̃ = ε̄ σ̄/τ = (x̄ − D)/τ``: the
σ̄-ODE's own form in the time τ (:func:`time_change`).  So a k-step method applied to the
SDE is the *same method on the τ-grid*: its coefficients evaluated on the steps of τ, its
ε-weights multiplied by ``σ̄_m/τ_m``.  Every LM method, whatever its design, gets its
stochastic version that way, and η → 0 gives the method back.

**Noise in the principal mode.**  A k-step relation ``x̄_r = Σ_j a_j x̄_{r+j} + …`` has
parasitic modes on the differences of neighbouring states (§4).  Fresh noise added to the
new node alone feeds them: for k = 2 a share ``a₂/(1 + a₂)`` of it lands in the parasitic
mode (:func:`fresh_noise_split`), which O-BELM at equal steps (a₂ = 1, root −1) never damps.
Instead the sampler runs the deterministic relation on ``y = x̄ − W``, with ``W_m`` the sum
of the step noises ``ξ_n = c_n z_n`` above node m (the Brownian path at the nodes); in x̄
this adds to row r

    Σ_{m=0..k−1} A_m ξ_{r+m},   A₀ = 1,  A_m = Σ_{j>m} a_j                      (2)

(:func:`principal_noise_weights`): every noise shifts all later states alike, the parasitic
modes receive none.  (2) uses only nodes r … r+k−1, all known to the inverse step, so the
relation stays bidirectional explicit once the z's are regenerated from (seed, node).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import expm1

__all__ = [
    "S",
    "T",
    "H",
    "U",
    "ETA",
    "NOISE_LAWS",
    "reverse_sde",
    "frozen_transition",
    "ddim_step",
    "dpmpp_sde_step",
    "noise_law",
    "weak_order_one_conditions",
    "time_change",
    "principal_noise_weights",
    "fresh_noise_split",
    "step_ratio",
    "noise_std",
    "time_grid",
]

#: the one-step noise laws: DDIM's η (default) and the exact transition of SDE (1)
NOISE_LAWS = ("ddim", "sde")

#: σ̄ at the upper and lower node of a step, and the step h = s − t
S, T, H = sp.symbols("s t h", positive=True)
#: η, the noise level of SDE (1)
ETA = sp.Symbol("eta", positive=True)
#: σ̄ as the running time of SDE (1)
U = sp.Symbol("u", positive=True)
_D, _X = sp.symbols("D x")


def reverse_sde() -> tuple[sp.Expr, sp.Expr]:
    """``(drift factor, diffusion²)`` of SDE (1) at σ̄ = u: ``dx̄ = f ε̄ dσ̄ + sqrt(g²) dW̄``.

    Derived from the forward process ``dx̄ = sqrt(dσ̄²/dσ̄) dW`` (diffusion² ``2u``) and its
    score ``−ε̄/u``: the reverse drift ``−(1 + η²)/2 · g² · score`` per unit ε̄, and η² g²."""
    g2 = sp.diff(U**2, U)
    drift = sp.simplify(-(1 + ETA**2) / 2 * g2 * (-1 / U))
    return drift, ETA**2 * g2


def frozen_transition() -> tuple[sp.Expr, sp.Expr]:
    """``(ρ, c²)`` of SDE (1) from σ̄ = s to t with the data prediction D frozen.

    The mean solves ``dm/du = f (m − D)/u`` (linear): ``m(t) − D = ρ (x̄_s − D)``; the
    variance is ``∫_t^s (Φ(t, u))² g²(u) du`` with the propagator ``Φ(t, u) = (t/u)^f``.
    """
    f, g2 = reverse_sde()
    m = sp.Function("m")
    sol = sp.dsolve(sp.Eq(m(U).diff(U), f * (m(U) - _D) / U), m(U), ics={m(S): _X})
    rho = sp.simplify(sp.expand((sol.rhs.subs(U, T) - _D) / (_X - _D)))
    var = sp.integrate(((T / U) ** f) ** 2 * g2, (U, T, S), conds="none")
    return sp.powsimp(sp.simplify(rho), force=True), sp.simplify(var)


def ddim_step() -> tuple[sp.Expr, sp.Expr]:
    """``(ρ, c²)`` of DDIM's η-step (Song et al. 2021, eq. 12 and 16) in σ̄ form.

    ``x_{t−1} = sqrt(ᾱ_{t−1}) x̂₀ + sqrt(1 − ᾱ_{t−1} − σ²) ε + σ z`` with
    ``σ² = η² (1 − ᾱ_{t−1})/(1 − ᾱ_t) (1 − ᾱ_t/ᾱ_{t−1})``; divided by ``α_{t−1}`` and with
    ``ᾱ = 1/(1 + σ̄²)`` it is ``x̄_t = x̂₀ + sqrt(t² − c²) ε̄ + c z``, ``c = σ/α_{t−1}``.
    """
    ab_s, ab_t = 1 / (1 + S**2), 1 / (1 + T**2)
    sigma2 = ETA**2 * (1 - ab_t) / (1 - ab_s) * (1 - ab_s / ab_t)
    c2 = sp.factor(sp.simplify(sigma2 / ab_t))
    rho = sp.sqrt(sp.factor(T**2 - c2)) / S  # x̄_t − D = (sqrt(t² − c²)/s)(x̄_s − D)
    return rho, c2


def dpmpp_sde_step() -> tuple[sp.Expr, sp.Expr]:
    """``(ρ, c²)`` of SDE-DPM-Solver++'s first-order step (diffusers' ``sde-dpmsolver++``):
    ``x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) x̂₀ + σ_t sqrt(1 − e^{−2h}) z`` with
    ``h = λ_t − λ_s``, ``λ = log(α/σ) = −log σ̄``; divided by α_t (``σ_t/α_t = t``)."""
    lam_s, lam_t = -sp.log(S), -sp.log(T)
    e_h = sp.exp(-(lam_t - lam_s))
    ratio = (T / S) * e_h  # (σ_t/σ_s)(α_s/α_t) e^{−h}: the coefficient of x̄_s
    return sp.simplify(ratio), sp.simplify(T**2 * (1 - e_h**2))


@cache
def noise_law(law: str) -> tuple[sp.Expr, sp.Expr]:
    """``(ρ, c²)`` of a law (:data:`NOISE_LAWS`), in the forms that are compiled: "ddim" is
    :func:`ddim_step`, "sde" is :func:`frozen_transition` (tests check both identities)."""
    if law == "ddim":
        return S**-1 * T * sp.sqrt(1 - ETA**2 * (S - T) * (S + T) / S**2), \
            ETA**2 * T**2 * (S - T) * (S + T) / S**2
    if law == "sde":
        return sp.exp((1 + ETA**2) * sp.log(T / S)), -T**2 * expm1(2 * ETA**2 * sp.log(T / S))
    raise ValueError(f"unknown noise law {law!r}; laws are {', '.join(NOISE_LAWS)}")


def weak_order_one_conditions(rho: sp.Expr, c2: sp.Expr) -> list[sp.Expr]:
    """What must vanish for a one-step law ``x̄_t = D + ρ (x̄_s − D) + c z`` to be consistent
    with SDE (1) (weak order 1): with t = s − h, ``ρ = 1 − f h/s + O(h²)`` (the drift
    ``f ε̄ = f (x̄ − D)/s``) and ``c² = g² h + O(h²)`` (the diffusion)."""
    f, g2 = reverse_sde()
    r = sp.series(rho.subs(T, S - H), H, 0, 2).removeO()
    v = sp.series(c2.subs(T, S - H), H, 0, 2).removeO()
    return [sp.simplify(r.coeff(H, 0) - 1), sp.simplify(r.coeff(H, 1) + f.subs(U, S) / S),
            sp.simplify(v.coeff(H, 0)), sp.simplify(v.coeff(H, 1) - g2.subs(U, S))]


def time_change() -> tuple[sp.Expr, sp.Expr]:
    """``(τ(σ̄), ε̃/ε̄)`` of the "sde" law: ``dτ/τ = (1 + η²) dσ̄/σ̄`` makes the drift of (1)
    ``dx̄/dτ = ε̃`` with ``ε̃ = (x̄ − D)/τ`` (the σ̄-ODE's form); τ's step ratio is ρ."""
    f, _ = reverse_sde()
    tau = sp.Function("tau")
    sol = sp.dsolve(sp.Eq(tau(U).diff(U), f * tau(U) / U), tau(U), ics={tau(1): 1}).rhs
    # dx̄/dτ = f ε̄ dσ̄/dτ = f ε̄ σ̄/(f τ) = ε̄ σ̄/τ
    return sp.simplify(sol), sp.simplify(f * U / (f * sol) * U / U)


def principal_noise_weights(a: Sequence[sp.Expr]) -> list[sp.Expr]:
    """``[A₀, …, A_{k−1}]`` of (2): the weight of ``ξ_{r+m}`` in row r when the relation is run
    on ``y = x̄ − W`` (``W_m = Σ_{n≥m} ξ_n``) — ``W_r − Σ_j a_j W_{r+j}`` expanded, with
    ``Σ_j a_j = 1`` used for ``A₀``."""
    a = [sp.sympify(e) for e in a]
    k = len(a)
    xi = sp.symbols(f"xi0:{k}")
    w = [sp.Add(*xi[m:]) for m in range(k + 1)]  # W_{r+m} − W_{r+k} (the offset cancels)
    expr = sp.expand(w[0] - sp.Add(*[a[j - 1] * w[j] for j in range(1, k + 1)]))
    consistent = {a[0]: 1 - sp.Add(*a[1:])}  # Σ_j a_j = 1
    return [sp.simplify(expr.coeff(xi[m]).subs(consistent)) for m in range(k)]


def fresh_noise_split(a2: sp.Expr | None = None) -> tuple[sp.Expr, sp.Expr]:
    """Shares of a unit noise added to the new node of a two-step relation that stay in the
    principal mode (eigenvalue 1) and go to the parasitic mode (eigenvalue ``−a₂``) of its
    companion map ``(x̄_{r+1}, x̄_{r+2}) ↦ (x̄_r, x̄_{r+1})``, at a constant ``a₂``: the
    coordinates of ``(1, 0)`` in the eigenvectors, read at the new node."""
    a2 = sp.Symbol("a2", positive=True) if a2 is None else sp.sympify(a2)
    M = sp.Matrix([[1 - a2, a2], [1, 0]])
    vecs = {sp.simplify(val): vs[0] for val, _, vs in M.eigenvects()}
    v1, v2 = vecs[sp.Integer(1)], vecs[sp.simplify(-a2)]
    c = sp.Matrix.hstack(v1, v2).solve(sp.Matrix([1, 0]))
    return sp.simplify(c[0] * v1[0]), sp.simplify(c[1] * v2[0])


# ---------------------------------------------------------------- compiled numerics
@cache
def _compiled(law: str) -> tuple[Callable, Callable]:
    rho, c2 = noise_law(law)
    return (sp.lambdify((S, T, ETA), rho, modules="numpy"),
            sp.lambdify((S, T, ETA), c2, modules="numpy"))


def _check(sigma_bar: np.ndarray, eta: float, law: str) -> np.ndarray:
    s = np.asarray(sigma_bar, dtype=np.float64)
    if s.ndim != 1 or s.size < 2 or not np.all(np.diff(s) > 0) or s[0] < 0:
        raise ValueError("sigma_bar must be a strictly increasing grid with σ̄_0 ≥ 0")
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be positive and finite, got {eta!r}")
    if law == "ddim" and eta > 1:
        raise ValueError(f"DDIM's noise law needs eta ≤ 1 (its σ_t(η) exceeds the step's "
                         f"noise level beyond), got {eta!r}; use law='sde' for eta > 1")
    if law not in NOISE_LAWS:
        raise ValueError(f"unknown noise law {law!r}; laws are {', '.join(NOISE_LAWS)}")
    return s


def step_ratio(sigma_bar: np.ndarray, eta: float, law: str) -> np.ndarray:
    """ρ of every step: entry n for the step from node n + 1 down to node n."""
    s = _check(sigma_bar, eta, law)
    with np.errstate(divide="ignore"):  # log(0) at a σ̄ = 0 node, replaced below
        rho = np.asarray(_compiled(law)[0](s[1:], s[:-1], float(eta)), dtype=np.float64)
    return np.where(s[:-1] == 0.0, 0.0, rho)


def noise_std(sigma_bar: np.ndarray, eta: float, law: str) -> np.ndarray:
    """``c_n``: the noise of the step from node n + 1 down to node n (0 when σ̄_n = 0)."""
    s = _check(sigma_bar, eta, law)
    with np.errstate(divide="ignore"):
        c2 = np.asarray(_compiled(law)[1](s[1:], s[:-1], float(eta)), dtype=np.float64)
    return np.sqrt(np.where(s[:-1] == 0.0, 0.0, c2))


def time_grid(sigma_bar: np.ndarray, eta: float, law: str) -> np.ndarray:
    """The nodes τ_m of the time change: ``τ_N = σ̄_N^{1+η²}`` and ``τ_n = ρ_n τ_{n+1}``
    (for the "sde" law ``τ = σ̄^{1+η²}`` up to round-off; for "ddim" a grid-dependent τ
    with the same limit).  ``τ_0 = 0`` when ``σ̄_0 = 0``."""
    s = _check(sigma_bar, eta, law)
    rho = step_ratio(s, eta, law)
    top = s[-1] ** (1.0 + eta**2)
    return np.append(top * np.cumprod(rho[::-1])[::-1], top)
