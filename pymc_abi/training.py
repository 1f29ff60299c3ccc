r"""The training loop: online or offline, AdamW, warm-up, a plateau schedule that stops on its own.

The networks are trained by minimizing the negative log-likelihood of simulated parameters
under the conditional density (the NPE loss):

.. math::

    \mathbb{E}_{y}\,\mathrm{KL}\big[p(\theta \mid y) \,\|\, q_\phi(\theta \mid h_\psi(y))\big]
    = -\mathbb{E}_{(\theta, y) \sim p(\theta, y)} \log q_\phi(\theta \mid h_\psi(y)) + C.

This module is torch-only: a batch is whatever ``loss_fn`` takes, produced by an iterator.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pymc_abi._progress import ProgressBar

__all__ = ["History", "train"]

_log = logging.getLogger("pymc_abi")


@dataclass
class History:
    """Loss history of all training runs of an amortizer.

    Attributes
    ----------
    step, loss : list
        Training step and mean training loss over each validation interval.
    val_loss : list
        Validation loss at the same steps.
    skipped : int
        Batches skipped because they held NaN or inf (in the data or the loss).
    seconds : float
        Total training time.
    stops : list of str
        How each training run ended: ``"completed"`` (all its steps), ``"early stopping"``
        (the validation loss stopped improving) or ``"interrupted"`` (Ctrl-C), with the
        step.
    """

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    stops: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": list(self.step),
            "loss": list(self.loss),
            "val_loss": list(self.val_loss),
            "skipped": self.skipped,
            "seconds": self.seconds,
            "stops": list(self.stops),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**d)


def _finite(batch) -> bool:
    if isinstance(batch, torch.Tensor):
        return bool(torch.isfinite(batch).all()) if batch.is_floating_point() else True
    if isinstance(batch, dict):
        return all(_finite(v) for v in batch.values())
    if isinstance(batch, list | tuple):
        return all(_finite(v) for v in batch)
    return True


class Plateau:
    """The learning rate after warm-up, lowered when the validation loss stops improving,
    and the decision to stop.

    The loss (optionally smoothed by an exponential moving average) counts as improved when
    it falls below the best so far by more than ``min_delta``. After ``patience`` validations without improvement the learning rate is
    multiplied by ``factor``; once it has been lowered ``reductions`` times, the next such
    plateau ends training: the network has learned what it can. The schedule thereby fits
    the model: an easy posterior stops after a few hundred steps, a hard one trains on while
    it improves, up to the step budget.

    Parameters
    ----------
    patience : int
        Validations without improvement before the learning rate is lowered (or, after
        ``reductions`` of them, training stops).
    min_delta : float
        The least fall of the validation loss that counts as an improvement.
    reductions : int, default 2
        Times the learning rate is lowered before a plateau stops training.
    factor : float, default 0.5
        What lowering multiplies the learning rate by.
    smoothing : float, default 1.0
        Weight of the newest validation loss in the moving average (1: no smoothing).
    """

    def __init__(
        self,
        patience: int,
        min_delta: float,
        reductions: int = 2,
        factor: float = 0.5,
        smoothing: float = 1.0,
    ):
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.reductions, self.factor = int(reductions), float(factor)
        self.smoothing = float(smoothing)
        self.best = math.inf
        self.smoothed = math.nan
        self.since = 0
        self.reduced = 0
        self.scale = 1.0

    def update(self, loss: float) -> str | None:
        """Record a validation loss; return why training stops, or ``None``."""
        if not math.isfinite(self.smoothed):
            self.smoothed = loss
        else:
            self.smoothed += self.smoothing * (loss - self.smoothed)
        loss = self.smoothed
        if loss < self.best - self.min_delta:
            self.best, self.since = loss, 0
            return None
        self.best = min(self.best, loss)
        self.since += 1
        if self.since < self.patience:
            return None
        if self.reduced < self.reductions:
            self.reduced += 1
            self.scale *= self.factor
            self.since = 0
            return None
        return (
            f"converged: the validation loss improved by less than {self.min_delta:.3g} in "
            f"{self.patience} validations after {self.reductions} learning-rate reductions"
        )


def train(
    module: nn.Module,
    loss_fn: Callable[[Any], torch.Tensor],
    batches: Iterator[Any],
    validation: Any,
    *,
    steps: int,
    validate_every: int,
    history: History,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    warmup: int = 200,
    clip_norm: float = 1.5,
    patience: int | None = 3,
    min_delta: float = 0.0,
    reductions: int = 2,
    progressbar: bool = True,
) -> History:
    """Train ``module`` in place and return the updated ``history``.

    Parameters
    ----------
    module
        Holds every trainable parameter; its best state (lowest validation loss) is kept.
    loss_fn
        Maps one batch to a scalar loss.
    batches
        Yields training batches (fresh simulations online, a shuffled bank offline).
    validation
        A fixed held-out batch, or a list of them (their mean loss is used).
    steps
        The most optimizer steps (the budget).
    validate_every
        Steps between validations (and between records in ``history``).
    history
        Appended to; ``step`` continues from its last entry.
    learning_rate, weight_decay
        AdamW settings; the learning rate rises linearly over the first ``warmup`` steps
        (at most a tenth of the budget), then follows :class:`Plateau`.
    clip_norm
        Gradient norm clipping.
    patience, min_delta, reductions
        :class:`Plateau`: validations without an improvement of more than ``min_delta``
        before the learning rate is halved, and how many halvings before training stops.
        ``patience=None`` trains at a constant learning rate for the whole budget.
    progressbar
        Show a progress bar with the losses, the learning rate and, at the end, why
        training stopped (works in notebooks).

    Notes
    -----
    Ctrl-C stops training cleanly, with a warning; the best weights so far are kept, and
    ``history.stops`` records how the run ended. A batch with NaN or inf,
    or whose loss is not finite, is skipped and counted; if most batches are, training stops
    with an error.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    warmup = max(1, min(int(warmup), steps // 10))
    plateau = Plateau(patience, min_delta, reductions) if patience is not None else None

    def set_learning_rate(step: int) -> float:
        rate = learning_rate * min(1.0, step / warmup) * (plateau.scale if plateau else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = rate
        return rate

    start_step = history.step[-1] if history.step else 0
    best_state = copy.deepcopy(module.state_dict())
    best = _validate(module, loss_fn, validation)
    best_step = start_step
    stop = f"the step budget ({steps} steps) was reached" + (
        "" if plateau is None else " while the validation loss still improved"
    )
    done = 0  # steps completed
    skipped = 0
    running, count = 0.0, 0
    progress = ProgressBar("Training", steps, progressbar, loss="-", val="-", lr="-")
    started = time.perf_counter()
    try:
        module.train()
        for step in range(1, steps + 1):
            rate = set_learning_rate(step)
            batch = next(batches)
            if not _finite(batch):
                skipped += 1
            else:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(batch)
                if not torch.isfinite(loss):
                    skipped += 1
                else:
                    loss.backward()
                    nn.utils.clip_grad_norm_(params, clip_norm)
                    optimizer.step()
                    running += loss.item()
                    count += 1
            if skipped > max(10, step // 2):
                raise RuntimeError(
                    f"{skipped} of {step} training batches held NaN or inf, in the simulations "
                    "or the loss. Check the model's priors for values that make the likelihood "
                    "degenerate, or lower the learning rate."
                )
            if step % validate_every == 0 or step == steps:
                val = _validate(module, loss_fn, validation)
                module.train()
                history.step.append(start_step + step)
                history.loss.append(running / max(count, 1))
                history.val_loss.append(val)
                running, count = 0.0, 0
                if val < best:
                    best, best_step = val, start_step + step
                    best_state = copy.deepcopy(module.state_dict())
                progress.update(
                    step, loss=f"{history.loss[-1]:.3f}", val=f"{val:.3f}", lr=f"{rate:.1e}"
                )
                reason = plateau.update(val) if plateau is not None else None
                if reason is not None:
                    stop = f"{reason} (step {start_step + step})"
                    break
            else:
                progress.update(step)
            done = step
    except KeyboardInterrupt:
        stop = f"interrupted at step {start_step + done}"
        warnings.warn(
            f"Training interrupted (Ctrl-C) at step {start_step + done}; keeping the best "
            f"weights so far, from step {best_step} (validation loss {best:.4g}).",
            UserWarning,
            stacklevel=3,
        )
    finally:
        progress.close(
            f"Training stopped: {stop}. Best validation loss {best:.4g}, step {best_step}."
        )
        _log.info("Training stopped: %s", stop)
        module.load_state_dict(best_state)
        module.eval()
        history.skipped += skipped
        history.seconds += time.perf_counter() - started
        history.stops.append(stop)
    if skipped:
        warnings.warn(
            f"{skipped} training batches were skipped because they held NaN or inf.",
            UserWarning,
            stacklevel=3,
        )
    return history


@torch.no_grad()
def _validate(module, loss_fn, validation) -> float:
    """Validation loss; a list of batches (e.g. one per data size) gives their mean."""
    module.eval()
    sets = validation if isinstance(validation, list) else [validation]
    loss = sum(float(loss_fn(v)) for v in sets) / len(sets)
    return loss if math.isfinite(loss) else math.inf
