"""AssignConfig: every knob of a run, in one frozen, picklable object passed down to the tasks."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a curve is made: settings alone need no torch
    from dask_assign.calibration.curves import Curve

OVERFLOW_POLICIES = ("prefilter", "rounds", "flag")


class SettingError(ValueError):
    """A setting out of range.

    ``name`` is the :class:`AssignConfig` field, so that each front end names it as its user
    wrote it: the CLI as its flag (``--k-max``), a job spec as its key (``k_max``).

    Examples
    --------
    >>> str(SettingError("k_max", "must be at least 1, not 0"))
    'k_max: must be at least 1, not 0'
    """

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"{name}: {reason}")


@dataclass(frozen=True)
class ScorerParams:
    """Parameters of the scorer; as constructed, the untrained generative model of one peak.

    A peak comes from one library ion, or from none ("null"). Each hypothesis has a prior and a
    likelihood of what was measured; the posterior is a softmax over the peak's candidates and
    the null slot. The defaults describe a typical high-resolution instrument and need no
    training, and are what :class:`AssignConfig` uses by default. A model trained with
    ``dask-assign train`` (:mod:`dask_assign.scoring.model`, ``--model``) re-weighs the terms.

    Attributes
    ----------
    mass_offset_ppm, mass_sigma_ppm : float
        Systematic offset and spread of the mass error (ppm), Gaussian.
    rt_sigma : float
        Spread of the difference between observed and library retention time (minutes).
    null_prior : float
        Prior probability that a peak is none of the library's ions.
    isotope_weight : float
        Weight of the log isotope abundance in the prior of an isotopologue ion.
    adduct_weight : float
        Weight of the log adduct prior.
    intensity_weight : float
        Weight of the intensity term: how much an isotope peak must be weaker than its
        monoisotopic peak by its predicted abundance (log-normal intensity model).
    count_weight : float
        Weight of log(number of candidates); 0 in the generative model (the softmax already
        shares probability among candidates), free for a learned scorer.
    mass_weight, rt_weight : float
        Weights of the mass and RT log-likelihoods (1 in the generative model; a learned
        scorer tempers what the fitted error models claim).
    bias : float
        Added to every candidate's logit against the null (0 in the generative model).
    unlisted_prior : float
        Chance that a peak matching a library ion is an unlisted compound of the same formula
        (an isomer missing from the library), where the library gives no RT; against a
        library RT the share follows the RT's evidence
        (:meth:`~dask_assign.scoring.scorer.PeakScorer.isomer_odds`): an isomer explains a match
        where the library's isomers elute from each other better than the compound itself.
    """

    mass_offset_ppm: float = 0.0
    mass_sigma_ppm: float = 3.0
    rt_sigma: float = 0.15
    null_prior: float = 0.5
    isotope_weight: float = 1.0
    adduct_weight: float = 1.0
    intensity_weight: float = 0.0
    count_weight: float = 0.0
    mass_weight: float = 1.0
    rt_weight: float = 1.0
    bias: float = 0.0
    unlisted_prior: float = 0.1


@dataclass(frozen=True)
class AssignConfig:
    """Settings of one annotation run.

    Frozen and picklable: it is built once on the client and travels with the tasks, so no task
    reads a global. Defaults need no tuning per data set.

    Attributes
    ----------
    mode : {"positive", "negative"}
        Ionisation mode; selects the adduct table.
    adducts : tuple of str, optional
        Adduct names to search; ``None`` takes the built-in defaults of ``mode``.
    adduct_table : str, optional
        A user adduct table (TSV/CSV, same columns as the built-in one) replacing the built-in.
    ppm : float
        Mass tolerance of the candidate search (ppm, either side of the run's fitted mass
        offset), widened where the run's fitted mass spread needs more. The window grows to
        4 spreads where that is wider (:func:`~dask_assign.filtering.space.fitted_ppm`); the
        scorer weighs the mass error.
    rt_window : float, optional
        Retention-time bound of the candidate search (minutes, either side) around the
        library RT mapped to this run, where the library has a retention time (compounds
        without one are not masked by RT). It only bounds the cost: the scorer weighs the RT
        through the run's fitted RT error model. ``None`` (the default) takes it from that
        model (:func:`~dask_assign.filtering.space.candidate_rt_window`): wide where the run
        shows library RTs minutes off, narrow where they hold.
    rt_unit : {"auto", "min", "s"}
        Unit of the peak table's retention times; ``auto`` infers it (and logs why).
    library_rt_unit : {"min", "s"}
        Unit of the library's retention times.
    max_isotope : int
        Largest nominal mass shift of the isotopologues searched: neutrons added (or
        removed), from any element (``13C1`` is 1; ``13C2``, ``18O1``, ``34S1``, ``37Cl1`` are
        2); 0 searches monoisotopic ions only.
    isotope_min_abundance : float
        Smallest isotopologue searched, relative to its monoisotopic ion. An intense peak
        shows isotopologues well below 1e-3 of it (a peak 2,000 times its run's detection
        limit shows 13C2 of a C4 acid, 7e-4): left out, they are peaks no ion explains, and
        their neighbours' partner windows take them for other isotopologues.
    isotope_merge_ppm : float
        Isotopologues of one ion closer than this (ppm) are searched as one ion: closer than
        the peak width of Orbitrap and TOF instruments, they are one centroid. The run merges
        further, up to its fitted mass spread.
    k_first : int
        Candidates kept per peak in the first pass.
    k_max : int
        Candidates kept per peak at most (second pass); more are handled by ``overflow``.
    overflow : {"prefilter", "rounds", "flag"}
        What happens to a peak with more candidates than kept: ``prefilter`` scores the best by
        a simple combined score; ``rounds`` scores all of them in rounds of ``k`` and combines the
        rounds exactly; ``flag`` makes no call and leaves the peak for review. In every case
        ``n_candidates`` holds the full count and ``overflow`` is set.
    refine_below : float
        Rows whose best probability (null included) is below this are refined.
    refine_widen : float
        Factor by which the refinement widens the ppm and RT windows.
    scorer : ScorerParams
        Weights of the scorer: the generative model of one peak by default, or a model
        trained with ``dask-assign train`` (:func:`dask_assign.scoring.model.load_model`).
    calibrate : bool
        Fit the mass and RT error models and the null prior from the data (EM) before scoring.
    mass_search_ppm : float
        Half-width (ppm) of the calibration's first, mass-only search for the run's
        systematic mass error (at least twice ``ppm``); candidate windows are then centred on
        the fitted offset curve. 0 turns the search off.
    max_drift : float
        Largest shift (minutes) between library and run retention times that the calibration's
        first, mass-only pass looks for; RT windows are then centred on the fitted mapping.
        0 turns the search off.
    em_iterations : int
        Most EM iterations of the calibration.
    partition_size : int
        Peaks per partition when reading text files.
    max_pairs : int
        Candidate pairs a kernel handles at once (before the exact test); bounds the memory of a
        task whatever the crowding of the m/z range.
    block_pairs : int
        Kept candidate pairs an RT block may hold, about (first pass and refinement, estimated
        on a sample of the peaks): a crowded run is cut into more, smaller blocks. A block
        holds about 650 bytes a kept pair at its peak, so the default is about 1.3 GB a task.
    device : {"cpu", "cuda"}
        Torch device of the scoring kernels.
    context : bool
        Run the context pass: re-weigh every peak's candidates by its co-eluting isotope and
        adduct partners (:mod:`dask_assign.context.evidence`).
    max_coelution : float
        Widest RT difference (minutes) between ions of one molecule that the context pass
        considers; the tolerance itself is fitted below it. Peaks are processed in RT blocks
        with a halo this wide, so results do not depend on the blocks.
    context_weight : float
        Weight of the context evidence (1: as the model states it; 0: none).
    context_noise_share : float, optional
        Share of the null hypothesis that is noise (no molecule, so no partners) rather than a
        molecule missing from the library; ``None`` (the default) measures it on the run.
    isotope_ratio_sigma : float
        Smallest spread (natural log) of an isotope peak's intensity around the ratio its
        formula predicts; the run's own spread is measured (its isotope partners of
        confident calls) and used where it is wider.
    """

    mode: str = "positive"
    adducts: tuple[str, ...] | None = None
    adduct_table: str | None = None
    ppm: float = 10.0
    rt_window: float | None = None
    rt_unit: str = "auto"
    library_rt_unit: str = "min"
    max_isotope: int = 10
    isotope_min_abundance: float = 2e-4
    isotope_merge_ppm: float = 3.0
    k_first: int = 20
    k_max: int = 50
    overflow: str = "prefilter"
    refine_below: float = 0.5
    refine_widen: float = 2.0
    scorer: ScorerParams = field(default_factory=ScorerParams)
    calibrate: bool = True
    mass_search_ppm: float = 40.0
    max_drift: float = 5.0
    em_iterations: int = 8
    partition_size: int = 250_000
    max_pairs: int = 4_000_000
    block_pairs: int = 2_000_000
    device: str = "cpu"
    context: bool = True
    max_coelution: float = 0.1
    context_weight: float = 1.0
    context_noise_share: float | None = None
    isotope_ratio_sigma: float = 0.15

    def __post_init__(self):
        # Each message names its field: the CLI says it as the flag, a job spec as its key.
        def need(ok, name, rule):
            if not ok:
                raise SettingError(name, f"{rule}, not {getattr(self, name)!r}")

        need(self.mode in ("positive", "negative"), "mode", "must be 'positive' or 'negative'")
        need(self.rt_unit in ("auto", "min", "s"), "rt_unit", "must be 'auto', 'min' or 's'")
        need(self.library_rt_unit in ("min", "s"), "library_rt_unit", "must be 'min' or 's'")
        need(self.overflow in OVERFLOW_POLICIES, "overflow",
             f"must be one of {', '.join(OVERFLOW_POLICIES)}")
        need(0 < self.ppm < 1e5, "ppm", "must be above 0 and below 100000")
        need(self.rt_window is None or self.rt_window > 0, "rt_window", "must be positive")
        need(self.k_max >= 1, "k_max", "must be at least 1")
        need(1 <= self.k_first <= self.k_max, "k_first",
             f"must be at least 1 and at most k_max ({self.k_max})")
        need(0 <= self.max_isotope <= 20, "max_isotope", "must lie in 0..20")
        need(0 < self.isotope_min_abundance <= 1, "isotope_min_abundance",
             "must be above 0 and at most 1")
        need(self.isotope_merge_ppm >= 0, "isotope_merge_ppm", "must not be negative")
        for name in ("max_pairs", "partition_size", "block_pairs"):
            need(getattr(self, name) >= 1, name, "must be at least 1")
        need(self.mass_search_ppm >= 0, "mass_search_ppm", "must not be negative")
        need(self.refine_widen >= 1, "refine_widen", "must be at least 1")
        need(self.max_coelution > 0, "max_coelution", "must be positive")
        need(self.context_noise_share is None or 0 < self.context_noise_share < 1,
             "context_noise_share", "must lie strictly between 0 and 1")
        need(self.isotope_ratio_sigma > 0, "isotope_ratio_sigma", "must be positive")
        need(self.context_weight >= 0, "context_weight", "must not be negative")
        need(self.device == "cpu" or self.device.startswith("cuda"), "device",
             "must be 'cpu' or 'cuda[:N]'")
        if self.adducts is not None:
            object.__setattr__(self, "adducts", tuple(self.adducts))

    def replace(self, **changes) -> AssignConfig:
        """A copy with some fields changed (the object itself is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The settings as JSON, for the output manifest."""
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


#: ``--model`` / ``model:`` value of the shipped default: the generative scorer. Models
#: trained on real and simulated runs did not beat it on every held-out real run
#: (``benchmarks/learned_scorer.py``, leave one run out), so no trained model ships.
DEFAULT_MODEL = "default"

#: ``--model`` / ``model:`` value for the generative scorer, by name.
NO_MODEL = "none"


@dataclass(frozen=True)
class Setting:
    """One :class:`AssignConfig` field as the front ends show it: the CLI option ``flag``
    and the job spec's key ``name`` under ``settings:``, with one default and one help text.

    Attributes
    ----------
    name : str
        The field (``model`` for the ``scorer`` field, which a front end names by model).
    kind : type
        ``bool``, ``int``, ``float``, ``str`` or ``tuple`` (a list of names).
    default : object
        The field's default (``"default"`` for the model).
    choices : tuple of str, optional
        The values allowed, where the field's docstring lists them (``{"a", "b"}``).
    help : str
        The first sentence of the field's description in :class:`AssignConfig`'s docstring.
    """

    name: str
    kind: type
    default: object
    choices: tuple[str, ...] | None
    help: str

    @property
    def flag(self) -> str:
        """The CLI option: the name with dashes (``k_max`` -> ``--k-max``)."""
        return "--" + self.name.replace("_", "-")


_KINDS = {"bool": bool, "int": int, "float": float, "str": str, "tuple": tuple}


def _attribute_docs(doc: str) -> dict[str, tuple[str, str]]:
    """``name -> (type line, description)`` of a numpydoc ``Attributes`` section."""
    lines = inspect.cleandoc(doc).splitlines()
    start = lines.index("Attributes") + 2
    out, name = {}, None
    for line in lines[start:]:
        if line and not line.startswith(" "):
            name, _, kind = line.partition(" : ")
            out[name] = (kind, "")
        elif name and line.strip():
            kind, text = out[name]
            out[name] = (kind, f"{text} {line.strip()}".strip())
    return out


def _first_sentence(text: str) -> str:
    """Up to the first full stop or semicolon outside parentheses, without RST markup."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")
    depth = 0
    for i, c in enumerate(text):
        depth += (c == "(") - (c == ")")
        if depth == 0 and c in ".;" and (i + 1 == len(text) or text[i + 1] == " "):
            return text[:i]
    return text


@functools.cache
def settings() -> tuple[Setting, ...]:
    """Every field of :class:`AssignConfig` as a :class:`Setting`, in field order: the one
    source the CLI's options and the job spec's keys are made from.

    Examples
    --------
    >>> s = {s.name: s for s in settings()}
    >>> s["k_max"].flag, s["k_max"].default, s["mode"].choices
    ('--k-max', 50, ('positive', 'negative'))
    """
    docs = _attribute_docs(AssignConfig.__doc__)
    out = []
    for f in dataclasses.fields(AssignConfig):
        kind_line, text = docs[f.name]
        if f.name == "scorer":
            out.append(Setting("model", str, DEFAULT_MODEL, None,
                               f"scorer model folder (from 'dask-assign train'); "
                               f"'{DEFAULT_MODEL}' or '{NO_MODEL}': the generative scorer"))
            continue
        base = re.sub(r"\[.*\]", "", str(f.type)).split("|")[0].strip()
        choices = re.match(r"\{(.*)\}", kind_line)
        out.append(Setting(
            f.name, _KINDS[base], f.default,
            tuple(c.strip().strip('"') for c in choices.group(1).split(",")) if choices else None,
            _first_sentence(text)))
    return tuple(out)


@dataclass(frozen=True)
class Calibration:
    """What a run knows of its instrument and data: fitted (EM) or from the defaults.

    Small and frozen, it travels to the tasks like the configuration.

    Attributes
    ----------
    mass_knots, mass_offsets : tuple of float
        Systematic mass error (ppm) as a smooth curve of m/z: piecewise linear through
        ``(mass_knots[i], mass_offsets[i])`` (see :class:`~dask_assign.calibration.curves.Curve`).
    mass_sigma_ppm : float
        Spread of the mass error around that curve (ppm).
    rt_knots, rt_values : tuple of float
        Monotone map of library RT to expected observed RT (minutes), piecewise linear.
    rt_sigma : float
        Spread of observed RT around the mapping (minutes) for library RTs that hold.
    rt_tail_share, rt_tail_sigma : float
        Share of library RTs that do not hold (measured on another day, another column), and
        the scale (minutes) of their residuals: the RT error is the mixture
        ``(1 - share) N(0, rt_sigma) + share t_3(0, rt_tail_sigma)``, a Student t with
        :data:`~dask_assign.scoring.scorer.RT_TAIL_DOF` degrees of freedom (heavy-tailed).
    null_prior : float
        Prior share of peaks that are none of the library's ions.
    main_share : float
        Share of the peaks that are ions of the main adduct (what the EM measures).
    rt_span : float
        RT range of the peaks (minutes): the background's RT density is ``1 / rt_span``.
    log_volume : float
        log of the searched space (ppm of m/z range times minutes of RT range).
    log_enrichment : float
        log of how much denser than an even spread the peaks lie beside library ions by
        chance (measured with decoy mass shifts): the null's density there.
    log_prior_mass : float
        log of the summed prior weights of all ions.
    log_intensity_center, log_intensity_scale : float
        Mean and spread of the peaks' log intensities.
    log_detect : float
        Natural log of the intensity below which peaks are rarely detected (``-inf`` for a
        table without intensities).
    log_adduct_priors : tuple of float, optional
        Fitted log prior share of each adduct (by the ion table's adduct index); ``None`` keeps
        the adduct table's priors.
    log_adduct_background : tuple of float, optional
        log of each adduct's background density beside its ions against the main adduct's
        (see :class:`~dask_assign.context.model.ContextModel`); ``None``: the same for all.
    isomer_rt_knots, isomer_rt_log_density : tuple of float
        Where an unlisted isomer of a candidate elutes: log density of its RT residual, a
        curve learned from the library's isomer pairs
        (:mod:`dask_assign.calibration.isomer_rt`); empty:
        anywhere in the run.
    iterations : int
        EM iterations run (0: defaults, not fitted).
    """

    mass_knots: tuple = (0.0, 1.0)
    mass_offsets: tuple = (0.0, 0.0)
    mass_sigma_ppm: float = 3.0
    rt_knots: tuple = (0.0, 1.0)
    rt_values: tuple = (0.0, 1.0)
    rt_sigma: float = 0.15
    rt_tail_share: float = 0.0
    rt_tail_sigma: float = 1.0
    null_prior: float = 0.5
    main_share: float = 0.5
    rt_span: float = 20.0
    log_volume: float = 17.0
    log_enrichment: float = 0.0
    log_prior_mass: float = 0.0
    log_intensity_center: float = 11.0
    log_intensity_scale: float = 2.0
    log_detect: float = float("-inf")
    log_adduct_priors: tuple | None = None
    log_adduct_background: tuple | None = None
    isomer_rt_knots: tuple = ()
    isomer_rt_log_density: tuple = ()
    iterations: int = 0

    def __post_init__(self):
        for name in _CURVE_FIELDS:
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if len(self.mass_knots) != len(self.mass_offsets) or len(self.mass_knots) < 2:
            raise ValueError("mass_knots and mass_offsets: the same length, at least 2")
        if len(self.rt_knots) != len(self.rt_values) or len(self.rt_knots) < 2:
            raise ValueError("rt_knots and rt_values: the same length, at least 2")
        if len(self.isomer_rt_knots) != len(self.isomer_rt_log_density) or \
                len(self.isomer_rt_knots) == 1:
            raise ValueError("isomer_rt_knots and isomer_rt_log_density: the same length, "
                             "none or at least 2")

    @property
    def mass_offset(self) -> Curve:
        """The systematic mass error (ppm) as a function of m/z."""
        from dask_assign.calibration.curves import Curve

        return Curve(self.mass_knots, self.mass_offsets)

    @property
    def rt_map(self) -> Curve:
        """Expected observed RT as a function of library RT."""
        from dask_assign.calibration.curves import Curve

        return Curve(self.rt_knots, self.rt_values)

    @property
    def isomer_rt(self) -> Curve | None:
        """log density of an unlisted isomer's RT residual (``None``: anywhere in the run)."""
        from dask_assign.calibration.curves import Curve

        return Curve(self.isomer_rt_knots, self.isomer_rt_log_density) \
            if self.isomer_rt_knots else None

    @property
    def mass_offset_ppm(self) -> float:
        """The mass offset averaged over the knots (the offset itself when it is flat)."""
        return float(sum(self.mass_offsets) / len(self.mass_offsets))

    def replace(self, **changes) -> Calibration:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a plain dict (for logs and the output folder)."""
        out = dataclasses.asdict(self)
        for name in (*_CURVE_FIELDS, "log_adduct_priors", "log_adduct_background"):
            if out[name] is not None:
                out[name] = list(out[name])
        if not math.isfinite(out["log_detect"]):
            out["log_detect"] = None  # JSON has no infinity: a table without intensities
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        if data.get("log_detect", 0.0) is None:
            data["log_detect"] = float("-inf")
        # Written before the curves (a straight RT map and a flat mass offset).
        if "rt_intercept" in data:
            a, b = data.pop("rt_intercept"), data.pop("rt_slope", 1.0)
            data.setdefault("rt_values", (a, a + b))
        if "mass_offset_ppm" in data:
            offset = data.pop("mass_offset_ppm")
            data.setdefault("mass_offsets", (offset, offset))
        for name in ("log_adduct_priors", "log_adduct_background"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)


_CURVE_FIELDS = ("mass_knots", "mass_offsets", "rt_knots", "rt_values", "isomer_rt_knots",
                 "isomer_rt_log_density")
