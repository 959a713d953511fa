"""Counter-based Gaussian noise: ``z = normal(seed, node, row, element)`` (docs/design.md §13).

A stochastic sampler is exactly invertible only if the inversion can regenerate the noise
the sampler will add at every node, in any order, without storing it.  A stream generator
(``torch.randn`` with a ``Generator``) cannot: its draws depend on everything drawn before,
on the batch size and, for CUDA, on the device's Philox layout.  Here every number is a pure
function of its coordinates:

* **key** of a row: ``K = mix(mix(mix(seed + C₀) ⊕ (node + 1)·G) ⊕ (row + 1)·C₁)`` with
  ``mix`` the SplitMix64 finaliser (a bijection of 64-bit words), ``G`` the golden-ratio
  increment (Steele et al., "Fast splittable pseudorandom number generators", OOPSLA 2014);
* **uniform** of element i: ``b = mix(K + (i + 1)·G)`` (SplitMix64's i-th output from state
  K), ``u = (2⌊b / 2¹²⌋ + 1) / 2⁵³`` — an odd multiple of 2⁻⁵³, so ``u`` and ``1 − u`` are
  exact and lie in (0, 1);
* **normal** ``z = Φ⁻¹(u)`` by Wichura's algorithm AS 241 (PPND16, Applied Statistics 37,
  1988; relative accuracy about 1e-16), its logarithm computed here from ``frexp`` and an
  atanh series.

Everything after the integer hash is IEEE-754 addition, multiplication, division and square
root (each correctly rounded, each its own numpy call, so nothing is fused), hence the same
bits on every platform, in every process, for any batch size; the noise is made in float64
on the CPU and only then cast and moved, so every device gets the same numbers.

Rows: the first dimension of the state is the batch.  With one integer seed, row b is keyed
``(seed, b)``; with a sequence of seeds (one per row, as a list of ``torch.Generator`` in a
pipeline), row b is keyed ``(seeds[b], 0)``, so a sample keeps its noise when it is run
alone with its own seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["NOISE_GENERATOR", "normal_noise", "NoiseSource", "check_seed", "ndtri"]

#: identity of the generator (recorded in a stochastic latent: another generator is another
#: sampler)
NOISE_GENERATOR = "splitmix64-as241-v1"

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C0 = 0x2545F4914F6CDD1D
_C1 = 0xD6E8FEB86659FD93
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (numpy array arithmetic wraps mod 2⁶⁴)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def check_seed(seed: Any) -> int | tuple[int, ...]:
    """A seed as the generator takes it: an int in [0, 2⁶⁴) or a non-empty sequence of them."""
    def one(s: Any) -> int:
        if isinstance(s, bool) or not isinstance(s, int | np.integer):
            raise TypeError(f"a noise seed must be an integer, got {type(s).__name__}")
        if not 0 <= int(s) <= _MASK:
            raise ValueError(f"a noise seed must lie in [0, 2**64), got {s}")
        return int(s)

    if isinstance(seed, Sequence) and not isinstance(seed, str):
        if len(seed) == 0:
            raise ValueError("an empty sequence of seeds")
        return tuple(one(s) for s in seed)
    return one(seed)


def _row_keys(seeds: np.ndarray, node: int, rows: np.ndarray) -> np.ndarray:
    """The key of each row (uint64 arrays of seeds and row numbers, broadcast)."""
    k = _mix(seeds + np.uint64(_C0))
    k = _mix(k ^ np.uint64(((node + 1) * _GOLDEN) & _MASK))
    return _mix(k ^ ((rows + np.uint64(1)) * np.uint64(_C1)))


def _uniform(keys: np.ndarray, n: int) -> np.ndarray:
    """``(rows, n)`` uniforms in (0, 1), odd multiples of 2⁻⁵³: element i of row b is
    SplitMix64's i-th output from the state ``keys[b]``."""
    i = np.arange(1, n + 1, dtype=np.uint64)
    bits = _mix(keys[:, None] + i[None, :] * np.uint64(_GOLDEN))
    odd = (bits >> np.uint64(12)).astype(np.float64) * 2.0 + 1.0  # < 2⁵³: exact
    return odd * 2.0**-53


# Series of log(m) = 2 atanh(s), s = (m − 1)/(m + 1), |s| ≤ 3 − 2√2 (m ∈ [1/√2, √2)):
# terms up to s^23 leave a relative error below 1e-17.
_ATANH = tuple(1.0 / (2 * n + 1) for n in range(12))
_LN2 = 0.6931471805599453  # the double nearest to log 2


def _log(x: np.ndarray) -> np.ndarray:
    """log(x) for positive finite x with basic IEEE operations only (platform-independent)."""
    m, e = np.frexp(x)  # exact: x = m 2^e, m ∈ [0.5, 1)
    low = m < 0.7071067811865476
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    acc = np.full_like(s, _ATANH[-1])
    for c in _ATANH[-2::-1]:
        acc = acc * s2 + c
    return e * _LN2 + 2.0 * s * acc


def _poly(coeffs: Sequence[float], x: np.ndarray) -> np.ndarray:
    acc = np.full_like(x, coeffs[-1])
    for c in coeffs[-2::-1]:
        acc = acc * x + c
    return acc


# Wichura (1988), algorithm AS 241, PPND16: numerator / denominator coefficients, lowest
# degree first, for the central region |u − ½| ≤ 0.425, the intermediate tail r ≤ 5 and the
# far tail (r = sqrt(−log(min(u, 1 − u)))).
_A = (3.3871328727963666080, 1.3314166789178437745e2, 1.9715909503065514427e3,
      1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
      3.3430575583588128105e4, 2.5090809287301226727e3)
_B = (1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
      2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4,
      5.2264952788528545610e3)
_C = (1.42343711074968357734, 4.63033784615654529590, 5.76949722146069140550,
      3.64784832476320460504, 1.27045825245236838258, 2.41780725177450611770e-1,
      2.27238449892691845833e-2, 7.74545014278341407640e-4)
_D = (1.0, 2.05319162663775882187, 1.67638483018380384940, 6.89767334985100004550e-1,
      1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
      1.05075007164441684324e-9)
_E = (6.65790464350110377720, 5.46378491116411436990, 1.78482653991729133580,
      2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
      2.71155556874348757815e-5, 2.01033439929228813265e-7)
_F = (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
      7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
      2.04426310338993978564e-15)


def ndtri(u: np.ndarray) -> np.ndarray:
    """The standard normal quantile ``Φ⁻¹(u)`` for u in (0, 1) (AS 241; float64 array)."""
    u = np.asarray(u, dtype=np.float64)
    q = u - 0.5
    out = np.empty_like(u)
    central = np.abs(q) <= 0.425
    if central.any():
        qc = q[central]
        r = 0.180625 - qc * qc
        out[central] = qc * _poly(_A, r) / _poly(_B, r)
    tail = ~central
    if tail.any():
        qt = q[tail]
        p = np.minimum(u[tail], 1.0 - u[tail])
        r = np.sqrt(-_log(p))
        near = r <= 5.0
        val = np.empty_like(r)
        rn = r[near] - 1.6
        val[near] = _poly(_C, rn) / _poly(_D, rn)
        rf = r[~near] - 5.0
        val[~near] = _poly(_E, rf) / _poly(_F, rf)
        out[tail] = np.where(qt < 0.0, -val, val)
    return out


def normal_noise(seed: int | Sequence[int], node: int, shape: Sequence[int]) -> np.ndarray:
    """Standard normal noise of ``shape`` (first dimension: rows) for ``node``, float64.

    ``seed``: one int (row b keyed ``(seed, b)``) or one int per row (row b keyed
    ``(seed[b], 0)``); see the module docstring.  A 0-d shape is one row of one number.
    """
    seed = check_seed(seed)
    if isinstance(node, bool) or not isinstance(node, int | np.integer) or node < 0:
        raise ValueError(f"node must be a non-negative integer, got {node!r}")
    shape = tuple(int(s) for s in shape)
    rows = shape[0] if shape else 1
    per_row = math.prod(shape[1:]) if shape else 1
    if isinstance(seed, tuple):
        if len(seed) != rows:
            raise ValueError(f"{len(seed)} seeds for a batch of {rows} rows: give one seed per "
                             "row (or one int for the whole batch)")
        keys = _row_keys(np.array(seed, dtype=np.uint64), int(node), np.zeros(1, np.uint64))
    else:
        keys = _row_keys(np.array([seed], dtype=np.uint64), int(node),
                         np.arange(rows, dtype=np.uint64))
    return ndtri(_uniform(keys, per_row).ravel()).reshape(shape)


class NoiseSource:
    """``z_m`` for the states of one run: ``source(m)`` is the noise of node m as a tensor of
    ``shape``, ``dtype`` and ``device`` (made in float64 on the CPU, then cast and moved)."""

    def __init__(self, seed: int | Sequence[int], shape: Sequence[int], dtype: torch.dtype,
                 device: torch.device | str) -> None:
        self.seed = check_seed(seed)
        self.shape, self.dtype, self.device = tuple(shape), dtype, torch.device(device)
        rows = self.shape[0] if self.shape else 1
        if isinstance(self.seed, tuple) and (not self.shape or rows != len(self.seed)):
            raise ValueError(f"{len(self.seed)} seeds for a batch of {rows} rows: give one "
                             "seed per row (or one int for the whole batch)")

    def __call__(self, m: int) -> torch.Tensor:
        z = torch.from_numpy(normal_noise(self.seed, m, self.shape))
        return z.to(device=self.device, dtype=self.dtype)
