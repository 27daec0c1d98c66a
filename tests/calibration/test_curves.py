"""Smooth curves from sufficient statistics: checked against direct least squares, the KKT
conditions of the monotone fit, and additivity of the statistics."""

import numpy as np
import pytest
import torch

from dask_assign.calibration.curves import (
    Curve,
    _increasing,
    curve_statistics,
    fit_curve,
    knot_grid,
)


def stats(x, y, w, knots):
    t = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
    return curve_statistics(t(x), t(y), t(w), knots)


def hat_matrix(x, knots):
    """The piecewise-linear basis, built the slow way: one column per knot."""
    eye = np.eye(len(knots))
    return np.column_stack([Curve(tuple(knots), tuple(e))(x) for e in eye])


def test_curve_evaluates_alike_in_numpy_and_torch_and_extends_linearly():
    c = Curve((0.0, 2.0, 5.0), (1.0, 3.0, 3.0))
    x = np.array([-1.0, 0.0, 1.0, 2.0, 4.0, 6.0, np.nan])
    expected = [0.0, 1.0, 2.0, 3.0, 3.0, 3.0, np.nan]
    np.testing.assert_allclose(c(x), expected)
    np.testing.assert_allclose(c(torch.as_tensor(x)).numpy(), expected)


def test_equal_knots_take_the_arithmetic_path_with_the_same_values(rng):
    knots = tuple(float(k) for k in knot_grid(0.5, 14.5, 12))
    c = Curve(knots, tuple(rng.normal(0, 1, 12)))
    x = np.r_[rng.uniform(-3, 18, 5000), knots, np.nan]
    assert c._equally_spaced() and not Curve((0.0, 2.0, 5.0), (1.0, 3.0, 3.0))._equally_spaced()
    np.testing.assert_allclose(c(torch.as_tensor(x)).numpy(), c(x), rtol=1e-12, atol=1e-12)


def test_statistics_are_the_normal_equations_and_add_up_over_splits(rng):
    x = rng.uniform(0, 10, 300)
    y = np.sin(x) + rng.normal(0, 0.1, x.size)
    w = rng.uniform(0, 1, x.size)
    knots = knot_grid(0, 10, 7)
    s = np.asarray(stats(x, y, w, knots))
    b = hat_matrix(x, knots)
    n = len(knots)
    gram = b.T @ (w[:, None] * b)
    np.testing.assert_allclose(s[:n], np.diag(gram), atol=1e-10)
    np.testing.assert_allclose(s[n:2 * n - 1], np.diag(gram, 1), atol=1e-10)
    np.testing.assert_allclose(s[2 * n - 1:3 * n - 1], b.T @ (w * y), atol=1e-10)
    halves = np.add(stats(x[:100], y[:100], w[:100], knots),
                    stats(x[100:], y[100:], w[100:], knots))
    np.testing.assert_allclose(halves, s, rtol=1e-12)


def test_fit_follows_a_bend_and_keeps_a_line_straight(rng):
    x = rng.uniform(0, 14, 800)
    knots = knot_grid(0, 14, 12)
    grid = np.linspace(0.5, 13.5, 40)

    def bent(v):
        return 0.04 + 1.012 * v + 0.1 * np.sin(2 * np.pi * v / 14)

    fit = fit_curve(stats(x, bent(x) + rng.normal(0, 0.05, x.size), np.ones(x.size), knots),
                    knots)
    assert np.abs(fit.curve(grid) - bent(grid)).max() < 0.03
    assert fit.sigma == pytest.approx(0.05, rel=0.15)
    line = fit_curve(stats(x, 2 + 0.9 * x + rng.normal(0, 0.05, x.size), np.ones(x.size),
                           knots), knots)
    assert np.abs(np.diff(line.curve.values, 2)).max() < 0.01  # no invented bend
    assert np.abs(line.curve(grid) - (2 + 0.9 * grid)).max() < 0.02


def test_monotone_fit_meets_its_optimality_conditions(rng):
    """Data that rise, then fall: the monotone fit is non-decreasing, and it is the optimum
    of its constrained problem (KKT: zero gradient on free increments, none pointing into
    the feasible side on the bound ones)."""
    x = rng.uniform(0, 10, 500)
    y = np.where(x < 5, x, 5 - 0.5 * (x - 5)) + rng.normal(0, 0.1, x.size)
    knots = knot_grid(0, 10, 9)
    fit = fit_curve(stats(x, y, np.ones(x.size), knots), knots, monotone=True)
    v = np.asarray(fit.curve.values)
    assert np.all(np.diff(v) >= -1e-12)
    assert v[:4] == pytest.approx(knots[:4], abs=0.15)  # the rise is kept
    # KKT on a random small problem, against the solver directly.
    a = rng.normal(size=(8, 8))
    m = a @ a.T + 8 * np.eye(8)
    c = rng.normal(size=8) * 5
    u = _increasing(m, c)
    g = m @ u - c
    assert np.all(u[1:] >= 0)
    assert abs(g[0]) < 1e-9
    free = u[1:] > 1e-12
    assert np.all(np.abs(g[1:][free]) < 1e-9)
    assert np.all(g[1:][~free] >= -1e-9)


def test_too_little_data_fits_nothing():
    knots = knot_grid(0, 1, 4)
    assert fit_curve(stats([0.5], [1.0], [1.0], knots), knots) is None
