"""Annotation of one partition of peaks: candidates, features, scores, refinement.

Every function here works on one partition and depends only on its own peaks, the ion table
and the frozen settings, so a peak's result never depends on how the peaks were partitioned.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .candidates import MassBinIndex, batches_by_pairs, range_join, rank_within_peak, window_bounds
from .config import AssignConfig, Calibration
from .features import PairFeatures, pair_features
from .ions import IonTable
from .isotopes import merge_unresolved
from .scoring import get_scorer, logsumexp_rounds, segment_softmax, with_isomers


@dataclass(frozen=True)
class SearchSpace:
    """The ion table as the kernels need it: numeric columns and the mass-bin index.

    Built once on the client and sent to each worker once. Besides the ion columns (sorted
    by m/z), ``group_start`` and ``group_rows`` list each compound x adduct's isotopologues
    (most abundant first; ``group_rows[group_start[g]:group_start[g + 1]]``) and
    ``group_mono[g]`` its monoisotopic ion, and ``monoisotopic[c, a]`` is the row of compound
    ``c``'s monoisotopic ion of adduct ``a`` (-1 where it cannot form it): the lookups of the
    context pass.
    """

    mz: np.ndarray
    rt: np.ndarray
    log_adduct_prior: np.ndarray
    log_abundance: np.ndarray
    bins: MassBinIndex
    compound: np.ndarray
    adduct: np.ndarray
    isotope: np.ndarray
    group: np.ndarray
    group_start: np.ndarray
    group_rows: np.ndarray
    group_mono: np.ndarray
    monoisotopic: np.ndarray
    compounds: pd.DataFrame
    adduct_names: tuple
    isotope_labels: tuple
    adduct_ions: np.ndarray
    n_carbon: np.ndarray
    carbon_per_mass: float

    @classmethod
    def build(cls, table: IonTable, max_ppm: float) -> SearchSpace:
        """From an :class:`~dask_assign.ions.IonTable`, for windows up to ``max_ppm``."""
        ions = table.ions

        def col(name, dtype):
            return np.ascontiguousarray(ions[name].to_numpy(dtype=dtype))

        return cls._from_columns(
            {"mz": col("mz", np.float64), "rt": col("rt", np.float64),
             "log_adduct_prior": col("log_adduct_prior", np.float64),
             "log_abundance": col("log_abundance", np.float64),
             "compound": col("compound", np.int64), "adduct": col("adduct", np.int64),
             "isotope": col("isotope", np.int64), "group": col("group", np.int64)},
            max_ppm, compounds=table.compounds, adduct_names=tuple(table.adduct_names),
            isotope_labels=tuple(table.isotope_labels), adduct_ions=table.adduct_ions,
            n_carbon=table.n_carbon, carbon_per_mass=table.carbon_per_mass)

    @classmethod
    def _from_columns(cls, columns: dict, max_ppm: float, **library) -> SearchSpace:
        """The space of ion columns sorted by m/z, with its lookups and mass-bin index."""
        group, compound = columns["group"], columns["compound"]
        adduct, iso = columns["adduct"], columns["isotope"]
        n_groups = int(group.max()) + 1 if group.size else 0
        start = np.zeros(n_groups + 1, dtype=np.int64)
        np.cumsum(np.bincount(group, minlength=n_groups), out=start[1:])
        mono = np.full((len(library["compounds"]), len(library["adduct_names"])), -1,
                       dtype=np.int64)
        m0 = np.flatnonzero(iso == 0)
        mono[compound[m0], adduct[m0]] = m0
        group_mono = np.full(n_groups, -1, dtype=np.int64)
        group_mono[group[m0]] = m0
        return cls(**columns, bins=MassBinIndex.build(columns["mz"], max_ppm),
                   group_start=start, group_rows=np.lexsort((-columns["log_abundance"], group)),
                   group_mono=group_mono, monoisotopic=mono, **library)

    def resolved(self, tol_ppm: float) -> SearchSpace:
        """The space as an instrument with this mass spread sees it: the isotopologues of one
        ion closer than ``tol_ppm`` merged into one
        (:func:`~dask_assign.isotopes.merge_unresolved`)."""
        if tol_ppm <= 0 or self.mz.size == 0:
            return self
        keep, mz, la = merge_unresolved(self.group, self.mz, self.log_abundance, self.isotope,
                                        tol_ppm)
        columns = {k: getattr(self, k)[keep] for k in ION_ARRAYS}
        columns["mz"], columns["log_abundance"] = mz, la
        order = np.lexsort((columns["isotope"], columns["adduct"], columns["compound"],
                            columns["mz"]))
        columns = {k: np.ascontiguousarray(v[order]) for k, v in columns.items()}
        return SearchSpace._from_columns(
            columns, self.bins_ppm, **{k: getattr(self, k) for k in LIBRARY_FIELDS})

    @property
    def bins_ppm(self) -> float:
        """The widest window (ppm) the mass-bin index serves."""
        return float(-np.expm1(-self.bins.width) * 1e6)

    def tensors(self, device: str) -> dict:
        """The numeric ion columns as tensors (zero-copy on CPU; the kernels never write)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # arrays unpickled read-only
            return {k: torch.as_tensor(getattr(self, k), device=device)
                    for k in ("mz", "rt", "log_adduct_prior", "log_abundance", "adduct")}


#: The per-ion arrays of a SearchSpace, and what it keeps of the library.
ION_ARRAYS = ("mz", "rt", "log_adduct_prior", "log_abundance", "compound", "adduct", "isotope",
              "group")
LIBRARY_FIELDS = ("compounds", "adduct_names", "isotope_labels", "adduct_ions", "n_carbon",
                  "carbon_per_mass")

#: Spreads of the RT error model that the fitted candidate window spans.
RT_WINDOW_SIGMAS = 4.0


def candidate_rt_window(config: AssignConfig, calibration: Calibration) -> float:
    """RT bound (minutes, either side) of the candidate search: ``config.rt_window`` where
    set; else unbounded until the run's RT model is fitted, then ``RT_WINDOW_SIGMAS`` spreads
    of its broad component (of its core where no library RT is off)."""
    if config.rt_window is not None:
        return float(config.rt_window)
    if calibration.iterations == 0:
        return float("inf")
    spread = calibration.rt_tail_sigma if calibration.rt_tail_share > 0 else calibration.rt_sigma
    return RT_WINDOW_SIGMAS * spread


def main_adduct(space: SearchSpace) -> int:
    """The adduct a run's compounds show most (the table's largest prior): the one the
    calibration learns the run's error models from."""
    if space.adduct.size == 0:
        return 0
    prior = np.full(len(space.adduct_names), -np.inf)
    np.maximum.at(prior, space.adduct, space.log_adduct_prior)
    return int(np.argmax(prior))


def calibrated_ions(space: SearchSpace, calibration: Calibration, device: str) -> dict:
    """The ion tensors as a run's calibration sees them: the adduct priors it fitted (else the
    table's), and ``mapped_rt``, the library RT mapped to this run, which the RT window is
    centred on, and ``ppm_offset``, the systematic mass error expected at the ion's m/z.
    Built once per partition stage, shared by its batches."""
    ions = space.tensors(device)
    if calibration.log_adduct_priors is not None:
        fitted = torch.as_tensor(calibration.log_adduct_priors, dtype=torch.float64,
                                 device=ions["mz"].device)
        ions["log_adduct_prior"] = fitted[ions["adduct"]]
    if calibration.log_adduct_background is not None:
        # A denser background beside an adduct's ions: its matches are likelier chance.
        background = torch.as_tensor(calibration.log_adduct_background, dtype=torch.float64,
                                     device=ions["mz"].device)
        ions["log_adduct_prior"] = ions["log_adduct_prior"] - background[ions["adduct"]]
    ions["mapped_rt"] = calibration.rt_map(ions["rt"])
    ions["ppm_offset"] = calibration.mass_offset(ions["mz"])
    return ions


def centred_mz(mz: torch.Tensor, calibration: Calibration) -> torch.Tensor:
    """Peak m/z with the run's systematic mass error taken out, so that a window of fixed
    ppm around each ion is centred where the instrument puts that ion."""
    return mz / (1 + calibration.mass_offset(mz) * 1e-6)


def peak_tensors(part, device: str) -> dict:
    """``mz``, ``rt``, ``intensity`` of a pandas or cudf partition as float64 tensors."""
    out = {}
    for col in ("mz", "rt", "intensity"):
        series = part[col]
        if hasattr(series, "to_cupy"):  # cudf: a device array, handed to torch by DLPack
            out[col] = torch.from_dlpack(series.astype("float64").to_cupy(na_value=np.nan))
        else:
            out[col] = torch.from_numpy(series.to_numpy(dtype=np.float64, na_value=np.nan)
                                        .copy()).to(device)
    return out


@dataclass
class ScoredPairs:
    """Candidate pairs of a set of peaks, scored.

    ``features`` are ordered by peak, best first; ``rank`` numbers them within each peak;
    ``prob`` and ``p_null`` follow the overflow policy (NaN for a flagged peak). ``logit`` is
    each kept pair's logit against the null slot, ``isomer`` the log odds that an unlisted
    compound of its formula made the peak instead (that probability is the null's), and
    ``log_rest`` the log of the summed weight of candidates scored but not kept (``-inf``
    unless ``overflow="rounds"``) with ``rest_isomer`` the share of it that is their
    unlisted isomers', so the context pass can re-weigh the same hypotheses.
    """

    features: PairFeatures
    rank: torch.Tensor
    prob: torch.Tensor
    p_null: torch.Tensor
    n_candidates: torch.Tensor
    overflow: torch.Tensor
    logit: torch.Tensor
    isomer: torch.Tensor
    log_rest: torch.Tensor
    rest_isomer: torch.Tensor

    #: Fields with one entry per kept pair, and per peak.
    PAIR_FIELDS = ("rank", "prob", "logit", "isomer")
    PEAK_FIELDS = ("p_null", "n_candidates", "overflow", "log_rest", "rest_isomer")


def slot_probabilities(logit, isomer, peak, n, log_rest=None, rest_isomer=None):
    """Probabilities of each candidate and of each peak's null (which takes the candidates'
    unlisted isomers, :func:`~dask_assign.scoring.with_isomers`), over the kept candidates
    and, where given, the summed weight ``log_rest`` of candidates not kept (of which the
    share ``rest_isomer`` is their isomers', and so the null's)."""
    slot, share = with_isomers(logit, isomer)
    to_null = torch.zeros(n, dtype=slot.dtype, device=slot.device)
    if log_rest is None:
        prob, p_null = segment_softmax(slot, peak, n)
    else:
        rest = torch.nonzero(torch.isfinite(log_rest)).flatten()
        prob, p_null = segment_softmax(torch.cat([slot, log_rest[rest]]),
                                       torch.cat([peak, rest]), n)
        to_null[rest] = prob[slot.shape[0]:] * rest_isomer[rest]
        prob = prob[: slot.shape[0]]
    return prob * share, p_null + to_null.index_add(0, peak, prob * (1 - share))


def score_peaks(peaks: dict, ions: dict, space: SearchSpace, config: AssignConfig,
                calibration: Calibration, k: int, widen: float = 1.0,
                adduct: int | None = None) -> ScoredPairs:
    """Join, score and keep at most ``k`` candidates per peak.

    Parameters
    ----------
    peaks : dict of torch.Tensor
    ions : dict of torch.Tensor
        From :func:`calibrated_ions`.
    space : SearchSpace
    config : AssignConfig
    calibration : Calibration
    k : int
        Candidates kept per peak.
    widen : float
        Factor on the ppm and RT windows (the refinement searches wider).
    adduct : int, optional
        Only this adduct's ions are candidates (the calibration's main adduct).
    """
    n = peaks["mz"].shape[0]
    pi, ii = range_join(centred_mz(peaks["mz"], calibration), peaks["rt"], ions["mz"],
                        ions["mapped_rt"], space.bins, config.ppm * widen,
                        candidate_rt_window(config, calibration) * widen)
    if adduct is not None:
        mine = ions["adduct"][ii] == adduct
        pi, ii = pi[mine], ii[mine]
    feats = pair_features(pi, ii, peaks, ions)
    scorer = get_scorer(config.scorer, calibration, config.device)
    logits = scorer(feats)
    isomer = scorer.isomer_odds(feats)
    order, rank, _ = rank_within_peak(feats.peak, logits)
    feats, logits, isomer = feats.take(order), logits[order], isomer[order]
    n_cand = torch.bincount(feats.peak, minlength=n)
    overflow = n_cand > k
    keep = rank < k
    if config.overflow == "rounds":
        # Every candidate counts in the normaliser, K at a time; only the best K are listed.
        slot, share = with_isomers(logits, isomer)
        log_z = logsumexp_rounds(slot, feats.peak, n, torch.div(rank, k, rounding_mode="floor"))
        gone = feats.peak[~keep]
        weight = torch.exp(slot[~keep] - log_z[gone])
        dropped = torch.zeros_like(log_z).index_add(0, gone, weight)
        rest_isomer = torch.zeros_like(log_z).index_add(0, gone, weight * (1 - share[~keep]))
        rest_isomer = torch.where(dropped > 0, rest_isomer / dropped, rest_isomer)
        log_rest = torch.log(dropped) + log_z
        feats, rank, logits, isomer = feats.take(keep), rank[keep], logits[keep], isomer[keep]
        prob, p_null = slot_probabilities(logits, isomer, feats.peak, n, log_rest, rest_isomer)
    else:
        feats, logits, rank, isomer = feats.take(keep), logits[keep], rank[keep], isomer[keep]
        prob, p_null = slot_probabilities(logits, isomer, feats.peak, n)
        log_rest = torch.full_like(p_null, float("-inf"))
        rest_isomer = torch.zeros_like(p_null)
        if config.overflow == "flag":
            # No call for a peak whose candidates were cut: it is left for review.
            nan = torch.tensor(float("nan"), dtype=prob.dtype, device=prob.device)
            prob = torch.where(overflow[feats.peak], nan, prob)
            p_null = torch.where(overflow, nan, p_null)
    return ScoredPairs(feats, rank, prob, p_null, n_cand, overflow, logits, isomer, log_rest,
                       rest_isomer)


#: Columns and dtypes of the assignments table (one row per peak).
ASSIGNMENT_DTYPES = {
    "peak_id": "string", "compound_id": "string", "name": "string", "formula": "string",
    "adduct": "string", "isotope": "string", "prob": "float64", "p_formula": "float64",
    "p_null": "float64",
    "ppm_error": "float64", "rt_error": "float64", "n_candidates": "int64", "overflow": "bool",
    "refined": "bool", "n_partners": "int64", "context_changed": "bool", "mz": "float64",
    "rt": "float64", "intensity": "float64",
}
#: Columns and dtypes of the candidates table (one row per kept candidate).
CANDIDATE_DTYPES = {
    "peak_id": "string", "rank": "int64", "compound_id": "string", "adduct": "string",
    "isotope": "string", "ppm_error": "float64", "rt_error": "float64", "prob": "float64",
}


def _merge(first: ScoredPairs, second: ScoredPairs, redo: torch.Tensor) -> ScoredPairs:
    """Replace the pairs and per-peak values of the peaks ``redo`` (global peak rows) by
    ``second``, whose peaks are numbered 0..len(redo)-1."""
    gone = torch.zeros_like(first.overflow)
    gone[redo] = True
    keep = ~gone[first.features.peak]
    f2 = second.features
    f2 = PairFeatures(**{**f2.__dict__, "peak": redo[f2.peak]})
    feats = PairFeatures(**{k: torch.cat([getattr(first.features, k)[keep], getattr(f2, k)])
                            for k in f2.__dict__})
    pairs = {k: torch.cat([getattr(first, k)[keep], getattr(second, k)])
             for k in ScoredPairs.PAIR_FIELDS}
    order = torch.sort(feats.peak, stable=True).indices  # back to peak order, ranks kept
    peaks = {}
    for k in ScoredPairs.PEAK_FIELDS:
        peaks[k] = getattr(first, k).clone()
        peaks[k][redo] = getattr(second, k)
    return ScoredPairs(feats.take(order), **{k: v[order] for k, v in pairs.items()}, **peaks)


def best_calls(scored: ScoredPairs, n: int):
    """The call of each peak: its best candidate where that beats the null.

    Returns
    -------
    pair : torch.Tensor (int64)
        Row of ``scored`` holding the call, -1 for a null call.
    prob : torch.Tensor
        Probability of the call (of the null where the null wins).
    """
    f = scored.features
    device = scored.p_null.device
    pair = torch.full((n,), -1, dtype=torch.int64, device=device)
    first = torch.nonzero(scored.rank == 0).flatten()
    pair[f.peak[first]] = first
    best = torch.full((n,), -1.0, dtype=scored.prob.dtype, device=device)
    best[f.peak[first]] = scored.prob[first]
    # A flagged overflow peak has NaN everywhere: no call, NaN probability.
    wins = best > scored.p_null
    pair = torch.where(wins, pair, torch.full_like(pair, -1))
    prob = torch.where(wins, best, scored.p_null)
    return pair, prob


def _concat(parts: list[ScoredPairs]) -> ScoredPairs:
    """Join the scored pairs of consecutive peak batches (peaks renumbered in order)."""
    if len(parts) == 1:
        return parts[0]
    feats, offset = [], 0
    for part in parts:
        f = part.features
        feats.append(PairFeatures(**{**f.__dict__, "peak": f.peak + offset}))
        offset += part.p_null.shape[0]
    features = PairFeatures(**{k: torch.cat([getattr(f, k) for f in feats])
                               for k in feats[0].__dict__})
    return ScoredPairs(features, **{k: torch.cat([getattr(p, k) for p in parts])
                                    for k in ScoredPairs.PAIR_FIELDS + ScoredPairs.PEAK_FIELDS})


def score_in_batches(peaks: dict, ions: dict, space: SearchSpace, config: AssignConfig,
                     calibration: Calibration, k: int, widen: float = 1.0,
                     adduct: int | None = None) -> ScoredPairs:
    """:func:`score_peaks` over batches of about ``config.max_pairs`` candidate pairs, so a
    crowded m/z range (or a huge tolerance) cannot exhaust memory."""
    lo, hi = window_bounds(peaks["mz"], space.bins)
    return _concat([score_peaks({key: v[a:b] for key, v in peaks.items()}, ions, space, config,
                                calibration, k, widen, adduct)
                    for a, b in batches_by_pairs(lo, hi, config.max_pairs)])


@dataclass
class PartitionResult:
    """One partition between the pipeline's stages: its peaks, their scored candidates and
    calls (see :func:`best_calls`), which peaks the second pass refined, and what the context
    pass found (co-eluting partners of each peak; whether it changed the call)."""

    part: object
    peaks: dict
    scored: ScoredPairs
    pair: torch.Tensor
    prob: torch.Tensor
    refined: torch.Tensor
    n_partners: torch.Tensor | None = None
    changed: torch.Tensor | None = None


def first_pass(part, space: SearchSpace, config: AssignConfig,
               calibration: Calibration) -> PartitionResult:
    """Join and score a partition with ``k_first`` candidates per peak."""
    peaks = peak_tensors(part, config.device)
    ions = calibrated_ions(space, calibration, config.device)
    scored = score_in_batches(peaks, ions, space, config, calibration, config.k_first)
    n = peaks["mz"].shape[0]
    pair, prob = best_calls(scored, n)
    refined = torch.zeros(n, dtype=torch.bool, device=prob.device)
    return PartitionResult(part, peaks, scored, pair, prob, refined)


def second_pass(result: PartitionResult, space: SearchSpace, config: AssignConfig,
                calibration: Calibration) -> PartitionResult:
    """Re-score the peaks whose call is below ``refine_below`` (or that had no candidate)
    with up to ``k_max`` candidates in windows ``refine_widen`` times wider."""
    peaks, scored = result.peaks, result.scored
    # Low confidence, or nothing in the first window (a drifted match may lie just beyond).
    # NaN (a flagged overflow) compares False: it is left for review.
    refined = (result.prob < config.refine_below) | (scored.n_candidates == 0)
    redo = torch.nonzero(refined).flatten()
    if redo.numel() == 0:
        return PartitionResult(result.part, peaks, scored, result.pair, result.prob, refined)
    sub = {k: v[redo] for k, v in peaks.items()}
    second = score_in_batches(sub, calibrated_ions(space, calibration, config.device), space,
                              config, calibration, config.k_max, widen=config.refine_widen)
    scored = _merge(scored, second, redo)
    pair, prob = best_calls(scored, peaks["mz"].shape[0])
    return PartitionResult(result.part, peaks, scored, pair, prob, refined)


def _labels(space: SearchSpace, ion: np.ndarray,
            compound_columns=("compound_id", "name", "formula")) -> dict:
    """Compound columns, adduct and isotope of ions ``ion`` (``-1``: none, NA) as string
    arrays, taken from the library's own columns: no Python objects per row."""
    none = ion < 0
    safe = np.where(none, 0, ion)
    cidx = np.where(none, -1, space.compound[safe])
    out = {c: space.compounds[c].astype("string").array.take(cidx, allow_fill=True)
           for c in compound_columns}
    for col, names, codes in (("adduct", space.adduct_names, space.adduct),
                              ("isotope", space.isotope_labels, space.isotope)):
        out[col] = pd.array(list(names), dtype="string").take(
            np.where(none, -1, codes[safe]), allow_fill=True)
    return out


def annotate_partition(part, space: SearchSpace, config: AssignConfig,
                       calibration: Calibration):
    """Annotate one partition of peaks.

    Parameters
    ----------
    part : pandas.DataFrame or cudf.DataFrame
        Peaks with ``peak_id``, ``mz``, ``rt`` (minutes), ``intensity``.
    space : SearchSpace
    config : AssignConfig
    calibration : Calibration

    Returns
    -------
    assignments, candidates : pandas.DataFrame
        One row per peak (``ASSIGNMENT_DTYPES``), and one per kept candidate
        (``CANDIDATE_DTYPES``), in peak order.
    """
    result = second_pass(first_pass(part, space, config, calibration), space, config,
                         calibration)
    return to_tables(result, space)


def formula_probability(space: SearchSpace, peak: np.ndarray, ion: np.ndarray,
                        prob: np.ndarray, called: np.ndarray) -> np.ndarray:
    """Probability of each peak's call at formula level: the summed probability of its
    candidates that are the same ion (adduct and isotopologue) of a compound with the call's
    formula, the library isomers of the call (NaN where the call is the null).

    Examples
    --------
    Two isomers share a peak's probability; the formula takes both:

    >>> import types
    >>> space = types.SimpleNamespace(
    ...     compounds=pd.DataFrame({"formula": ["C6H12O6", "C6H12O6", "C5H10O5"]}),
    ...     compound=np.array([0, 1, 2]), adduct=np.array([0, 0, 0]), isotope=np.array([0, 0, 0]))
    >>> formula_probability(space, np.array([0, 0, 0]), np.array([0, 1, 2]),
    ...                     np.array([0.5, 0.3, 0.1]), np.array([0])).tolist()
    [0.8]
    """
    formula = space.compounds["formula"].astype("string")
    code = pd.factorize(formula.fillna(""), use_na_sentinel=False)[0].astype(np.int64)
    # A compound known only by mass is a formula of its own.
    code = np.where(formula.isna().to_numpy(), -1 - np.arange(code.size), code)

    def key(rows):
        return np.stack([code[space.compound[rows]], space.adduct[rows],
                         space.isotope[rows]], axis=1)

    out = np.full(called.size, np.nan)
    has = np.flatnonzero(called >= 0)
    if has.size == 0 or peak.size == 0:
        return out
    mine = key(ion)
    want = key(called[has])
    at = np.searchsorted(has, peak)
    at = np.minimum(at, has.size - 1)
    same = (has[at] == peak) & (mine == want[at]).all(axis=1)
    out[has] = np.bincount(at[same], weights=prob[same], minlength=has.size)
    return out


def to_tables(result: PartitionResult, space: SearchSpace):
    """The assignments and candidates tables of a scored partition (pandas)."""
    part, scored, pair, prob, refined = (result.part, result.scored, result.pair, result.prob,
                                         result.refined)
    n = result.peaks["mz"].shape[0]
    f = scored.features
    peak_ids = (part["peak_id"].to_pandas() if hasattr(part["peak_id"], "to_pandas")
                else part["peak_id"]).astype("string").array
    ion = f.ion.cpu().numpy()
    ppm = f.ppm_error.cpu().numpy()
    rt_err = (f.peak_rt - f.ion_rt).cpu().numpy()
    pair = pair.cpu().numpy()
    called = pair >= 0
    sel = pair[called]

    def on_calls(values):
        out = np.full(n, np.nan)
        out[called] = values[sel]
        return out

    ion_called = np.full(n, -1, dtype=np.int64)
    ion_called[called] = ion[sel]
    calls = _labels(space, ion_called)
    assignments = pd.DataFrame({
        "peak_id": peak_ids, **calls,
        "prob": prob.cpu().numpy(),
        "p_formula": formula_probability(space, f.peak.cpu().numpy(), ion,
                                         scored.prob.cpu().numpy(), ion_called),
        "p_null": scored.p_null.cpu().numpy(),
        "ppm_error": on_calls(ppm), "rt_error": on_calls(rt_err),
        "n_candidates": scored.n_candidates.cpu().numpy().astype(np.int64),
        "overflow": scored.overflow.cpu().numpy(),
        "refined": refined.cpu().numpy(),
        "n_partners": (np.zeros(n, dtype=np.int64) if result.n_partners is None
                       else result.n_partners.cpu().numpy().astype(np.int64)),
        "context_changed": (np.zeros(n, dtype=bool) if result.changed is None
                            else result.changed.cpu().numpy()),
        "mz": result.peaks["mz"].cpu().numpy(), "rt": result.peaks["rt"].cpu().numpy(),
        # As read (NaN where the table has none): the report sizes peaks by it.
        "intensity": result.peaks["intensity"].cpu().numpy(),
    })
    labels = _labels(space, ion, ("compound_id",))
    candidates = pd.DataFrame({
        "peak_id": peak_ids.take(f.peak.cpu().numpy()),
        "rank": scored.rank.cpu().numpy().astype(np.int64),
        "compound_id": labels["compound_id"], "adduct": labels["adduct"],
        "isotope": labels["isotope"], "ppm_error": ppm, "rt_error": rt_err,
        "prob": scored.prob.cpu().numpy(),
    }).astype(CANDIDATE_DTYPES)
    # Sums of probabilities can pass 1 by a rounding error; a probability never does.
    for table, cols in ((assignments, ("prob", "p_formula", "p_null")), (candidates, ("prob",))):
        for col in cols:
            table[col] = table[col].clip(0.0, 1.0)
    return assignments.astype(ASSIGNMENT_DTYPES), candidates
