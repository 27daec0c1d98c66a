"""EM recovers what the simulation put in: mass offset and spread, linear RT drift, null share.

The drift stays inside the first-pass RT window (0.5 min); a wider first pass for larger drifts
is future work."""

import numpy as np
import pandas as pd
import pytest

from dask_assign.adducts import select_adducts
from dask_assign.annotate import SearchSpace
from dask_assign.calibration import em_statistics, fit_calibration, peak_summary, run_context
from dask_assign.config import AssignConfig
from dask_assign.ions import build_ions
from tests.conftest import library_frame


def simulate(rng, offset=-2.0, sigma=1.5, shift=0.1, slope=1.02, rt_sd=0.04, n_lib=400,
             unknown=0.3, wobble=0.0, mass_slope=0.0):
    """Peaks of 60% of a random library's ions (and unknowns): mass error
    ``offset + mass_slope * (mz - 400) / 100 + N(0, sigma)`` ppm, RT ``drift(rt_lib) +
    N(0, rt_sd)`` with the drift of :func:`drift`."""
    formulas = [f"C{rng.integers(5, 30)}H{rng.integers(6, 50)}N{rng.integers(1, 4)}"
                f"O{rng.integers(1, 10)}" for _ in range(n_lib)]
    lib = library_frame([(f"c{i}", f, float(rng.uniform(0.5, 14))) for i, f in
                         enumerate(formulas)])
    config = AssignConfig(adducts=("[M+H]+", "[M+Na]+"), max_isotope=0)
    table = build_ions(lib, select_adducts("positive", config.adducts), 0)
    ions = table.ions.sample(frac=0.6, random_state=1)
    n_known = len(ions)
    true_mz = ions["mz"].to_numpy()
    error = offset + mass_slope * (true_mz - 400) / 100 + sigma * rng.standard_normal(n_known)
    mz = true_mz * (1 + error * 1e-6)
    rt = drift(ions["rt"].to_numpy(), shift, slope, wobble) + rt_sd * rng.standard_normal(n_known)
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
    assert cal.null_prior == pytest.approx(0.3, abs=0.08)


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
    from dask_assign.calibration import drift_from_votes, drift_votes

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


def test_drift_vote_kernels_agree(rng):
    """The compiled loop (CPU) and the torch version (CUDA) count the same votes."""
    from dask_assign.calibration import drift_votes

    peaks, space, config = simulate(rng, shift=1.2, slope=0.97, rt_sd=0.05)
    loop = drift_votes(peaks, space, config, 1.0, kernel="numba")
    tensors = drift_votes(peaks, space, config, 1.0, kernel="torch")
    assert len(loop) > 100
    pd.testing.assert_frame_equal(loop[["slope", "shift"]], tensors[["slope", "shift"]])
    np.testing.assert_allclose(loop["w"], tensors["w"], rtol=1e-12)


@pytest.mark.parametrize("shift,slope", [(1.5, 1.0), (0.6, 1.05), (3.0, 0.95)])
def test_annotation_survives_rt_drift(local_client, shift, slope):
    """Library and run RTs apart by minutes: the drift search recentres the RT window, so
    the calls stay those of the undrifted run."""
    from dask_assign.evaluate import evaluate
    from dask_assign.pipeline import assign
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
    if shift >= 1.5:  # beyond twice the RT window, EM alone cannot find the matches
        no_search = assign(peaks.assign(rt=shift + slope * peaks["rt"]), lib,
                           AssignConfig(max_drift=0), client=local_client)
        with local_client.as_current():
            assert evaluate(no_search.compute(), truth)["overall"] < 0.8


def test_calibration_lowers_ece_on_the_demo(local_client):
    from dask_assign.evaluate import evaluate
    from dask_assign.pipeline import assign
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
    """No library RT: RT is neither a mask nor evidence; mass, adducts and isotopes decide."""
    from dask_assign.evaluate import evaluate
    from dask_assign.pipeline import assign
    from tests.conftest import DEMO

    path = tmp_path / "library_no_rt.csv"
    pd.read_csv(DEMO / "library.csv").drop(columns=["rt"]).to_csv(path, index=False)
    result = assign(DEMO / "peaks.csv", path, client=local_client)
    with local_client.as_current():
        calls = result.compute()
    assert calls["rt_error"].isna().all()
    scores = evaluate(calls, pd.read_csv(DEMO / "truth.csv", dtype=str))
    print(scores)
    assert scores["overall"] > 0.6 and scores["ece"] < 0.1


def test_em_recovers_adduct_shares(rng):
    """The simulation shows [M+H]+ and [M+Na]+ of its present compounds alike (1:1); the
    table's priors say 1:0.35. EM moves the share to what the data show."""
    peaks, space, config = simulate(rng)
    _, cal = fit(peaks, space, config)
    names = list(space.adduct_names)
    ratio = np.exp(cal.log_adduct_priors[names.index("[M+Na]+")]
                   - cal.log_adduct_priors[names.index("[M+H]+")])
    assert 0.75 < ratio < 1.33


def test_calibration_fits_the_generative_model_whatever_scores_the_run():
    """EM's updates assume the model's own posterior: a learned scorer's weights must not
    enter the fit (with them, EM on a large library without RT drove the null prior to its
    bound and the mass spread to a third of the truth). Same calibration with the shipped
    model, the untrained scorer, or any weights."""
    import dask

    from dask_assign.config import ScorerParams
    from dask_assign.pipeline import as_dask_frame, calibrate, prepare_library
    from tests.conftest import DEMO

    odd = ScorerParams(mass_weight=3.0, bias=-4.0, count_weight=-2.0, unlisted_prior=0.3)
    fits = []
    with dask.config.set(scheduler="synchronous"):
        for scorer in (None, ScorerParams(), odd):
            config = AssignConfig() if scorer is None else AssignConfig(scorer=scorer)
            ddf = as_dask_frame(DEMO / "peaks.csv", config)
            fits.append(calibrate(ddf, prepare_library(DEMO / "library.csv", config), config))
    assert AssignConfig().scorer != ScorerParams()  # the default is the trained model
    assert fits[0] == fits[1] == fits[2]
    assert fits[0].iterations >= 2
