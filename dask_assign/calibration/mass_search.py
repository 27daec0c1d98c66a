"""The mass search: where a run's systematic mass error lies, before any window is trusted.

Real instruments can be off by more than a search window: an uncalibrated Orbitrap run may be
-15 ppm at m/z 100 and 0 above m/z 300. So before the EM fits the error models, a wide,
mass-only search (RT ignored) pairs the sampled peaks with the library's monoisotopic ions
within ``mass_search_ppm``; every pair votes for its (m/z, ppm error) cell. Chance pairs spread
evenly over the errors, true ones pile up along the run's offset curve. The curve is then the
smoothest path through the m/z segments that collects the most excess votes (dynamic
programming), and the EM starts from it with its windows centred on it. Votes are sums, so
the search gives the same curve however the peaks are partitioned.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from dask_assign.calibration.em import MASS_KNOTS
from dask_assign.calibration.peaks import sampled
from dask_assign.config import AssignConfig, Calibration
from dask_assign.filtering.join import MassBinIndex, batches_by_pairs, range_join, window_bounds
from dask_assign.filtering.space import SearchSpace
from dask_assign.scoring.passes import peak_tensors

log = logging.getLogger(__name__)

#: Width of the error bins (ppm) and fine log-m/z bins over the run's m/z range.
ERROR_BIN = 0.5


MZ_BINS = 64


#: Segments of equal vote weight in which the curve is one value.
SEGMENTS = 8


#: Cost of the path per ppm of change between neighbouring segments, against a segment's
#: best score of 1: a bend of tens of ppm over the range is allowed where the votes show it,
#: a jump made of chance pairs is not.
BEND_COST = 0.02


#: A segment counts as showing a ridge when its best excess holds at least this many votes.
MIN_EXCESS = 3.0


VOTE_COLUMNS = {"mz_bin": "int64", "err_bin": "int64", "w": "float64"}


def mz_edges(mz_min: float, mz_max: float) -> np.ndarray:
    """Edges of the fine log-m/z bins over the run's range."""
    lo, hi = max(mz_min, 1e-3), max(mz_max, mz_min * 1.001, 1e-3 * 1.001)
    return np.geomspace(lo, hi, MZ_BINS + 1)


def mass_votes(peak_mz: torch.Tensor, ion_mz: torch.Tensor, search_ppm: float,
               edges: np.ndarray, max_pairs: int) -> pd.DataFrame:
    """Votes of some peaks for the mass-offset curve.

    Parameters
    ----------
    peak_mz : torch.Tensor (float64)
        The voting peaks.
    ion_mz : torch.Tensor (float64)
        Monoisotopic ions of the library, sorted.
    search_ppm : float
        Half-width of the search (ppm).
    edges : numpy.ndarray
        From :func:`mz_edges`.
    max_pairs : int
        Pairs handled at once.

    Returns
    -------
    pandas.DataFrame
        ``mz_bin``, ``err_bin`` (from ``-search_ppm`` in steps of ``ERROR_BIN``), ``w``:
        summed weights; a peak's votes share one unit.
    """
    n_err = int(round(2 * search_ppm / ERROR_BIN))
    total = np.zeros(MZ_BINS * n_err)
    index = MassBinIndex.build(ion_mz.cpu().numpy(), search_ppm)
    lo, hi = window_bounds(peak_mz, index)
    inf = torch.full_like(peak_mz, float("inf"))
    ion_rt = torch.full_like(ion_mz, float("nan"))
    for a, b in batches_by_pairs(lo, hi, max_pairs):
        pi, ii = range_join(peak_mz[a:b], inf[a:b], ion_mz, ion_rt, index, search_ppm, 1.0)
        if pi.numel() == 0:
            continue
        mz = peak_mz[a:b][pi].cpu().numpy()
        ion = ion_mz[ii].cpu().numpy()
        err = (mz - ion) / ion * 1e6
        weight = 1.0 / np.bincount(pi.cpu().numpy())[pi.cpu().numpy()]
        eb = np.clip(np.floor((err + search_ppm) / ERROR_BIN).astype(np.int64), 0, n_err - 1)
        mb = np.clip(np.searchsorted(edges, mz, side="right") - 1, 0, MZ_BINS - 1)
        total += np.bincount(mb * n_err + eb, weights=weight, minlength=total.size)
    nz = np.flatnonzero(total)
    return pd.DataFrame({"mz_bin": nz // n_err, "err_bin": nz % n_err,
                         "w": total[nz]}).astype(VOTE_COLUMNS)


def offset_curve(votes: pd.DataFrame, search_ppm: float, edges: np.ndarray):
    """The mass-offset curve the votes show: ``(knots, offsets)`` at the centres of
    ``SEGMENTS`` segments of equal vote weight, or ``None`` when no segment shows a ridge.

    Each segment's votes, smoothed over three error bins, less their median (the chance
    level), make its score, scaled to a best of 1; the path maximises the summed scores less
    ``BEND_COST`` per ppm of change between segments.
    """
    n_err = int(round(2 * search_ppm / ERROR_BIN))
    grid = np.zeros((MZ_BINS, n_err))
    np.add.at(grid, (votes["mz_bin"].to_numpy(), votes["err_bin"].to_numpy()),
              votes["w"].to_numpy())
    weight = grid.sum(axis=1)
    if weight.sum() <= 0:
        return None
    # Segments of equal vote weight (a fine bin is never split).
    cum = np.cumsum(weight) / weight.sum()
    seg = np.minimum((cum * SEGMENTS - 1e-9).astype(np.int64), SEGMENTS - 1)
    seg = np.maximum.accumulate(seg)
    used = np.unique(seg[weight > 0])
    scores, centres, strong = [], [], []
    for s in used:
        rows = seg == s
        h = grid[rows].sum(axis=0)
        h = h + np.roll(h, 1) + np.roll(h, -1)
        excess = np.clip(h - np.median(h), 0, None)
        strong.append(excess.max() >= MIN_EXCESS)
        scores.append(excess / excess.max() if excess.max() > 0 else excess)
        mids = np.sqrt(edges[:-1] * edges[1:])[rows]
        centres.append(float(np.average(mids, weights=np.maximum(weight[rows], 1e-12))))
    if not any(strong):
        return None
    scores = np.array([s if ok else np.zeros_like(s) for s, ok in zip(scores, strong,
                                                                      strict=True)])
    err = -search_ppm + (np.arange(n_err) + 0.5) * ERROR_BIN
    path = _best_path(scores, BEND_COST * ERROR_BIN)
    # The curve reaches the first and last voting peaks, flat beyond the outer centres.
    voted = np.flatnonzero(weight > 0)
    knots = np.r_[edges[voted[0]], centres, edges[voted[-1] + 1]]
    values = err[np.r_[path[0], path, path[-1]]]
    return tuple(float(k) for k in knots), tuple(float(v) for v in values)


def _best_path(scores: np.ndarray, step_cost: float) -> np.ndarray:
    """Viterbi: the bin of each row maximising ``sum(scores[row, bin]) - step_cost *
    sum(|bin change|)``."""
    n_rows, n_bins = scores.shape
    bins = np.arange(n_bins)
    penalty = step_cost * np.abs(bins[:, None] - bins[None, :])
    value = scores[0].copy()
    back = np.zeros((n_rows, n_bins), dtype=np.int64)
    for r in range(1, n_rows):
        cand = value[None, :] - penalty  # [to, from]
        back[r] = np.argmax(cand, axis=1)
        value = cand[bins, back[r]] + scores[r]
    path = np.empty(n_rows, dtype=np.int64)
    path[-1] = int(np.argmax(value))
    for r in range(n_rows - 1, 0, -1):
        path[r - 1] = back[r, path[r]]
    return path


def mass_knots(knots: tuple, n_knots: int) -> np.ndarray:
    """``n_knots`` knots spread like the search's segment centres (by interpolation in their
    ranks), so the fitted curve has its knots where the peaks are."""
    k = np.asarray(knots, dtype=np.float64)
    if k.size < 2:
        return k
    at = np.linspace(0, k.size - 1, n_knots)
    return np.interp(at, np.arange(k.size), k)


#: Peaks the mass search looks at, at most (a deterministic sample by peak id).
MASS_SAMPLE = 50_000


def search_ppm(config: AssignConfig) -> float:
    """Half-width (ppm) of the mass search: ``mass_search_ppm``, and at least twice the
    candidate window."""
    return max(config.mass_search_ppm, 2 * config.ppm)


def mass_search(part, space: SearchSpace, config: AssignConfig, fraction: float,
                edges: np.ndarray) -> pd.DataFrame:
    """Votes of one partition's sampled peaks for the mass-offset curve (see
    :mod:`dask_assign.calibration.mass_search`): mass-only pairs with the monoisotopic ions."""
    keep = sampled(part, fraction)
    mz = peak_tensors(part, config.device)["mz"]
    mz = mz[torch.as_tensor(keep, device=mz.device)]
    ion_mz = torch.as_tensor(space.mz[space.isotope == 0], device=mz.device)
    return mass_votes(mz, ion_mz, search_ppm(config), edges, config.max_pairs)


def start_mass_curve(votes: pd.DataFrame, start: Calibration, config: AssignConfig,
                     edges: np.ndarray) -> Calibration:
    """``start`` with the mass-offset curve the votes show (knots where the peaks are), or
    as it is when they show none."""
    found = offset_curve(votes, search_ppm(config), edges)
    if found is None:
        return start
    knots = mass_knots(found[0], MASS_KNOTS)
    offsets = np.interp(knots, found[0], found[1])
    log.info("mass search: offset %s ppm at m/z %s", np.round(offsets, 1).tolist(),
             np.round(knots).astype(int).tolist())
    return start.replace(mass_knots=tuple(knots), mass_offsets=tuple(offsets))
