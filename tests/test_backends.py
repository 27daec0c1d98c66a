"""The backends: one dispatch for frames (pandas, cudf) and one rule for every CPU/CUDA
kernel twin, and one parametrised test that each twin's two kernels agree (on the CPU here;
on CUDA too where a device query finds one)."""

import numpy as np
import pandas as pd
import pytest
import torch

from dask_assign.backends import compiled, concat, to_pandas
from dask_assign.graph.cluster import cuda_devices

DEVICES = ["cpu"] + (["cuda"] if cuda_devices() else [])


def test_frames_dispatch_on_their_type():
    a = pd.DataFrame({"x": [1, 2]})
    x = a["x"]
    assert to_pandas(a) is a and to_pandas(x) is x
    pd.testing.assert_frame_equal(concat([a, a], ignore_index=True),
                                  pd.DataFrame({"x": [1, 2, 1, 2]}))
    with pytest.raises(TypeError):
        to_pandas([1, 2])


def test_one_rule_picks_the_kernel():
    cpu = torch.zeros(3)
    assert compiled(cpu) and compiled(cpu, cpu)
    assert not compiled(cpu, kernel="torch") and compiled(cpu, kernel="numba")
    with pytest.raises(ValueError, match="kernel"):
        compiled(cpu, kernel="gpu")


# ---- the twins: each case returns the kernel's output for ``kernel`` on ``device`` ----


def range_join_case(kernel, device):
    from dask_assign.filtering.join import MassBinIndex, range_join

    rng = np.random.default_rng(3)
    ion_mz = np.sort(rng.uniform(100, 1000, 4000))
    ion_rt = np.where(rng.random(4000) < 0.2, np.nan, rng.uniform(0, 15, 4000))
    peak_mz = np.r_[ion_mz[rng.integers(0, 4000, 1500)] * (1 + rng.normal(0, 4e-6, 1500)),
                    rng.uniform(100, 1000, 500)]
    t = lambda v: torch.from_numpy(v).to(device)  # noqa: E731
    p, i = range_join(t(peak_mz), t(rng.uniform(0, 15, 2000)), t(ion_mz), t(ion_rt),
                      MassBinIndex.build(ion_mz, 10.0), 10.0, 2.0, kernel=kernel)
    assert p.numel() > 300
    return {"peak": p.cpu(), "ion": i.cpu()}


def rank_case(kernel, device):
    from dask_assign.filtering.join import rank_within_peak

    rng = np.random.default_rng(4)
    peak = np.sort(rng.integers(0, 300, 3000))
    score = np.round(rng.normal(size=3000), 1)  # ties: kept in the pairs' order
    order, rank, counts = rank_within_peak(torch.from_numpy(peak).to(device),
                                           torch.from_numpy(score).to(device), kernel=kernel)
    return {"order": order.cpu(), "rank": rank.cpu(), "counts": counts.cpu()}


def drift_case(kernel, device):
    from dask_assign.calibration.drift import drift_votes
    from tests.calibration.test_em import simulate

    peaks, space, config = simulate(np.random.default_rng(5), shift=1.2, slope=0.97,
                                    rt_sd=0.05)
    votes = drift_votes(peaks, space, config.replace(device=device), 1.0, kernel=kernel)
    assert len(votes) > 100
    return {c: torch.from_numpy(votes[c].to_numpy()) for c in votes.columns}


def isotope_odds_case(kernel, device):
    from dask_assign import DEMO_DATA
    from dask_assign.chemistry.adducts import select_adducts
    from dask_assign.chemistry.ions import build_ions
    from dask_assign.config import AssignConfig
    from dask_assign.context.evidence import apply_context
    from dask_assign.context.model import fit_context
    from dask_assign.context.stats import context_stats
    from dask_assign.filtering.space import SearchSpace
    from dask_assign.io.library import read_library
    from dask_assign.io.peaks import load_peaks
    from dask_assign.scoring.passes import first_pass, second_pass
    from tests.context.test_evidence import CAL

    config = AssignConfig(calibrate=False, device=device)
    lib = read_library(DEMO_DATA / "library.csv")
    table = build_ions(lib, select_adducts("positive", config.adducts), config.max_isotope)
    space = SearchSpace.build(table, config.ppm * config.refine_widen)
    peaks = load_peaks(DEMO_DATA / "peaks.csv")
    block = peaks.assign(core=True)
    model = fit_context(context_stats(block, space, config, CAL), config, CAL, space)
    result = second_pass(first_pass(peaks, space, config, CAL), space, config, CAL)
    out = apply_context(result, block, np.arange(len(peaks)), space, config, CAL, model,
                        kernel=kernel)
    assert out.changed.sum() > 0 and bool((out.n_partners > 0).any())
    return {"pair": out.pair.cpu(), "prob": out.scored.prob.cpu(),
            "p_null": out.scored.p_null.cpu()}


def sibling_odds_case(kernel, device):
    """The isotopologue siblings' odds of every candidate of the demo run, directly (the
    context pass's softmax would hide small differences)."""
    from dask_assign import DEMO_DATA
    from dask_assign.chemistry.adducts import select_adducts
    from dask_assign.chemistry.ions import build_ions
    from dask_assign.config import AssignConfig
    from dask_assign.context.evidence import _sibling_odds
    from dask_assign.context.model import fit_context
    from dask_assign.context.search import _BlockPeaks
    from dask_assign.context.stats import context_stats
    from dask_assign.filtering.space import SearchSpace
    from dask_assign.io.library import read_library
    from dask_assign.io.peaks import load_peaks
    from dask_assign.scoring.passes import first_pass, second_pass
    from tests.context.test_evidence import CAL

    config = AssignConfig(calibrate=False, device=device)
    lib = read_library(DEMO_DATA / "library.csv")
    table = build_ions(lib, select_adducts("positive", config.adducts), config.max_isotope)
    space = SearchSpace.build(table, config.ppm * config.refine_widen)
    peaks = load_peaks(DEMO_DATA / "peaks.csv")
    rng = np.random.default_rng(1)
    # Some peaks without an intensity, or at zero.
    inten = peaks["intensity"].to_numpy(dtype=np.float64, copy=True)
    inten[rng.choice(len(peaks), 30, replace=False)] = np.nan
    inten[rng.choice(len(peaks), 10, replace=False)] = 0.0
    peaks = peaks.assign(intensity=inten)
    model = fit_context(context_stats(peaks.assign(core=True), space, config, CAL), config,
                        CAL, space)
    result = second_pass(first_pass(peaks, space, config, CAL), space, config, CAL)
    # The block: the partition's peaks, five copies of 80 of them at the same m/z and RT
    # (more than MAX_PARTNERS per target, the candidate's own peak among them), shuffled,
    # so block rows, partition rows and sorted rows all differ.
    copies = peaks.iloc[np.repeat(rng.choice(len(peaks), 80, replace=False), 5)]
    block = pd.concat([peaks, copies], ignore_index=True)
    shuffle = rng.permutation(len(block))
    block = block.iloc[shuffle].reset_index(drop=True)
    core_rows = np.argsort(shuffle)[: len(peaks)]  # where each partition peak went
    f = result.scored.features
    with np.errstate(divide="ignore"):
        li = torch.log(torch.as_tensor(inten, device=device))
    log_rho = torch.as_tensor(np.log(rng.uniform(1e-4, 1e-2, len(peaks))), device=device)
    finder = _BlockPeaks(block["mz"].to_numpy(dtype=np.float64),
                         block["rt"].to_numpy(dtype=np.float64), model.ppm)
    odds = _sibling_odds(f.peak.cpu().numpy(), f.ion.cpu().numpy(), space, result.peaks, li,
                         core_rows, block, finder, log_rho, model, config, CAL, kernel=kernel)
    assert odds.numel() == f.ion.numel() and bool((odds > 1.0).any())  # partners found
    return {"odds": odds.cpu()}


def curve_case(kernel, device):
    from dask_assign.calibration.curves import Curve, knot_grid

    rng = np.random.default_rng(6)
    knots = knot_grid(0.5, 14.5, 9)
    curve = Curve(tuple(knots.tolist()), tuple((knots * 1.02 + rng.normal(0, 0.1, 9)).tolist()))
    uneven = Curve((39.0, 230.0, 345.0, 448.0, 561.0, 759.0), (0.8, 0.0, 0.8, -0.4, 0.2, 0.2))
    x = np.r_[rng.uniform(-3, 20, 5000), np.nan, np.inf, -np.inf, knots]
    mz = np.r_[rng.uniform(20, 1000, 5000), np.nan, uneven.knots]
    return {"y": curve(torch.from_numpy(x).to(device), kernel=kernel).cpu(),
            "offset": uneven(torch.from_numpy(mz).to(device), kernel=kernel).cpu()}


TWINS = {"range_join": range_join_case, "rank_within_peak": rank_case, "curve": curve_case,
         "drift_votes": drift_case, "isotope_odds": isotope_odds_case,
         "sibling_odds": sibling_odds_case}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("twin", sorted(TWINS))
def test_twins_agree(twin, device):
    """The compiled CPU kernel and the torch kernel (the one CUDA runs) give the same
    result: integers exactly, probabilities and weights to 1e-10."""
    fast = TWINS[twin]("numba", "cpu")
    slow = TWINS[twin]("torch", device)
    assert fast.keys() == slow.keys()
    for key, value in fast.items():
        if value.dtype.is_floating_point:
            np.testing.assert_allclose(value.numpy(), slow[key].numpy(), rtol=1e-10,
                                       atol=1e-12, err_msg=key)
        else:
            assert torch.equal(value, slow[key]), key
