"""Gaussian random field (GRF) cluster inference as FEAT (``smoothest`` + ``cluster``).

Smoothness (:func:`estimate_smoothness`, after FSL's ``smoothest``)
    Residuals are standardised per voxel (unit variance over subjects). For each axis ``d``, the
    lag-1 correlation between neighbouring in-mask voxels is
    ``rho_d = sum r(x) r(x + e_d) / sqrt(sum r(x)^2 sum r(x + e_d)^2)`` over subjects and voxel
    pairs. A Gaussian kernel of standard deviation ``s`` voxels gives ``rho = exp(-1 / (4 s^2))``,
    so ``s_d^2 = -1 / (4 log rho_d)`` and ``FWHM_d = s_d sqrt(8 log 2)`` voxels. Then
    ``DLH = (4 log 2)^{3/2} / (FWHM_x FWHM_y FWHM_z)`` (per voxel) and one resel is
    ``FWHM_x FWHM_y FWHM_z`` voxels. FSL additionally corrects the estimate for small residual
    dof with a lookup table; that correction is not applied here (a few percent at dof > 10).

Cluster p (:func:`grf_cluster_p`, Friston et al. 1994, FSL ``cluster``)
    For a cluster-forming threshold ``u`` on a z map in a search volume of ``V`` voxels:
    expected suprathreshold voxels ``E[N] = V Phi(-u)``; expected clusters
    ``E[m] = V DLH (u^2 - 1) exp(-u^2 / 2) / (2 pi)^2``; ``beta = (Gamma(5/2) E[m] / E[N])^{2/3}``;
    the FWE p of a cluster of ``k`` voxels is ``1 - exp(-E[m] exp(-beta k^{2/3}))``.
    Connectivity is FEAT's 26 when the clusters are formed (:mod:`processing.group.clusters`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

from processing.noise_correlation import lag1_correlation, lag1_sums

__all__ = ["Smoothness", "estimate_smoothness", "grf_cluster_p", "ols_residuals"]


@dataclass(frozen=True)
class Smoothness:
    """Smoothness of a residual field.

    Attributes
    ----------
    fwhm_voxels : ndarray, shape (3,)
        FWHM along each voxel axis (voxels).
    dlh : float
        ``sqrt(det(Lambda))`` per voxel, FSL's DLH.
    resel_voxels : float
        Voxels per resel (``prod(fwhm_voxels)``).
    volume : int
        Search volume in voxels (mask size).
    """

    fwhm_voxels: NDArray[np.float64]
    dlh: float
    resel_voxels: float
    volume: int

    def fwhm_mm(self, affine: ArrayLike) -> NDArray[np.float64]:
        """FWHM in mm along each axis, given the grid's affine."""
        sizes = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
        return self.fwhm_voxels * sizes


def ols_residuals(effects: ArrayLike, design: ArrayLike) -> NDArray[np.float64]:
    """Residuals ``y - X pinv(X) y`` of a group design, shape (N, V), for the smoothness estimate.

    Parameters
    ----------
    effects : array_like, shape (N, V)
    design : array_like, shape (N, p)
        The design matrix (``GroupDesign.matrix``).
    """
    y = np.asarray(effects, dtype=np.float64)
    x = np.asarray(design, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    return y - x @ (np.linalg.pinv(x) @ y)


def estimate_smoothness(residuals: ArrayLike, mask: ArrayLike) -> Smoothness:
    """Estimate the smoothness of group-GLM residuals (module docstring).

    Parameters
    ----------
    residuals : array_like, shape (N, V)
        Residuals of the V in-mask voxels (order of ``np.nonzero(mask)``), one row per subject.
    mask : array_like of bool, shape (X, Y, Z)

    Returns
    -------
    Smoothness
    """
    m = np.asarray(mask, dtype=bool)
    rho = lag1_correlation(lag1_sums(residuals, m))
    fwhm = np.zeros(3)
    for d in range(3):
        if not 0 < rho[d] < 1:
            raise ValueError(
                f"cannot estimate smoothness along axis {d}: lag-1 correlation {rho[d]}"
            )
        fwhm[d] = np.sqrt(-1.0 / (4.0 * np.log(rho[d]))) * np.sqrt(8.0 * np.log(2.0))
    resel = float(np.prod(fwhm))
    return Smoothness(fwhm, float((4.0 * np.log(2.0)) ** 1.5 / resel), resel, int(m.sum()))


def grf_cluster_p(
    sizes: ArrayLike, z_threshold: float, dlh: float, volume: float
) -> NDArray[np.float64]:
    """FWE p of clusters of ``sizes`` voxels under GRF theory (module docstring).

    Parameters
    ----------
    sizes : array_like
        Cluster sizes in voxels.
    z_threshold : float
        Cluster-forming threshold u (z), e.g. 2.3.
    dlh : float
        Smoothness ``sqrt(det(Lambda))`` per voxel (:func:`estimate_smoothness`).
    volume : float
        Search volume in voxels.

    Returns
    -------
    ndarray of float64, shape of ``sizes``
    """
    u = float(z_threshold)
    k = np.asarray(sizes, dtype=np.float64)
    expected_voxels = volume * stats.norm.sf(u)
    expected_clusters = volume * dlh * (u * u - 1.0) * np.exp(-u * u / 2.0) / (2.0 * np.pi) ** 2
    if expected_clusters <= 0:
        raise ValueError(f"GRF needs a threshold above 1, got {u}")
    beta = (special.gamma(2.5) * expected_clusters / expected_voxels) ** (2.0 / 3.0)
    return -np.expm1(-expected_clusters * np.exp(-beta * k ** (2.0 / 3.0)))
