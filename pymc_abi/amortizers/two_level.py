"""Two-level amortization of multilevel models: any number of groups, each of any size.

:class:`TwoLevelAmortizer` is an :class:`~pymc_abi.Amortizer` whose networks follow the
model's hierarchy (:mod:`pymc_abi.data.hierarchy` finds it, :mod:`pymc_abi.networks.two_level`
holds the networks): a global flow conditioned on a summary of all groups, and one local
flow, shared by the groups, conditioned on the global draw and its group's summary. Its
draws are laid out as the flat amortizer's, in the model's parameter space at the
dataset's number of groups, so that results, importance sampling with the model's exact
density, the NUTS fallback and SBC work unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pymc as pm
import torch

from pymc_abi.amortizers.amortizer import Amortizer, register_saved_kind
from pymc_abi.core._arguments import MAX_LENGTH, covariate_functions, int_range
from pymc_abi.core._memory import release_memory
from pymc_abi.core.config import PILOT_SIMULATIONS, NetworkConfig, TrainingConfig
from pymc_abi.core.errors import NotHierarchicalError, NotHierarchicalWarning
from pymc_abi.core.seeds import RandomSeed, SeedTree, scoped_torch_seed, torch_generator
from pymc_abi.data.hierarchy import GroupedDataSpec, Hierarchy, find_hierarchy
from pymc_abi.data.spec import DataSpec
from pymc_abi.inference import sampling
from pymc_abi.inference.density import ModelDensity
from pymc_abi.inference.results import Layout
from pymc_abi.model.simulator import ModelSimulator
from pymc_abi.networks.two_level import TwoLevelNetwork
from pymc_abi.training.sources import DropCounter

__all__ = ["TwoLevelAmortizer"]

# rows (observations) per training batch: the batch (batch_size datasets) shrinks for large
# designs, so that a step costs about the same whatever the number of groups, but not
# below MIN_BATCH datasets (the global flow learns from one example per dataset)
ROWS_PER_BATCH = 65_536
MIN_BATCH = 64
# rows (draws x groups) per pass of the local flow when sampling (sampling.ROWS_PER_PASS
# counts the flat flow's rows: draws x datasets)
LOCAL_ROWS_PER_PASS = 65_536
# saved as config["two_level"]: files of another version hold other networks
NETWORK_VERSION = 2


class TwoLevelAmortizer(Amortizer):
    """Amortized posterior of a multilevel model, for any number of groups.

    Made by :func:`pymc_abi.fit` with ``groups=``. Sampling, importance sampling, the NUTS
    fallback, SBC, saving and loading work as for :class:`~pymc_abi.Amortizer`.

    Parameters
    ----------
    model : pm.Model, optional
        The model; ``None`` takes it from the context.
    groups : str, default "auto"
        The group dim (a coord of the model), or ``"auto"`` to find the one dim that leads
        the dims of some free variables.
    group_sizes : (int, int) or callable, optional
        Observations per group while training, for models whose observations are assigned
        to groups by an integer ``pm.Data`` index: a range (drawn uniformly per group) or
        ``fn(rng, n_groups)`` returning the sizes. By default the range of the model's data.
    dim_lengths : dict, optional
        ``{group_dim: (low, high)}``: the numbers of groups trained on (default: the
        model's number of groups only).
    covariates : dict, optional
        Covariates drawn per dataset, ``{"x": fn(rng, n, dim_lengths)}`` as for
        :class:`~pymc_abi.Amortizer`; every ``pm.Data`` per row or per group (except the
        group index, which the design sets) needs one.
    network : NetworkConfig, optional
        ``inference_network`` (a named flow, for both levels), ``summary_features``,
        ``hidden_features`` and ``transforms`` (of the flows) apply.
    device, random_seed
        As for :class:`~pymc_abi.Amortizer`.
    data : dict, optional
        Deprecated: the old name of ``covariates`` (a :class:`FutureWarning`).
    **network_options
        Fields of :class:`NetworkConfig`.

    Attributes
    ----------
    hierarchy : Hierarchy
        The group dim, local and global variables, the group index and the training
        ranges.
    """

    KIND = "two_level"
    _can_precondition = False  # no preconditioner for the two-level networks yet

    def __init__(
        self,
        model: pm.Model | None = None,
        *,
        groups: str = "auto",
        group_sizes=None,
        network: NetworkConfig | None = None,
        dim_lengths: Mapping[str, int | tuple[int, int]] | None = None,
        covariates: Mapping[str, Callable | None] | None = None,
        device: str | torch.device | None = None,
        random_seed: RandomSeed = None,
        data: Mapping[str, Callable | None] | None = None,
        _pilot: int = PILOT_SIMULATIONS["two_level"],
        **network_options,
    ):
        covariates = covariate_functions(covariates, data)
        config = self._set_up(model, network, network_options, device, random_seed)
        _check_network(config)
        found = find_hierarchy(self.model, groups, covariates)
        group_dim = found["group_dim"]
        ranges = dict(dim_lengths or {})
        model_groups = int(self.model.dim_lengths[group_dim].eval())
        n_groups = int_range(f"dim_lengths['{group_dim}']", ranges.pop(group_dim, model_groups))
        if found["row_dim"] in ranges:
            raise ValueError(
                f"The length of dim '{found['row_dim']}' follows from the group sizes; give "
                "group_sizes=(low, high) instead."
            )
        self.simulator = ModelSimulator(
            self.model, random_seed=self._seeds.child(), varying_dims=[group_dim]
        )
        self.parameters = self.simulator.parameters
        self.hierarchy = Hierarchy.from_model(self.parameters, found, n_groups, group_sizes)
        h = self.hierarchy
        spec_ranges = {**ranges, group_dim: h.n_groups}
        if h.row_dim is not None:
            if callable(h.group_sizes):
                rows = (1, MAX_LENGTH)  # any number of rows a function draws
            else:
                rows = (max(1, h.n_groups[0] * h.group_sizes[0]), h.n_groups[1] * h.group_sizes[1])
            spec_ranges[h.row_dim] = rows
        covariates = dict(covariates or {})
        if h.index is not None:
            if covariates.get(h.index) is not None:
                raise ValueError(
                    f"covariates['{h.index}']: the group index is set by the design (the number "
                    "of groups and group_sizes), not drawn by a function; leave it out."
                )
            covariates[h.index] = None  # set by the design, not drawn
        spec = DataSpec.from_model(self.simulator, dim_lengths=spec_ranges, covariates=covariates)
        self.data_spec = GroupedDataSpec.wrap(spec, h)
        self._density = ModelDensity(self.data_spec)
        self._layout = Layout(self.model)
        # two groups of one row each: the shapes the networks are built for (covariates
        # from the model where their functions are not known: a loaded amortizer)
        design = (2, None if h.index is None else np.arange(2))
        covariates = self.data_spec.pilot_covariates(
            4, h.lengths(*design), skip=[] if h.index is None else [h.index]
        )
        pilot = self.data_spec.simulate(
            4, self._seeds.child(), design=design, covariates=covariates
        )
        inputs = h.network_inputs(pilot.values, 4, 2, _index(pilot, h))
        row_features = inputs["rows"].shape[-1] if "rows" in inputs else 0
        group_features = inputs["groups"].shape[-1] if "groups" in inputs else 0
        summary = config.summary_width(self.KIND, h.global_ndim + h.local_ndim)
        self._summary_features = summary
        with scoped_torch_seed(self._seeds.child(), self.device):
            self.net = TwoLevelNetwork(
                row_features,
                group_features,
                h.global_ndim,
                h.local_ndim,
                inference_network=config.inference_network,
                summary_features=summary,
                flow_options=config.flow_options(),
            )
        if _pilot:
            batches = [
                self._batch(self.data_spec, _pilot, seed, DropCounter(), torch.device("cpu"))
                for seed in np.random.SeedSequence(self._seeds.child()).generate_state(4)
            ]
            self.net.fit_standardization(
                torch.cat([b[0][0] for b in batches]),
                torch.cat([b[0][1].reshape(-1, h.local_ndim) for b in batches])[:, None],
                {
                    key: torch.cat([b[1][key].reshape(-1, b[1][key].shape[-1]) for b in batches])
                    for key in ("rows", "groups")
                    if key in batches[0][1]
                },
            )
        self.net.to(self.device)

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> dict:
        net, h = self.network_config, self.hierarchy
        return {
            "two_level": NETWORK_VERSION,
            "inference_network": net.inference_network,
            "summary_kinds": {},  # the two-level summaries are fixed
            "summary_features": self._summary_features,
            "hidden_features": list(net.hidden_features),
            "transforms": net.transforms,
            "groups": h.group_dim,
            "n_groups": list(h.n_groups),
            # a function is not saved: loading without it skips the check of group sizes
            "group_sizes": "function" if callable(h.group_sizes) else _list(h.group_sizes),
            # as the data spec has them (the model check on load reads them), group and
            # row dims and the group index included
            "dim_lengths": {k: list(v) for k, v in self.data_spec.dim_ranges.items()},
            "covariates": list(self.data_spec.covariates),
            "index": h.index,
            "row_dim": h.row_dim,
            "time_dim": None,
        }

    def __repr__(self) -> str:
        h = self.hierarchy
        trained = self.history.describe()
        return (
            f"TwoLevelAmortizer(groups={h.group_dim!r} in {list(h.n_groups)}, "
            f"global={list(h.global_values)}, local={list(h.local_values)}, "
            f"index={h.index!r}, {trained}, device={self.device})"
        )

    # ------------------------------------------------------------------ training
    @staticmethod
    def _batch(spec: GroupedDataSpec, n: int, seed: int, dropped: DropCounter, device, groups=None):
        """``n`` simulations of one design (fewer for large designs) as network tensors."""
        h = spec.hierarchy
        rng = np.random.default_rng(seed)
        design = h.draw_design(rng, groups)
        if design[1] is not None:
            n = min(n, max(MIN_BATCH, ROWS_PER_BATCH // max(len(design[1]), 1)))
        sim = spec.simulate(n, int(rng.integers(2**31)), design=design)
        z, values = dropped.keep(sim.z, sim.values, sim.finite)
        n_groups = sim.lengths[h.group_dim]
        z_global, z_local = h.split(z, n_groups)
        inputs = h.network_inputs(values, len(z), n_groups, design[1])
        data = {k: torch.as_tensor(v, device=device) for k, v in inputs.items()}
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        return (as_tensor(z_global), as_tensor(z_local)), data

    def _source(self, simulations, cfg: TrainingConfig, dropped, seeds, ranks, rank_seeds):
        if simulations is not None:
            raise ValueError(
                "The two-level amortizer trains online (simulations=None): each batch draws "
                "a new design (number of groups, observations per group)."
            )
        if ranks is not None:
            raise ValueError("The two-level amortizer does not train data-parallel yet.")
        return _TwoLevelSource(self, seeds, dropped, cfg)

    # ------------------------------------------------------------------ inference
    def _inputs(self, dataset) -> dict[str, torch.Tensor]:
        h = self.hierarchy
        n_groups, index = self.data_spec.design_of(dataset)
        values = {n: np.asarray(dataset[n])[None] for n in (*h.row_names, *h.group_names)}
        inputs = h.network_inputs(values, 1, n_groups, index)
        return {k: torch.as_tensor(v, device=self.device) for k, v in inputs.items()}

    def embed(self, datasets: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        """The global summary (the global flow's context) of datasets (checked as
        :meth:`sample` checks them)."""
        datasets, _ = self.data_spec.datasets(
            [datasets] if isinstance(datasets, Mapping) else list(datasets)
        )
        self.net.eval()
        with torch.no_grad():
            out = [self.net.summaries(self._inputs(d))[0] for d in datasets]
        return torch.cat(out).double().cpu().numpy()

    @torch.no_grad()
    def _conditioning(self, dataset):
        """The dataset's context and per-group summaries."""
        return self.net.summaries(self._inputs(dataset))

    @torch.no_grad()
    def _draw(self, datasets, draws: int, seed: int, conditioned=None):
        """Flat draws in the model's layout at each dataset's number of groups, and their
        log densities: arrays ``(K, draws, D)`` when every dataset has as many groups, else
        lists. ``conditioned``: :meth:`_conditioning` of the one dataset, where known."""
        self.net.eval()
        h = self.hierarchy
        generator = torch_generator(seed, self.device)
        zs, lqs = [], []
        for dataset in datasets:
            context, summaries = conditioned or self._conditioning(dataset)
            n_groups = summaries.shape[1]
            step = max(1, LOCAL_ROWS_PER_PASS // max(n_groups, 1))
            parts_g, parts_l, parts_q = [], [], []
            for start in range(0, draws, step):
                n = min(step, draws - start)
                z_global, z_local, lq = self.net.sample_and_log_prob(
                    n, context, summaries, generator
                )
                parts_g.append(z_global.double().cpu().numpy())
                parts_l.append(z_local.double().cpu().numpy())
                parts_q.append(lq.double().cpu().numpy())
                release_memory()
            zs.append(h.join(np.concatenate(parts_g), np.concatenate(parts_l)))
            lqs.append(np.concatenate(parts_q))
        if len({z.shape for z in zs}) == 1:
            return np.stack(zs), np.stack(lqs)
        return zs, lqs

    @torch.no_grad()
    def _log_q(self, z: np.ndarray, dataset, conditioned=None) -> np.ndarray:
        n_groups = self.data_spec.dim_lengths_of(dataset)[self.hierarchy.group_dim]
        z_global, z_local = self.hierarchy.split(z, n_groups)
        context, summaries = conditioned or self._conditioning(dataset)
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731

        def chunk(rows):
            b = len(rows)
            return self.net._log_prob(
                as_tensor(z_global[rows]),
                as_tensor(z_local[rows]),
                context.expand(b, -1),
                summaries.expand(b, -1, -1),
            )

        step = max(1, LOCAL_ROWS_PER_PASS // n_groups)  # rows of draws x groups
        return sampling.in_passes(chunk, np.arange(len(z)), self.device, step)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def _from_saved(cls, saved, path, model, covariates, device, group_sizes):
        """The untrained two-level amortizer of the checked file ``saved`` (see
        :meth:`Amortizer.load`, which loads every kind). ``group_sizes``: the function that
        drew them, if one did (only needed to simulate: to train further, for SBC or
        misspecification checks)."""
        config = saved.config
        if config["two_level"] != NETWORK_VERSION:
            raise ValueError(
                f"{path} holds a two-level amortizer of an earlier pymc-abi, whose networks "
                "differ from this version's; train it again."
            )
        sizes = config["group_sizes"]
        if group_sizes is not None and not callable(group_sizes):
            raise ValueError(
                f"group_sizes= at load takes the function that drew the group sizes while "
                f"training, got {group_sizes!r}: a range is saved with the amortizer "
                f"({sizes}), and the networks only know the sizes they were trained on."
            )
        if group_sizes is not None and sizes != "function":
            raise ValueError(
                f"{path} was trained on group sizes in the range {sizes}, not drawn by a "
                "function: load it without group_sizes=."
            )
        if group_sizes is None:
            group_sizes = _sizes_not_saved if sizes == "function" else sizes
        design = {config["groups"], config["row_dim"]}
        return cls(
            model,
            groups=config["groups"],
            group_sizes=group_sizes
            if group_sizes is None or callable(group_sizes)
            else tuple(group_sizes),
            inference_network=config["inference_network"],
            summary_features=config["summary_features"],
            hidden_features=tuple(config["hidden_features"]),
            transforms=config["transforms"],
            dim_lengths={
                **{k: tuple(v) for k, v in config["dim_lengths"].items() if k not in design},
                config["groups"]: tuple(config["n_groups"]),
            },
            covariates={name: (covariates or {}).get(name) for name in config["covariates"]},
            device=device,
            random_seed=0,
            _pilot=0,
        )


register_saved_kind("two_level", TwoLevelAmortizer)


def _sizes_not_saved(rng, n_groups):
    raise ValueError(
        "This amortizer drew its group sizes with a function, which is not saved: pass it "
        "again to load (group_sizes=fn) to simulate new datasets (to train further, or for "
        "SBC and misspecification checks)."
    )


def _list(value):
    return None if value is None else list(value)


def _index(sim, h: Hierarchy):
    return None if h.index is None else np.asarray(sim.values[h.index][0])


class _TwoLevelSource:
    """Fresh simulations at every step, one design (groups, group sizes) per batch.

    Validation: held-out simulations at the fewest, the middle and the most groups."""

    steps_per_epoch = None

    def __init__(self, amortizer: TwoLevelAmortizer, seeds: SeedTree, dropped, cfg):
        self.amortizer, self.seeds, self.dropped, self.cfg = amortizer, seeds, dropped, cfg

    def _batch(self, n, groups=None):
        a = self.amortizer
        return a._batch(a.data_spec, n, self.seeds.child(), self.dropped, a.device, groups)

    def validation(self):
        lo, hi = self.amortizer.hierarchy.n_groups
        n = max(1, self.cfg.validation_simulations // 3)
        return [self._batch(n, g) for g in sorted({lo, (lo + hi) // 2, hi})]

    def batches(self, generator) -> Iterator:
        while True:
            yield self._batch(self.cfg.batch_size)


def _check_network(config: NetworkConfig) -> None:
    """Refuse the network options that the two-level networks do not take."""
    if config.preconditioner is not None:
        raise ValueError(
            "preconditioner= applies to the flat Amortizer; the two-level amortizer has "
            "none yet. Leave preconditioner=None."
        )
    if not config.named:
        raise ValueError(
            "The two-level amortizer builds a global and a local flow by name; give "
            "inference_network as a name ('nsf', 'maf', ...)."
        )
    if config.summary_network is not None:
        raise ValueError(
            "The two-level amortizer builds its own summaries (rows within groups, "
            "groups within the dataset); summary_network= does not apply."
        )


def two_level_or_flat(
    model,
    groups: str,
    *,
    group_sizes,
    dim_lengths,
    covariates,
    time_dim,
    network,
    device,
    random_seed,
) -> Amortizer:
    """A :class:`TwoLevelAmortizer` where the model factors by ``groups``; otherwise a
    flat :class:`~pymc_abi.Amortizer`, with a warning that says why (for ``"auto"``,
    silently)."""
    model = pm.modelcontext(model)
    try:
        if time_dim is not None:
            raise NotHierarchicalError("a time dim is not supported by the two-level amortizer")
        return TwoLevelAmortizer(
            model,
            groups=groups,
            group_sizes=group_sizes,
            network=network,
            dim_lengths=dim_lengths,
            covariates=covariates,
            device=device,
            random_seed=random_seed,
        )
    except NotHierarchicalError as why:
        if groups != "auto":
            warnings.warn(
                f"The model does not factor into global and per-group parameters along "
                f"'{groups}': {why}. Falling back to the flat amortizer, with the model's "
                "number of groups.",
                NotHierarchicalWarning,
                stacklevel=3,
            )
        flat_lengths = {k: v for k, v in (dim_lengths or {}).items() if k != groups}
        return Amortizer(
            model,
            network=network,
            dim_lengths=flat_lengths or None,
            covariates=covariates,
            time_dim=time_dim,
            device=device,
            random_seed=random_seed,
        )
