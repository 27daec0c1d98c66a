"""The calibration recovers what a simulation put in: mass offset (also far beyond the search
window, and bent), mass spread, the RT drift, how far library RTs hold (the share that does
not, and both spreads), the main adduct's share of the peaks."""

import numpy as np
import pandas as pd
import pytest
import torch

from dask_assign.calibration.em import em_statistics, fit_calibration
from dask_assign.calibration.peaks import peak_summary, run_context
from dask_assign.chemistry.adducts import select_adducts
from dask_assign.chemistry.ions import build_ions
from dask_assign.config import AssignConfig
from dask_assign.filtering.space import SearchSpace, candidate_ppm, candidate_rt_window
from dask_assign.scoring.scorer import RT_TAIL_DOF
from tests.conftest import library_frame


def simulate(rng, offset=-2.0, sigma=1.5, shift=0.1, slope=1.02, rt_sd=0.04, n_lib=400,
             unknown=0.3, wobble=0.0, mass_slope=0.0, rt_tail=0.0, rt_tail_sd=3.0,
             mass_error=None):
    """Peaks of 60% of a random library's ions (and unknowns): mass error
    ``offset + mass_slope * (mz - 400) / 100 + N(0, sigma)`` ppm (or ``mass_error(mz)`` +
    noise), RT ``drift(rt_lib) + N(0, rt_sd)`` with the drift of :func:`drift`, a share
    ``rt_tail`` of the compounds off by a Student t of scale ``rt_tail_sd`` and the model's
    degrees of freedom (library RTs from another day)."""
    formulas = [f"C{rng.integers(5, 30)}H{rng.integers(6, 50)}N{rng.integers(1, 4)}"
                f"O{rng.integers(1, 10)}" for _ in range(n_lib)]
    lib = library_frame([(f"c{i}", f, float(rng.uniform(0.5, 14))) for i, f in
                         enumerate(formulas)])
    config = AssignConfig(adducts=("[M+H]+", "[M+Na]+"), max_isotope=0)
    table = build_ions(lib, select_adducts("positive", config.adducts), 0)
    ions = table.ions.sample(frac=0.6, random_state=1)
    n_known = len(ions)
    true_mz = ions["mz"].to_numpy()
    systematic = (offset + mass_slope * (true_mz - 400) / 100 if mass_error is None
                  else mass_error(true_mz))
    error = systematic + sigma * rng.standard_normal(n_known)
    mz = true_mz * (1 + error * 1e-6)
    rt = drift(ions["rt"].to_numpy(), shift, slope, wobble) + rt_sd * rng.standard_normal(n_known)
    off = rng.random(n_lib) < rt_tail  # whole compounds: all their ions are off together
    moved = rt_tail_sd * rng.standard_t(RT_TAIL_DOF, n_lib)
    rt = rt + np.where(off, moved, 0.0)[ions["compound"].to_numpy()]
    n_unknown = int(n_known * unknown / (1 - unknown))
    mz = np.concatenate([mz, rng.uniform(100, 700, n_unknown)])
    rt = np.concatenate([rt, rng.uniform(0.5, 15, n_unknown)])
    peaks = pd.DataFrame({"peak_id": [f"p{i}" for i in range(mz.size)], "mz": mz, "rt": rt,
                          "intensity": 1e5})
    return peaks, SearchSpace.build(table, 20.0), config


def drift(rt_lib, shift, slope, wobble):
    """A smooth, monotone library-to-run RT drift: a line and a slow sine wobble."""
    return shift + slope * rt_lib + wobble * np.sin(2 * np.pi * rt_lib / 14)


def fit(peaks, space, config):
    start = run_context(peak_summary(peaks), space, config)

    def stats_of(c):
        return em_statistics(peaks, space, config, c).sum().to_dict()

    return start, fit_calibration(stats_of, start, config, space)


def test_em_recovers_mass_and_rt_models(rng):
    peaks, space, config = simulate(rng)
    start, cal = fit(peaks, space, config)
    assert start.iterations == 0 and cal.iterations >= 2
    assert cal.mass_offset_ppm == pytest.approx(-2.0, abs=0.25)
    assert cal.mass_sigma_ppm == pytest.approx(1.5, abs=0.3)
    lib_rt = np.linspace(0.5, 14, 28)
    np.testing.assert_allclose(cal.rt_map(lib_rt), 0.1 + 1.02 * lib_rt, atol=0.03)
    assert cal.rt_sigma == pytest.approx(0.04, abs=0.02)
    # The main adduct ([M+H]+) makes half of the known peaks.
    assert cal.main_share == pytest.approx(0.7 * 0.5, abs=0.08)
    # Library RTs hold: next to nothing is off, and the candidate window stays narrow (4
    # scales of a tail fitted to a few chance matches: about 0.5 min; 8 min and more where
    # four compounds in ten are off, below).
    assert cal.rt_tail_share < 0.03
    assert candidate_rt_window(config, cal) < 2.5


def test_a_mass_spread_wider_than_the_tolerance_is_fitted_and_searched(rng):
    """Masses spread 5 ppm around a 3 ppm offset: a 10 ppm window around the offset would cut
    off one true ion in twenty-two (|N(0, 5)| > 10 ppm). The candidate window
    follows the fitted spread (4 of them, up to what the mass bins index, 20 ppm here), so
    the spread is fitted from an all but uncut sample, and the search keeps the ions."""
    peaks, space, config = simulate(rng, offset=3.0, sigma=5.0, n_lib=800, unknown=0.2)
    start, cal = fit(peaks, space, config)
    assert candidate_ppm(config, start, space) == config.ppm == 10.0  # nothing fitted yet
    # Over the m/z of the main adduct's ions (the EM's matches) the curve is the offset.
    mz = space.mz[space.adduct == 0]
    mz = torch.as_tensor(mz[mz < np.quantile(mz, 0.95)])
    assert np.median(np.abs(cal.mass_offset(mz).numpy() - 3.0)) < 0.6
    # Searched at 10 ppm alone it came out 4.1-4.7 ppm over ten seeds (cut near 2 spreads).
    assert cal.mass_sigma_ppm == pytest.approx(5.0, rel=0.1)
    assert candidate_ppm(config, cal, space) == pytest.approx(
        min(4 * cal.mass_sigma_ppm, space.bins_ppm))
    assert candidate_ppm(config, cal, space) > 1.8 * config.ppm
    assert candidate_ppm(config, cal, space, widen=2.0) == pytest.approx(space.bins_ppm)


def test_the_mass_window_is_the_tolerance_where_the_spread_is_narrower(rng):
    peaks, space, config = simulate(rng)  # 1.5 ppm
    _, cal = fit(peaks, space, config)
    assert candidate_ppm(config, cal, space) == config.ppm
    assert candidate_ppm(config, cal.replace(mass_sigma_ppm=3.0), space) == pytest.approx(12.0)
    assert candidate_ppm(config, cal, space, widen=1.5) == pytest.approx(15.0)
    # The refinement widens the tolerance, not the fitted spreads (none are left past 4).
    assert candidate_ppm(config, cal.replace(mass_sigma_ppm=4.0), space,
                         widen=1.5) == pytest.approx(16.0)


def test_rt_mixture_recovers_how_far_library_rts_hold(rng):
    """Four compounds in ten with library RTs minutes off (a t of scale 2 min): the share, the
    core spread and the broad scale come out as simulated, and the candidate window grows to
    hold them."""
    peaks, space, config = simulate(rng, rt_tail=0.4, rt_tail_sd=2.0, n_lib=800, unknown=0.2)
    _, cal = fit(peaks, space, config)
    assert cal.rt_tail_share == pytest.approx(0.4, abs=0.08)
    assert cal.rt_sigma == pytest.approx(0.04, rel=0.35)
    assert cal.rt_tail_sigma == pytest.approx(2.0, rel=0.3)
    assert candidate_rt_window(config, cal) > 6.0


def test_mass_search_finds_an_offset_beyond_the_window(rng):
    """An uncalibrated instrument: -15 ppm at m/z 100 rising to 0 at m/z 300 and flat above
    (as ipaPy2's E. coli negative run). The RT-free wide search finds it, the EM refines it,
    and the fitted curve is within 1 ppm of the truth over the data."""
    import dask

    from dask_assign.graph.plan import calibrate
    from dask_assign.graph.run import as_dask_frame

    def bent(mz):
        return np.where(mz < 300, -15.0 + 15.0 * (mz - 100) / 200, 0.0)

    peaks, space, config = simulate(rng, mass_error=bent, sigma=0.8, n_lib=600)
    peaks = peaks[peaks["mz"] > 100]
    with dask.config.set(scheduler="synchronous"):
        cal = calibrate(as_dask_frame(peaks, config), space, config)
    mz = np.linspace(110, 650, 20)
    np.testing.assert_allclose(cal.mass_offset(mz), bent(mz), atol=1.0)
    assert cal.mass_sigma_ppm == pytest.approx(0.8, abs=0.25)


def test_em_recovers_a_curved_rt_drift_and_an_mz_dependent_offset(rng):
    """The RT map follows a wobble of 0.15 min (three times the RT spread) and the mass
    offset a slope of 1 ppm per 100 m/z: within 0.04 min and 0.4 ppm of the truth over the
    range the data cover, and the spreads come out as simulated."""
    peaks, space, config = simulate(rng, wobble=0.15, mass_slope=1.0, n_lib=600)
    _, cal = fit(peaks, space, config)
    lib_rt = np.linspace(1.0, 13.5, 26)
    np.testing.assert_allclose(cal.rt_map(lib_rt), drift(lib_rt, 0.1, 1.02, 0.15), atol=0.04)
    assert np.all(np.diff(cal.rt_values) >= 0)
    # Where the library has ions (a smooth curve says little beyond its data).
    mz = np.linspace(*np.quantile(space.mz, [0.05, 0.95]), 10)
    np.testing.assert_allclose(cal.mass_offset(mz), -2.0 + (mz - 400) / 100, atol=0.4)
    assert cal.mass_sigma_ppm == pytest.approx(1.5, abs=0.3)
    assert cal.rt_sigma == pytest.approx(0.04, abs=0.015)
    # A straight line would leave the wobble in the residual spread.
    assert cal.rt_sigma < 0.07


def test_em_keeps_defaults_when_nothing_matches(rng):
    peaks, space, config = simulate(rng)
    far = peaks.assign(mz=peaks["mz"] + 0.3)  # nothing within 10 ppm
    start, cal = fit(far, space, config)
    assert cal.mass_offset_ppm == start.mass_offset_ppm
    assert cal.rt_sigma == start.rt_sigma


def test_drift_votes_find_the_map(rng):
    from dask_assign.calibration.drift import drift_from_votes, drift_votes

    peaks, space, config = simulate(rng, shift=2.4, slope=1.06, rt_sd=0.03)
    votes = drift_votes(peaks, space, config, fraction=1.0)
    # Votes are sums over peaks, so any split of the peaks gives the same total.
    halves = pd.concat([drift_votes(peaks.iloc[:150], space, config, 1.0),
                        drift_votes(peaks.iloc[150:], space, config, 1.0)])
    halves = halves.groupby(["slope", "shift"], as_index=False)["w"].sum()
    merged = votes.merge(halves, on=["slope", "shift"], suffixes=("", "_h"))
    assert len(merged) == len(votes) == len(halves)
    np.testing.assert_allclose(merged["w"], merged["w_h"])
    intercept, slope = drift_from_votes(votes, config)
    assert slope == pytest.approx(1.06, abs=0.01)
    assert intercept == pytest.approx(2.4, abs=0.15)


@pytest.mark.parametrize("shift,slope", [(1.5, 1.0), (0.6, 1.05), (3.0, 0.95)])
def test_annotation_survives_rt_drift(local_client, shift, slope):
    """Library and run RTs apart by minutes: the drift search recentres the RT window, so
    the calls stay those of the undrifted run."""
    from dask_assign.graph.run import assign
    from dask_assign.report.evaluate import evaluate
    from tests.conftest import DEMO

    peaks = pd.read_csv(DEMO / "peaks.csv")
    truth = pd.read_csv(DEMO / "truth.csv", dtype=str)
    lib = DEMO / "library.csv"
    base = assign(peaks, lib, client=local_client)
    moved = assign(peaks.assign(rt=shift + slope * peaks["rt"]), lib, client=local_client)
    with local_client.as_current():
        base, moved = base.compute(), moved.compute()
    same = (base["compound_id"].fillna("-") == moved["compound_id"].fillna("-")).mean()
    assert same >= 0.99
    assert evaluate(moved, truth)["overall"] >= evaluate(base, truth)["overall"] - 0.01
    if shift >= 1.5:
        # Without the search, EM starts with RT windows as wide as the run's RT tail and
        # half of the library RTs taken to be off: it may find the map (1.5 min) or settle
        # short of it (3 min at slope 0.95: 0.74 overall). The search is never worse.
        no_search = assign(peaks.assign(rt=shift + slope * peaks["rt"]), lib,
                           AssignConfig(max_drift=0), client=local_client)
        with local_client.as_current():
            assert evaluate(moved, truth)["overall"] >= \
                evaluate(no_search.compute(), truth)["overall"] - 0.005


def test_calibration_lowers_ece_on_the_demo(local_client):
    from dask_assign.graph.run import assign
    from dask_assign.report.evaluate import evaluate
    from tests.conftest import DEMO

    truth = pd.read_csv(DEMO / "truth.csv", dtype=str)
    scores = {}
    for calibrate in (False, True):
        result = assign(DEMO / "peaks.csv", DEMO / "library.csv",
                        AssignConfig(calibrate=calibrate), client=local_client)
        with local_client.as_current():
            scores[calibrate] = evaluate(result.compute(), truth)
    assert scores[True]["ece"] < scores[False]["ece"]
    assert scores[True]["overall"] > scores[False]["overall"]


def test_library_without_rt(local_client, tmp_path):
    """No library RT: RT is neither a mask nor evidence; mass, adducts and isotopes decide.
    Every call then keeps the unlisted-isomer share (``unlisted_prior``) on the null:
    without RTs no peak can tell a library compound from an isomer missing from the
    library, so the calls' probabilities stop at ``1 - unlisted_prior``."""
    from dask_assign.graph.run import assign
    from dask_assign.report.evaluate import evaluate
    from tests.conftest import DEMO

    path = tmp_path / "library_no_rt.csv"
    pd.read_csv(DEMO / "library.csv").drop(columns=["rt"]).to_csv(path, index=False)
    result = assign(DEMO / "peaks.csv", path, client=local_client)
    with local_client.as_current():
        calls = result.compute()
    assert calls["rt_error"].isna().all()
    scores = evaluate(calls, pd.read_csv(DEMO / "truth.csv", dtype=str))
    print(scores)
    assert scores["overall"] > 0.6 and scores["ece"] < 0.13
    from dask_assign.config import ScorerParams

    ceiling = 1 - ScorerParams().unlisted_prior
    assert calls["prob"][calls["compound_id"].notna()].max() <= ceiling + 1e-9


def test_calibration_fits_the_generative_model_whatever_scores_the_run():
    """EM's updates assume the model's own posterior: a learned scorer's weights must not
    enter the fit (with them, EM on a large library without RT drove the null prior to its
    bound and the mass spread to a third of the truth). Same calibration with the default
    scorer, the generative one, or any weights."""
    import dask

    from dask_assign.config import ScorerParams
    from dask_assign.filtering.space import prepare_library
    from dask_assign.graph.plan import calibrate
    from dask_assign.graph.run import as_dask_frame
    from tests.conftest import DEMO

    odd = ScorerParams(mass_weight=3.0, bias=-4.0, count_weight=-2.0, unlisted_prior=0.3)
    fits = []
    with dask.config.set(scheduler="synchronous"):
        for scorer in (None, ScorerParams(), odd):
            config = AssignConfig() if scorer is None else AssignConfig(scorer=scorer)
            ddf = as_dask_frame(DEMO / "peaks.csv", config)
            fits.append(calibrate(ddf, prepare_library(DEMO / "library.csv", config), config))
    assert fits[0] == fits[1] == fits[2]
    assert fits[0].iterations >= 2
