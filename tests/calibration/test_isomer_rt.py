"""Where unlisted isomers elute: the library's isomer pairs, smoothed by the run's RT model."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dask_assign.calibration.isomer_rt import (
    PRIOR_COMPOUNDS,
    isomer_rt_curve,
    isomer_rt_differences,
    with_isomer_rt,
)
from dask_assign.config import Calibration, ScorerParams
from dask_assign.scoring.features import PairFeatures
from dask_assign.scoring.scorer import PeakScorer


def test_pair_differences_against_brute_force(rng):
    formula = pd.Series(rng.choice(["C6H12O6", "C5H10O5", "C7H8", None], 60))
    rt = rng.uniform(0, 10, 60)
    rt[::7] = np.nan
    diff, weight = isomer_rt_differences(formula, rt)
    want = []
    for i in range(60):
        for j in range(60):
            same = formula[i] is not None and formula[i] == formula[j]
            if i != j and same and np.isfinite(rt[i]) and np.isfinite(rt[j]):
                n = sum(1 for k in range(60) if formula[k] == formula[i] and np.isfinite(rt[k]))
                want.append((rt[j] - rt[i], 1 / (n - 1)))
    got = sorted(zip(diff.round(12), weight.round(12), strict=True))
    assert got == sorted((round(d, 12), round(w, 12)) for d, w in want)
    # Each compound with an isomer weighs 1.
    in_family = formula.notna() & np.isfinite(rt) & formula.duplicated(keep=False)
    counted = formula[formula.notna() & np.isfinite(rt)].value_counts()
    assert weight.sum() == pytest.approx(float(counted[counted > 1].sum()))
    assert in_family.sum() >= weight.sum()


def test_without_isomers_the_density_is_uniform():
    c = isomer_rt_curve(np.zeros(0), np.zeros(0), 12.0, 0.05)
    np.testing.assert_allclose(c.values, -math.log(12.0))


def test_density_is_the_smoothed_pairs_mixed_with_uniform():
    span, sigma, delta, n = 10.0, 0.2, 1.5, 400
    diff = np.r_[np.full(n // 2, delta), np.full(n // 2, -delta)]
    c = isomer_rt_curve(diff, np.ones(n), span, sigma)
    x = np.array([-delta, -0.5, 0.0, 0.7, delta, 3.0])
    gauss = 0.5 * (np.exp(-0.5 * ((x - delta) / sigma) ** 2)
                   + np.exp(-0.5 * ((x + delta) / sigma) ** 2)) / (sigma * math.sqrt(2 * math.pi))
    want = (n * gauss + PRIOR_COMPOUNDS / span) / (n + PRIOR_COMPOUNDS)
    np.testing.assert_allclose(np.exp(c(x)), want, rtol=0.03, atol=1e-4)
    # A density over the residuals.
    step = c.knots[1] - c.knots[0]
    assert np.exp(c.values).sum() * step == pytest.approx(
        (n + PRIOR_COMPOUNDS * 2) / (n + PRIOR_COMPOUNDS), rel=0.01)


def test_library_rts_are_mapped_to_the_run():
    import types

    space = types.SimpleNamespace(
        compounds=pd.DataFrame({"formula": ["C6H12O6"] * 2 + ["C7H8"]}),
        compound=np.array([0, 1, 2]), rt=np.array([2.0, 4.0, 5.0]))
    # The run runs at half speed: isomers 2 min apart in the library are 4 min apart here.
    cal = Calibration(rt_knots=(0.0, 10.0), rt_values=(0.0, 20.0), rt_span=25.0, rt_sigma=0.1)
    curve = with_isomer_rt(cal, space).isomer_rt
    assert float(curve(np.array([4.0]))[0]) > float(curve(np.array([2.0]))[0]) + 1.0


def features(peak_rt, ion_rt):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    n = len(peak_rt)
    return PairFeatures(
        peak=torch.arange(n), ion=torch.zeros(n, dtype=torch.int64), ppm_error=t([0.0] * n),
        ppm_offset=t([0.0] * n), peak_rt=t(peak_rt), ion_rt=t(ion_rt), expected_rt=t(ion_rt),
        log_adduct_prior=t([0.0] * n), log_abundance=t([0.0] * n),
        log_intensity=t([float("nan")] * n), log_count=t([0.0] * n))


def test_unlisted_isomer_is_likelier_where_library_isomers_elute():
    """Library isomers 1 min apart: a match 1 min from a compound's RT is an unlisted isomer
    more often than a match as far away where the library's isomers say nothing."""
    base = Calibration(rt_sigma=0.1, rt_span=12.0, rt_tail_share=0.2, rt_tail_sigma=1.0)
    curve = isomer_rt_curve(np.r_[np.full(100, 1.0), np.full(100, -1.0)], np.ones(200),
                            12.0, 0.1, 0.2, 1.0)
    learned = base.replace(isomer_rt_knots=curve.knots, isomer_rt_log_density=curve.values)
    f = features([5.0, 6.0, 5.0], [5.0, 5.0, float("nan")])
    flat = PeakScorer(ScorerParams(), base).requires_grad_(False).isomer_odds(f)
    told = PeakScorer(ScorerParams(), learned).requires_grad_(False).isomer_odds(f)
    assert float(told[1]) > float(flat[1]) + 1.0
    # At the compound's RT the pairs are 1 min away: the odds fall below the uniform's.
    assert float(told[0]) < float(flat[0])
    # No library RT: the prior odds alone, either way.
    u = ScorerParams().unlisted_prior
    assert float(told[2]) == pytest.approx(math.log(u / (1 - u)))
    assert float(flat[2]) == pytest.approx(math.log(u / (1 - u)))
