"""One partition: overflow policies, refinement, and results that do not depend on batching."""

import numpy as np
import pandas as pd
import pytest
import torch

from dask_assign.chemistry.adducts import select_adducts
from dask_assign.chemistry.formulas import parse_formula
from dask_assign.chemistry.ions import build_ions
from dask_assign.config import AssignConfig, Calibration
from dask_assign.filtering.space import SearchSpace
from dask_assign.scoring.passes import annotate_partition
from tests.conftest import library_frame


def crowded_library(n=40):
    # n isomers of one formula with RTs spread in [4.5, 5.5]: one peak, n candidates.
    return library_frame([(f"iso{i:02d}", "C10H16N2O3", 4.5 + i / n) for i in range(n)]
                         + [("other", "C6H12O6", 2.0)])


def peaks_frame(mz, rt, ids=None):
    n = len(mz)
    return pd.DataFrame({"peak_id": ids or [f"p{i}" for i in range(n)], "mz": mz, "rt": rt,
                         "intensity": np.full(n, 1e5)}).astype({"peak_id": "string"})


def space_and_config(lib, **kw):
    config = AssignConfig(adducts=("[M+H]+",), max_isotope=0, **kw)
    table = build_ions(lib, select_adducts("positive", config.adducts), config.max_isotope)
    return SearchSpace.build(table, config.ppm * config.refine_widen), config


MH = select_adducts("positive", ["[M+H]+"])[0].mz(parse_formula("C10H16N2O3").mass)


@pytest.mark.parametrize("policy", ["prefilter", "rounds", "flag"])
def test_overflow_is_flagged_never_silent(policy):
    space, config = space_and_config(crowded_library(), k_first=5, k_max=10, overflow=policy,
                                     refine_below=0.0)
    a, c = annotate_partition(peaks_frame([MH], [5.0]), space, config, Calibration())
    assert a["overflow"].tolist() == [True]
    assert a["n_candidates"].tolist() == [40]  # the full count, whatever was kept
    assert len(c) == 5 and c["rank"].tolist() == list(range(5))
    if policy == "flag":
        assert a["compound_id"].isna().all() and a["prob"].isna().all()
    else:
        assert a["compound_id"].notna().all()
        assert 0 < a["prob"].iloc[0] <= 1


def test_rounds_account_for_every_candidate():
    lib = crowded_library()
    kw = dict(k_first=5, k_max=10, refine_below=0.0)
    space, cfg = space_and_config(lib, overflow="rounds", **kw)
    big_space, big_cfg = space_and_config(lib, overflow="prefilter", k_first=50, k_max=50,
                                          refine_below=0.0)
    peaks = peaks_frame([MH], [5.0])
    a, c = annotate_partition(peaks, space, cfg, Calibration())
    full_a, full_c = annotate_partition(peaks, big_space, big_cfg, Calibration())
    # Exact probabilities of the top 5, as if all 40 had been scored together.
    np.testing.assert_allclose(c["prob"], full_c["prob"].iloc[:5], rtol=1e-12)
    np.testing.assert_allclose(a["p_null"], full_a["p_null"], rtol=1e-12)
    # Prefilter renormalises over the kept 5 only: larger probabilities.
    pre_space, pre_cfg = space_and_config(lib, overflow="prefilter", **kw)
    pa, _ = annotate_partition(peaks, pre_space, pre_cfg, Calibration())
    assert pa["prob"].iloc[0] > a["prob"].iloc[0]


def test_probabilities_sum_to_one_per_peak(rng):
    lib = library_frame([(f"c{i}", f"C{6 + i % 9}H{10 + i % 7}O{1 + i % 4}", 1 + i % 10)
                         for i in range(60)])
    space, config = space_and_config(lib)
    ions = space.mz
    mz = np.concatenate([ions[rng.integers(0, ions.size, 80)] * (1 + rng.normal(0, 3e-6, 80)),
                         rng.uniform(100, 300, 40)])
    rt = rng.uniform(0, 12, mz.size)
    a, c = annotate_partition(peaks_frame(list(mz), list(rt)), space, config, Calibration())
    total = c.groupby("peak_id")["prob"].sum().reindex(a["peak_id"]).fillna(0).to_numpy()
    np.testing.assert_allclose(total + a["p_null"].to_numpy(), 1.0, rtol=1e-12)
    none = a["n_candidates"] == 0
    assert none.any() and (a.loc[none, "p_null"] == 1).all()
    assert a.loc[none, "compound_id"].isna().all()


def test_refinement_finds_a_match_beyond_the_first_window():
    lib = library_frame([("glc", "C6H12O6", 5.0)])
    space, config = space_and_config(lib, ppm=5.0, refine_widen=3.0)
    mz = 181.070665 * (1 + 8e-6)  # 8 ppm off: outside 5 ppm, inside 15
    a, _ = annotate_partition(peaks_frame([mz, 181.070665], [5.0, 5.0]), space, config,
                              Calibration(mass_sigma_ppm=4.0, rt_sigma=0.1, log_volume=15.0))
    assert a["refined"].tolist() == [True, False]
    assert a["compound_id"].tolist() == ["glc", "glc"]
    assert a["ppm_error"].iloc[0] == pytest.approx(8.0, abs=0.01)


def test_result_of_a_peak_does_not_depend_on_its_batch(rng):
    lib = library_frame([(f"c{i}", f"C{6 + i % 9}H{10 + i % 7}N{1 + i % 2}O{1 + i % 4}",
                          1 + (i * 7) % 11) for i in range(80)])
    space, config = space_and_config(lib)
    mz = space.mz[rng.integers(0, space.mz.size, 300)] * (1 + rng.normal(0, 4e-6, 300))
    peaks = peaks_frame(list(mz), list(rng.uniform(0, 12, 300)))
    whole, whole_c = annotate_partition(peaks, space, config, Calibration())
    shuffled = peaks.iloc[::-1]
    bounds = np.linspace(0, len(peaks), 8).astype(int)
    parts = [annotate_partition(shuffled.iloc[a:b], space, config, Calibration())
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    pieced = pd.concat([p[0] for p in parts]).set_index("peak_id").loc[whole["peak_id"]]
    pd.testing.assert_frame_equal(pieced.reset_index(), whole)
    assert torch.get_default_dtype() == torch.float32  # kernels choose float64 themselves


def test_a_call_is_the_compound_of_largest_summed_probability(rng):
    # Sulfur compounds at M+2: 13C2, 18O1 and 34S1 of one molecule lie a few ppm apart, and
    # isomer pairs share every ion: a peak's probability splits within and across compounds.
    lib = library_frame([(f"c{i}", f"C{8 + i % 5}H{12 + i % 3}O{2 + i % 3}S", 1 + i % 10)
                         for i in range(30)]
                        + [(f"iso{i}", f"C{8 + i % 5}H{12 + i % 3}O{2 + i % 3}S", 5.0)
                           for i in range(3)])
    config = AssignConfig(adducts=("[M+H]+", "[M+Na]+"), max_isotope=2)
    table = build_ions(lib, select_adducts("positive", config.adducts), config.max_isotope)
    space = SearchSpace.build(table, config.ppm * config.refine_widen)
    ions = space.mz
    pick = rng.integers(0, ions.size, 150)
    mz = ions[pick] * (1 + rng.normal(0, 3e-6, pick.size))
    rt = space.rt[pick] + rng.normal(0, 0.05, pick.size)
    a, c = annotate_partition(peaks_frame(list(mz), list(rt)), space, config,
                              Calibration(mass_sigma_ppm=3.0, rt_sigma=0.2))
    # Oracle: per peak, each compound's summed candidate probability; the largest wins over
    # the null, ties to the better-ranked; the call is named by that compound's best rank.
    totals = c.groupby(["peak_id", "compound_id"], as_index=False).agg(
        total=("prob", "sum"), head=("rank", "min"))
    totals = totals.sort_values(["peak_id", "total", "head"], ascending=[True, False, True])
    best = totals.drop_duplicates("peak_id").set_index("peak_id")
    a = a.set_index("peak_id")
    best = best.reindex(a.index)
    wins = best["total"].to_numpy() > a["p_null"].to_numpy()
    assert wins.sum() > 100
    np.testing.assert_array_equal(a["compound_id"].notna().to_numpy(), wins)
    called = a[wins]
    assert (called["compound_id"] == best.loc[wins, "compound_id"]).all()
    np.testing.assert_allclose(called["prob"], best.loc[wins, "total"], rtol=1e-12)
    head = c.merge(best.loc[wins, ["compound_id", "head"]].reset_index(),
                   left_on=["peak_id", "compound_id", "rank"],
                   right_on=["peak_id", "compound_id", "head"]).set_index("peak_id")
    head = head.reindex(called.index)
    assert (called["adduct"] == head["adduct"]).all()
    assert (called["isotope"].fillna("") == head["isotope"].fillna("")).all()
    np.testing.assert_allclose(called["p_ion"], head["prob"], rtol=1e-12)
    # The split is real here: some calls hold more than their named ion's probability.
    assert (called["prob"] > called["p_ion"] + 1e-3).sum() >= 5
    assert (a.loc[~wins, "prob"] == a.loc[~wins, "p_null"]).all()
    assert a.loc[~wins, "p_ion"].isna().all()


def test_refinement_replaces_the_candidates_of_the_refined_peaks_only(rng):
    """After the second pass a refined peak lists exactly what scoring it alone in the wider
    window with ``k_max`` lists, any other peak its first-pass candidates; pairs grouped by
    peak in peak order, ranks in order."""
    from dask_assign.filtering.space import calibrated_ions
    from dask_assign.scoring.passes import first_pass, score_in_batches, second_pass

    lib = library_frame([(f"c{i}", f"C{6 + i % 9}H{10 + i % 7}N{1 + i % 2}O{1 + i % 4}",
                          1 + (i * 7) % 11) for i in range(80)])
    space, config = space_and_config(lib, refine_below=0.9, k_first=2)
    n = 200
    mz = space.mz[rng.integers(0, space.mz.size, n)] * (1 + rng.normal(0, 6e-6, n))
    peaks = peaks_frame(list(mz), list(rng.uniform(0, 12, n)))
    cal = Calibration()
    first = first_pass(peaks, space, config, cal)
    second = second_pass(first, space, config, cal)
    assert second.refined.any() and (~second.refined).any()
    f1, f2 = first.scored.features, second.scored.features
    assert bool((f2.peak[1:] >= f2.peak[:-1]).all())
    ions = calibrated_ions(space, cal, "cpu")
    for q in range(n):
        got = f2.peak == q
        if second.refined[q]:
            alone = score_in_batches({k: v[q:q + 1] for k, v in first.peaks.items()}, ions,
                                     space, config, cal, config.k_max,
                                     widen=config.refine_widen)
            want_ion, want_rank, want_prob = alone.features.ion, alone.rank, alone.prob
        else:
            was = f1.peak == q
            want_ion, want_rank = f1.ion[was], first.scored.rank[was]
            want_prob = first.scored.prob[was]
        assert torch.equal(f2.ion[got], want_ion), q
        assert torch.equal(second.scored.rank[got], want_rank), q
        torch.testing.assert_close(second.scored.prob[got], want_prob, rtol=1e-12, atol=1e-15)
