"""Many L2-regularised logistic regressions on one shared feature matrix, solved at once. Pure numpy.

Why: the logreg head fits, for each of k outer folds, ``inner_folds`` inner models along a grid of C values
and then the k outer models: dozens of logistic regressions on subsets of the same rows. Solved one by one
(scikit-learn), each solver iteration reads the whole (N, d) matrix for one problem; solved together, each
iteration turns the m matrix-vector products into one matrix-matrix product that reads the matrix once for
all of them (``make bench`` records the difference against ``LogisticRegressionCV``).

The model. Problem j (of m) has row weights ``masks[:, j]`` (N,) (0/1 for a subset of the rows, or any
non-negative weights), its own standardisation ``mu[:, j]``, ``sd[:, j]`` (d,) and penalty ``lam[j]``, and
minimises over weights w (d,) and intercept b::

    sum_i masks[i, j] * logloss(t_ij, x_ij . w + b) / n_j  +  lam_j * ||w||^2 / 2,
    x_ij = (X[i] - mu_j) / sd_j,   n_j = sum_i masks[i, j]

with targets t (N,) shared by every problem, or (N, m), one column per problem (t in [0, 1]: soft targets
are allowed; the log loss is then the cross-entropy). This is scikit-learn's
``LogisticRegression(C=C).fit(x, t, sample_weight=masks[:, j])`` with ``lam_j = 1 / (C n_j)``: C multiplies
the summed log loss, the penalty is ||w||^2 / 2, the intercept is not penalised.

The API, smallest first:

- :func:`fit_logistic`: X, targets, masks and C per problem in; coefficients on the raw features out.
- :class:`Design` (the rows every problem shares, and a preconditioner) and :class:`LogisticProblems`
  (the m problems on a design; warm starts, a path of penalties): what the logreg head uses.
- :func:`lbfgs`: the batched L-BFGS minimiser underneath, for any m smooth convex functions.

Weights ``W`` float64 (d + 1, m) always hold the coefficients on *standardised* features, then the intercept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
from scipy.special import expit

__all__ = ["Design", "LogisticFit", "LogisticProblems", "fit_logistic", "lbfgs"]


# ------------------------------------------------------------------------------------- batched L-BFGS solver
def lbfgs(fg: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], U: np.ndarray,
          problems: np.ndarray, *, tol: float, max_iter: int, memory: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Minimise m independent smooth convex functions at once by L-BFGS with Armijo backtracking.

    ``U`` float64 (p, m): the start, one column per problem; ``problems`` (m,) the problems' ids.
    ``fg(U_a, ids) -> (f (len(ids),), G (p, len(ids)))`` evaluates the problems ``ids`` at ``U_a`` (p, len(ids)).
    A problem stops when ||G||^2 / 2 <= ``tol`` (with a well-preconditioned objective, an estimate of its
    distance to the minimum), after ``max_iter`` iterations, or when no step lowers it any more (the
    floating-point floor). Returns the minimisers (p, m) and the iterations each took (m,).

    Each problem keeps its own curvature pairs, step and stopping test: a problem that has converged is no
    longer evaluated, and one that needs many iterations does not change the others' answers.
    """
    p, m = U.shape
    U = U.copy()
    f, G = fg(U, problems)
    S = np.zeros((memory, p, m))
    Y = np.zeros((memory, p, m))
    rho = np.zeros((memory, m))  # 1 / s'y of each stored pair; 0 marks a pair that is not used
    gamma = np.ones(m)  # the scale of the initial inverse Hessian, s'y / y'y of the newest good pair
    n_iter = np.zeros(m, dtype=np.int64)
    active = 0.5 * np.einsum("ij,ij->j", G, G) > tol
    newest, stored = -1, 0
    for _ in range(max_iter):
        a = np.flatnonzero(active)
        if a.size == 0:
            break
        g = G[:, a]
        order = [(newest - i) % memory for i in range(stored)]  # newest pair first
        q = g.copy()
        alphas = []
        for i in order:
            alpha = rho[i, a] * np.einsum("ij,ij->j", S[i][:, a], q)
            q -= alpha * Y[i][:, a]
            alphas.append(alpha)
        q *= gamma[a]
        for i, alpha in zip(reversed(order), reversed(alphas)):
            beta = rho[i, a] * np.einsum("ij,ij->j", Y[i][:, a], q)
            q += (alpha - beta) * S[i][:, a]
        d = -q
        slope = np.einsum("ij,ij->j", g, d)
        uphill = slope >= 0  # impossible with positive curvature pairs, but rounding may do it: use -g then
        d[:, uphill] = -g[:, uphill]
        slope[uphill] = -np.einsum("ij,ij->j", g[:, uphill], g[:, uphill])
        step = np.ones(a.size)
        U_new = U[:, a] + d
        f_new, G_new = fg(U_new, problems[a])
        ok = f_new <= f[a] + 1e-4 * step * slope
        for _ in range(20):
            if ok.all():
                break
            r = np.flatnonzero(~ok)
            step[r] *= 0.25
            U_new[:, r] = U[:, a[r]] + step[r] * d[:, r]
            f_new[r], G_new[:, r] = fg(U_new[:, r], problems[a[r]])
            ok[r] = f_new[r] <= f[a[r]] + 1e-4 * step[r] * slope[r]
        s = U_new - U[:, a]
        yv = G_new - g
        sy = np.einsum("ij,ij->j", s, yv)
        yy = np.einsum("ij,ij->j", yv, yv)
        good = ok & (sy > 1e-12 * yy) & (yy > 0)
        # subtle: the pair slot is shared by every problem, so a problem whose step failed this round (``ok``
        # False) stores a pair with rho 0, which the two-loop recursion then skips for it.
        newest, stored = (newest + 1) % memory, min(stored + 1, memory)
        rho[newest] = 0.0
        S[newest][:, a] = s
        Y[newest][:, a] = yv
        rho[newest, a] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma[a] = np.where(good, sy / np.where(good, yy, 1.0), gamma[a])
        moved = a[ok]
        U[:, moved], f[moved], G[:, moved] = U_new[:, ok], f_new[ok], G_new[:, ok]
        n_iter[a] += 1
        active[a] = ok & (0.5 * np.einsum("ij,ij->j", G_new, G_new) > tol)
    return U, n_iter


# ------------------------------------------------------------------------------------------ the design
class Design:
    """The rows every problem shares: ``X`` float32 (N, d), its transpose ``XT`` (d, N) stored contiguously
    (the gradient's product X'R runs about a third faster so), targets ``y`` float32 (N, 1), and the
    solver's preconditioner.

    ``y`` (N,) holds the shared targets in [0, 1] (0/1 labels, or soft targets); problems may override them
    with their own (see :class:`LogisticProblems`). ``rank``: principal directions kept by the
    preconditioner; ``total``: the trace of X'X / N (the mean squared row norm), which sets the level of the
    other directions; ``seed``: the rows sampled to estimate the directions. The preconditioner only changes
    the speed, not the minimum.

    The preconditioner approximates the Hessian X'DX / N + lam (D: the rows' p (1 - p)) by c X'X / N + lam,
    with c the mean of p (1 - p) at the start of a solve, and takes T = (c X'X / N + lam)^(-1/2) on the
    weights and c^(-1/2) on the intercept: with W = T U the problem in U is close to isotropic, so L-BFGS
    needs a fraction of the iterations and ||gradient in U||^2 / 2 estimates the distance to the minimum.
    X'X / N comes from its top principal directions ``basis`` (d, r) with eigenvalues ``top`` (r,), the
    other d - r eigenvalues taken as their mean ``rest``. X should be roughly centred and scaled (the logreg
    head standardises it globally first).
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, *, rank: int, total: float, seed: int):
        from threadpoolctl import ThreadpoolController

        self.X, self.XT, self.y = X, _transpose(X), y.astype(np.float32)[:, None]
        self._blas = ThreadpoolController()
        with self.serial():
            self.basis, self.top, self.rest = _principal(X, rank=rank, total=total, seed=seed)

    def serial(self) -> ContextManager:
        """Run BLAS on one thread inside: for small products, which run several times slower on two (waking
        the threads dominates), and far slower still while other processes keep the cores busy."""
        return self._blas.limit(limits=1, user_api="blas")

    def precondition(self, M: np.ndarray, lam: np.ndarray, curv: np.ndarray, power: float) -> np.ndarray:
        """T^(-2 power) M for M (d + 1, m), penalties lam (m,) and curvatures c (m,): power -1/2 maps U to
        W, +1/2 maps W to U."""
        h_top = (curv * self.top[:, None] + lam) ** power
        h_rest = (curv * self.rest + lam) ** power
        out = np.empty_like(M)
        with self.serial():
            out[:-1] = h_rest * M[:-1] + self.basis @ ((h_top - h_rest) * (self.basis.T @ M[:-1]))
        out[-1] = curv ** power * M[-1]
        return out


def _transpose(X: np.ndarray, *, block: int = 256) -> np.ndarray:
    """X (N, d) transposed into a new C-ordered (d, N) array, by row blocks (3x faster than one copy)."""
    XT = np.empty((X.shape[1], X.shape[0]), dtype=X.dtype)
    for a in range(0, len(X), block):
        XT[:, a:a + block] = X[a:a + block].T
    return XT


def _principal(X: np.ndarray, *, rank: int, total: float, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Top principal directions of centred X (N, d): basis (d, r) float64, eigenvalues of X'X / N (r,), and
    the mean of the other d - r eigenvalues (``total`` is the trace of X'X / N).

    subtle: a preconditioner only has to be roughly right, so the directions come from at most 4,096 rows.
    """
    N, d = X.shape
    rows = X if N <= 4096 else X[np.sort(np.random.default_rng(seed).choice(N, 4096, replace=False))]
    if d <= 2 * rank:  # small enough for the exact decomposition
        top, basis = np.linalg.eigh((rows.T @ rows).astype(np.float64) / len(rows))
        return basis, np.maximum(top, 0.0), 0.0
    from sklearn.utils.extmath import randomized_svd

    _, s, Vt = randomized_svd(rows, rank, n_iter=2, random_state=seed)
    top = s.astype(np.float64) ** 2 / len(rows)
    return Vt.T.astype(np.float64), top, max(total - top.sum(), 0.0) / (d - rank)


# ---------------------------------------------------------------------------------------- the problems
class LogisticProblems:
    """m L2-regularised logistic regressions on the rows of ``design``, each with its own standardisation.

    ``masks`` float32 (N, m): problem j's weight on row i (1 where it fits the row, 0 where not; any
    non-negative weight is allowed); ``mu``, ``sd`` float32 (d, m): problem j fits (X - mu_j) / sd_j, applied
    algebraically so that every problem shares X; ``targets``: None for the design's shared ``y``, or float32
    (N, m), problem j's target for row i in [0, 1]. The penalties ``lam`` (m,) (problem j minimises its rows'
    weighted mean log loss + lam_j ||w||^2 / 2) are set by the caller before :meth:`solve`, so that one
    instance walks a path of penalties with warm starts. ``n`` (m,): each problem's total row weight.
    Weights ``W`` float64 (d + 1, m) hold the coefficients on standardised features, then the intercept; the
    solver works on U = T^-1 W (see :class:`Design`).
    """

    def __init__(self, design: Design, masks: np.ndarray, mu: np.ndarray, sd: np.ndarray, *,
                 targets: np.ndarray | None = None):
        self.data, self.masks, self.mu, self.sd = design, masks, mu, sd
        self.targets = targets
        self.n = masks.sum(axis=0, dtype=np.float64)
        self.lam = np.zeros(masks.shape[1])
        self.curv = np.full(masks.shape[1], 0.25)

    def logits(self, X: np.ndarray, W: np.ndarray, a: np.ndarray) -> np.ndarray:
        """(rows, len(a)) float32 logits of raw X (rows, d) under weights W (d + 1, len(a)) of problems a."""
        V = (W[:-1] / self.sd[:, a]).astype(np.float32)
        c = W[-1] - np.einsum("ij,ij->j", self.mu[:, a], V, dtype=np.float64)
        return X @ V + c.astype(np.float32)

    def _y(self, a: np.ndarray) -> np.ndarray:
        return self.data.y if self.targets is None else self.targets[:, a]

    def __call__(self, U: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objectives (len(a),) of problems ``a`` at U (d + 1, len(a)), and their gradients in U."""
        lam, curv = self.lam[a], self.curv[a]
        W = self.data.precondition(U, lam, curv, -0.5)
        Z = self.logits(self.data.X, W, a)
        M, y, n, w = self.masks[:, a], self._y(a), self.n[a], W[:-1]
        loss = (np.logaddexp(np.float32(0), Z) - y * Z) * M
        f = loss.sum(axis=0, dtype=np.float64) / n + 0.5 * lam * np.einsum("ij,ij->j", w, w)
        R = (expit(Z) - y) * (M / n.astype(np.float32))
        r_sum = R.sum(axis=0, dtype=np.float64)
        G = np.empty_like(W)
        G[:-1] = (self.data.XT @ R - self.mu[:, a] * r_sum) / self.sd[:, a] + lam * w
        G[-1] = r_sum
        # T is symmetric: the gradient in U is T times the gradient in W
        return f, self.data.precondition(G, lam, curv, -0.5)

    def solve(self, W: np.ndarray, a: np.ndarray, *, tol: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
        """Minimise problems ``a`` (len(a),) starting from weights W (d + 1, len(a)); return the weights
        (d + 1, len(a)) and the iterations each took (len(a),). ``tol``: stop about this far (in weighted
        mean log loss) from each minimum."""
        P = expit(self.logits(self.data.X, W, a))
        M = self.masks[:, a]
        # subtle: a confident model's curvature is far below the 1/4 of an untrained one; preconditioning
        # with 1/4 would stop the solver far from the minimum while its gradient looks small.
        self.curv[a] = np.maximum((P * (1 - P) * M).sum(axis=0, dtype=np.float64) / self.n[a], 1e-4)
        lam, curv = self.lam[a], self.curv[a]
        U, n_iter = lbfgs(self, self.data.precondition(W, lam, curv, 0.5), a, tol=tol, max_iter=max_iter)
        return self.data.precondition(U, lam, curv, -0.5), n_iter


# ------------------------------------------------------------------------------------------- one call
@dataclass(frozen=True)
class LogisticFit:
    """``coef`` float64 (d, m) and ``intercept`` (m,) on the *raw* features (P = sigmoid(X @ coef +
    intercept)); ``n_iter`` (m,) the solver iterations each problem took."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: np.ndarray

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(rows, m) P(target = 1) of X (rows, d) under each problem's fit."""
        return expit(np.asarray(X, dtype=np.float64) @ self.coef + self.intercept)


def fit_logistic(X: np.ndarray, y: np.ndarray, masks: np.ndarray | None = None, *, C: np.ndarray | float,
                 tol: float = 1e-10, max_iter: int = 1000, rank: int = 64, seed: int = 0) -> LogisticFit:
    """Fit m logistic regressions at once, one per column of ``masks``.

    ``X`` (N, d); ``y`` (N,) targets in [0, 1] shared by every problem, or (N, m) one column per problem;
    ``masks`` (N, m) non-negative row weights (default: one problem on every row); ``C`` scalar or (m,):
    scikit-learn's inverse regularisation strength. Each problem standardises the features by its own
    weighted rows' mean and standard deviation (as a StandardScaler fitted on them, in a pipeline with the
    logistic regression); the penalty applies to the standardised coefficients. ``tol``: distance (in
    weighted mean log loss) from each minimum at which a problem stops. Returns the coefficients on the raw
    features.
    """
    X = np.asarray(X, dtype=np.float32)
    N, d = X.shape
    masks = np.ones((N, 1), dtype=np.float32) if masks is None else np.asarray(masks, dtype=np.float32)
    if masks.ndim != 2 or masks.shape[0] != N or (masks < 0).any():
        raise ValueError(f"masks must be non-negative (N={N}, m), got shape {masks.shape}")
    m = masks.shape[1]
    y = np.asarray(y, dtype=np.float32)
    if y.shape not in ((N,), (N, m)) or not ((y >= 0) & (y <= 1)).all():
        raise ValueError(f"y must be ({N},) or ({N}, {m}) targets in [0, 1], got shape {y.shape}")
    C = np.broadcast_to(np.asarray(C, dtype=np.float64), (m,))
    if not (np.isfinite(C) & (C > 0)).all():
        raise ValueError(f"C must be finite and > 0, got {C}")
    n = masks.sum(axis=0, dtype=np.float64)
    if (n <= 0).any():
        raise ValueError(f"every problem needs rows of positive weight; problems {np.flatnonzero(n <= 0)} have none")
    # Condition the numbers with one global standardisation (exact per-problem standardisation on top).
    g_mean, g_sd = X.mean(axis=0, dtype=np.float64), X.std(axis=0, dtype=np.float64)
    g_sd[g_sd == 0] = 1.0
    Xs = ((X - g_mean) / g_sd).astype(np.float32)
    mu = (masks.T @ Xs).T / n  # (d, m): each problem's weighted mean and sd of the features
    sd = np.sqrt(np.maximum((masks.T @ (Xs * Xs)).T / n - mu * mu, 0.0))
    sd[sd < 1e-6] = 1.0
    design = Design(Xs, y if y.ndim == 1 else y[:, 0], rank=rank, total=float((Xs * Xs).sum(axis=1).mean()),
                    seed=seed)
    problems = LogisticProblems(design, masks, mu.astype(np.float32), sd.astype(np.float32),
                                targets=None if y.ndim == 1 else y)
    problems.lam[:] = 1.0 / (C * n)
    a = np.arange(m)
    W0 = np.zeros((d + 1, m))
    t = ((y[:, None] if y.ndim == 1 else y) * masks).sum(axis=0, dtype=np.float64) / n
    W0[-1] = np.log(np.clip(t, 1e-6, 1 - 1e-6) / (1 - np.clip(t, 1e-6, 1 - 1e-6)))
    W, n_iter = problems.solve(W0, a, tol=tol, max_iter=max_iter)
    # back to the raw features: x_s = (x - g_mean) / g_sd, then (x_s - mu) / sd
    coef = W[:-1] / sd / g_sd[:, None]
    intercept = W[-1] - ((mu + g_mean[:, None] / g_sd[:, None]) * (W[:-1] / sd)).sum(axis=0)
    return LogisticFit(coef=coef, intercept=intercept, n_iter=n_iter)
