"""Self-calibration: the run's mass and RT error models and null prior, fitted by EM.

Each EM step scores every peak's candidates with the current model (E-step, per partition, in
parallel) and sums the responsibilities into a few sufficient statistics, from which the
client updates the model (M-step): the mass offset as a smooth curve of m/z and the spread
around it, a smooth monotone map from library RT to observed RT and the spread around it, the
adduct shares, and the share of peaks that are none of the library's.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numba
import numpy as np
import pandas as pd
import torch

from .annotate import (
    SearchSpace,
    calibrated_ions,
    centred_mz,
    main_adduct,
    peak_tensors,
    score_in_batches,
)
from .candidates import batches_by_pairs, range_join, window_bounds
from .config import AssignConfig, Calibration, ScorerParams
from .curves import Curve, curve_statistics, fit_curve, n_statistics
from .errors import InputError
from .isomer_rt import with_isomer_rt
from .mass_search import mass_knots, mass_votes, offset_curve
from .model import MODEL_FIELDS
from .relations import DECOY_SHIFTS
from .scoring import log_normal

log = logging.getLogger(__name__)

#: Sums over peaks that set the run context (spans, intensity scale).
#: Bins of the log10 intensity histograms (the detection limit, the isotope detection rates).
LOG10_INTENSITY_BINS = np.arange(-2.0, 14.0 + 1e-9, 0.05)
#: Quantile of the peaks' intensities taken as the detection limit.
DETECT_QUANTILE = 0.01
SUMMARY_COLUMNS = ("n", "mz_min", "mz_max", "rt_min", "rt_max", "li_n", "li_sum", "li_sq",
                   *(f"hist{k}" for k in range(LOG10_INTENSITY_BINS.size - 1)))
#: Knots of the mass-offset curve (over the peaks' m/z range) and of the RT map (over the
#: library's RT range): enough for a smooth bend, few enough for a thousand matches.
MASS_KNOTS = 6
RT_KNOTS = 12
#: Share of library RTs taken to be off before the data say (the EM's start): a share of 0
#: could never grow, since an RT-off match would then have no weight.
START_TAIL_SHARE = 0.5
#: The broad RT component is at least this many times wider than the core (else the two
#: cannot be told apart).
TAIL_WIDER = 3.0
#: Pseudo-counts pulling fitted adduct priors toward the table's (keeps rare adducts alive).
ADDUCT_PSEUDO_COUNT = 5.0


def generative(config: AssignConfig) -> AssignConfig:
    """The settings the calibration fits with: the scorer's weights back at the generative
    model's (a learned model's weights are for scoring only).

    EM's updates hold only when the responsibilities are the model's own posterior; a learned
    scorer re-weighs the terms, and EM run with it drifts (with a large library and no RT, it
    pushed the null prior to its bound and the mass spread to a third of the truth). The
    starting values of the error models are kept.
    """
    reset = {name: getattr(ScorerParams(), name) for name in MODEL_FIELDS}
    return config.replace(scorer=dataclasses.replace(config.scorer, **reset))


def em_columns(space: SearchSpace) -> tuple:
    """The columns of :func:`em_statistics` for this ion table: peaks, responsibility, the
    sums of the mass-offset curve and of the RT map, one responsibility sum per adduct."""
    return (("n", "w")
            + tuple(f"mass_{k}" for k in range(n_statistics(MASS_KNOTS)))
            + tuple(f"rt_{k}" for k in range(n_statistics(RT_KNOTS)))
            + ("rt_core_w", "rt_core_r2", "rt_tail_w", "rt_tail_r2")
            + tuple(f"adduct_{k}" for k in range(len(space.adduct_names)))
            + ("decoy",))


def peak_summary(part) -> pd.DataFrame:
    """One row of sums and ranges of a partition (combined over partitions by the caller)."""
    li = np.log(part["intensity"].to_numpy(dtype=np.float64, na_value=np.nan))
    li = li[np.isfinite(li)]
    mz = part["mz"].to_numpy(dtype=np.float64)
    rt = part["rt"].to_numpy(dtype=np.float64)
    empty = len(part) == 0
    hist = np.histogram(li / math.log(10), LOG10_INTENSITY_BINS)[0].astype(np.float64)
    return pd.DataFrame({
        "n": [float(len(part))],
        "mz_min": [np.inf if empty else mz.min()], "mz_max": [-np.inf if empty else mz.max()],
        "rt_min": [np.inf if empty else rt.min()], "rt_max": [-np.inf if empty else rt.max()],
        "li_n": [float(li.size)], "li_sum": [li.sum()], "li_sq": [(li * li).sum()],
        **{f"hist{k}": [v] for k, v in enumerate(hist)},
    })


def detection_limit(hist: np.ndarray) -> float:
    """Natural log of the intensity below which peaks are rarely detected: the
    ``DETECT_QUANTILE`` of a log10 intensity histogram (``-inf`` without intensities)."""
    if hist.sum() <= 0:
        return float("-inf")
    k = int(np.searchsorted(np.cumsum(hist) / hist.sum(), DETECT_QUANTILE))
    return float(LOG10_INTENSITY_BINS[k] * math.log(10))


#: Peak and library RT ranges further apart than this factor mean different units.
RT_UNIT_FACTOR = 4.0


def check_rt_units(peak_rt_max: float, library_rt: np.ndarray):
    """Refuse a run whose peak RTs and library RTs cannot be in the same unit.

    Seconds read as minutes (or the reverse) put every RT a factor of 60 off; an RT window
    would then match nothing, or everything, silently.

    Raises
    ------
    InputError
    """
    known = library_rt[np.isfinite(library_rt)]
    if known.size == 0 or not np.isfinite(peak_rt_max):
        return
    lib_max = float(known.max())
    if peak_rt_max > RT_UNIT_FACTOR * lib_max + 1 or lib_max > RT_UNIT_FACTOR * peak_rt_max + 1:
        raise InputError(
            "peak table", f"retention times reach {peak_rt_max:g} min while the library's "
            f"reach {lib_max:g} min: the units differ (set --rt-unit for the peaks or "
            "--library-rt-unit for the library)", column="rt")


def prior_normaliser(space: SearchSpace, params, log_adduct_prior: np.ndarray,
                     adduct: int | None = None) -> float:
    """log of the summed prior weights of all ions (``log_adduct_prior`` given per ion), or of
    one adduct's ions."""
    weights = params.adduct_weight * log_adduct_prior + params.isotope_weight * space.log_abundance
    if adduct is not None:
        weights = weights[space.adduct == adduct]
    return float(np.logaddexp.reduce(weights)) if weights.size else 0.0


def run_context(summary: pd.DataFrame, space: SearchSpace, config: AssignConfig) -> Calibration:
    """The default calibration of a run, from the combined peak summary and the ion table."""
    s = {
        "n": summary["n"].sum(), "mz_min": summary["mz_min"].min(),
        "mz_max": summary["mz_max"].max(), "rt_min": summary["rt_min"].min(),
        "rt_max": summary["rt_max"].max(), "li_n": summary["li_n"].sum(),
        "li_sum": summary["li_sum"].sum(), "li_sq": summary["li_sq"].sum(),
    }
    check_rt_units(s["rt_max"], space.rt)
    hist = summary[[f"hist{k}" for k in range(LOG10_INTENSITY_BINS.size - 1)]].sum().to_numpy()
    p = config.scorer
    # The background is uniform over the searched space; floors keep tiny inputs sensible.
    mz_span_ppm = max(math.log(max(s["mz_max"], 1.0) / max(s["mz_min"], 1.0)) * 1e6,
                      100 * config.ppm)
    rt_span = max(s["rt_max"] - s["rt_min"], 1.0)
    # The EM sees the main adduct's ions only: its prior is spread over them.
    log_prior_mass = prior_normaliser(space, p, space.log_adduct_prior, main_adduct(space))
    known = space.rt[np.isfinite(space.rt)]
    rt_lo, rt_hi = (float(known.min()), float(known.max())) if known.size else (0.0, 1.0)
    mass = Curve.line(p.mass_offset_ppm, 0.0, s["mz_min"] if np.isfinite(s["mz_min"]) else 0.0,
                      s["mz_max"] if np.isfinite(s["mz_max"]) else 1.0, MASS_KNOTS)
    rt_map = Curve.line(0.0, 1.0, rt_lo, rt_hi, RT_KNOTS)
    if s["li_n"] >= 2:
        center = s["li_sum"] / s["li_n"]
        scale = math.sqrt(max(s["li_sq"] / s["li_n"] - center * center, 1e-6))
    else:
        center, scale = 0.0, 1.0
    return Calibration(
        mass_knots=mass.knots, mass_offsets=mass.values, mass_sigma_ppm=p.mass_sigma_ppm,
        rt_knots=rt_map.knots, rt_values=rt_map.values, rt_sigma=p.rt_sigma,
        # Until the data say how far library RTs hold, half of them are taken to be off.
        rt_tail_share=START_TAIL_SHARE, rt_tail_sigma=rt_span / 4,
        null_prior=p.null_prior, rt_span=rt_span,
        log_volume=math.log(mz_span_ppm * rt_span), log_prior_mass=log_prior_mass,
        log_intensity_center=center, log_intensity_scale=max(scale, 0.1),
        log_detect=detection_limit(hist), iterations=0,
    )


#: Peaks the mass search looks at, at most (a deterministic sample by peak id).
MASS_SAMPLE = 50_000


def search_ppm(config: AssignConfig) -> float:
    """Half-width (ppm) of the mass search: ``mass_search_ppm``, and at least twice the
    candidate window."""
    return max(config.mass_search_ppm, 2 * config.ppm)


def mass_search(part, space: SearchSpace, config: AssignConfig, fraction: float,
                edges: np.ndarray) -> pd.DataFrame:
    """Votes of one partition's sampled peaks for the mass-offset curve (see
    :mod:`dask_assign.mass_search`): mass-only pairs with the monoisotopic ions."""
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


def sampled(part, fraction: float) -> np.ndarray:
    """A deterministic sample of a partition's peaks: by a hash of the peak id, so the same
    peaks are picked however the table is partitioned."""
    if fraction >= 1:
        return np.ones(len(part), dtype=bool)
    ids = part["peak_id"]
    ids = ids.to_pandas() if hasattr(ids, "to_pandas") else ids
    h = pd.util.hash_array(ids.to_numpy(dtype=object)) % np.uint64(1 << 20)
    return h < np.uint64(int(fraction * (1 << 20)))


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
        if kernel == "numba" or (kernel == "auto" and pi.device.type == "cpu"):
            _vote_loop(peak_rt.cpu().numpy(), ion_rt.cpu().numpy(), weight.cpu().numpy(),
                       DRIFT_SLOPES, config.max_drift, DRIFT_BIN, n_bins, total.numpy())
        else:
            total += _votes_torch(peak_rt, ion_rt, weight, config.max_drift, n_bins).cpu()
    nz = torch.nonzero(total).flatten()
    return pd.DataFrame({"slope": (nz // n_bins).numpy(), "shift": (nz % n_bins).numpy(),
                         "w": total[nz].numpy()}).astype(VOTE_COLUMNS)


@numba.njit(cache=True, nogil=True)
def _vote_loop(peak_rt, ion_rt, weight, slopes, max_drift, width, n_bins, total):
    # The torch twin's formulas, pair by pair: no [slopes x pairs] temporaries (those made the
    # drift search a third of the calibration's time at 1M peaks).
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


#: Peaks the EM looks at, at most (the same kind of deterministic sample as the drift search):
#: a few hundred thousand peaks fix its handful of parameters as well as millions do.
EM_SAMPLE = 200_000


def em_statistics(part, space: SearchSpace, config: AssignConfig,
                  calibration: Calibration) -> pd.DataFrame:
    """E-step on one partition: responsibility-weighted sums of mass and RT errors.

    Parameters
    ----------
    part : pandas.DataFrame or cudf.DataFrame
    space : SearchSpace
    config : AssignConfig
    calibration : Calibration

    Returns
    -------
    pandas.DataFrame
        One row with the columns of :func:`em_columns`.
    """
    peaks = peak_tensors(part, config.device)
    main = main_adduct(space)
    scored = score_in_batches(peaks, calibrated_ions(space, calibration, config.device), space,
                              config, calibration, config.k_first, adduct=main)
    f = scored.features
    w = scored.prob.nan_to_num(0.0)
    ion_mz = torch.as_tensor(space.mz, device=w.device)[f.ion]
    has_rt = ~torch.isnan(f.ion_rt)
    vals = [float(len(part)), float(w.sum())]
    vals += curve_statistics(ion_mz, f.ppm_error, w, calibration.mass_knots)
    # RT: each match's share in the core and in the broad component of the RT model.
    r = (f.peak_rt - f.expected_rt)[has_rt]
    wr = w[has_rt]
    core = log_normal(r, calibration.rt_sigma) + math.log1p(-calibration.rt_tail_share)
    tail = log_normal(r, calibration.rt_tail_sigma) + math.log(calibration.rt_tail_share)
    g = torch.sigmoid(core - tail)
    # The map's weights: precision of each match under its components, in core units.
    ratio = (calibration.rt_sigma / calibration.rt_tail_sigma) ** 2
    vals += curve_statistics(f.ion_rt[has_rt], f.peak_rt[has_rt], wr * (g + (1 - g) * ratio),
                             calibration.rt_knots)
    vals += [float((wr * g).sum()), float((wr * g * r * r).sum()),
             float((wr * (1 - g)).sum()), float((wr * (1 - g) * r * r).sum())]
    n_adducts = len(space.adduct_names)
    adduct = torch.as_tensor(space.adduct, device=w.device)[f.ion]
    vals += torch.zeros(n_adducts, dtype=w.dtype, device=w.device).index_add(
        0, adduct, w).tolist()
    vals.append(decoy_pairs(peaks, space, config, calibration, main))
    return pd.DataFrame({k: [float(v)] for k, v in zip(em_columns(space), vals, strict=True)})


def decoy_pairs(peaks: dict, space: SearchSpace, config: AssignConfig,
                calibration: Calibration, adduct: int) -> float:
    """Chance pairs of the peaks with one adduct's monoisotopic ions in the candidate window:
    the pairs of peaks shifted by ``DECOY_SHIFTS`` (mass differences no chemistry makes),
    per shift. Peaks are not spread evenly: they crowd where molecules' masses are, as the
    library's ions do, and the decoys measure how much more often than an even spread
    chance puts a peak beside an ion."""
    ions = space.tensors(config.device)
    total = 0
    for d in DECOY_SHIFTS:
        shifted = centred_mz(peaks["mz"] + d, calibration)
        lo, hi = window_bounds(shifted, space.bins)
        for a, b in batches_by_pairs(lo, hi, config.max_pairs):
            _, ii = range_join(shifted[a:b], peaks["rt"][a:b], ions["mz"], ions["rt"],
                               space.bins, config.ppm, float("inf"))
            mono = torch.as_tensor(space.isotope == 0, device=ii.device)[ii]
            total += int(((ions["adduct"][ii] == adduct) & mono).sum())
    return total / len(DECOY_SHIFTS)


def log_enrichment(stats: dict, space: SearchSpace, config: AssignConfig,
                   calibration: Calibration) -> float:
    """log of how much more often than an even spread of the peaks over the run's log-m/z
    range a peak lies beside a library ion by chance (from :func:`decoy_pairs`), at least
    0: the background density the null slot stands for, near library ions."""
    main = main_adduct(space)
    n_ions = int(((space.adduct == main) & (space.isotope == 0)).sum())
    span_ppm = math.exp(calibration.log_volume) / calibration.rt_span
    expected = stats["n"] * n_ions * 2 * config.ppm / max(span_ppm, 1.0)
    if expected <= 0:
        return 0.0
    # A pseudo-count of one expected pair keeps a run with few decoys near no enrichment.
    return max(math.log((stats["decoy"] + expected) / (2 * expected)), 0.0)


def adduct_priors(stats: dict, space: SearchSpace, config: AssignConfig):
    """M-step for the adduct priors, and the prior normaliser that goes with them.

    An adduct's share is proportional to the responsibility its ions collect divided by their
    summed isotope weights (what the compounds could show of it), with a few pseudo-counts
    toward the table's priors.

    Returns
    -------
    log_priors : tuple of float
        Log share of each adduct.
    log_prior_mass : float
    """
    p = config.scorer
    n = len(space.adduct_names)
    collected = np.array([stats.get(f"adduct_{k}", 0.0) for k in range(n)])
    table = np.zeros(n)
    exposure = np.zeros(n)
    iso = np.exp(p.isotope_weight * space.log_abundance)
    np.add.at(exposure, space.adduct, iso)
    np.maximum.at(table, space.adduct, np.exp(space.log_adduct_prior))
    has = exposure > 0
    share = np.zeros(n)
    share[has] = (collected[has] + ADDUCT_PSEUDO_COUNT * table[has] / table[has].sum()) \
        / exposure[has]
    share = np.where(has, share / share[has].sum(), 1e-12)
    log_priors = np.log(np.maximum(share, 1e-12))
    return (tuple(float(v) for v in log_priors),
            prior_normaliser(space, p, log_priors[space.adduct]))


def m_step(stats: dict, calibration: Calibration, config: AssignConfig,
           space: SearchSpace | None = None) -> Calibration:
    """Update the calibration from summed EM statistics; keeps defaults where data are thin."""
    c = calibration
    if stats["w"] < 5:
        return c  # too few matches to fit anything
    changes = {}
    mass = fit_curve(_sums(stats, "mass", MASS_KNOTS), c.mass_knots)
    if mass is not None:
        changes.update(mass_offsets=mass.curve.values,
                       mass_sigma_ppm=min(max(mass.sigma, 0.2), config.ppm))
    # Elution order is kept from library to run: the map is monotone.
    rt = fit_curve(_sums(stats, "rt", RT_KNOTS), c.rt_knots, monotone=True)
    if rt is not None:
        changes["rt_values"] = rt.curve.values
        changes.update(rt_mixture(stats, c))
    # The EM sees the main adduct's ions: its null is every other peak. The run's null, over
    # all ions, follows once the other adducts' shares are measured (context.scoring_calibration).
    changes["main_share"] = stats["w"] / max(stats["n"], 1.0)
    changes["null_prior"] = min(max(1.0 - changes["main_share"], 0.02), 0.98)
    if space is not None and len(space.mz):
        changes["log_enrichment"] = log_enrichment(stats, space, config, c)
    new = c.replace(**changes, iterations=c.iterations + 1)
    # Where the library's isomers say an unlisted one elutes, on the updated RT model: the
    # next E-step credits matches there to isomers, not to library RTs that are off.
    return with_isomer_rt(new, space) if space is not None and len(space.mz) else new


def rt_mixture(stats: dict, c: Calibration) -> dict:
    """M-step of the RT error mixture: the share of library RTs that are off, and the two
    spreads, from the responsibility sums (a pseudo-count on each side of the share)."""
    w1, w2 = stats["rt_core_w"], stats["rt_tail_w"]
    if w1 + w2 < 5:
        return {}
    share = min(max((w2 + 1.0) / (w1 + w2 + 2.0), 1e-3), 0.95)
    sigma = math.sqrt(stats["rt_core_r2"] / max(w1, 1e-12)) if w1 > 1 else c.rt_sigma
    sigma = min(max(sigma, 0.01), c.rt_span)
    tail = math.sqrt(stats["rt_tail_r2"] / max(w2, 1e-12)) if w2 > 1 else c.rt_tail_sigma
    tail = min(max(tail, TAIL_WIDER * sigma), c.rt_span)
    return {"rt_sigma": sigma, "rt_tail_share": share, "rt_tail_sigma": tail}


def _sums(stats: dict, prefix: str, n_knots: int) -> list:
    return [stats[f"{prefix}_{k}"] for k in range(n_statistics(n_knots))]


def converged(old: Calibration, new: Calibration) -> bool:
    """Whether an EM step changed the model by less than what matters to a score."""
    return (new.mass_offset.max_difference(old.mass_offset) < 0.01
            and abs(math.log(new.mass_sigma_ppm / old.mass_sigma_ppm)) < 0.01
            and new.rt_map.max_difference(old.rt_map) < 1e-3
            and abs(math.log(new.rt_sigma / old.rt_sigma)) < 0.01
            and abs(new.rt_tail_share - old.rt_tail_share) < 1e-3
            and abs(new.null_prior - old.null_prior) < 1e-3)


def _shift_range(c: Calibration) -> tuple[float, float]:
    shifts = np.subtract(c.rt_values, c.rt_knots)
    return float(shifts.min()), float(shifts.max())


def fit_calibration(stats_of, start: Calibration, config: AssignConfig,
                    space: SearchSpace | None = None) -> Calibration:
    """Run EM from ``start``.

    Parameters
    ----------
    stats_of : callable
        ``stats_of(calibration) -> dict`` of summed :func:`em_columns` over all peaks (the
        caller decides where the E-step runs: a dask cluster, or in-process).
    start : Calibration
    config : AssignConfig
    space : SearchSpace, optional
        The ion table, to fit the adduct priors too (kept from the table without it).

    Returns
    -------
    Calibration
    """
    c = start
    for _ in range(config.em_iterations):
        new = m_step(stats_of(c), c, config, space)
        log.info("EM %d: mass %+.2f..%+.2f +/- %.2f ppm, RT shift %+.3f..%+.3f +/- %.3f min "
                 "(%.0f%% off, +/- %.2f), null prior %.3f", new.iterations,
                 min(new.mass_offsets), max(new.mass_offsets), new.mass_sigma_ppm,
                 *_shift_range(new), new.rt_sigma, 100 * new.rt_tail_share,
                 new.rt_tail_sigma, new.null_prior)
        done = new is c or converged(c, new)
        c = new
        if done:
            break
    return c
