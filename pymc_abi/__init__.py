"""pymc-abi: amortized Bayesian inference for PyMC models.

The top level holds the verbs (``fit``, ``fit_comparison``, ``simulate``, ``sbc``, ...), the
user-facing classes, the configurations and the errors. The machinery is imported from its
subpackage (``pymc_abi.data.spec.DataSpec``, ``pymc_abi.training.loop.train``, ...; see the
architecture page).
"""

import logging

from pymc_abi.amortizers.amortizer import Amortizer
from pymc_abi.amortizers.comparison import ModelComparator
from pymc_abi.amortizers.fitting import fit, fit_comparison
from pymc_abi.amortizers.two_level import TwoLevelAmortizer
from pymc_abi.banks.simulate import open_bank, simulate
from pymc_abi.core.config import NetworkConfig, TrainingConfig
from pymc_abi.core.errors import (
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
from pymc_abi.diagnostics.loss import plot_loss
from pymc_abi.inference.many import sample_many
from pymc_abi.model.logp import JointLogp
from pymc_abi.model.parameters import ParameterSpace
from pymc_abi.model.simulator import ModelSimulator

__version__ = "0.1.0.dev0"

__all__ = [
    "Amortizer",
    "DamagedFileError",
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
