"""Checks of scalar arguments: each refuses what it cannot use, naming the argument.

``int(2.7)`` is 2 and ``bool("no")`` is true: a public function that converts its arguments
that way answers a question nobody asked. These checks refuse instead.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["MAX_LENGTH", "covariate_functions", "flag", "int_range", "positive", "real"]

#: the longest dim (or the most rows in a group) a range may ask for: simulations of that
#: many entries already take gigabytes, and a typo of a few zeros must fail at once, not
#: in a MemoryError minutes into training
MAX_LENGTH = 10_000_000


def positive(name: str, value, *, optional: bool = False, minimum: int = 1) -> int | None:
    """An integer of at least ``minimum`` (a positive one by default; or ``None`` where
    optional); anything else (a float, a bool, a string) is refused, naming the argument."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        allowed = " (or None)" if optional else ""
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}{allowed}, got {value!r}.")
    return int(value)


def flag(name: str, value, *, optional: bool = False) -> bool | None:
    """``True`` or ``False`` (or ``None`` where optional); a string such as ``"no"``, which
    Python would read as true, is refused, naming the argument."""
    if value is None and optional:
        return None
    if not isinstance(value, bool | np.bool_):
        allowed = " (or None)" if optional else ""
        raise ValueError(f"{name} must be True or False{allowed}, got {value!r}.")
    return bool(value)


def int_range(name: str, value, *, low: int = 1) -> tuple[int, int]:
    """A length or a range of lengths: an integer ``n`` (the range ``(n, n)``) or a pair
    ``(lo, hi)`` of integers with ``low <= lo <= hi``, ``1 <= hi <= MAX_LENGTH``. Floats,
    strings and bools are refused, naming the argument, not truncated."""
    pair = (value, value) if np.ndim(value) == 0 else value
    ok = (
        isinstance(pair, tuple | list | np.ndarray)
        and len(pair) == 2
        and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in pair)
    )
    if not ok or not low <= pair[0] <= pair[1] or not 1 <= pair[1] <= MAX_LENGTH:
        raise ValueError(
            f"{name} must be an integer or a range (low, high) of integers with "
            f"{low} <= low <= high <= {MAX_LENGTH:,}, got {value!r}."
        )
    return int(pair[0]), int(pair[1])


def real(name: str, value) -> float:
    """A real number (not a bool or a string), naming the argument where it is not."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    return float(value)


def covariate_functions(covariates, data, *, stacklevel: int = 3):
    """The training-time covariate functions of an object being built or loaded: the
    ``covariates=`` argument, or its old name ``data=`` with a :class:`FutureWarning`
    (``data=`` now only means a dataset's arrays, as in ``sample(data=...)``)."""
    if data is None:
        return covariates
    if covariates is not None:
        raise TypeError(
            "Give covariates= only: data= is its old name here (the functions that draw the "
            "covariates while training)."
        )
    warnings.warn(
        "data= is renamed covariates= where it gives the functions that draw covariates "
        "while training (fit, the constructors and load); write covariates={'X': fn}. "
        "data= will be removed in a later release; sample(data=...) keeps its name.",
        FutureWarning,
        stacklevel=stacklevel,
    )
    return data
