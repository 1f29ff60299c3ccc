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

from pymc_abi.core._arguments import flag
from pymc_abi.core._progress import ProgressBar
from pymc_abi.core.config import TrainingConfig
from pymc_abi.core.errors import DroppedSimulationsWarning, TrainingInterruptedWarning
from pymc_abi.training import _distributed

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

    def describe(self) -> str:
        """``"trained N steps, val loss L"`` or ``"untrained"``, for a ``repr``."""
        if not self.step:
            return "untrained"
        return f"trained {self.step[-1]} steps, val loss {self.val_loss[-1]:.3f}"


def _finite(batch) -> bool:
    if isinstance(batch, torch.Tensor):
        return bool(torch.isfinite(batch).all()) if batch.is_floating_point() else True
    if isinstance(batch, dict):
        return all(_finite(v) for v in batch.values())
    if isinstance(batch, list | tuple):
        return all(_finite(v) for v in batch)
    return True


class Plateau:
    """When to stop training, and the learning rate on the way.

    Training runs at the full learning rate until the validation loss (optionally smoothed
    by an exponential moving average) has not fallen below its best by more than
    ``min_delta`` for ``patience`` validations: a plateau, the network has learned what it
    can at that rate. The learning rate then decays to zero along a half cosine over
    ``anneal / (1 - anneal)`` times the steps trained so far (at least ``min_anneal``
    steps), and training stops. The decay settles the weights in the minimum the noisy
    high-rate phase found, which a constant rate never does. The schedule thereby fits
    the model: an easy posterior stops after a few hundred steps, a hard one trains on while
    it improves. If no plateau comes, the decay starts in time to end with the step budget,
    as a cosine schedule would.

    Parameters
    ----------
    patience : int or None
        Validations without improvement that make a plateau. ``None``: never stop early,
        decay over the last ``anneal`` of the budget.
    min_delta : float
        The least fall of the validation loss that counts as an improvement.
    anneal : float, default 0.3
        Fraction of all steps spent decaying the learning rate.
    min_anneal : int, default 200
        The fewest decay steps.
    smoothing : float, default 1.0
        Weight of the newest validation loss in the moving average (1: no smoothing).

    Examples
    --------
    >>> plateau = Plateau(patience=2, min_delta=0.1, anneal=0.5, min_anneal=10)
    >>> plateau.begin(steps=1000)
    >>> [plateau.update(loss, step) for loss, step in [(3.0, 10), (2.95, 20), (2.97, 30)]]
    [None, None, None]
    >>> plateau.anneal_steps, plateau.scale(30), plateau.scale(45), plateau.scale(60)
    (30, 1.0, 0.5, 0.0)
    """

    def __init__(
        self,
        patience: int | None,
        min_delta: float,
        anneal: float = TrainingConfig.anneal,
        min_anneal: int = 200,
        smoothing: float = 1.0,
    ):
        if not 0.0 < anneal < 1.0:
            raise ValueError(f"anneal must be in (0, 1), got {anneal}")
        self.patience = None if patience is None else int(patience)
        self.min_delta = float(min_delta)
        self.anneal, self.min_anneal = float(anneal), int(min_anneal)
        self.smoothing = float(smoothing)
        self.best = math.inf
        self.smoothed = math.nan
        self.since = 0
        self.steps = 0
        self.anneal_start: int | None = None  # step the decay started at
        self.anneal_steps = 0
        self.converged = False

    def begin(self, steps: int) -> None:
        """Start a run of at most ``steps`` steps (counted from 0)."""
        self.steps = int(steps)
        self.best, self.smoothed, self.since = math.inf, math.nan, 0
        self.anneal_start, self.anneal_steps, self.converged = None, 0, False

    def scale(self, step: int) -> float:
        """Learning-rate multiplier at ``step``: 1 before the decay, then a half cosine."""
        start = self.anneal_start
        if start is None:
            # no plateau yet: decay anyway so that it ends with the budget
            last = self.steps - max(1, min(self.steps // 2, round(self.anneal * self.steps)))
            if step <= last:
                return 1.0
            self.anneal_start, self.anneal_steps = last, self.steps - last
            start = last
        progress = min(1.0, max(0.0, (step - start) / self.anneal_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def update(self, loss: float, step: int) -> str | None:
        """Record the validation loss at ``step``; return why training stops, or ``None``."""
        if self.anneal_start is not None:
            if step >= self.anneal_start + self.anneal_steps and self.converged:
                return (
                    f"converged: the validation loss improved by less than "
                    f"{self.min_delta:.3g} in {self.patience} validations at step "
                    f"{self.anneal_start}; the learning rate then decayed to zero over "
                    f"{self.anneal_steps} steps"
                )
            return None
        if not math.isfinite(self.smoothed):
            self.smoothed = loss
        else:
            self.smoothed += self.smoothing * (loss - self.smoothed)
        if self.smoothed < self.best - self.min_delta:
            self.best, self.since = self.smoothed, 0
            return None
        self.best = min(self.best, self.smoothed)
        self.since += 1
        if self.patience is not None and self.since >= self.patience:
            length = max(self.min_anneal, math.ceil(self.anneal / (1 - self.anneal) * step))
            self.anneal_start, self.anneal_steps = step, min(length, self.steps - step)
            self.converged = True
            if self.anneal_steps <= 0:
                return self.update(loss, step)
        return None


def train(
    module: nn.Module,
    loss_fn: Callable[[Any], torch.Tensor],
    batches: Iterator[Any],
    validation: Any,
    *,
    steps: int,
    validate_every: int,
    history: History,
    learning_rate: float = TrainingConfig.learning_rate,
    weight_decay: float = TrainingConfig.weight_decay,
    warmup: int = TrainingConfig.warmup,
    clip_norm: float = TrainingConfig.clip_norm,
    patience: int | None = TrainingConfig.patience,
    min_delta: float = 0.0,
    anneal: float = TrainingConfig.anneal,
    progressbar: bool = True,
    distributed: bool = False,
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
    learning_rate, weight_decay, warmup, clip_norm
        As in :class:`~pymc_abi.TrainingConfig` (its defaults): AdamW settings; the
        learning rate rises linearly over the first ``warmup`` steps (at most a tenth of
        the budget), then follows :class:`Plateau`; gradient norms are clipped to
        ``clip_norm``.
    patience, min_delta, anneal
        :class:`Plateau`: after ``patience`` validations without an improvement of more
        than ``min_delta``, the learning rate decays to zero over the fraction ``anneal``
        of all steps, and training stops. ``patience=None`` trains for the whole budget
        (decaying over its last ``anneal``).
    progressbar
        Show a progress bar with the losses, the learning rate and, at the end, why
        training stopped (works in notebooks).
    distributed
        Train data-parallel in the initialized default process group: rank 0's weights and
        buffers are broadcast first, ``module`` is wrapped in
        ``torch.nn.parallel.DistributedDataParallel`` (gradients averaged over the ranks at
        every step), a batch is skipped on every rank when it is not finite on one, and the
        validation loss is averaged over the ranks, so that every rank takes the same
        decisions and ends with the same weights. Only rank 0 shows the progress bar and
        warns. ``batches`` are this rank's own.

    Notes
    -----
    Ctrl-C stops training cleanly, with a warning; the best weights so far are kept, and
    ``history.stops`` records how the run ended. A batch with NaN or inf,
    or whose loss is not finite, is skipped and counted; if most batches are, training stops
    with an error.
    """
    ranks = _distributed.group(init=False) if distributed else None
    main = ranks is None or ranks.main
    progressbar = flag("progressbar", progressbar) and main
    step_loss = loss_fn
    if ranks is not None:
        step_loss = _data_parallel(module, loss_fn)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    warmup = max(1, min(int(warmup), steps // 10))
    plateau = Plateau(patience, min_delta, anneal)
    plateau.begin(steps)

    def set_learning_rate(step: int) -> float:
        rate = learning_rate * min(1.0, step / warmup) * plateau.scale(step)
        for group in optimizer.param_groups:
            group["lr"] = rate
        return rate

    start_step = history.step[-1] if history.step else 0
    best_state = copy.deepcopy(module.state_dict())
    device = next(iter(params)).device if params else torch.device("cpu")

    def validate() -> float:
        val = _validate(module, loss_fn, validation)
        if ranks is not None:  # the same decisions on every rank
            val = _distributed.all_reduce([val], device)[0] / ranks.world
        return val if math.isfinite(val) else math.inf

    best = validate()
    best_step = start_step
    stop = f"the step budget ({steps} steps) was reached" + (
        "" if patience is None else " while the validation loss still improved"
    )
    done = 0  # steps completed
    skipped = 0
    running, count = 0.0, 0
    # stopping on its own, training takes an unknown share of the budget: no time estimate
    progress = ProgressBar(
        "Training",
        steps,
        progressbar,
        remaining=patience is None,
        loss="-",
        val="-",
        lr="-",
    )
    started = time.perf_counter()
    try:
        module.train()
        for step in range(1, steps + 1):
            rate = set_learning_rate(step)
            value = _step(next(batches), step_loss, optimizer, params, clip_norm, ranks, device)
            if value is None:
                skipped += 1
            else:
                running += value
                count += 1
            if skipped > max(10, step // 2):
                raise RuntimeError(
                    f"{skipped} of {step} training batches held NaN or inf, in the simulations "
                    "or the loss. Check the model's priors for values that make the likelihood "
                    "degenerate, or lower the learning rate."
                )
            if step % validate_every == 0 or step == steps:
                val = validate()
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
                reason = plateau.update(val, step)
                if reason is not None:
                    stop = f"{reason} (step {start_step + step})"
                    break
            else:
                progress.update(step)
            done = step
    except KeyboardInterrupt:
        stop = f"interrupted at step {start_step + done}"
        if main:
            warnings.warn(
                f"Training interrupted (Ctrl-C) at step {start_step + done}; keeping the "
                f"best weights so far, from step {best_step} (validation loss {best:.4g}).",
                TrainingInterruptedWarning,
                stacklevel=3,
            )
    finally:
        progress.close(
            f"Training stopped: {stop}. Best validation loss {best:.4g}, step {best_step}."
        )
        module.load_state_dict(best_state)
        module.eval()
        _record_end(history, stop, skipped, time.perf_counter() - started, main)
    if skipped and main:
        warnings.warn(
            f"{skipped} training batches were skipped because they held NaN or inf.",
            DroppedSimulationsWarning,
            stacklevel=3,
        )
    return history


def _step(batch, step_loss, optimizer, params, clip_norm: float, ranks, device) -> float | None:
    """One optimizer step on ``batch``: its loss (averaged over the ranks under DDP), or
    ``None`` where the batch or its loss is not finite, and no step was taken."""
    if ranks is not None:
        # every rank must run backward (DDP averages the gradients there) and step
        # together: skip a batch on all ranks when it is not finite on one
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss(batch)
        loss.backward()
        ok, value = _distributed.all_reduce(
            [float(_finite(batch) and bool(torch.isfinite(loss))), loss.item()],
            device,
        )
        if ok < ranks.world:
            return None
        nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        return value / ranks.world
    if not _finite(batch):
        return None
    optimizer.zero_grad(set_to_none=True)
    loss = step_loss(batch)
    if not torch.isfinite(loss):
        return None
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    return loss.item()


def _record_end(history: History, stop: str, skipped: int, seconds: float, main: bool) -> None:
    """Log why a run stopped (on the main rank), and add it, its skipped batches and its
    time to ``history``."""
    if main:
        _log.info("Training stopped: %s", stop)
    history.skipped += skipped
    history.seconds += seconds
    history.stops.append(stop)


def _data_parallel(module: nn.Module, loss_fn) -> Callable[[Any], torch.Tensor]:
    """``loss_fn`` through ``DistributedDataParallel``, after broadcasting rank 0's state.

    DDP wraps a module's ``forward``; the loss is a method of ``module``, so a thin module
    that holds ``module`` and calls ``loss_fn`` is wrapped. Its parameters are
    ``module``'s, which DDP's hooks average over the ranks in ``backward``.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with torch.no_grad():  # identical start: weights and standardization statistics
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)
    device = next(module.parameters()).device
    wrapped = DistributedDataParallel(
        _LossModule(module, loss_fn),
        device_ids=[device] if device.type == "cuda" else None,
    )
    return wrapped


class _LossModule(nn.Module):
    def __init__(self, module: nn.Module, loss_fn):
        super().__init__()
        self.module, self._loss_fn = module, loss_fn

    def forward(self, batch):
        return self._loss_fn(batch)


@torch.no_grad()
def _validate(module, loss_fn, validation) -> float:
    """Validation loss; a list of batches (e.g. one per data size) gives their mean."""
    module.eval()
    sets = validation if isinstance(validation, list) else [validation]
    loss = sum(float(loss_fn(v)) for v in sets) / len(sets)
    return loss if math.isfinite(loss) else math.inf
