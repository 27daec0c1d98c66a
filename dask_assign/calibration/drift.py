"""The drift search: the library-to-run RT map found before the EM, by votes.

Every mass match of a sample of peaks (RT ignored) votes, for each slope tried, for the shift
``rt_peak - slope * rt_library``. True matches pile up on one (slope, shift); false ones
spread out. The compiled loop (CPU) and torch (CUDA) count the same votes."""

from __future__ import annotations

import numba
import numpy as np
import pandas as pd
import torch

from dask_assign.backends import compiled
from dask_assign.calibration.peaks import sampled
from dask_assign.config import AssignConfig, Calibration
from dask_assign.filtering.join import batches_by_pairs, range_join, window_bounds
from dask_assign.filtering.space import SearchSpace, centred_mz
from dask_assign.scoring.passes import peak_tensors

#: Slopes tried by the drift search (library RT -> run RT).
DRIFT_SLOPES = np.round(np.arange(0.80, 1.2001, 0.005), 3)


#: Width of the shift bins of the drift search (minutes).
DRIFT_BIN = 0.05


#: Peaks the drift search looks at, at most (a deterministic sample by peak id).
DRIFT_SAMPLE = 50_000


VOTE_COLUMNS = {"slope": "int64", "shift": "int64", "w": "float64"}


def _shift_bins(config: AssignConfig) -> int:
    """Shift bins of the drift search: ``DRIFT_BIN`` wide over +/- ``max_drift``."""
    return int(round(2 * config.max_drift / DRIFT_BIN))


def drift_votes(part, space: SearchSpace, config: AssignConfig, fraction: float,
                calibration: Calibration | None = None, kernel: str = "auto"):
    """Votes of one partition for the RT map: every mass match (RT ignored) of the sampled
    peaks votes, for each slope tried, for the shift ``rt_peak - slope * rt_library``.

    True matches pile up on one (slope, shift); false ones spread out. A peak's votes share
    one unit of weight, so peaks with many candidates do not dominate.

    Parameters
    ----------
    part : pandas.DataFrame or cudf.DataFrame
    space : SearchSpace
    config : AssignConfig
    fraction : float
        Share of the peaks that vote (:func:`sampled`).
    calibration : Calibration, optional
        Its mass-offset curve centres the mass windows (none when omitted).
    kernel : {"auto", "numba", "torch"}
        How the votes are counted: a compiled loop (``"auto"`` on CPU) or torch (on CUDA).

    Returns
    -------
    pandas.DataFrame
        ``slope`` (index into ``DRIFT_SLOPES``), ``shift`` (bin), ``w``: summed weights.
    """
    keep = sampled(part, fraction)
    peaks = peak_tensors(part, config.device)
    peaks = {k: v[torch.as_tensor(keep, device=v.device)] for k, v in peaks.items()}
    ions = space.tensors(config.device)
    n_bins = _shift_bins(config)
    total = torch.zeros(len(DRIFT_SLOPES) * n_bins, dtype=torch.float64)
    lo, hi = window_bounds(peaks["mz"], space.bins)
    # Every pair votes once per slope: batches hold that many times fewer pairs.
    budget = max(config.max_pairs // len(DRIFT_SLOPES), 1)
    for a, b in batches_by_pairs(lo, hi, budget):
        sub = {k: v[a:b] for k, v in peaks.items()}
        centred = sub["mz"] if calibration is None else centred_mz(sub["mz"], calibration)
        pi, ii = range_join(centred, sub["rt"], ions["mz"], ions["rt"], space.bins,
                            config.ppm, float("inf"))
        has_rt = ~torch.isnan(ions["rt"][ii])
        pi, ii = pi[has_rt], ii[has_rt]
        if pi.numel() == 0:
            continue
        weight = 1.0 / torch.bincount(pi).to(torch.float64)[pi]
        peak_rt, ion_rt = sub["rt"][pi], ions["rt"][ii]
        if compiled(peak_rt, ion_rt, kernel=kernel):
            _vote_loop(peak_rt.cpu().numpy(), ion_rt.cpu().numpy(), weight.cpu().numpy(),
                       DRIFT_SLOPES, config.max_drift, DRIFT_BIN, n_bins, total.numpy())
        else:
            total += _votes_torch(peak_rt, ion_rt, weight, config.max_drift, n_bins).cpu()
    nz = torch.nonzero(total).flatten()
    return pd.DataFrame({"slope": (nz // n_bins).numpy(), "shift": (nz % n_bins).numpy(),
                         "w": total[nz].numpy()}).astype(VOTE_COLUMNS)


@numba.njit(cache=True, nogil=True)
def _vote_loop(peak_rt, ion_rt, weight, slopes, max_drift, width, n_bins, total):
    # The torch twin's formulas, pair by pair: no [slopes x pairs] temporaries (the cost they
    # had: benchmarks/NOTES.md).
    for s in range(slopes.size):
        base = s * n_bins
        for j in range(peak_rt.size):
            b = np.floor((peak_rt[j] - slopes[s] * ion_rt[j] + max_drift) / width)
            if 0 <= b < n_bins:
                total[base + np.int64(b)] += weight[j]


def _votes_torch(peak_rt, ion_rt, weight, max_drift: float, n_bins: int) -> torch.Tensor:
    slopes = torch.as_tensor(DRIFT_SLOPES, dtype=torch.float64, device=peak_rt.device)
    shift = peak_rt[None, :] - slopes[:, None] * ion_rt[None, :]
    bins = torch.floor((shift + max_drift) / DRIFT_BIN).to(torch.int64)
    ok = (bins >= 0) & (bins < n_bins)
    flat = (torch.arange(len(DRIFT_SLOPES), device=peak_rt.device)[:, None] * n_bins + bins)[ok]
    return torch.zeros(len(DRIFT_SLOPES) * n_bins, dtype=torch.float64,
                       device=peak_rt.device).index_add_(
        0, flat, weight.expand(len(DRIFT_SLOPES), -1)[ok])


def drift_from_votes(votes: pd.DataFrame, config: AssignConfig) -> tuple[float, float] | None:
    """The (intercept, slope) of the RT map with the most votes (shift bins smoothed over
    three), or None when there are too few votes to trust."""
    if votes["w"].sum() < 10:
        return None
    n_bins = _shift_bins(config)
    grid = np.zeros((len(DRIFT_SLOPES), n_bins))
    np.add.at(grid, (votes["slope"].to_numpy(), votes["shift"].to_numpy()), votes["w"])
    smooth = grid + np.roll(grid, 1, axis=1) + np.roll(grid, -1, axis=1)
    s, k = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return float(-config.max_drift + (k + 0.5) * DRIFT_BIN), float(DRIFT_SLOPES[s])
