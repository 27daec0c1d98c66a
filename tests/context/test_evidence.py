"""The context pass on small hand-made cases, and its fit, against hand-computed masses."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from dask_assign.chemistry.adducts import select_adducts
from dask_assign.chemistry.formulas import C13_SPACING, c13_abundances, parse_formula
from dask_assign.chemistry.ions import build_ions
from dask_assign.config import AssignConfig, Calibration, ScorerParams
from dask_assign.context.evidence import apply_context
from dask_assign.context.model import ContextModel, fit_context
from dask_assign.context.stats import context_stats
from dask_assign.filtering.space import SearchSpace
from dask_assign.scoring.passes import first_pass, second_pass
from dask_assign.scoring.tables import to_tables
from tests.conftest import library_frame

ADDUCTS = ("[M+H]+", "[M+Na]+", "[M+NH4]+")
#: The generative scorer, whose arithmetic the cases' comments follow (the shipped model's
#: weights would move the first-pass calls the cases start from).
CONFIG = AssignConfig(adducts=ADDUCTS, max_isotope=2, calibrate=False, scorer=ScorerParams())
CAL = Calibration(mass_sigma_ppm=2.0, rt_sigma=0.05, log_intensity_center=11.5,
                  log_intensity_scale=2.0)
#: A run of moderate crowding: an accidental partner in one window is rare.
MODEL = ContextModel(rt_sigma=0.005, rt_tol=0.02, ppm=11.3, log_kappa=math.log(1e-4),
                     log_detect=math.log(5e3), isotope_pairs=0.0)
RT = 5.0


def ion_mz(formula, adduct, isotope=0):
    a = select_adducts("positive", [adduct])[0]
    return a.mz(parse_formula(formula).mass) + isotope * C13_SPACING / abs(a.charge)


def annotate(lib_rows, peaks, context=True, model=MODEL):
    lib = library_frame(lib_rows)
    table = build_ions(lib, select_adducts("positive", CONFIG.adducts), CONFIG.max_isotope)
    space = SearchSpace.build(table, CONFIG.ppm * CONFIG.refine_widen)
    frame = pd.DataFrame(peaks, columns=["peak_id", "mz", "rt", "intensity"]).astype(
        {"peak_id": "string"})
    result = second_pass(first_pass(frame, space, CONFIG, CAL), space, CONFIG, CAL)
    if context:
        result = apply_context(result, frame, np.arange(len(frame)), space, CONFIG, CAL, model)
    a, _ = to_tables(result, space)
    return a.set_index("peak_id")


# Caffeine [M+Na]+ (217.06960) and C9H12O6 [M+H]+ (217.07066) lie 4.9 ppm apart: an isobar.
CAFFEINE, ISOBAR = "C8H10N4O2", "C9H12O6"
PAIR_LIB = [("caffeine", CAFFEINE, RT), ("isobar", ISOBAR, RT)]


def test_adduct_partner_resolves_an_isobar():
    na = ion_mz(ISOBAR, "[M+H]+")  # measured right on the isobar's [M+H]+
    alone = [("na", na, RT, 2e5)]
    with_partner = alone + [("h", ion_mz(CAFFEINE, "[M+H]+"), RT + 0.002, 1e6)]
    # Alone, [M+H]+ of the isobar is the better story (closer, and [M+H]+ is commoner).
    first = annotate(PAIR_LIB, alone, context=False)
    assert first.loc["na", "compound_id"] == "isobar"
    # Its co-eluting [M+H]+ partner at 195.0877 makes it caffeine's [M+Na]+.
    ctx = annotate(PAIR_LIB, with_partner)
    assert ctx.loc["na", "compound_id"] == "caffeine" and ctx.loc["na", "adduct"] == "[M+Na]+"
    assert ctx.loc["na", "context_changed"] and ctx.loc["na", "n_partners"] == 1
    assert ctx.loc["h", "compound_id"] == "caffeine" and ctx.loc["h", "adduct"] == "[M+H]+"
    # The partner must co-elute: 0.5 min away it says nothing.
    apart = annotate(PAIR_LIB, alone + [("h", ion_mz(CAFFEINE, "[M+H]+"), RT + 0.5, 1e6)])
    assert apart.loc["na", "compound_id"] == "isobar" and apart.loc["na", "n_partners"] == 0


# 5.05 ppm apart at [M+H]+ 431.17: 12 carbons (13C1/M0 = 0.130) against 29 (0.314).
LIGHT, HEAVY = "C12H26N6O11", "C29H22N2O2"


def test_isotope_ratio_rules_out_a_formula():
    lib = [("light", LIGHT, RT), ("heavy", HEAVY, RT)]
    mz0 = ion_mz(HEAVY, "[M+H]+") * (1 - 1e-6)  # closer to the heavy one
    ratio = {f: float(c13_abundances(np.array([parse_formula(f).count("C")]), 1)[0, 1])
             for f in (LIGHT, HEAVY)}
    assert round(ratio[LIGHT], 3) == 0.130 and round(ratio[HEAVY], 3) == 0.314
    first = annotate(lib, [("m0", mz0, RT, 1e6)], context=False)
    assert first.loc["m0", "compound_id"] == "heavy"
    for formula, winner in ((LIGHT, "light"), (HEAVY, "heavy")):
        peaks = [("m0", mz0, RT, 1e6),
                 ("m1", mz0 + C13_SPACING, RT + 0.001, 1e6 * ratio[formula])]
        ctx = annotate(lib, peaks)
        assert ctx.loc["m0", "compound_id"] == winner, formula
        # The 13C1 peak takes the compound of its monoisotopic peak, labelled 13C1.
        assert ctx.loc["m1", "compound_id"] == winner and ctx.loc["m1", "isotope"] == "13C1"


def test_missing_13c1_partner_lowers_a_large_molecule():
    # One peak between the light (12 C) and the heavy (29 C) formula, a little nearer the heavy.
    lib = [("light", LIGHT, RT), ("heavy", HEAVY, RT)]
    mz0 = ion_mz(HEAVY, "[M+H]+") * (1 - 1.5e-6)
    inten = 3e4  # heavy's 13C1 would be 9.4e3, above the detection limit (5e3); light's 3.9e3
    first = annotate(lib, [("m0", mz0, RT, inten)], context=False)
    lonely = annotate(lib, [("m0", mz0, RT, inten)])
    assert first.loc["m0", "compound_id"] == "heavy"
    assert lonely.loc["m0", "compound_id"] == "light"  # no 13C1 where heavy needs one
    assert lonely.loc["m0", "n_partners"] == 0 and lonely.loc["m0", "context_changed"]
    # With heavy's 13C1 partner present, heavy keeps the call, more surely than alone.
    ratio = float(c13_abundances(np.array([29]), 1)[0, 1])
    paired = annotate(lib, [("m0", mz0, RT, inten),
                            ("m1", mz0 + C13_SPACING, RT, inten * ratio)])
    assert paired.loc["m0", "compound_id"] == "heavy"
    assert paired.loc["m0", "prob"] > first.loc["m0", "prob"]


def test_isotope_peak_is_not_another_compounds_monoisotopic_peak():
    # Glucose 13C1 [M+H]+ (182.07402) lies 3.5 ppm from C8H11N3S [M+H]+: alone, a peak there
    # is that compound's monoisotopic ion (an M+0 ion is far likelier than a 13C1 one).
    glucose, other = "C6H12O6", "C8H11N3S"
    lib = [("glucose", glucose, RT), ("other", other, RT)]
    m1 = ion_mz(glucose, "[M+H]+", 1)
    assert abs(ion_mz(other, "[M+H]+") - m1) / m1 < 4e-6
    alone = annotate(lib, [("m1", m1, RT, 6.5e4)], context=False)
    assert alone.loc["m1", "compound_id"] == "other"
    # With glucose's monoisotopic peak beside it, at the 6.5% the formula predicts:
    peaks = [("m0", ion_mz(glucose, "[M+H]+"), RT, 1e6), ("m1", m1, RT + 0.001, 6.5e4)]
    ctx = annotate(lib, peaks)
    assert ctx.loc["m1", "compound_id"] == "glucose" and ctx.loc["m1", "isotope"] == "13C1"
    assert ctx.loc["m0", "compound_id"] == "glucose" and ctx.loc["m1", "prob"] > 0.8


def test_unknown_peak_with_partners_goes_to_not_in_library():
    # An unlisted molecule's [M+H]+ lands 5 ppm and 0.1 min from a library compound's
    # [M+NH4]+. Its [M+Na]+ and 13C1 partners say [M+H]+ of a mass no library compound has,
    # and an [M+NH4]+ without its [M+H]+ would be odd.
    target = ion_mz("C6H12O6", "[M+NH4]+") * (1 + 5e-6)
    lib_rows = [("nh4", "C6H12O6", RT + 0.1)]
    neutral = target - select_adducts("positive", ["[M+H]+"])[0].delta_mass
    na = neutral + select_adducts("positive", ["[M+Na]+"])[0].delta_mass
    peaks = [("u", target, RT, 1e6), ("u1", target + C13_SPACING, RT, 8e4),
             ("una", na, RT + 0.002, 2e5)]
    first = annotate(lib_rows, peaks, context=False)
    ctx = annotate(lib_rows, peaks)
    assert first.loc["u", "compound_id"] == "nh4" and first.loc["u", "p_null"] < 0.1
    assert ctx.loc["u", "compound_id"] is pd.NA and ctx.loc["u", "p_null"] > 0.5
    assert ctx.loc["u", "n_partners"] == 2


def test_fit_recovers_the_coelution_spread():
    rng = np.random.default_rng(3)
    n = 3000
    mz = rng.uniform(100, 800, n)
    rt = rng.uniform(0, 20, n)
    m1 = mz + C13_SPACING  # 13C1 partners whose RT differs by sd 0.01 min
    rt1 = rt + rng.normal(0, 0.01, n)
    frame = pd.DataFrame({"mz": np.r_[mz, m1], "rt": np.r_[rt, rt1],
                          "intensity": np.r_[np.full(n, 1e6), np.full(n, 1e5)],
                          "core": True})
    cal = Calibration(mass_sigma_ppm=2.0, log_detect=math.log(1e5))
    config = AssignConfig(max_coelution=0.1)
    space = small_space()
    one = fit_context(context_stats(frame, space, config, cal), config, cal, space)
    assert one.rt_sigma == pytest.approx(0.01, rel=0.15)
    # Gaussian differences: four spreads hold more than the 95% the tolerance must.
    assert one.rt_tol == pytest.approx(4 * one.rt_sigma)
    # Counts add over blocks: two halves give the same fit.
    halves = pd.DataFrame([context_stats(frame.assign(core=frame["rt"] < 10), space, config, cal),
                        context_stats(frame.assign(core=frame["rt"] >= 10), space, config, cal)])
    assert fit_context(halves, config, cal, space) == one
    assert one.log_detect == cal.log_detect
    assert ContextModel.from_dict(json.loads(json.dumps(one.to_dict()))) == one
    # Without intensities there is no detection limit; the model still goes through JSON.
    blind_cal = cal.replace(log_detect=float("-inf"))
    blind = fit_context(context_stats(frame.assign(intensity=np.nan), space, config, blind_cal),
                        config, blind_cal, space)
    assert blind.to_dict()["log_detect"] is None
    assert ContextModel.from_dict(json.loads(json.dumps(blind.to_dict()))) == blind


def small_space():
    lib = library_frame([("caffeine", CAFFEINE, RT), ("isobar", ISOBAR, RT)])
    table = build_ions(lib, select_adducts("positive", CONFIG.adducts), CONFIG.max_isotope)
    return SearchSpace.build(table, CONFIG.ppm * CONFIG.refine_widen)


def test_adduct_shares_resist_chance_matches():
    """Nine peaks in ten are unknown, half of them exactly at the [M+Na]+ m/z of a library
    compound (at random RTs): counting matches would make [M+Na]+ twice as common as the
    molecules. Counting only the [M+Na]+ ions that co-elute with a confident [M+H]+ call, in
    excess of decoys, recovers the simulated share (0.3)."""
    import dask

    from dask_assign.filtering.space import prepare_library
    from dask_assign.graph.plan import plan_run
    from dask_assign.graph.run import as_dask_frame
    from tests.simulate import library_and_run

    rng = np.random.default_rng(2)
    lib, peaks, truth = library_and_run(rng, n_lib=400, present=0.5, na_share=0.3,
                                        unknown_share=0.9, decoy_at_na=0.5, heteroatoms=())
    assert truth["compound_id"].isna().mean() == pytest.approx(0.9, abs=0.01)
    config = AssignConfig(rt_unit="min", adducts=("[M+H]+", "[M+Na]+", "[M+K]+"))
    library = lib.assign(formula=lib["formula"])
    with dask.config.set(scheduler="synchronous"):
        plan = plan_run(as_dask_frame(peaks, config), prepare_library(library_table(library),
                                                                        config), config)
    share = dict(zip(plan.space.adduct_names, plan.evidence.adduct_share, strict=True))
    assert share["[M+Na]+"] == pytest.approx(0.3, abs=0.08)
    assert share["[M+K]+"] < 0.02  # the simulation makes none
    # What a count of matches would say: every library compound's [M+Na]+ m/z has a peak.
    na = peaks["mz"].to_numpy()
    assert (plan.calibration.log_adduct_priors[1] - plan.calibration.log_adduct_priors[0]
            < np.log(0.5))
    assert len(na) > 10_000


def test_fit_recovers_a_wider_adduct_coelution():
    """[M+Na]+ features wander 0.02 min (sd) from their molecule's [M+H]+ apex while the
    isotopologues of one feature sit within 0.002 min; half the peaks are unknown, half of
    those exactly at a library compound's [M+Na]+ m/z at random RTs. The isotope partners'
    spread and the adduct partners' are fitted apart, each near its simulated value."""
    import dask

    from dask_assign.filtering.space import prepare_library
    from dask_assign.graph.plan import plan_run
    from dask_assign.graph.run import as_dask_frame
    from tests.simulate import library_and_run

    rng = np.random.default_rng(5)
    lib, peaks, _ = library_and_run(rng, n_lib=600, present=0.6, na_share=0.8,
                                    unknown_share=0.5, decoy_at_na=0.5, heteroatoms=(),
                                    adduct_rt_sd=0.02)
    config = AssignConfig(rt_unit="min", adducts=("[M+H]+", "[M+Na]+"))
    with dask.config.set(scheduler="synchronous"):
        plan = plan_run(as_dask_frame(peaks, config), prepare_library(library_table(lib),
                                                                        config), config)
    model = plan.evidence
    # Two independent 0.002 min apex errors: a 13C pair differs by 0.0028 min (sd); an
    # adduct pair by sqrt(0.02^2 + 2 * 0.002^2) = 0.0202 min.
    assert model.rt_sigma == pytest.approx(0.0028, rel=0.25)
    sigma, tol = model.adduct_coelution()
    assert sigma == pytest.approx(0.0202, rel=0.15)
    # Gaussian differences: four spreads hold more than 95%.
    assert tol == pytest.approx(4 * sigma) and model.rt_tol < 0.25 * tol
    assert share_of(plan, "[M+Na]+") == pytest.approx(0.8 * 0.9, abs=0.06)


def test_adduct_partners_are_searched_within_their_own_tolerance():
    """Caffeine's [M+Na]+ lies 0.03 min from its [M+H]+: beyond the isotope partners'
    tolerance (0.02 min), within the adduct partners' (0.08 min). Found only under the
    latter, it raises the [M+H]+ call; a model saved before the adduct fit (no such fields)
    reads as the isotope partners' tolerance."""
    mz_h, mz_na = ion_mz(CAFFEINE, "[M+H]+"), ion_mz(CAFFEINE, "[M+Na]+")
    peaks = [("h", mz_h, RT, 1e6), ("na", mz_na, RT + 0.03, 3e5)]
    lib = [("caffeine", CAFFEINE, RT)]
    wide = dataclasses.replace(MODEL, adduct_rt_sigma=0.02, adduct_rt_tol=0.08)
    narrow, found = annotate(lib, peaks), annotate(lib, peaks, model=wide)
    assert narrow.loc["h", "n_partners"] == 0 and found.loc["h", "n_partners"] == 1
    assert found.loc["h", "compound_id"] == "caffeine"
    assert found.loc["h", "prob"] > narrow.loc["h", "prob"]
    old = {k: v for k, v in MODEL.to_dict().items() if not k.startswith("adduct_rt")}
    assert ContextModel.from_dict(old).adduct_coelution() == (MODEL.rt_sigma, MODEL.rt_tol)


def share_of(plan, adduct):
    return dict(zip(plan.space.adduct_names, plan.evidence.adduct_share,
                    strict=True))[adduct]


def test_coelution_fit_of_a_half_normal_histogram():
    from dask_assign.context.model import coelution_fit

    rng = np.random.default_rng(0)
    diffs = np.abs(rng.normal(0, 0.01, 20_000))
    hist = np.histogram(diffs, np.linspace(0, 0.1, 101))[0]
    sigma, tol = coelution_fit(hist, 0.1)
    assert sigma == pytest.approx(0.01, rel=0.03)
    assert tol == pytest.approx(4 * sigma)  # four spreads hold more than 95%
    # A long tail: a quarter of the pairs spread evenly up to 0.08 min. The tolerance is the
    # 95% quantile (0.08 * (1 - 0.05 / 0.25) = 0.064 min, less the core's share beyond it).
    tail = np.r_[diffs[:15_000], rng.uniform(0, 0.08, 5_000)]
    _, tol = coelution_fit(np.histogram(tail, np.linspace(0, 0.1, 101))[0], 0.1)
    assert tol == pytest.approx(0.064, abs=0.003)
    # Never beyond the widest search: a 0.02 min spread searched within 0.05 min.
    broad = np.histogram(np.abs(rng.normal(0, 0.02, 20_000)), np.linspace(0, 0.05, 51))[0]
    assert coelution_fit(broad, 0.05)[1] == 0.05
    # Too few pairs to tell: an eighth of the window, and four of that.
    assert coelution_fit(hist * 0 + (np.arange(100) == 3), 0.1) == (0.0125, 0.05)


def library_table(frame):
    """A library frame as read_library gives it, from compound_id, name, formula, rt."""
    return library_frame(list(zip(frame["compound_id"], frame["formula"], frame["rt"],
                                  strict=True)))


def test_context_leaves_an_unambiguous_call_alone():
    """One candidate, right mass and RT: an intense peak with its 13C1 partner where its
    formula puts it, and a weak one whose isotope partners fall below the detection limit,
    keep their call and most of its probability after the context pass."""
    mz0 = ion_mz(CAFFEINE, "[M+H]+")
    lib = [("caffeine", CAFFEINE, RT)]
    c13 = float(c13_abundances(np.array([8]), 1)[0, 1])
    for peaks in ([("m0", mz0, RT, 1e6), ("m1", mz0 + C13_SPACING, RT + 0.001, 1e6 * c13)],
                  [("m0", mz0, RT, 6e3)]):
        first = annotate(lib, peaks, context=False)
        ctx = annotate(lib, peaks)
        assert first.loc["m0", "compound_id"] == ctx.loc["m0", "compound_id"] == "caffeine"
        assert ctx.loc["m0", "prob"] >= first.loc["m0", "prob"] - 0.05
        assert ctx.loc["m0", "p_null"] < 0.5


def test_a_peak_table_of_13c_envelopes_keeps_a_right_call():
    """NAD [M+H]+ with its isotopologues as a peak picker that groups features within 10 ppm
    reports them: 15N1 (9.5 ppm from 13C1) inside the 13C1 peak, 18O1 and 13C1+15N1 inside
    the 13C2 peak, each peak at its members' centroid and summed intensity. The fine
    structure the formula predicts is missing as separate peaks, in a run whose tables
    usually show it, but the 13C envelope is there as the formula says: the pass must not
    make the call less sure than the first pass did (it made p_null 0.059 -> 0.098 when it
    read the fine structure alone)."""
    nad = "C21H27N7O14P2"
    table = build_ions(library_frame([("nad", nad, RT)]), select_adducts("positive", ["[M+H]+"]),
                       2).ions
    abundance = np.exp(table["log_abundance"].to_numpy())
    nominal = np.rint(table["mz"].to_numpy() - table["mz"].min()).astype(int)
    m1 = table["mz"].to_numpy()[nominal == 1]
    assert (m1.max() - m1.min()) / m1.min() * 1e6 > 9  # 15N1 and 13C1 apart at 3 ppm
    # The library RT 0.15 min off (the first pass leaves the null 6%).
    peaks = []
    for shift in range(3):
        at = nominal == shift
        mz = float(np.average(table["mz"].to_numpy()[at], weights=abundance[at]))
        peaks.append((f"m{shift}", mz, RT + 0.15 + 0.001 * shift,
                      1e6 * abundance[at].sum() / abundance[nominal == 0].sum()))
    model = dataclasses.replace(MODEL, ppm=3.0, isotope_detect=0.98)
    first = annotate([("nad", nad, RT)], peaks, context=False)
    ctx = annotate([("nad", nad, RT)], peaks, model=model)
    assert first.loc["m0", "compound_id"] == ctx.loc["m0", "compound_id"] == "nad"
    assert 0.03 < first.loc["m0", "p_null"] < 0.1
    assert ctx.loc["m0", "p_null"] <= first.loc["m0", "p_null"] + 1e-3
    assert ctx.loc["m0", "n_partners"] == 2


def test_relation_accidents_measure_a_chemical_mass_difference():
    """Random peaks, and beside a third of them a stranger one Na-H (21.98194) heavier at an
    RT anywhere in the co-elution window (a homolog series, not one molecule's adducts). The
    [M+H]+ -> [M+Na]+ windows, and the reverse, hold that many more peaks than the decoys'
    over the outer half of the window (where true partners do not reach): the fitted
    accident is log(1 + planted / chance), by a count independent of the relation search.
    Relations no planted difference serves stay at zero, and without the series all do."""
    from dask_assign.context.model import partner_ppm

    rng = np.random.default_rng(11)
    n, window = 6000, 0.1
    mz, rt = rng.uniform(100, 800, n), rng.uniform(0, 20, n)
    k = n // 3
    planted_mz = mz[:k] + 21.98194
    planted_rt = rt[:k] + rng.uniform(-window, window, k)
    cal = Calibration(mass_sigma_ppm=2.0, log_detect=math.log(1e5))
    config = AssignConfig(max_coelution=window)
    space = small_space()
    names = list(space.adduct_names)
    h, na = names.index("[M+H]+"), names.index("[M+Na]+")

    def fitted(m, r):
        frame = pd.DataFrame({"mz": m, "rt": r, "intensity": 1e6, "core": True})
        model = fit_context(context_stats(frame, space, config, cal), config, cal, space)
        return model.relation_accidents(len(names))

    series = fitted(np.r_[mz, planted_mz], np.r_[rt, planted_rt])
    # Chance: peaks per core peak in an outer-half window (ppm either side, RT width window).
    ppm = partner_ppm(cal)
    density = (n + k) / (700.0 * 20.0)
    chance = (n + k) * density * 2 * ppm * 1e-6 * 470.0 * window
    planted = np.sum(np.abs(planted_rt - rt[:k]) > window / 2)
    expected = math.log(1 + planted / chance)
    assert expected > 2.0
    assert series[h, na] == pytest.approx(expected, abs=0.25)
    assert series[na, h] == pytest.approx(expected, abs=0.25)
    others = np.ones_like(series, dtype=bool)
    others[h, na] = others[na, h] = False
    assert series[others].max() < 0.4
    assert fitted(mz, rt).max() < 0.4


def test_a_partner_where_accidents_are_common_counts_for_less():
    """The isobar case again, in a run where peaks one Na-H apart co-elute by accident e^3
    times as often as the decoys say (a homolog series): the [M+H]+ partner is weaker
    evidence of caffeine's [M+Na]+, which still gains over the peak alone, by less."""
    na = ion_mz(ISOBAR, "[M+H]+")
    alone = [("na", na, RT, 2e5)]
    pair = alone + [("h", ion_mz(CAFFEINE, "[M+H]+"), RT + 0.002, 1e6)]
    accident = np.zeros((len(ADDUCTS), len(ADDUCTS)))
    accident[0, 1] = accident[1, 0] = 3.0
    common = dataclasses.replace(MODEL, adduct_accident=tuple(accident.ravel()))

    def p_caffeine(peaks, model=MODEL):
        out = annotate(PAIR_LIB, peaks, model=model).loc["na"]
        p = out["prob"] if out["compound_id"] == "caffeine" else 0.0
        return p, out["n_partners"]

    (p_alone, n_alone), (p_found, n_found) = p_caffeine(alone), p_caffeine(pair)
    p_common, n_common = p_caffeine(pair, common)
    assert n_alone == 0 and n_found == n_common == 1
    assert p_alone < p_common < p_found


def test_partners_are_searched_with_the_mass_offset_taken_out():
    """A run whose mass error runs from -15 ppm at m/z 150 to 0 at m/z 400 (as E. coli
    negative's does): caffeine's [M+H]+ (195) and its dimer's [2M+H]+ (389) are measured
    where that curve puts them, 13 ppm apart in error, beyond the partner window. The pass
    finds the dimer as it does in a run without the offset, and gives the same
    probabilities."""
    config = CONFIG.replace(adducts=("[M+H]+", "[2M+H]+"))
    adducts = select_adducts("positive", config.adducts)
    lib = library_frame([("caffeine", CAFFEINE, RT), ("isobar", ISOBAR, RT)])
    space = SearchSpace.build(build_ions(lib, adducts, config.max_isotope),
                              config.ppm * config.refine_widen)
    m = parse_formula(CAFFEINE).mass
    exact = {"h": adducts[0].mz(m), "h13": adducts[0].mz(m) + C13_SPACING,
             "dimer": adducts[1].mz(m)}
    flat = CAL.replace(mass_knots=(150.0, 400.0), mass_offsets=(0.0, 0.0))
    steep = CAL.replace(mass_knots=(150.0, 400.0), mass_offsets=(-15.0, 0.0))

    def run(cal):
        offset = cal.mass_offset(np.array(list(exact.values())))
        frame = pd.DataFrame({
            "peak_id": pd.array(list(exact), dtype="string"),
            "mz": np.array(list(exact.values())) * (1 + offset * 1e-6),
            "rt": [RT, RT, RT + 0.001], "intensity": [1e6, 1e5, 2e5]})
        result = second_pass(first_pass(frame, space, config, cal), space, config, cal)
        result = apply_context(result, frame, np.arange(len(frame)), space, config, cal, MODEL)
        stats = context_stats(frame.assign(core=True), space, config, cal)
        return to_tables(result, space)[0].set_index("peak_id"), stats

    (plain, plain_stats), (shifted, shifted_stats) = run(flat), run(steep)
    # The counts the context model is fitted from see the dimer too.
    dimer = space.adduct_names.index("[2M+H]+")
    co = [c for c in plain_stats.index if c.startswith(f"co{dimer}_")]
    assert plain_stats[co].sum() > 0
    pd.testing.assert_series_equal(shifted_stats, plain_stats)
    assert shifted.loc["dimer", "ppm_error"] - shifted.loc["h", "ppm_error"] > 10
    assert plain.loc["h", "n_partners"] == shifted.loc["h", "n_partners"] == 2
    assert shifted.loc["dimer", "compound_id"] == "caffeine"
    for col in ("prob", "p_null"):
        np.testing.assert_allclose(shifted[col], plain[col], rtol=1e-6)
