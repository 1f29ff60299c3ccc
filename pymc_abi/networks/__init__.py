r"""Torch networks for amortized inference: inference networks, summary networks and
standardization. This subpackage depends on :mod:`torch` and :mod:`zuko` only.
"""

from .inference import FlowNetwork, InferenceNetwork, build_inference_network
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
    "FlowNetwork",
    "FusionSummary",
    "IdentitySummary",
    "InferenceNetwork",
    "MLPSummary",
    "Standardize",
    "build_inference_network",
    "build_summary_network",
]
