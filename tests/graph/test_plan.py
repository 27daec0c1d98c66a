"""The run plan's calibration on the scheduler: one task for a one-partition sample, a graph
per EM step otherwise, the same fit."""

import dask
import dask.dataframe as dd
import numpy as np
import pytest

from dask_assign.graph.plan import calibrate
from tests.calibration.test_em import simulate


@pytest.fixture(scope="module")
def run():
    peaks, space, config = simulate(np.random.default_rng(11), rt_tail=0.2)
    return peaks, space, config.replace(em_iterations=4)


def test_one_partition_or_three_give_the_same_calibration(run):
    """The EM in one task (a sample of one partition, the usual case) and one graph per step
    over three partitions fit the same models (sums in another order: to 1e-9)."""
    peaks, space, config = run
    ddf = dd.from_pandas(peaks, npartitions=1)
    with dask.config.set(scheduler="synchronous"):
        one = calibrate(ddf, space, config, sample=ddf)
        three = calibrate(ddf, space, config, sample=ddf.repartition(npartitions=3))
    assert one.iterations == three.iterations >= 2
    for field in ("mass_offsets", "rt_values", "log_adduct_priors"):
        a, b = getattr(one, field), getattr(three, field)
        assert (a is None) == (b is None), field
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=field)
    for field in ("mass_sigma_ppm", "rt_sigma", "rt_tail_share", "rt_tail_sigma",
                  "null_prior"):
        assert getattr(one, field) == pytest.approx(getattr(three, field), rel=1e-9), field


def test_a_large_run_fits_its_context_model_on_evenly_spaced_rt_blocks(run, monkeypatch):
    """Above ``CONTEXT_SAMPLE`` peaks the context model is the fit of the statistics of
    every k-th RT block (the middle one of each k), computed here block by block; below it,
    of every block."""
    import dataclasses

    import pandas as pd

    from dask_assign.context.model import fit_context
    from dask_assign.context.stats import context_stats
    from dask_assign.graph import plan

    peaks, space, config = run
    ddf = dd.from_pandas(peaks, npartitions=8)
    monkeypatch.setattr(plan, "CONTEXT_SAMPLE", len(peaks) // 4)
    with dask.config.set(scheduler="synchronous"):
        cal = calibrate(ddf, space, config.replace(calibrate=False))
        blocks = plan.rt_blocks(ddf, config)
        assert len(blocks) == 8
        assert plan.context_sample(len(blocks), len(peaks)) == [2, 6]
        frames = [b.compute() for b in blocks]
        sampled = plan.context_model(blocks, space, space, config, cal, len(peaks))
        every = plan.context_model(blocks, space, space, config, cal, len(peaks) // 4)

    def fitted(ks):
        stats = pd.DataFrame([context_stats(frames[k], space, config, cal) for k in ks])
        return fit_context(stats, config, cal, space)

    for got, ks in ((sampled, [2, 6]), (every, range(8))):
        want = fitted(ks)
        for field in dataclasses.fields(want):
            np.testing.assert_array_equal(np.asarray(getattr(got, field.name)),
                                          np.asarray(getattr(want, field.name)), field.name)
    assert 0 < sampled.main_calls < every.main_calls


def test_the_plans_space_serves_the_window_the_fitted_mass_spread_sets():
    """Masses spread 8 ppm: the first pass and the refinement need 4 spreads (about 32 ppm),
    beyond the 20 ppm the space was indexed for; the plan re-indexes it, and the windows are
    no longer cut to the index."""
    from dask_assign.filtering.space import candidate_ppm, fitted_ppm
    from dask_assign.graph.plan import plan_run

    peaks, space, config = simulate(np.random.default_rng(5), sigma=8.0, n_lib=600,
                                    unknown=0.2)
    config = config.replace(context=False)
    ddf = dd.from_pandas(peaks, npartitions=2)
    with dask.config.set(scheduler="synchronous"):
        plan = plan_run(ddf, space, config)
    assert space.bins_ppm == pytest.approx(20.0)
    assert plan.fitted.mass_sigma_ppm > 6.0
    need = fitted_ppm(config, plan.fitted)
    assert need > 25.0 and need > config.ppm * config.refine_widen
    assert fitted_ppm(config, plan.fitted, config.refine_widen) == need
    assert plan.space.bins_ppm >= need
    assert candidate_ppm(config, plan.fitted, plan.space) == need
    assert candidate_ppm(config, plan.fitted, plan.space, config.refine_widen) == need
