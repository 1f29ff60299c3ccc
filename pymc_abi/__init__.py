"""pymc-abi: amortized Bayesian inference for PyMC models."""

import logging

from pymc_abi.amortizer import Amortizer
from pymc_abi.bank import open_bank, simulate
from pymc_abi.comparison import ModelComparator, fit_comparison
from pymc_abi.config import NetworkConfig, TrainingConfig
from pymc_abi.data_spec import DataSpec, Simulation, SummaryInput
from pymc_abi.diagnostics import (
    c2st,
    calibration_metrics,
    check_misspecification,
    comparison_calibration,
    plot_comparison_calibration,
    plot_misspecification,
    plot_recovery,
    plot_sbc,
    plot_z_score_contraction,
    sbc,
)
from pymc_abi.errors import (
    DamagedFileError,
    DroppedSimulationsWarning,
    IncompleteBankError,
    ModelChangedError,
    ModelChangedWarning,
    NoDensityError,
    NotHierarchicalError,
    NotHierarchicalWarning,
    PotentialIgnoredWarning,
    PymcAbiError,
    PymcAbiWarning,
    TrainingInterruptedWarning,
    UnreliablePosteriorWarning,
    UnvectorizedWarning,
)
from pymc_abi.fitting import fit
from pymc_abi.logp import JointLogp
from pymc_abi.many import sample_many
from pymc_abi.parameters import ParameterSpace
from pymc_abi.plots import plot_loss
from pymc_abi.simulator import ModelSimulator
from pymc_abi.two_level import TwoLevelAmortizer

__version__ = "0.1.0.dev0"

__all__ = [
    "Amortizer",
    "DamagedFileError",
    "DataSpec",
    "DroppedSimulationsWarning",
    "IncompleteBankError",
    "JointLogp",
    "ModelChangedError",
    "ModelChangedWarning",
    "ModelComparator",
    "ModelSimulator",
    "NetworkConfig",
    "NoDensityError",
    "NotHierarchicalError",
    "NotHierarchicalWarning",
    "ParameterSpace",
    "PotentialIgnoredWarning",
    "PymcAbiError",
    "PymcAbiWarning",
    "Simulation",
    "SummaryInput",
    "TrainingConfig",
    "TrainingInterruptedWarning",
    "TwoLevelAmortizer",
    "UnreliablePosteriorWarning",
    "UnvectorizedWarning",
    "__version__",
    "c2st",
    "calibration_metrics",
    "check_misspecification",
    "comparison_calibration",
    "fit",
    "fit_comparison",
    "open_bank",
    "plot_comparison_calibration",
    "plot_loss",
    "plot_misspecification",
    "plot_recovery",
    "plot_sbc",
    "plot_z_score_contraction",
    "sample_many",
    "sbc",
    "simulate",
]

logging.getLogger("pymc_abi").addHandler(logging.NullHandler())
