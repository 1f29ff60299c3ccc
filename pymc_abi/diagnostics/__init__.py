"""Validation of amortized posteriors: simulation-based calibration, its metrics and plots,
misspecification checks, and the classifier two-sample test."""

from pymc_abi.diagnostics.c2st import c2st
from pymc_abi.diagnostics.comparison import (
    comparison_calibration,
    expected_calibration_error,
    plot_comparison_calibration,
)
from pymc_abi.diagnostics.loss import plot_loss
from pymc_abi.diagnostics.metrics import calibration_metrics, rank_bins, rank_ecdf_band
from pymc_abi.diagnostics.misspecification import (
    MisspecificationResult,
    check_misspecification,
    plot_misspecification,
)
from pymc_abi.diagnostics.plots import plot_recovery, plot_sbc, plot_z_score_contraction
from pymc_abi.diagnostics.sbc import RANK_GROUP, STATS_GROUP, sbc

__all__ = [
    "MisspecificationResult",
    "RANK_GROUP",
    "STATS_GROUP",
    "c2st",
    "calibration_metrics",
    "check_misspecification",
    "comparison_calibration",
    "expected_calibration_error",
    "plot_comparison_calibration",
    "plot_loss",
    "plot_misspecification",
    "plot_recovery",
    "plot_sbc",
    "plot_z_score_contraction",
    "rank_bins",
    "rank_ecdf_band",
    "sbc",
]
