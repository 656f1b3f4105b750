"""Group GLMs per voxel: OLS and FLAME1 mixed effects (FSL ``flameo --runmode=flame1``).

Both take one spatial chunk at a time: ``effects`` and ``variances`` of shape (N, V) (N subjects
or paired differences, V voxels of the chunk) and return maps of shape (V,). Nothing depends on
other voxels, so a whole brain is the concatenation of its chunks.

OLS
    ``gamma = pinv(X) y``, residual variance ``sigma^2 = |y - X gamma|^2 / (N - p)``,
    ``Var(c gamma) = sigma^2 c (X'X)^-1 c'``, dof ``N - p`` (the lower-level variances are
    ignored).

FLAME1
    Per voxel, ``y = X gamma + e`` with ``Var(e_i) = s_i + beta_g(i)``, ``s_i`` the subject's
    VARCOPE and ``beta_g`` the between-subject variance of its variance group. ``beta`` (one per
    group, ``>= 0``) maximises the restricted (REML) log likelihood

    ``l(beta) = 1/2 [ sum_i log w_i - log|X'WX| - r'Wr ]``, ``w_i = 1 / (s_i + beta_g(i))``,
    ``r = y - X gamma_hat`` (GLS residual; ``r'Wr = y'Wy - gamma' X'WX gamma``),

    which is FSL's marginal likelihood (fsl-conventions.md) written with the usual sign. It is
    found by Fisher scoring, vectorised over voxels: gradient
    ``dl/dbeta_g = 1/2 sum_{i in g} [(w_i r_i)^2 - P_ii]`` and expected information
    ``I_gh = 1/2 sum_{i in g, j in h} P_ij^2`` with ``P = W - W X (X'WX)^-1 X'W``; each step is
    projected onto ``beta >= 0`` and halved while it lowers ``l``. The start is the best of a
    moment estimate and a grid of common values, so the global maximum is found in practice
    (checked against a direct per-voxel optimisation in the tests). Then ``W = diag(w)``,
    ``gamma = (X'WX)^-1 X'W y``, ``Var(c gamma) = c (X'WX)^-1 c'``, ``t = c gamma / sqrt(Var)``
    and z from t with FSL's conservative dof (:func:`flame_dof`). FLAME stage 2 (MCMC refit near
    threshold) is not done.

Voxels where some subject has no data (non-finite effect or variance, negative variance, or
effect and variance both exactly 0, as outside a subject's brain mask) are outside the group
mask and get 0 in every map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from processing.group.designs import GroupDesign, check_design
from processing.zstat import t_to_z

__all__ = ["GroupFit", "data_mask", "flame1", "flame_dof", "ols"]


@dataclass(frozen=True)
class GroupFit:
    """Voxelwise group result for one t contrast.

    Attributes
    ----------
    effect : ndarray, shape (V,)
        ``c gamma`` (units of the input effects).
    variance : ndarray, shape (V,)
        Variance of ``c gamma`` (squared units).
    t, z : ndarray, shape (V,)
        t statistic and its exact z (:func:`processing.zstat.t_to_z`).
    dof : float
        Degrees of freedom used for z (``N - p`` for OLS, FSL's lower bound for FLAME1).
    mask : ndarray of bool, shape (V,)
        Voxels where every subject has data; all maps are 0 elsewhere.
    between_variance : ndarray, shape (G, V)
        FLAME1: between-subject variance per variance group (``mean_random_effects_var``).
        OLS: the residual variance ``sigma^2`` (G = 1).
    iterations : int
        Fisher-scoring iterations used (0 for OLS).
    """

    effect: NDArray[np.float64]
    variance: NDArray[np.float64]
    t: NDArray[np.float64]
    z: NDArray[np.float64]
    dof: float
    mask: NDArray[np.bool_]
    between_variance: NDArray[np.float64]
    iterations: int = 0


def data_mask(effects: ArrayLike, variances: ArrayLike | None = None) -> NDArray[np.bool_]:
    """Voxels where every subject has data.

    Parameters
    ----------
    effects : array_like, shape (N, V)
    variances : array_like, shape (N, V), optional

    Returns
    -------
    ndarray of bool, shape (V,)
        Finite effects, and (with variances) finite variances ``>= 0`` and not effect and
        variance both exactly 0 in any subject.
    """
    y = np.asarray(effects)
    ok = np.isfinite(y)
    if variances is not None:
        s = np.asarray(variances)
        ok &= np.isfinite(s) & (s >= 0) & ~((y == 0) & (s == 0))
    return np.all(ok, axis=0)


def _design_parts(
    design: GroupDesign | ArrayLike, contrast: str | ArrayLike, variance_groups: ArrayLike | None
) -> tuple[NDArray, NDArray, NDArray[np.int64]]:
    if isinstance(design, GroupDesign):
        x = design.matrix
        c = design.contrast(contrast)
        groups = design.variance_groups if variance_groups is None else variance_groups
    else:
        x = check_design(design)
        if isinstance(contrast, str):
            raise ValueError("a named contrast needs a GroupDesign; pass weights instead")
        c = np.asarray(contrast, dtype=np.float64)
        if c.shape != (x.shape[1],):
            raise ValueError(f"contrast {c.tolist()} must have {x.shape[1]} weights")
        groups = variance_groups
    n = x.shape[0]
    g = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"variance groups have shape {g.shape}, expected ({n},)")
    _, g = np.unique(g, return_inverse=True)
    return x, c, g.astype(np.int64)


def _check_data(effects: ArrayLike, n: int, name: str) -> NDArray[np.float64]:
    y = np.asarray(effects, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape (N={n}, V), got {y.shape}")
    return y


def flame_dof(design: ArrayLike, contrast: ArrayLike, variance_groups: ArrayLike) -> float:
    """FSL's conservative FLAME dof: smallest involved variance group minus its regressors.

    A variance group is involved when one of its rows is non-zero in a column the contrast
    weights; its regressors are the columns non-zero within its rows. With one group this is
    ``N - p``.

    Parameters
    ----------
    design : array_like, shape (N, p)
    contrast : array_like, shape (p,)
    variance_groups : array_like of int, shape (N,)

    Returns
    -------
    float
    """
    x = np.asarray(design, dtype=np.float64)
    c = np.asarray(contrast, dtype=np.float64)
    g = np.asarray(variance_groups)
    used = c != 0
    dofs = []
    for label in np.unique(g):
        rows = x[g == label]
        if not np.any(rows[:, used] != 0):
            continue
        dofs.append(rows.shape[0] - int(np.sum(np.any(rows != 0, axis=0))))
    dof = float(min(dofs))
    if dof <= 0:
        raise ValueError(
            f"FLAME dof {dof}: a variance group has no more subjects than regressors; "
            "merge variance groups or drop covariates"
        )
    return dof


def ols(
    effects: ArrayLike,
    design: GroupDesign | ArrayLike,
    contrast: str | ArrayLike,
    *,
    mask: ArrayLike | None = None,
) -> GroupFit:
    """Ordinary least-squares group GLM (random effects on the effects only).

    Parameters
    ----------
    effects : array_like, shape (N, V)
        Lower-level effects (COPEs) of one chunk.
    design : GroupDesign or array_like, shape (N, p)
    contrast : str or array_like, shape (p,)
    mask : array_like of bool, shape (V,), optional
        Default :func:`data_mask` of ``effects``.

    Returns
    -------
    GroupFit
        ``between_variance`` holds ``sigma^2`` (shape (1, V)); dof ``N - p``.
    """
    x, c, _ = _design_parts(design, contrast, None)
    n, p = x.shape
    y = _check_data(effects, n, "effects")
    valid = data_mask(y) if mask is None else np.asarray(mask, dtype=bool)
    y = np.where(valid, y, 0.0)
    pinv = np.linalg.pinv(x)
    beta = pinv @ y
    resid = y - x @ beta
    dof = float(n - p)
    sigma2 = np.einsum("nv,nv->v", resid, resid) / dof
    effect = c @ beta
    variance = sigma2 * float(c @ pinv @ pinv.T @ c)
    ok = valid & (variance > 0)
    t = np.divide(effect, np.sqrt(variance), out=np.zeros_like(effect), where=ok)
    effect = np.where(valid, effect, 0.0)
    return GroupFit(
        effect, np.where(valid, variance, 0.0), t, t_to_z(t, dof), dof, valid, sigma2[None, :]
    )


class _State:
    """GLS quantities of one block of voxels at given between-subject variances."""

    def __init__(self, x, y, s, g, beta):  # y, s: (Vb, N); beta: (Vb, G)
        tot = s + beta[:, g]
        w = 1.0 / np.maximum(tot, 1e-300)
        a = np.einsum("vn,na,nb->vab", w, x, x)
        self.ainv = np.linalg.inv(a)
        sign, logdet = np.linalg.slogdet(a)
        self.gamma = np.einsum("vab,nb,vn->va", self.ainv, x, w * y)
        self.r = y - self.gamma @ x.T
        self.w = w
        self.loglik = 0.5 * (np.log(w).sum(1) - logdet - np.einsum("vn,vn->v", w, self.r**2))
        self.loglik = np.where(sign > 0, self.loglik, -np.inf)

    def scoring_step(self, x, g, n_groups, beta):
        wx = self.w[:, :, None] * x  # (Vb, N, p)
        p_mat = -np.einsum("vna,vab,vmb->vnm", wx, self.ainv, wx)
        idx = np.arange(x.shape[0])
        p_mat[:, idx, idx] += self.w
        wr2 = (self.w * self.r) ** 2
        diag = p_mat[:, idx, idx]
        onehot = np.eye(n_groups)[g]  # (N, G)
        grad = 0.5 * (wr2 - diag) @ onehot  # (Vb, G)
        info = 0.5 * np.einsum("ng,vnm,mh->vgh", onehot, p_mat**2, onehot)
        info += 1e-300
        if n_groups == 1:
            return grad / info[:, 0, :]
        # projected scoring: groups held at the bound beta = 0 (gradient pointing below it)
        # leave the system, so they do not distort the step of the free groups
        held = (beta <= 0) & (grad <= 0)
        free = ~held
        info = info * (free[:, :, None] & free[:, None, :]) + held[:, :, None] * np.eye(n_groups)
        return np.linalg.solve(info, np.where(free, grad, 0.0)[..., None])[..., 0]


def _flame_block(x, y, s, g, n_groups, tol, max_iter):
    """FLAME1 REML over a block: y, s of shape (Vb, N). Returns beta (Vb, G), state, iters."""
    vb, n = y.shape
    p = x.shape[1]
    onehot = np.eye(n_groups)[g]
    counts = onehot.sum(0)
    pinv = np.linalg.pinv(x)
    r0 = y - (y @ pinv.T) @ x.T
    moment = (r0**2 @ onehot) / counts * n / (n - p) - (s @ onehot) / counts
    scale = np.maximum((r0**2).sum(1) / (n - p), (s.mean(1))) + 1e-30  # (Vb,)
    candidates = [np.maximum(moment, 0.0), np.zeros((vb, n_groups))]
    candidates += [np.repeat((scale * f)[:, None], n_groups, 1) for f in (0.01, 0.1, 0.3, 1, 3)]
    beta, best_ll = candidates[0], _State(x, y, s, g, candidates[0]).loglik
    for cand in candidates[1:]:
        ll = _State(x, y, s, g, cand).loglik
        better = ll > best_ll
        beta = np.where(better[:, None], cand, beta)
        best_ll = np.where(better, ll, best_ll)
    active = np.ones(vb, dtype=bool)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        sub = _State(x, y[idx], s[idx], g, beta[idx])
        step = sub.scoring_step(x, g, n_groups, beta[idx])
        step = np.where(np.isfinite(step), step, 0.0)
        base = sub.loglik
        new_beta = np.maximum(beta[idx] + step, 0.0)
        new = _State(x, y[idx], s[idx], g, new_beta)
        for _ in range(30):
            worse = new.loglik < base - 1e-12 * np.abs(base)
            if not worse.any():
                break
            step[worse] *= 0.5
            new_beta = np.maximum(beta[idx] + step, 0.0)
            new = _State(x, y[idx], s[idx], g, new_beta)
        change = np.abs(new_beta - beta[idx]).max(1)
        beta[idx] = new_beta
        active[idx] = change > tol * scale[idx]
    return beta, _State(x, y, s, g, beta), iterations


def flame1(
    effects: ArrayLike,
    variances: ArrayLike,
    design: GroupDesign | ArrayLike,
    contrast: str | ArrayLike,
    *,
    variance_groups: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    tol: float = 1e-8,
    max_iter: int = 100,
    block: int | None = None,
) -> GroupFit:
    """FLAME1 mixed-effects group GLM with REML between-subject variances (module docstring).

    Parameters
    ----------
    effects, variances : array_like, shape (N, V)
        Lower-level COPEs and VARCOPEs of one chunk (same units, squared for variances).
    design : GroupDesign or array_like, shape (N, p)
    contrast : str or array_like, shape (p,)
    variance_groups : array_like, shape (N,), optional
        Overrides the design's variance groups (default: the design's, or one group).
    mask : array_like of bool, shape (V,), optional
        Default :func:`data_mask`.
    tol : float
        Convergence: largest change of beta below ``tol`` times the voxel's variance scale.
    max_iter : int
        Most Fisher-scoring iterations.
    block : int, optional
        Voxels per vectorised block (memory ~ block * N^2 * 8 bytes * 3).

    Returns
    -------
    GroupFit
        ``between_variance`` shape (G, V) in the order of the sorted group labels.
    """
    x, c, g = _design_parts(design, contrast, variance_groups)
    n, _ = x.shape
    y = _check_data(effects, n, "effects")
    s = _check_data(variances, n, "variances")
    if y.shape != s.shape:
        raise ValueError(f"effects {y.shape} and variances {s.shape} must have the same shape")
    valid = data_mask(y, s) if mask is None else np.asarray(mask, dtype=bool)
    n_groups = int(g.max()) + 1
    dof = flame_dof(x, c, g)
    v_total = y.shape[1]
    effect = np.zeros(v_total)
    variance = np.zeros(v_total)
    between = np.zeros((n_groups, v_total))
    idx = np.nonzero(valid)[0]
    block = block or max(256, int(4e6 // (n * n)))
    iters = 0
    for start in range(0, idx.size, block):
        sel = idx[start : start + block]
        beta, st, it = _flame_block(x, y[:, sel].T, s[:, sel].T, g, n_groups, tol, max_iter)
        iters = max(iters, it)
        effect[sel] = st.gamma @ c
        variance[sel] = np.einsum("a,vab,b->v", c, st.ainv, c)
        between[:, sel] = beta.T
    # degenerate voxels (e.g. zero lower-level variance and no spread) get 0, not NaN
    ok = valid & np.isfinite(effect) & np.isfinite(variance)
    ok &= variance > 1e-20 * np.where(ok, effect * effect, 0.0)  # t above 1e10: no spread
    effect, variance = np.where(ok, effect, 0.0), np.where(ok, variance, 0.0)
    t = np.divide(effect, np.sqrt(variance), out=np.zeros_like(effect), where=ok)
    return GroupFit(effect, variance, t, t_to_z(t, dof), dof, valid, between, iters)
