"""Configuration of an amortizer, written once: the networks and the training run.

:class:`NetworkConfig` and :class:`TrainingConfig` are the single source of the defaults
and of their validation. :class:`~pymc_abi.Amortizer`, :meth:`~pymc_abi.Amortizer.fit`,
:func:`~pymc_abi.fit` and :meth:`~pymc_abi.Amortizer.load` all build them, from the same
keyword arguments, so the options cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pymc_abi.core._arguments import positive, real

__all__ = ["NetworkConfig", "TrainingConfig", "split_options"]

#: the flow's preconditioners (``NetworkConfig.preconditioner``)
PRECONDITIONERS = (None, "laplace")

#: The kinds of trained object whose defaults differ: ``"posterior"``
#: (:class:`~pymc_abi.Amortizer`), ``"two_level"`` (:class:`~pymc_abi.TwoLevelAmortizer`),
#: ``"comparison"`` (:class:`~pymc_abi.ModelComparator`). Each class names its own as ``KIND``.
KINDS = ("posterior", "two_level", "comparison")

#: The default size of the data summary, per kind: ``max(per_parameter * D, least)`` for
#: ``D`` parameters, as ``(least, per_parameter)``. A two-level summary counts the globals
#: and one group's locals; a comparison classifies, so its size does not grow with a model.
SUMMARY_FEATURES = {"posterior": (16, 2), "two_level": (32, 2), "comparison": (32, 0)}

#: The default least improvement of the validation loss (nats) that counts, per kind, as
#: ``(least, per_parameter)``: ``max(per_parameter * D, least)``. A posterior's loss sums
#: over its ``D`` parameters. A two-level loss is per parameter already and averages the two
#: levels, so the globals' share of an improvement is diluted by the locals' (on large
#: designs the globals learn in bursts after long slow stretches; a longer ``patience`` is
#: what lets them: see the multilevel docs). A comparison's loss is a cross-entropy.
MIN_DELTA = {"posterior": (0.01, 0.005), "two_level": (0.001, 0.0), "comparison": (0.005, 0.0)}

#: Simulations drawn when an object is built, to choose its summaries and fit the
#: standardization of its networks' inputs, per kind. A two-level simulation holds many
#: groups; a comparison's pilot is shared among its models.
PILOT_SIMULATIONS = {"posterior": 4096, "two_level": 2048, "comparison": 1024}

#: Online training, when ``steps`` and ``validate_every`` are not given: the most steps,
#: and the steps between validations.
ONLINE_STEPS = 10_000
ONLINE_VALIDATE_EVERY = 100


def _per_kind(table: Mapping[str, tuple[float, float]], kind: str, ndim: int) -> float:
    if kind not in table:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
    least, per_parameter = table[kind]
    return max(least, per_parameter * ndim)


@dataclass(frozen=True)
class NetworkConfig:
    """The networks of an amortizer.

    Parameters
    ----------
    inference_network : str or InferenceNetwork, default "nsf"
        ``"nsf"`` (spline coupling flow), ``"coupling"`` (affine coupling, RealNVP-style),
        ``"maf"`` (masked autoregressive affine), ``"nsf_ar"`` (autoregressive splines),
        ``"flow_matching"``, or a built :class:`~pymc_abi.networks.InferenceNetwork`.
    summary_network : str, nn.Module or dict, optional
        ``"identity"``, ``"mlp"``, ``"deepset"``, ``"set_transformer"`` or
        ``"time_series"``, a module, or a dict naming one per observed variable (and per
        covariate that is not row-aligned). A module needs an ``output_features``
        attribute; it receives standardized data as ``[B, P]`` (flattened), or as
        ``[B, N, F]`` when the first dim varies. By default: ``"time_series"`` for
        time-series distributions and data along ``time_dim``; ``"deepset"`` for iid
        observations (or rows aligned with per-dataset covariates); the identity for tiny
        data; an MLP otherwise.
    summary_features : int, optional
        Size of the data summary; default ``max(2 * D, 16)`` for ``D`` parameters
        (:meth:`summary_width` gives every kind's default).
    hidden_features : sequence of int, default (128, 128)
        Hidden layer widths of the flow's conditioners.
    transforms : int, optional
        Number of flow transforms (default depends on the flow; none for flow matching).
    recurrent_steps : int or None, default 64
        The most time steps the GRU of a ``"time_series"`` summary reads: longer series are
        averaged over windows of convolutional features first (5x faster training on 200
        steps). ``None`` reads every step (amortizers saved before this option).

    time_series_features : int, optional
        Channels of a ``"time_series"`` summary's convolutions and size of its GRU state;
        default ``max(32, 2 * summary_features)`` (32 for up to 8 parameters: a GRU of 64
        units costs twice as much per training step). Amortizers saved before this option
        have 64.
    full_resolution_layers : int or None, default 1
        The convolutions of a ``"time_series"`` summary that run at every time step before
        the windows of ``recurrent_steps`` are averaged; the rest, and the GRU, run on the
        windows (2.5x faster training on 200 steps than averaging after all of them).
        ``None``: all of them (amortizers saved before this option).
    preconditioner : {None, "laplace"}, default None
        ``"laplace"``: the flow learns each posterior relative to a Laplace fit of its
        dataset on the model's exact density (a centre and scale from damped Newton steps,
        :mod:`pymc_abi.model.preconditioner`), for training simulations and the user's data alike,
        so that posteriors far narrower than the prior (many rows, small noise) are
        resolved. Needs a model with a density; costs a fit of every simulation in training
        (about 2-4 ms each for a linear regression, one thread).

    Examples
    --------
    >>> NetworkConfig(hidden_features=[64, 64]).hidden_features
    (64, 64)
    """

    inference_network: Any = "nsf"
    summary_network: Any = None
    summary_features: int | None = None
    hidden_features: tuple[int, ...] = (128, 128)
    transforms: int | None = None
    recurrent_steps: int | None = 64
    full_resolution_layers: int | None = 1
    time_series_features: int | None = None
    preconditioner: str | None = None

    def __post_init__(self):
        if self.preconditioner not in PRECONDITIONERS:
            raise ValueError(
                f"preconditioner must be one of {PRECONDITIONERS}; got {self.preconditioner!r}."
            )
        hidden = self.hidden_features
        if isinstance(hidden, int | str) or not all(
            isinstance(h, int | np.integer) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ValueError(
                "hidden_features must be a sequence of positive layer widths, e.g. (128, 128); "
                f"got {hidden!r}."
            )
        for name in ("summary_features", "transforms", "recurrent_steps", "time_series_features"):
            object.__setattr__(self, name, positive(name, getattr(self, name), optional=True))
        layers = positive(
            "full_resolution_layers", self.full_resolution_layers, optional=True, minimum=0
        )
        object.__setattr__(self, "full_resolution_layers", layers)
        transforms = self.transforms
        if transforms is not None and self.inference_network == "flow_matching":
            raise ValueError(
                "transforms= sets the number of flow transforms; flow matching has none "
                "(its size is hidden_features)."
            )
        object.__setattr__(self, "hidden_features", tuple(int(h) for h in hidden))

    @property
    def named(self) -> bool:
        """Whether the inference network is named (and so can be saved and rebuilt)."""
        return isinstance(self.inference_network, str)

    def flow_options(self) -> dict[str, Any]:
        """Keyword arguments for a named inference network."""
        options: dict[str, Any] = {"hidden_features": self.hidden_features}
        if self.transforms is not None:
            options["transforms"] = self.transforms
        return options if self.named else {}

    @classmethod
    def from_saved(cls, config: Mapping[str, Any]) -> NetworkConfig:
        """The configuration in a saved amortizer's ``config`` dict."""
        return cls(
            inference_network=config["inference_network"],
            summary_network=dict(config["summary_kinds"]),
            summary_features=config["summary_features"],
            hidden_features=tuple(config["hidden_features"]),
            transforms=config["transforms"],
            # files saved before the option read every step
            recurrent_steps=config.get("recurrent_steps"),
            # files saved before the option averaged the windows after every convolution
            full_resolution_layers=config.get("full_resolution_layers"),
            # files saved before the option: the summary's fixed width
            time_series_features=config.get("time_series_features", 64),
            # files saved before the option: no preconditioner
            preconditioner=config.get("preconditioner"),
        )

    def summary_width(self, kind: str, ndim: int) -> int:
        """The size of the data summary: ``summary_features``, or the default of ``kind``
        (one of :data:`KINDS`) for ``ndim`` parameters (:data:`SUMMARY_FEATURES`).

        Examples
        --------
        >>> config = NetworkConfig()
        >>> config.summary_width("posterior", 3), config.summary_width("posterior", 12)
        (16, 24)
        >>> NetworkConfig(summary_features=8).summary_width("comparison", 12)
        8
        """
        default = int(_per_kind(SUMMARY_FEATURES, kind, ndim))
        return default if self.summary_features is None else self.summary_features

    def time_series_width(self, summary_features: int) -> int:
        """Width of a time-series summary, for a summary of ``summary_features``."""
        return self.time_series_features or max(32, 2 * int(summary_features))


@dataclass(frozen=True)
class TrainingConfig:
    """One training run.

    Parameters
    ----------
    steps : int, optional
        The most optimizer steps when training online (default 10,000); offline, it
        overrides ``epochs``. Training usually stops well before: see ``patience``.
    epochs : int, default 40
        The most passes over the bank when training offline.
    batch_size : int, default 256
    learning_rate : float, default 1e-3
    weight_decay : float, default 1e-4
        AdamW settings; the learning rate warms up over ``warmup`` steps, stays until the
        validation loss stops improving, then decays to zero (see ``patience``).
    warmup : int, default 200
        Steps over which the learning rate rises linearly from zero (at most a tenth of
        the budget).
    clip_norm : float, default 1.5
        The largest norm of a step's gradient; larger ones are scaled down to it.
    validation_simulations : int, default 1024
        Held-out simulations for validation and stopping (taken from the end of the
        bank when training offline).
    validate_every : int, optional
        Steps between validations (default: 100 online, one epoch offline).
    patience : int or None, default 5
        Validations without an improvement of more than ``min_delta`` that make a
        plateau: the learning rate then decays to zero along a half cosine over the
        fraction ``anneal`` of all steps (with 0.3: 3/7 of the steps so far), and training
        stops (the best weights are kept, and ``history.stops`` says why). Without a
        plateau the decay ends with the step budget, over its last ``anneal``. ``None``
        trains for the whole budget.
    min_delta : float, optional
        The least improvement of the validation loss (nats) that counts; by default
        ``0.005`` per parameter, at least ``0.01`` (a two-level amortizer's loss is per
        parameter already, and its globals learn slowly: ``0.001``; a comparator's:
        ``0.005``). :meth:`min_delta_for` gives it; :data:`MIN_DELTA` says why.
    anneal : float, default 0.3
        The fraction of all steps over which the learning rate decays to zero, in (0, 1).
    chunk_size : int, default 8192
        Simulations read from a bank on disk at a time.

    Examples
    --------
    >>> TrainingConfig(steps=500).batch_size
    256
    >>> TrainingConfig().budget(None), TrainingConfig(epochs=3).budget(50)
    ((10000, 100), (150, 50))
    """

    steps: int | None = None
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    validation_simulations: int = 1024
    validate_every: int | None = None
    patience: int | None = 5
    min_delta: float | None = None
    chunk_size: int = 8192
    warmup: int = 200
    clip_norm: float = 1.5
    anneal: float = 0.3

    def __post_init__(self):
        for name in ("steps", "validate_every", "patience"):
            object.__setattr__(self, name, positive(name, getattr(self, name), optional=True))
        for name in ("epochs", "batch_size", "validation_simulations", "chunk_size", "warmup"):
            object.__setattr__(self, name, positive(name, getattr(self, name)))
        for name in ("learning_rate", "weight_decay", "clip_norm", "anneal"):
            object.__setattr__(self, name, real(name, getattr(self, name)))
        if not self.clip_norm > 0:
            raise ValueError(
                f"clip_norm must be positive (the largest gradient norm), got {self.clip_norm!r}."
            )
        if not 0 < self.anneal < 1:
            raise ValueError(
                f"anneal must be in (0, 1) (the fraction of the steps over which the learning "
                f"rate decays), got {self.anneal!r}."
            )
        if self.min_delta is not None:
            object.__setattr__(self, "min_delta", real("min_delta", self.min_delta))
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay!r}.")
        if self.min_delta is not None and not self.min_delta >= 0:
            raise ValueError(
                f"min_delta must be non-negative (nats of validation loss), got "
                f"{self.min_delta!r}: a negative one counts a worse loss as an improvement."
            )

    def budget(self, steps_per_epoch: int | None) -> tuple[int, int]:
        """The run's most steps and the steps between validations: online
        (``steps_per_epoch=None``) ``steps`` or :data:`ONLINE_STEPS` and ``validate_every``
        or :data:`ONLINE_VALIDATE_EVERY`; offline ``steps`` or ``epochs`` passes over the
        bank, validated once per pass unless ``validate_every`` says otherwise."""
        if steps_per_epoch is None:
            return self.steps or ONLINE_STEPS, self.validate_every or ONLINE_VALIDATE_EVERY
        steps = int(self.steps or self.epochs * steps_per_epoch)
        return steps, self.validate_every or int(steps_per_epoch)

    def min_delta_for(self, kind: str, ndim: int) -> float:
        """``min_delta``, or the default of ``kind`` (one of :data:`KINDS`) for ``ndim``
        parameters (:data:`MIN_DELTA`).

        Examples
        --------
        >>> config = TrainingConfig()
        >>> config.min_delta_for("posterior", 4), config.min_delta_for("two_level", 4)
        (0.02, 0.001)
        """
        if self.min_delta is not None:
            return self.min_delta
        return float(_per_kind(MIN_DELTA, kind, ndim))


_NETWORK = {f.name for f in dataclasses.fields(NetworkConfig)}
_TRAINING = {f.name for f in dataclasses.fields(TrainingConfig)}


def split_options(
    options: Mapping[str, Any],
    network: NetworkConfig | None = None,
    training: TrainingConfig | None = None,
) -> tuple[NetworkConfig, TrainingConfig]:
    """Keyword options over the given (or default) configurations; unknown names fail."""
    unknown = sorted(set(options) - _NETWORK - _TRAINING)
    if unknown:
        raise TypeError(
            f"Unknown option(s) {unknown}: options are the fields of NetworkConfig "
            f"({sorted(_NETWORK)}) and TrainingConfig ({sorted(_TRAINING)})."
        )
    for name, given, kind in (
        ("network", network, NetworkConfig),
        ("training", training, TrainingConfig),
    ):
        if given is not None and not isinstance(given, kind):
            raise TypeError(
                f"{name} must be a {kind.__name__} (or None), got {type(given).__name__}: "
                f"write {name}=abi.{kind.__name__}(...), or pass its fields as keyword options."
            )
    net = {k: v for k, v in options.items() if k in _NETWORK}
    train = {k: v for k, v in options.items() if k in _TRAINING}
    return (
        dataclasses.replace(network or NetworkConfig(), **net),
        dataclasses.replace(training or TrainingConfig(), **train),
    )
