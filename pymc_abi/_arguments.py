"""Checks of scalar arguments: each refuses what it cannot use, naming the argument.

``int(2.7)`` is 2 and ``bool("no")`` is true: a public function that converts its arguments
that way answers a question nobody asked. These checks refuse instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["flag", "positive", "real"]


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


def real(name: str, value) -> float:
    """A real number (not a bool or a string), naming the argument where it is not."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    return float(value)
