import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_assign.filtering.join import MassBinIndex, range_join, rank_within_peak


def brute_force(peak_mz, peak_rt, ion_mz, ion_rt, ppm, rtw):
    """The definition of a match, pair by pair."""
    pairs = set()
    for p in range(len(peak_mz)):
        for i in range(len(ion_mz)):
            if abs(peak_mz[p] - ion_mz[i]) <= ppm * 1e-6 * ion_mz[i] and (
                    np.isnan(ion_rt[i]) or abs(peak_rt[p] - ion_rt[i]) <= rtw):
                pairs.add((p, i))
    return pairs


def join(peak_mz, peak_rt, ion_mz, ion_rt, ppm, rtw, index_ppm=None):
    """Both kernels (compiled CPU loop and torch) agree, pair for pair and in order; their
    pairs, in the ions' original numbering."""
    order = np.argsort(ion_mz, kind="stable")
    ion_mz, ion_rt = ion_mz[order], ion_rt[order]
    index = MassBinIndex.build(ion_mz, index_ppm or ppm)
    t = torch.from_numpy
    args = (t(peak_mz), t(peak_rt), t(ion_mz), t(ion_rt), index, ppm, rtw)
    p, i = range_join(*args, kernel="numba")
    tp, ti = range_join(*args, kernel="torch")
    assert torch.equal(p, tp) and torch.equal(i, ti)
    return {(int(a), int(order[b])) for a, b in zip(p, i, strict=True)}


@pytest.mark.parametrize("kernel", ["numba", "torch"])
def test_join_orders_pairs_by_peak_then_ion(rng, kernel):
    ion_mz = np.sort(rng.uniform(100, 110, 500))
    ion_rt = rng.uniform(0, 1, 500)
    peak_mz = rng.uniform(99, 111, 300)
    t = torch.from_numpy
    p, i = range_join(t(peak_mz), t(rng.uniform(0, 1, 300)), t(ion_mz), t(ion_rt),
                      MassBinIndex.build(ion_mz, 50), 50, 0.3, kernel=kernel)
    key = p * 1000 + i
    assert p.numel() > 50 and bool((key[1:] > key[:-1]).all())


def test_join_equals_brute_force_on_random_data(rng):
    ion_mz = rng.uniform(100, 1000, 3000)
    ion_rt = np.where(rng.random(3000) < 0.2, np.nan, rng.uniform(0, 15, 3000))
    # Peaks near ions (matches) and anywhere (mostly no match).
    near = ion_mz[rng.integers(0, 3000, 400)] * (1 + rng.normal(0, 8e-6, 400))
    peak_mz = np.concatenate([near, rng.uniform(100, 1000, 400)])
    peak_rt = rng.uniform(0, 15, 800)
    for ppm, rtw, index_ppm in ((10, 0.5, None), (5, 1.0, 20), (30, 15.0, None)):
        got = join(peak_mz, peak_rt, ion_mz, ion_rt, ppm, rtw, index_ppm)
        assert got == brute_force(peak_mz, peak_rt, ion_mz, ion_rt, ppm, rtw)


def test_join_at_bin_edges_and_window_bounds():
    ppm = 10.0
    index = MassBinIndex.build(np.array([100.0]), ppm)
    # Ions on bin boundaries, and peaks exactly at (and just beyond) the tolerance of each.
    edges = np.exp(np.arange(461, 470) * index.width)
    ion_mz = np.sort(np.concatenate([edges, edges * (1 + 1e-9), edges * (1 - 1e-9)]))
    ion_rt = np.full(ion_mz.size, np.nan)
    tol = ppm * 1e-6 * ion_mz
    peak_mz = np.concatenate([ion_mz + tol, ion_mz - tol, ion_mz + tol * 1.0001,
                              ion_mz - tol * 1.0001, ion_mz])
    peak_rt = np.zeros(peak_mz.size)
    got = join(peak_mz, peak_rt, ion_mz, ion_rt, ppm, 1.0)
    assert got == brute_force(peak_mz, peak_rt, ion_mz, ion_rt, ppm, 1.0)
    assert len(got) > peak_mz.size  # the exact bounds matched, the slightly-beyond did not


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(50, 2000), min_size=1, max_size=40),
       st.lists(st.floats(50, 2000), min_size=0, max_size=40),
       st.floats(0.5, 100))
def test_join_property(ions, peaks, ppm):
    ion_mz = np.array(ions)
    ion_rt = np.full(ion_mz.size, np.nan)
    peak_mz = np.array(peaks, dtype=np.float64)
    peak_rt = np.zeros(peak_mz.size)
    assert join(peak_mz, peak_rt, ion_mz, ion_rt, ppm, 1.0) == brute_force(
        peak_mz, peak_rt, ion_mz, ion_rt, ppm, 1.0)


def test_rank_within_peak_orders_and_ties_stable():
    peak = torch.tensor([1, 0, 1, 1, 0])
    score = torch.tensor([0.5, 0.1, 0.9, 0.5, 0.3])
    order, rank, counts = rank_within_peak(peak, score)
    assert order.tolist() == [4, 1, 2, 0, 3]  # peak 0 best first; tie 0.5 keeps pair order
    assert rank.tolist() == [0, 1, 0, 1, 2]
    assert counts.tolist() == [2, 3]


def test_rank_within_peak_same_for_grouped_and_shuffled_pairs(rng):
    # Grouped pairs (as the join gives them) take the compiled path; shuffled ones torch's.
    peak = np.sort(rng.integers(0, 300, 5000))
    score = rng.integers(0, 6, 5000).astype(np.float64)  # many ties
    order, rank, counts = rank_within_peak(torch.from_numpy(peak), torch.from_numpy(score))
    want = np.lexsort((np.arange(peak.size), -score, peak))  # peak, best first, then pair order
    assert order.tolist() == want.tolist()
    assert counts.tolist() == np.bincount(peak).tolist()
    perm = rng.permutation(peak.size)
    o2, r2, _ = rank_within_peak(torch.from_numpy(peak[perm]), torch.from_numpy(score[perm]))
    assert (peak[perm][o2.numpy()] == peak[order.numpy()]).all()
    assert (score[perm][o2.numpy()] == score[order.numpy()]).all()
    assert r2.tolist() == rank.tolist()
