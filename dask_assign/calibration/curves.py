"""Smooth curves fitted from sufficient statistics: the RT map and the mass-offset curve.

A curve is piecewise linear on fixed, equally spaced knots (linear beyond the end knots). Its
least-squares fit needs only a few sums over the data -- a tridiagonal Gram matrix and a
right-hand side -- so each partition contributes its sums and the client fits the curve
(the M-step of the calibration). A second-difference penalty keeps the curve smooth; its
weight is chosen by generalised cross-validation, so a straight line comes out where the data
show no bend, and a curve where they do. The RT map can be made monotone (elution order is
kept between library and run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

from dask_assign.backends import compiled

#: Each degree of freedom counts this much in the cross-validation score: 1.4 rather than 1
#: curbs GCV's known habit of picking too wiggly a curve on small samples.
GCV_GAMMA = 1.4


@dataclass(frozen=True)
class Curve:
    """A piecewise-linear curve through ``(knots[i], values[i])``, linear beyond the ends.

    Examples
    --------
    >>> c = Curve((0.0, 10.0), (1.0, 21.0))
    >>> float(c(np.array([5.0]))[0]), float(c(np.array([20.0]))[0])
    (11.0, 41.0)
    """

    knots: tuple
    values: tuple

    @classmethod
    def line(cls, intercept: float, slope: float, lo: float, hi: float, n_knots: int) -> Curve:
        """The straight line ``intercept + slope * x`` on ``n_knots`` knots over [lo, hi]."""
        knots = knot_grid(lo, hi, n_knots)
        return cls(tuple(float(k) for k in knots),
                   tuple(float(intercept + slope * k) for k in knots))

    def __call__(self, x, kernel: str = "auto"):
        """Evaluate at ``x`` (numpy array or torch tensor; NaN stays NaN). ``kernel``: a
        float64 CPU tensor goes through one compiled pass, the same arithmetic as torch's
        (:func:`dask_assign.backends.compiled`); the run's calibration is evaluated at every
        ion of the library, millions, many times a run."""
        if isinstance(x, torch.Tensor):
            if x.dtype == torch.float64 and len(self.knots) > 1 and compiled(x, kernel=kernel):
                k = np.asarray(self.knots, dtype=np.float64)
                v = np.asarray(self.values, dtype=np.float64)
                h = (k[-1] - k[0]) / (k.size - 1) if self._equally_spaced() else 0.0
                out = _piecewise(x.detach().contiguous().numpy(), k, v,
                                 (v[1:] - v[:-1]) / (k[1:] - k[:-1]), h)
                return torch.from_numpy(out)
            k = torch.as_tensor(self.knots, dtype=x.dtype, device=x.device)
            v = torch.as_tensor(self.values, dtype=x.dtype, device=x.device)
            if self._equally_spaced():
                # Equal knots (as knot_grid makes them): the segment by arithmetic, not a
                # binary search; the run's calibration is evaluated at every ion (millions).
                h = (k[-1] - k[0]) / (k.numel() - 1)
                i = torch.floor((x - k[0]) / h).clamp_(0, k.numel() - 2)
                i = i.nan_to_num_(0).to(torch.int64)
            else:
                i = torch.bucketize(x, k[1:-1])
            slope = (v[1:] - v[:-1]) / (k[1:] - k[:-1])
            return v[i] + slope[i] * (x - k[i])
        x = np.asarray(x, dtype=np.float64)
        k = np.asarray(self.knots)
        v = np.asarray(self.values)
        i = np.clip(np.searchsorted(k, x, side="right") - 1, 0, len(k) - 2)
        return v[i] + (v[i + 1] - v[i]) * (x - k[i]) / (k[i + 1] - k[i])

    def _equally_spaced(self) -> bool:
        gaps = np.diff(self.knots)
        return bool(np.all(np.abs(gaps - gaps[0]) <= 1e-9 * np.abs(gaps[0])))

    def max_difference(self, other: Curve) -> float:
        """Largest difference of the two curves at their knots (same knots assumed)."""
        return float(np.max(np.abs(np.subtract(self.values, other.values))))


@numba.njit(cache=True, nogil=True)
def _piecewise(x, k, v, slope, h):
    """The compiled twin of the torch path, element by element: the segment by arithmetic
    where the knots are ``h`` apart (``h > 0``), else by bisection of the inner knots
    (``torch.bucketize``'s rule: the first knot not below ``x``)."""
    out = np.empty(x.size)
    last = k.size - 2
    inner = k[1:-1]
    for j in range(x.size):
        xj = x[j]
        if xj != xj:
            i = 0 if h > 0 else last
        elif h > 0:
            f = np.floor((xj - k[0]) / h)
            i = 0 if f < 0 else (last if f > last else int(f))
        else:
            i = np.searchsorted(inner, xj)
        out[j] = v[i] + slope[i] * (xj - k[i])
    return out


def knot_grid(lo: float, hi: float, n_knots: int) -> np.ndarray:
    """``n_knots`` equally spaced knots over [lo, hi] (widened when the range is empty)."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_knots)


def n_statistics(n_knots: int) -> int:
    """Length of the vector returned by :func:`curve_statistics`."""
    return 3 * n_knots + 1


def curve_statistics(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, knots) -> list:
    """Weighted sums that fix a least-squares curve on ``knots``.

    Parameters
    ----------
    x, y, w : torch.Tensor
        Abscissa, ordinate and weight of each point.
    knots : sequence of float

    Returns
    -------
    list of float
        The Gram matrix's diagonal (K), its upper diagonal (K - 1), the right-hand side (K),
        ``sum(w * y * y)`` and ``sum(w)``; sums over disjoint sets of points add up.
    """
    k = torch.as_tensor(knots, dtype=x.dtype, device=x.device)
    n = k.numel()
    i = (torch.bucketize(x, k[1:-1]) if n > 2 else torch.zeros_like(x, dtype=torch.int64))
    t = (x - k[i]) / (k[i + 1] - k[i])
    a, b = w * (1 - t), w * t
    zeros = torch.zeros(n, dtype=x.dtype, device=x.device)
    diag = zeros.index_add(0, i, a * (1 - t)).index_add(0, i + 1, b * t)
    upper = zeros[:-1].index_add(0, i, a * t)
    rhs = zeros.index_add(0, i, a * y).index_add(0, i + 1, b * y)
    return (diag.tolist() + upper.tolist() + rhs.tolist()
            + [float((w * y * y).sum()), float(w.sum())])


@dataclass(frozen=True)
class CurveFit:
    """A fitted curve with its residual spread and the penalty chosen."""

    curve: Curve
    sigma: float
    penalty: float


def _second_difference(n: int) -> np.ndarray:
    d = np.zeros((max(n - 2, 0), n))
    for r in range(n - 2):
        d[r, r:r + 3] = (1.0, -2.0, 1.0)
    return d.T @ d


def _increasing(m: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Minimise ``0.5 u'Mu - c'u`` with ``u[1:] >= 0`` (Lawson-Hanson active set, K small)."""
    n = c.size
    bound = np.ones(n, dtype=bool)  # u[k] held at 0
    bound[0] = False
    u = np.zeros(n)
    u[0] = c[0] / m[0, 0]
    for _ in range(10 * n):
        grad = m @ u - c
        candidates = np.flatnonzero(bound & (grad < -1e-12 * (1 + abs(c).max())))
        if candidates.size == 0:
            break
        bound[candidates[np.argmin(grad[candidates])]] = False
        while True:
            free = ~bound
            z = np.zeros(n)
            z[free] = np.linalg.solve(m[np.ix_(free, free)], c[free])
            bad = free & (z < 0)
            bad[0] = False
            if not bad.any():
                u = z
                break
            # Step from u toward z as far as feasibility allows, then pin what hit zero.
            alpha = np.min(u[bad] / (u[bad] - z[bad]))
            u = u + alpha * (z - u)
            bound |= free & (u <= 1e-14)
            bound[0] = False
            u[bound] = 0.0
    return u


def fit_curve(stats, knots, monotone: bool = False, floor: float = 0.0,
              min_weight: float = 5.0) -> CurveFit | None:
    """Fit a smooth curve from summed :func:`curve_statistics`.

    Parameters
    ----------
    stats : sequence of float
        Summed statistics (``3 K + 1`` values).
    knots : sequence of float
    monotone : bool
        Constrain the curve to be non-decreasing.
    floor : float
        Smallest residual spread returned.
    min_weight : float
        Fewer weighted points than this fit nothing (None).

    Returns
    -------
    CurveFit or None
    """
    s = np.asarray(stats, dtype=np.float64)
    n = len(knots)
    diag, upper, rhs = s[:n], s[n:2 * n - 1], s[2 * n - 1:3 * n - 1]
    syy, total = s[3 * n - 1], s[3 * n]
    if total < min_weight:
        return None
    gram = np.diag(diag) + np.diag(upper, 1) + np.diag(upper, -1)
    pen = _second_difference(n)
    scale = max(np.trace(gram) / n, 1e-12)
    ridge = 1e-9 * scale * np.eye(n)  # knots without data: the penalty extrapolates them

    def solve(lam):
        system = gram + lam * pen + ridge
        theta = np.linalg.solve(system, rhs)
        rss = max(syy - 2 * theta @ rhs + theta @ gram @ theta, 0.0)
        dof = float(np.trace(np.linalg.solve(system, gram)))
        return theta, rss, dof, system

    # Generalised cross-validation over a grid of penalties (relative to the data's weight).
    best = None
    for lam in scale * np.logspace(-3, 5, 17):
        theta, rss, dof, system = solve(lam)
        if total - GCV_GAMMA * dof <= 1:
            continue
        gcv = total * rss / (total - GCV_GAMMA * dof) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam, theta, rss, dof, system)
    if best is None:  # too few points for any curve: the flattest one
        lam = scale * 1e5
        theta, rss, dof, system = solve(lam)
        best = (0.0, lam, theta, rss, dof, system)
    _, lam, theta, rss, dof, system = best
    if monotone and np.any(np.diff(theta) < 0):
        # theta = L u with L lower-triangular ones: u[0] is the start, u[1:] the increments.
        lower = np.tril(np.ones((n, n)))
        u = _increasing(lower.T @ system @ lower, lower.T @ rhs)
        theta = lower @ u
        rss = max(syy - 2 * theta @ rhs + theta @ gram @ theta, 0.0)
    sigma = float(np.sqrt(rss / max(total - dof, 1.0)))
    return CurveFit(Curve(tuple(float(k) for k in knots), tuple(float(v) for v in theta)),
                    max(sigma, floor), float(lam / scale))
