r"""Torch networks for amortized inference: inference networks, summary networks and
standardization. This subpackage depends on :mod:`torch` and :mod:`zuko` only.
"""

from .base import InferenceNetwork
from .flow_matching import FlowMatching, VectorField
from .inference import FlowNetwork, build_inference_network
from .sequence import SetTransformer, TimeSeriesSummary
from .standardize import Standardize
from .summary import (
    DeepSet,
    FusionSummary,
    IdentitySummary,
    MLPSummary,
    build_summary_network,
)

__all__ = [
    "DeepSet",
    "FlowMatching",
    "FlowNetwork",
    "FusionSummary",
    "IdentitySummary",
    "InferenceNetwork",
    "MLPSummary",
    "SetTransformer",
    "Standardize",
    "TimeSeriesSummary",
    "VectorField",
    "build_inference_network",
    "build_summary_network",
]
