"""pymc-abi: amortized Bayesian inference for PyMC models."""

import logging

from pymc_abi.parameters import ParameterSpace
from pymc_abi.simulator import ModelSimulator

__version__ = "0.1.0.dev0"

__all__ = ["ModelSimulator", "ParameterSpace", "__version__"]

logging.getLogger("pymc_abi").addHandler(logging.NullHandler())
