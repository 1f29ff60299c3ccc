r"""The training loop: online or offline, AdamW, cosine schedule with warm-up, early stopping.

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


def _schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(
    module: nn.Module,
    loss_fn: Callable[[Any], torch.Tensor],
    batches: Iterator[Any],
    validation: Any,
    *,
    steps: int,
    validate_every: int,
    history: History,
    learning_rate: float = 5e-4,
    weight_decay: float = 1e-4,
    warmup: float = 0.05,
    clip_norm: float = 1.5,
    patience: int | None = 10,
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
        Number of optimizer steps.
    validate_every
        Steps between validations (and between records in ``history``).
    history
        Appended to; ``step`` continues from its last entry.
    learning_rate, weight_decay
        AdamW settings.
    warmup
        Fraction of steps with a linear warm-up before the cosine decay.
    clip_norm
        Gradient norm clipping.
    patience
        Stop after this many validations without improvement (``None``: never).
    progressbar
        Show a progress bar with the losses (works in notebooks).

    Notes
    -----
    Ctrl-C stops training cleanly, with a warning; the best weights so far are kept, and
    ``history.stops`` records how the run ended. A batch with NaN or inf,
    or whose loss is not finite, is skipped and counted; if most batches are, training stops
    with an error.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(steps, max(1, int(warmup * steps)))
    )
    start_step = history.step[-1] if history.step else 0
    best_state = copy.deepcopy(module.state_dict())
    best = _validate(module, loss_fn, validation)
    best_step = start_step
    since_best = 0
    stop = f"completed at step {start_step + steps}"
    done = 0  # steps completed
    skipped = 0
    running, count = 0.0, 0
    progress = ProgressBar("Training", steps, progressbar, loss="-", val="-")
    started = time.perf_counter()
    try:
        module.train()
        for step in range(1, steps + 1):
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
                    scheduler.step()
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
                    best, since_best, best_step = val, 0, start_step + step
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    since_best += 1
                progress.update(step, loss=f"{history.loss[-1]:.3f}", val=f"{val:.3f}")
                if patience is not None and since_best >= patience:
                    stop = (
                        f"early stopping at step {start_step + step}: no improvement in "
                        f"{patience} validations"
                    )
                    _log.info("Training stopped: %s", stop)
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
        progress.close()
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
