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

import numpy as np
import pandas as pd
import torch

from dask_assign.calibration.curves import curve_statistics, fit_curve, n_statistics
from dask_assign.calibration.isomer_rt import with_isomer_rt
from dask_assign.chemistry.adducts import DECOY_SHIFTS
from dask_assign.config import AssignConfig, Calibration, ScorerParams
from dask_assign.filtering.join import (
    MassBinIndex,
    batches_by_pairs,
    range_join,
    window_bounds,
)
from dask_assign.filtering.space import SearchSpace, calibrated_ions, centred_mz, main_adduct
from dask_assign.scoring.model import MODEL_FIELDS
from dask_assign.scoring.passes import peak_tensors, score_in_batches
from dask_assign.scoring.scorer import log_normal, tail_log_density, tail_weight

log = logging.getLogger(__name__)


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


def prior_normaliser(space: SearchSpace, params, log_adduct_prior: np.ndarray,
                     adduct: int | None = None) -> float:
    """log of the summed prior weights of all ions (``log_adduct_prior`` given per ion), or of
    one adduct's ions."""
    weights = params.adduct_weight * log_adduct_prior + params.isotope_weight * space.log_abundance
    if adduct is not None:
        weights = weights[space.adduct == adduct]
    return float(np.logaddexp.reduce(weights)) if weights.size else 0.0


#: Peaks the EM looks at, at most (the same kind of deterministic sample as the drift search):
#: its handful of parameters are fixed by tens of thousands of peaks (50k gave the same fit
#: and the same calls as 200k, in half the time: ``benchmarks/em_sample.py``).
EM_SAMPLE = 50_000


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
    ion_mz = space.take("mz", f.ion)
    has_rt = ~torch.isnan(f.ion_rt)
    vals = [float(len(part)), float(w.sum())]
    vals += curve_statistics(ion_mz, f.ppm_error, w, calibration.mass_knots)
    # RT: each match's share in the core and in the broad component of the RT model.
    r = (f.peak_rt - f.expected_rt)[has_rt]
    wr = w[has_rt]
    core = log_normal(r, calibration.rt_sigma) + math.log1p(-calibration.rt_tail_share)
    tail = tail_log_density(r, calibration.rt_tail_sigma) + math.log(calibration.rt_tail_share)
    g = torch.sigmoid(core - tail)
    # The map's weights: precision of each match under its components, in core units (the
    # broad one's a residual's own, a Student t's expected precision).
    u = tail_weight(r, calibration.rt_tail_sigma)
    ratio = (calibration.rt_sigma / calibration.rt_tail_sigma) ** 2
    vals += curve_statistics(f.ion_rt[has_rt], f.peak_rt[has_rt],
                             wr * (g + (1 - g) * u * ratio), calibration.rt_knots)
    vals += [float((wr * g).sum()), float((wr * g * r * r).sum()),
             float((wr * (1 - g)).sum()), float((wr * (1 - g) * u * r * r).sum())]
    n_adducts = len(space.adduct_names)
    adduct = space.take("adduct", f.ion)
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
    # Only those ions are counted: the join runs on them alone (a few % of the table).
    rows = np.flatnonzero((space.adduct == adduct) & (space.isotope == 0))
    ion_mz = torch.as_tensor(space.mz[rows], device=peaks["mz"].device)
    no_rt = torch.full_like(ion_mz, float("nan"))
    bins = MassBinIndex.build(space.mz[rows], space.bins_ppm)
    total = 0
    for d in DECOY_SHIFTS:
        shifted = centred_mz(peaks["mz"] + d, calibration)
        lo, hi = window_bounds(shifted, bins)
        for a, b in batches_by_pairs(lo, hi, config.max_pairs):
            _, ii = range_join(shifted[a:b], peaks["rt"][a:b], ion_mz, no_rt, bins,
                               config.ppm, float("inf"))
            total += int(ii.numel())
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
    """M-step of the RT error mixture: the share of library RTs that are off, the core's
    spread and the broad component's scale, from the responsibility sums (a pseudo-count on
    each side of the share; the scale's squared residuals weighed by
    :func:`~dask_assign.scoring.scorer.tail_weight`)."""
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
