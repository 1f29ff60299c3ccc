"""The errors and warnings that pymc-abi raises on purpose, by type.

Catch :class:`PymcAbiError` for any of the package's own refusals, or one of its
subclasses for a case you act on; each is also a :class:`ValueError`, so code written
against the plain type keeps working. Filter :class:`PymcAbiWarning`, or one of its
subclasses, with the :mod:`warnings` machinery; each is also a :class:`UserWarning`::

    import warnings
    import pymc_abi as abi

    try:
        amortizer = abi.Amortizer.load("model.abi", model)
    except abi.ModelChangedError:
        amortizer = abi.fit(model)  # the model changed since: train afresh

    with warnings.catch_warnings():
        warnings.simplefilter("error", abi.UnreliablePosteriorWarning)
        idata = amortizer.sample(data, fallback=False)  # raises instead of warning

Most refusals of bad arguments stay plain :class:`ValueError` / :class:`TypeError` with a
message that names the argument and the remedy.

This module imports nothing from the package (every layer may raise these).
"""

from __future__ import annotations

__all__ = [
    "DamagedFileError",
    "DroppedSimulationsWarning",
    "IncompleteBankError",
    "ModelChangedError",
    "ModelChangedWarning",
    "NoDensityError",
    "NotHierarchicalError",
    "NotHierarchicalWarning",
    "PotentialIgnoredWarning",
    "PymcAbiError",
    "PymcAbiWarning",
    "TrainingInterruptedWarning",
    "UnreliablePosteriorWarning",
    "UnvectorizedWarning",
]


class PymcAbiError(Exception):
    """Base of the errors pymc-abi raises on purpose."""


class ModelChangedError(PymcAbiError, ValueError):
    """A saved amortizer, comparator or simulation bank was made from another model than
    the one given (the message lists what changed). Load it with the model it was made
    from, pass ``allow_model_change=True`` to reuse a file's weights as a start, or
    simulate a new bank."""


class DamagedFileError(PymcAbiError, ValueError):
    """A saved file or simulation bank cannot be used as it is: unreadable, malformed
    fields, a checksum that does not match its contents, weights that are not finite, or a
    bank whose size disagrees with its own record. Save or simulate it again."""


class IncompleteBankError(PymcAbiError, ValueError):
    """A simulation bank whose writing was interrupted, or that lacks variables the
    networks read. Complete it with ``abi.simulate(..., resume=True)`` and the same
    arguments."""


class NoDensityError(PymcAbiError, ValueError):
    """The model has no log density that pymc-abi can compile (a ``pm.Simulator``, a
    ``CustomDist`` with only ``random=``): importance sampling, the ladder, the NUTS
    fallback and the Laplace preconditioner need one."""


class NotHierarchicalError(PymcAbiError, ValueError):
    """The model does not factor into global and per-group parameters along the group
    dim, as the two-level amortizer needs (the message says why)."""


class PymcAbiWarning(UserWarning):
    """Base of the warnings pymc-abi issues."""


class UnreliablePosteriorWarning(PymcAbiWarning):
    """Importance sampling found the amortized posterior of a dataset unreliable (Pareto
    :math:`\\hat k > 0.7`) after every tier of the ladder it was allowed: its draws are
    not trustworthy, unless NUTS takes over (the message says which)."""


class ModelChangedWarning(PymcAbiWarning):
    """A file was loaded for a changed model with ``allow_model_change=True``: its
    posterior (or probabilities) are those of the old model until it is trained again."""


class DroppedSimulationsWarning(PymcAbiWarning):
    """Training dropped simulations, or skipped batches, that held NaN or inf."""


class UnvectorizedWarning(PymcAbiWarning):
    """Some variables could not be simulated in one batched call; they are drawn one
    simulation at a time (exact, but slower)."""


class NotHierarchicalWarning(PymcAbiWarning):
    """``abi.fit(groups=...)`` found no two-level structure and fell back to the flat
    amortizer (the message says why)."""


class PotentialIgnoredWarning(PymcAbiWarning):
    """The model has ``pm.Potential`` terms, which forward simulation cannot honour: the
    amortized posterior is learned without them (importance sampling puts them back)."""


class TrainingInterruptedWarning(PymcAbiWarning):
    """Training was interrupted (Ctrl-C); the best weights so far were kept."""
