"""Plots of training (matplotlib)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pymc_abi.amortizers.amortizer import Amortizer

__all__ = ["plot_loss"]


def plot_loss(amortizer: Amortizer, *, ax=None):
    """Plot the training and validation loss of an amortizer against training steps.

    Parameters
    ----------
    amortizer : Amortizer
        A trained amortizer.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure otherwise.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    history = amortizer.history
    if not history.step:
        raise ValueError("The amortizer has not been trained yet: there is no loss to plot.")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history.step, history.loss, label="training")
    ax.plot(history.step, history.val_loss, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (NLL for flows)")
    ax.legend()
    return ax
