"""Initial weights, drawn on the host from a seeded ``numpy.random.Generator``.

Drawing on the host and then moving the values to the backend means one seed gives the same
starting point on every backend and device, bit for bit (up to the cast to the model's dtype).
Every initializer returns a float64 NumPy array of shape ``(p_in, p_out)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

RNGLike = int | np.random.Generator | None
Initializer = Callable[[np.random.Generator, int, int], np.ndarray]


def as_generator(rng: RNGLike) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a seed, a generator (used as is) or ``None`` (fresh)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, int) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be an int seed, a numpy.random.Generator or None, got {rng!r}")


def normal(rng: np.random.Generator, p_in: int, p_out: int) -> np.ndarray:
    """The seed notebook's draw: N(0, 1) scaled by 1/sqrt(p_in) (LeCun normal)."""
    # Written exactly as the seed does (multiply by the reciprocal), so the bits agree.
    w: np.ndarray = rng.normal(size=(p_in, p_out)) * (1 / np.sqrt(p_in))
    return w


def he(rng: np.random.Generator, p_in: int, p_out: int) -> np.ndarray:
    """He (Kaiming) normal: N(0, 2/p_in), suited to ReLU layers."""
    return rng.normal(size=(p_in, p_out)) * math.sqrt(2.0 / p_in)


def xavier(rng: np.random.Generator, p_in: int, p_out: int) -> np.ndarray:
    """Xavier (Glorot) normal: N(0, 2/(p_in + p_out)), suited to tanh and sigmoid layers."""
    return rng.normal(size=(p_in, p_out)) * math.sqrt(2.0 / (p_in + p_out))


def he_uniform(rng: np.random.Generator, p_in: int, p_out: int) -> np.ndarray:
    """He uniform: U(-a, a) with a = sqrt(6/p_in)."""
    a = math.sqrt(6.0 / p_in)
    return rng.uniform(-a, a, size=(p_in, p_out))


def xavier_uniform(rng: np.random.Generator, p_in: int, p_out: int) -> np.ndarray:
    """Xavier (Glorot) uniform: U(-a, a) with a = sqrt(6/(p_in + p_out)), as in Keras."""
    a = math.sqrt(6.0 / (p_in + p_out))
    return rng.uniform(-a, a, size=(p_in, p_out))


INITIALIZERS: dict[str, Initializer] = {
    "normal": normal,
    "he": he,
    "xavier": xavier,
    "he_uniform": he_uniform,
    "xavier_uniform": xavier_uniform,
}


def get(init: str | Initializer) -> Initializer:
    """An initializer by name (``"normal"``, ``"he"``, ``"xavier"``, ...) or a callable."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except KeyError:
        raise ValueError(
            f"unknown init {init!r}; expected one of {', '.join(INITIALIZERS)} or a callable "
            "(rng, p_in, p_out) -> ndarray"
        ) from None
