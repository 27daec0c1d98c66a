"""The context model: what a run says about its co-eluting partners, fitted from counts summed
over RT blocks (so the same for any blocks).

Co-elution spread and tolerance, the accident rate of a partner window, detection of
isotopologue partners by label, adduct shares corrected for chance with decoys, the spread of
isotope intensity ratios, the noise share of unexplained peaks; and the scoring calibration
that follows from them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dask_assign.calibration.em import prior_normaliser
from dask_assign.chemistry.adducts import DECOY_SHIFTS
from dask_assign.config import AssignConfig, Calibration
from dask_assign.filtering.space import (
    SearchSpace,
    main_adduct,
)

#: Detection of a predicted isotope partner well above the detection limit, where the run
#: has too few confident calls to measure it (peak picking misses some of anything).
DETECT_MAX = 0.9


#: Chance that a molecule present shows its main adduct (the commonest one of the run); the
#: others' chances are measured against it.
ADDUCT_MAX = 0.9


#: Bins of the intensity-ratio residuals (natural log) behind the fitted ratio spread.
RATIO_BINS = np.linspace(-3.0, 3.0, 121)


#: Share of partners whose intensity is far off the predicted ratio where the run cannot
#: say, and how far (natural log): the robust tail of the intensity-ratio fit.
RATIO_OUTLIERS = 0.02


RATIO_OUTLIER_SIGMA = 1.0


#: Share of the true pairs that the co-elution tolerance holds, and the share of them spread
#: evenly over it rather than around 0 (peak apexes of weak or broad peaks wander).
COELUTION_QUANTILE = 0.95


COELUTION_TAIL = 0.2


#: Detection of a candidate isotopologue's monoisotopic ion where the intensity allows it.
MONO_DETECT = 0.98


#: 13C atoms the null's labels reach (an unknown molecule's other isotopologues are unknown).
NULL_13C = 2


#: Isotopologue clusters of a candidate searched besides its monoisotopic ion's (the most
#: abundant of its compound and adduct; those predicted below the detection limit weigh
#: nothing either way).
SIBLINGS = 6


#: Bins of the co-elution histograms of the adduct co-occurrence counts.
CO_BINS = 20


#: Pseudo-count (confident main-ion calls) pulling a measured adduct share toward the table's.
SHARE_PSEUDO = 5.0


#: Predicted isotope partners this far (natural log) above the detection limit count towards
#: the measured detection rate.
DETECT_MARGIN = math.log(10.0)


#: Spread (natural log) of the 13C1/M0 ratio over unknown molecules of one mass (their carbon
#: counts vary about the library's typical one).
UNKNOWN_RATIO_SIGMA = 0.4


#: Spread (natural log) of the detection threshold.
DETECT_SIGMA = 0.3


#: Adducts whose share of peaks is below this fraction of the commonest one's get no partner
#: search and no place in the null's mixture.
MIN_ADDUCT_SHARE = 1e-2


#: Bins of the co-elution histogram and of the log10 intensity histogram.
RT_BINS = 100


@dataclass(frozen=True)
class ContextModel:
    """What the context pass fitted from the run (from every RT block, or from a sample of
    them in a large run: :func:`~dask_assign.graph.plan.context_sample`; the same for every
    block).

    Attributes
    ----------
    rt_sigma : float
        Spread (minutes) of the RT difference between two ions of one molecule: from the RT
        differences of co-eluting 13C pairs in excess of decoy (chance) pairs.
    rt_tol : float
        Co-elution tolerance (minutes): the 95% quantile of those differences, at least 4
        ``rt_sigma``, at most ``max_coelution`` (:func:`coelution_fit`).
    ppm : float
        Width of a partner's m/z window (ppm either side), from the fitted mass spread.
    log_kappa : float
        Log chance that one given peak within ``max_coelution`` of a peak falls into one of
        its partner windows by accident (from the decoys). A peak with ``c`` such neighbours
        has ``rho = c * kappa``: crowded stretches of the run (the void volume) make accidental
        partners likelier.
    log_detect : float
        Natural log of the intensity below which peaks are rarely detected (1st percentile).
    isotope_pairs : float
        13C pairs (in excess of decoys) behind ``rt_tol``.
    adduct_share : tuple of float
        Chance that a molecule present shows each adduct (by the ion table's adduct index):
        ``ADDUCT_MAX`` for the main adduct, the others measured as how often a confident
        main-ion call has the adduct's ion co-eluting, in excess of decoys (empty: the
        table's priors).
    isotope_detect : float
        Chance that an isotope partner predicted well above the detection limit is there (low
        where the peak table was de-isotoped): pooled over the isotopologues.
    label_detect : tuple of float
        The same for each isotopologue label of the ion table (by label index): a peak picker
        or a simulation may keep the 13C peaks and drop the others.
    noise_share : float
        Share of the peaks that no library ion explains that are noise (no molecule, so no
        partners) rather than molecules missing from the library.
    main_calls : float
        Confident main-ion calls behind ``adduct_share`` and ``isotope_detect``.
    ratio_sigma, ratio_outliers : float
        Spread (natural log) of an isotope partner's intensity around the ratio its formula
        predicts, and the share of partners far off it (interference, saturation, fine
        structure a peak picker or simulation drops): measured on the confident main-ion
        calls' partners.
    adduct_accident : tuple of float
        log of how much likelier than the decoys say a peak lies by accident where each
        adduct relation puts a partner, flattened ``[src * n_adducts + dst]`` (empty: as
        likely). Real runs are full of molecules one acetate, formate, water or CH2 apart
        (homologous series, in-source losses), so a window at such a mass difference holds a
        stranger far more often than one at a mass difference no chemistry makes: measured
        over the outer half of the co-elution window (:func:`_relation_accidents`).
    adduct_rt_sigma, adduct_rt_tol : float
        Co-elution spread and tolerance of a molecule's other adducts, fitted as ``rt_sigma``
        and ``rt_tol`` from the adduct partners of the confident main-ion calls (in excess
        of decoys, less an even floor of hits), never tighter than the isotope partners';
        0 (a model saved before they were fitted): those of the isotope partners. Ions of
        other adducts are picked as separate features, so their apexes wander more than a
        feature's own isotopes (which a peak picker often reports at one RT).
    adduct_background : tuple of float
        log of how much denser the peaks that are not an adduct's ions lie beside its ions
        than beside the main adduct's (empty: the same). Real chemistry puts many peaks
        where a library compound's acetate or chloride adduct would be (other molecules one
        acetate heavier): chance cannot be measured with decoys alone there.
    """

    rt_sigma: float
    rt_tol: float
    ppm: float
    log_kappa: float
    log_detect: float
    isotope_pairs: float
    adduct_share: tuple = ()
    isotope_detect: float = DETECT_MAX
    label_detect: tuple = ()
    noise_share: float = 0.5
    main_calls: float = 0.0
    adduct_background: tuple = ()
    ratio_sigma: float = 0.15
    ratio_outliers: float = 0.02
    adduct_rt_sigma: float = 0.0
    adduct_rt_tol: float = 0.0
    adduct_accident: tuple = ()

    def adduct_coelution(self) -> tuple[float, float]:
        """Co-elution spread and tolerance (minutes) of the adduct partners."""
        if self.adduct_rt_tol > 0:
            return self.adduct_rt_sigma, self.adduct_rt_tol
        return self.rt_sigma, self.rt_tol

    def relation_accidents(self, n_adducts: int) -> np.ndarray:
        """``adduct_accident`` as an ``[n_adducts, n_adducts]`` array (zeros where not
        fitted)."""
        if len(self.adduct_accident) != n_adducts * n_adducts:
            return np.zeros((n_adducts, n_adducts))
        return np.asarray(self.adduct_accident, dtype=np.float64).reshape(n_adducts, n_adducts)

    def to_dict(self) -> dict:
        """Plain values, for JSON (``None`` for a detection limit a table without intensities
        cannot give)."""
        out = {}
        for k, v in dataclasses.asdict(self).items():
            out[k] = list(v) if isinstance(v, tuple) else (v if math.isfinite(v) else None)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ContextModel:
        """Inverse of :meth:`to_dict`."""
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            v = data[f.name]
            values[f.name] = (tuple(float(x) for x in v) if isinstance(v, list)
                              else float("-inf") if v is None else float(v))
        return cls(**values)


def pair_sigma(calibration: Calibration) -> float:
    """Spread (ppm) of the m/z difference of two peaks of one molecule: two independent
    errors (the run's offset cancels)."""
    return math.sqrt(2.0) * calibration.mass_sigma_ppm


def partner_ppm(calibration: Calibration) -> float:
    """Partner window (ppm either side): 4 spreads of a pair's m/z difference."""
    return max(2.0, 4.0 * pair_sigma(calibration))


def stat_columns(n_adducts: int, n_labels: int) -> list[str]:
    """Columns of :func:`context_stats` for an ion table of ``n_adducts`` adducts and
    ``n_labels`` isotopologue labels."""
    return (["n", "neighbours", "mz_min", "mz_max", "rt_min", "rt_max", "main_w",
             "all_w", "all_hit", "all_decoy"]
            + [f"pairs{b}" for b in range(n_adducts)]
            + [f"iso{k}" for k in range(RT_BINS)] + [f"decoy{k}" for k in range(RT_BINS)]
            + [f"{kind}{k}" for kind in ("sib_w", "sib_hit", "sib_decoy")
               for k in range(n_labels)]
            + [f"ratio{k}" for k in range(RATIO_BINS.size - 1)]
            + [f"co{b}_{k}" for b in range(n_adducts) for k in range(CO_BINS)]
            + [f"codecoy{b}_{k}" for b in range(n_adducts) for k in range(CO_BINS)]
            + [f"far{a}_{b}" for a in range(n_adducts) for b in range(n_adducts)])


def fit_context(stats, config: AssignConfig, calibration: Calibration,
                space: SearchSpace) -> ContextModel:
    """Fit the :class:`ContextModel` from the summed :func:`context_stats` of the blocks.

    ``stats`` is a frame of the blocks' :func:`context_stats`, one row each, or one block's
    Series.

    The co-elution spread is the robust spread of the RT differences of the 13C pairs in
    excess of the decoys' (random) pairs, and the tolerance their 95% quantile, at least 4
    spreads (:func:`coelution_fit`). The accident rate is the decoys' hit rate
    per co-eluting neighbour, shrunk towards an even spread of the peaks when hits are few.
    The adduct partners' co-elution is fitted the same way from the other adducts' ions
    co-eluting with confident main-ion calls (less the decoys'). An adduct's share is the rate
    at which those calls have its ion within that tolerance, less the decoys' rate, pulled
    toward the table's prior by a few pseudo-calls.
    """
    if isinstance(stats, pd.Series):
        stats = stats.to_frame().T
    total = stats.sum()
    mins = stats[["mz_min", "rt_min"]].min()
    maxs = stats[["mz_max", "rt_max"]].max()
    iso = total[[f"iso{k}" for k in range(RT_BINS)]].to_numpy()
    decoys = total[[f"decoy{k}" for k in range(RT_BINS)]].to_numpy()
    n_decoy = len(DECOY_SHIFTS)
    excess = np.clip(iso - decoys / n_decoy, 0, None)
    width = config.max_coelution / RT_BINS
    rt_sigma, rt_tol = coelution_fit(excess, config.max_coelution)
    adduct_sigma, adduct_tol = _adduct_coelution(total, space, config, rt_sigma, rt_tol)
    ppm = partner_ppm(calibration)
    hits = float(decoys[: int(round(rt_tol / width))].sum())
    mz_span = math.log(max(maxs["mz_max"], 1.0) / max(mins["mz_min"], 1e-3)) \
        if np.isfinite(mins["mz_min"]) else 1.0
    # Prior: neighbours spread evenly over log m/z and over the co-elution window.
    uniform = min(1.0, 2 * ppm * 1e-6 / max(mz_span, 1e-6)) * rt_tol / config.max_coelution
    kappa = (hits + 1.0) / (n_decoy * float(total["neighbours"]) + 1.0 / max(uniform, 1e-12))
    detect, labels, noise = _detection(total, space, calibration)
    ratio_sigma, ratio_outliers = _ratio_spread(total, config)
    shares = _adduct_shares(total, space, adduct_tol, config)
    background = _adduct_background(total, space, shares, calibration)
    accidents = _relation_accidents(total, len(space.adduct_names))
    return ContextModel(rt_sigma=float(rt_sigma), rt_tol=float(rt_tol), ppm=float(ppm),
                        log_kappa=float(math.log(kappa)), log_detect=calibration.log_detect,
                        isotope_pairs=float(excess.sum()), adduct_share=shares,
                        isotope_detect=detect, label_detect=labels, noise_share=noise,
                        main_calls=float(total["main_w"]), adduct_background=background,
                        ratio_sigma=ratio_sigma, ratio_outliers=ratio_outliers,
                        adduct_rt_sigma=float(adduct_sigma), adduct_rt_tol=float(adduct_tol),
                        adduct_accident=accidents)


def coelution_fit(excess: np.ndarray, widest: float) -> tuple[float, float]:
    """Co-elution spread and tolerance (minutes) from a histogram of true pairs' RT
    differences (in excess of chance pairs) over equal bins from 0 to ``widest``.

    The spread is robust (half-normal: median = 0.674 sd). The tolerance holds
    ``COELUTION_QUANTILE`` of the pairs, at least 4 spreads, at most ``widest``: co-elution
    differences have a long tail (weak or broad peaks), so a quantile, not a multiple of the
    core spread. Quantiles are read linearly within their bin. Too few pairs to tell (under
    10): an eighth of ``widest``, and 4 of it.
    """
    excess = np.asarray(excess, dtype=np.float64)
    width = widest / excess.size
    if excess.sum() < 10:
        sigma = widest / 8
        return sigma, min(4 * sigma, widest)
    sigma = max(_quantile(excess, width, 0.5) / 0.6745, width / 2)
    tail = _quantile(excess, width, COELUTION_QUANTILE)
    return sigma, min(max(4 * sigma, tail), widest)


def _quantile(hist: np.ndarray, width: float, q: float) -> float:
    """Quantile ``q`` of a histogram of equal bins from 0, linear within its bin."""
    cdf = np.cumsum(hist) / hist.sum()
    k = int(np.searchsorted(cdf, q))
    before = cdf[k - 1] if k else 0.0
    inside = (q - before) / max(cdf[k] - before, 1e-12)
    return (k + min(max(inside, 0.0), 1.0)) * width


def _co_excess(total, b: int) -> np.ndarray:
    """Adduct ``b``'s co-elution hits with the confident main-ion calls, less the decoys',
    by RT difference bin."""
    return (total[[f"co{b}_{k}" for k in range(CO_BINS)]].to_numpy()
            - total[[f"codecoy{b}_{k}" for k in range(CO_BINS)]].to_numpy()
            / len(DECOY_SHIFTS))


def _floor(excess: np.ndarray) -> float:
    """Hits per bin spread evenly over the window: chance the decoys miss (real runs put
    related molecules at an adduct's mass difference), measured over its outer half, where
    the co-elution core has faded."""
    return max(float(np.mean(excess[CO_BINS // 2:])), 0.0)


def _relation_accidents(total, n_adducts: int) -> tuple:
    """log of each adduct relation's accident rate against the decoys' (see
    :class:`ContextModel`): the peaks its map finds from the core peaks over the outer half of
    the co-elution window (where :func:`_floor` measures chance too: true partners co-elute
    closer), against a decoy map's over the same half, one pseudo-pair on each side. Never
    below the decoys': they shift by whole daltons, so they keep a peak's mass defect and
    measure the least chance a window has."""
    decoys = total[[f"decoy{k}" for k in range(RT_BINS // 2, RT_BINS)]].to_numpy().sum() \
        / len(DECOY_SHIFTS)
    far = np.array([float(total[f"far{a}_{b}"]) for a in range(n_adducts)
                    for b in range(n_adducts)])
    return tuple(float(v) for v in np.maximum(np.log((far + 1.0) / (decoys + 1.0)), 0.0))


def _adduct_coelution(total, space: SearchSpace, config, rt_sigma: float,
                      rt_tol: float) -> tuple[float, float]:
    """Co-elution of the adduct partners (see :class:`ContextModel`): :func:`coelution_fit`
    of the confident main-ion calls' other adducts pooled (hits less decoy hits, less the
    even floor), never tighter than the isotope partners'; theirs where fewer than 10 pairs
    stand above the floor."""
    main = main_adduct(space)
    excess = sum((_co_excess(total, b) for b in range(len(space.adduct_names)) if b != main),
                 np.zeros(CO_BINS))
    core = np.clip(excess - _floor(excess), 0, None)
    if core.sum() < 10:
        return rt_sigma, rt_tol
    sigma, tol = coelution_fit(core, config.max_coelution)
    return max(sigma, rt_sigma), max(tol, rt_tol)


def _ratio_spread(total, config) -> tuple[float, float]:
    """Spread (natural log) of isotope partners' intensities around the predicted ratio, and
    the share far off it: the robust spread (1.4826 median absolute residual) of the
    confident main-ion calls' partners (at least ``config.isotope_ratio_sigma``), and the
    share beyond four of it (a few pseudo-partners pull it toward ``RATIO_OUTLIERS``)."""
    hist = total[[f"ratio{k}" for k in range(RATIO_BINS.size - 1)]].to_numpy()
    floor = config.isotope_ratio_sigma
    if hist.sum() < 10:
        return floor, RATIO_OUTLIERS
    mid = 0.5 * (RATIO_BINS[:-1] + RATIO_BINS[1:])
    centre = mid[int(np.searchsorted(np.cumsum(hist) / hist.sum(), 0.5))]
    dev = np.abs(mid - centre)
    order = np.argsort(dev)
    mad = dev[order][int(np.searchsorted(np.cumsum(hist[order]) / hist.sum(), 0.5))]
    sigma = float(max(1.4826 * mad, floor))
    far = float(hist[dev > 4 * sigma].sum())
    share = (far + SHARE_PSEUDO * RATIO_OUTLIERS) / (hist.sum() + SHARE_PSEUDO)
    return sigma, float(min(max(share, 0.005), 0.3))


def _detection(total, space: SearchSpace, calibration: Calibration):
    """Detection of isotope partners well above the limit: pooled, and per label (the
    confident main-ion calls' siblings, less decoys, each label pulled toward the pooled
    rate by a few pseudo-calls); and the noise share of the unexplained peaks: any peak's 13C
    partner is there at ``(1 - null * noise)`` times the 13C1 rate, if unknown molecules show
    their isotopes as library compounds do."""
    n_decoy = len(DECOY_SHIFTS)
    n_labels = len(space.isotope_labels)
    w = total[[f"sib_w{k}" for k in range(n_labels)]].to_numpy()
    hit = total[[f"sib_hit{k}" for k in range(n_labels)]].to_numpy() \
        - total[[f"sib_decoy{k}" for k in range(n_labels)]].to_numpy() / n_decoy
    if w.sum() < 10:
        return DETECT_MAX, (DETECT_MAX,) * n_labels, 0.5
    pooled = float(min(max(hit.sum() / w.sum(), 0.05), 0.98))
    labels = np.clip((hit + SHARE_PSEUDO * pooled) / (w + SHARE_PSEUDO), 0.01, 0.98)
    # The monoisotopic ion, as a partner of its isotopologues: more intense than they are, and
    # the peak every peak picker reports.
    labels[0] = MONO_DETECT
    c13 = space.isotope_labels.index("13C1") if "13C1" in space.isotope_labels else 0
    noise = 0.5
    if total["all_w"] >= 10:
        seen = (total["all_hit"] - total["all_decoy"] / n_decoy) / total["all_w"]
        null = min(max(calibration.null_prior, 0.05), 1.0)
        noise = (1.0 - seen / labels[c13]) / null
    return pooled, tuple(float(v) for v in labels), float(min(max(noise, 0.05), 0.95))


def _adduct_background(total, space: SearchSpace, shares: tuple,
                       calibration: Calibration) -> tuple:
    """log of each adduct's background density beside its ions against the main adduct's:
    the candidate pairs in excess of the adduct's own ions (the main-ion calls times its
    share), per monoisotopic ion of the adduct. One pseudo-pair per adduct keeps a rare one
    from dividing by nothing."""
    n_adducts = len(space.adduct_names)
    main = main_adduct(space)
    calls = float(total["main_w"])
    # Ions by distinct m/z (isomers share one).
    mono = np.flatnonzero(space.isotope == 0)
    distinct = np.unique(np.stack([space.adduct[mono], np.round(space.mz[mono], 4)]), axis=1)
    n_ions = np.bincount(distinct[0].astype(np.int64), minlength=n_adducts).astype(float)
    pairs = np.array([float(total[f"pairs{b}"]) for b in range(n_adducts)])
    true = calls * np.asarray(shares) / ADDUCT_MAX
    density = (np.maximum(pairs - true, 0.0) + 1.0) / np.maximum(n_ions, 1.0)
    return tuple(float(v) for v in np.log(density / density[main]))


def _adduct_shares(total, space: SearchSpace, rt_tol: float, config) -> tuple:
    """Chance that a molecule present shows each adduct (see :class:`ContextModel`)."""
    n_adducts = len(space.adduct_names)
    main = main_adduct(space)
    table = np.full(n_adducts, -np.inf)
    np.maximum.at(table, space.adduct, space.log_adduct_prior)
    prior = ADDUCT_MAX * np.exp(table - table[main])
    calls = float(total["main_w"])
    # Bins within the tolerance (a hair under: a tolerance on a bin edge ends that bin).
    upto = max(1, int(math.ceil(rt_tol / config.max_coelution * CO_BINS - 1e-9)))
    shares = np.zeros(n_adducts)
    for b in range(n_adducts):
        if b == main:
            shares[b] = ADDUCT_MAX
            continue
        excess = _co_excess(total, b)
        measured = max(float(excess[:upto].sum()) - _floor(excess) * upto, 0.0)
        shares[b] = (measured + SHARE_PSEUDO * min(prior[b], ADDUCT_MAX)) \
            / (calls + SHARE_PSEUDO)
    return tuple(float(min(max(v, 1e-4), ADDUCT_MAX)) for v in shares)


def adduct_presence(space: SearchSpace, model: ContextModel) -> np.ndarray:
    """Chance that a molecule shows each adduct: the model's measured shares, or the table's
    priors relative to the main adduct's (whose chance is ``ADDUCT_MAX``)."""
    if len(model.adduct_share) == len(space.adduct_names):
        return np.asarray(model.adduct_share, dtype=np.float64)
    lp = np.full(len(space.adduct_names), -np.inf)
    np.maximum.at(lp, space.adduct, space.log_adduct_prior)
    return np.clip(ADDUCT_MAX * np.exp(lp - lp.max()), 1e-4, ADDUCT_MAX)


def scoring_calibration(calibration: Calibration, model: ContextModel | None,
                        space: SearchSpace, config: AssignConfig) -> Calibration:
    """The calibration the run scores with: the adduct priors the context model measured
    (each adduct's share of a molecule's ions), and the null prior that goes with them (the
    EM measured the main adduct's share of the peaks)."""
    if model is None or len(model.adduct_share) != len(space.adduct_names) or not len(space.mz):
        return calibration
    log_priors = np.log(np.asarray(model.adduct_share, dtype=np.float64))
    main = main_adduct(space)
    w = np.exp(log_priors[space.adduct] + space.log_abundance)
    scale = float(w.sum() / w[space.adduct == main].sum())
    null = 1.0 - scale * calibration.main_share
    background = (model.adduct_background if len(model.adduct_background) == len(log_priors)
                  else None)
    return calibration.replace(
        log_adduct_priors=tuple(float(v) for v in log_priors),
        log_adduct_background=background,
        log_prior_mass=prior_normaliser(space, config.scorer, log_priors[space.adduct]),
        null_prior=min(max(null, 0.02), 0.98))
