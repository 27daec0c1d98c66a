"""Where an unlisted isomer elutes, learned from the library's own isomers.

A peak that matches a library ion may be a compound of the same formula missing from the
library. How likely that is at a given RT residual (peak RT minus the library compound's
mapped RT) depends on where isomers elute relative to each other, and a library says it: its
isomer families (compounds sharing a formula) show how far apart isomers elute on this
chromatography. Compounds missing from a library are isomers of its compounds about as often,
and elute about as far from them, as its own isomers do (checked on the shared RepoRT sets:
the RT distance of held-out compounds to their nearest library isomer follows that of the
library's isomer pairs).

So the RT density of an unlisted isomer, relative to a candidate, is the distribution of the
library's isomer-pair RT differences (mapped to the run), smoothed by the run's RT error model,
mixed with the uniform density of "anywhere in the run" in proportion to how little the
library says (a library without isomers says nothing: uniform).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dask_assign.calibration.curves import Curve
from dask_assign.scoring.scorer import tail_log_density

#: Compounds' worth of the uniform density mixed in: a library with a few isomer pairs moves
#: the model little from "anywhere in the run".
PRIOR_COMPOUNDS = 20


#: Largest isomer family used whole (a larger one is subsampled, seeded): the pairs of a family
#: grow with its square.
MAX_FAMILY = 200


#: Grid points over the residual range [-rt_span, rt_span] at most; fewer where the run's RT
#: spread is broad (the step is at most half the spread).
MAX_GRID = 8193


def isomer_rt_differences(formula: pd.Series, rt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RT differences of every ordered pair of library isomers, and their weights.

    Parameters
    ----------
    formula : pandas.Series
        Each compound's formula (Hill notation; missing: a compound of its own).
    rt : numpy.ndarray
        Each compound's RT on the run's scale (NaN: unknown, left out).

    Returns
    -------
    diff, weight : numpy.ndarray
        ``rt[j] - rt[i]`` for isomers ``i != j``; each compound's differences weigh 1 in all.

    Examples
    --------
    >>> d, w = isomer_rt_differences(pd.Series(["C6H12O6", "C6H12O6", "C5H10O5"]),
    ...                              np.array([1.0, 3.0, 2.0]))
    >>> d.tolist(), w.tolist()
    ([2.0, -2.0], [1.0, 1.0])
    """
    ok = formula.notna().to_numpy() & np.isfinite(rt)
    code = pd.factorize(formula[ok])[0]
    rt = rt[ok]
    order = np.argsort(code, kind="stable")
    code, rt = code[order], rt[order]
    bounds = np.flatnonzero(np.diff(code)) + 1
    rng = np.random.default_rng(0)
    diffs, weights = [], []
    for family in np.split(rt, bounds):
        if family.size < 2:
            continue
        if family.size > MAX_FAMILY:
            family = rng.choice(family, MAX_FAMILY, replace=False)
        d = np.subtract.outer(family, family)
        off = ~np.eye(family.size, dtype=bool)
        diffs.append(d.T[off])
        weights.append(np.full(off.sum(), 1.0 / (family.size - 1)))
    if not diffs:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(diffs), np.concatenate(weights)


def isomer_rt_curve(diff: np.ndarray, weight: np.ndarray, rt_span: float, sigma: float,
                    tail_share: float = 0.0, tail_sigma: float = 1.0) -> Curve:
    """log density of an unlisted isomer's RT residual, as a curve over
    ``[-rt_span, rt_span]``.

    Parameters
    ----------
    diff, weight : numpy.ndarray
        Library isomer-pair RT differences (:func:`isomer_rt_differences`).
    rt_span : float
        RT range of the run (minutes); the uniform density is ``1 / rt_span``.
    sigma, tail_share, tail_sigma : float
        The run's RT error model (core spread, share and spread of library RTs that are off):
        a residual adds the candidate's own RT error to the isomers' distance.

    Returns
    -------
    Curve
        Equally spaced knots; the value at a residual is its log density.

    Examples
    --------
    Isomers 2 min apart: an unlisted isomer is likelier 2 min off than anywhere in the run,
    and less likely at the compound's own RT.

    >>> c = isomer_rt_curve(np.array([2.0, -2.0] * 50), np.ones(100), 10.0, 0.1)
    >>> bool(c(np.array([2.0]))[0] > -math.log(10.0) > c(np.array([0.0]))[0])
    True
    """
    uniform = -math.log(rt_span)
    n_compounds = float(weight.sum())
    step = max(min(sigma, tail_sigma) / 2, 2 * rt_span / (MAX_GRID - 1))
    half = int(math.ceil(rt_span / step))
    knots = np.arange(-half, half + 1) * step
    if n_compounds == 0:
        return Curve(tuple(knots.tolist()), (uniform,) * knots.size)
    # Histogram on the grid, then smoothed by the RT error model (normal core, t tail): the
    # convolution by FFT over a grid padded against wrap-around.
    edges = np.r_[knots - step / 2, knots[-1] + step / 2]
    hist = np.histogram(np.clip(diff, knots[0], knots[-1]), edges, weights=weight)[0]
    hist = hist / (hist.sum() * step)
    n = 2 * knots.size
    lag = np.fft.fftfreq(n, d=1.0 / (n * step))
    kernel = (1 - tail_share) * _gaussian(lag, sigma) \
        + tail_share * np.exp(tail_log_density(lag, tail_sigma))
    smooth = np.fft.irfft(np.fft.rfft(hist, n) * np.fft.rfft(kernel * step, n), n)
    smooth = np.maximum(smooth[: knots.size], 0.0)
    mix = (n_compounds * smooth + PRIOR_COMPOUNDS * math.exp(uniform)) / (
        n_compounds + PRIOR_COMPOUNDS)
    return Curve(tuple(knots.tolist()), tuple(np.log(mix).tolist()))


def _gaussian(x, sigma):
    return np.exp(-0.5 * (x / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def with_isomer_rt(calibration, space):
    """The calibration with the isomer RT model of this library on this run.

    Parameters
    ----------
    calibration : Calibration
        Fitted: its RT map takes the library RTs to the run, its RT error model smooths.
    space : SearchSpace
        The library's compounds (formulas) and ions (library RTs, minutes).

    Returns
    -------
    Calibration
    """
    n = len(space.compounds)
    rt = np.full(n, np.nan)
    rt[space.compound] = space.rt
    known = np.isfinite(rt)
    rt[known] = calibration.rt_map(rt[known])
    diff, weight = isomer_rt_differences(space.compounds["formula"].astype("string"), rt)
    curve = isomer_rt_curve(diff, weight, calibration.rt_span, calibration.rt_sigma,
                            calibration.rt_tail_share, calibration.rt_tail_sigma)
    return calibration.replace(isomer_rt_knots=curve.knots, isomer_rt_log_density=curve.values)
