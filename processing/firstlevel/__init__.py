"""First-level (per-run) modelling: HRF convolution and, later, design, GLM and contrasts."""

from processing.firstlevel.hrf import convolve_events, double_gamma_hrf

__all__ = ["convolve_events", "double_gamma_hrf"]
