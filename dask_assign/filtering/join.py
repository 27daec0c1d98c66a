"""Candidate filtering: the peak x ion range join on log-m/z bins, RT masking and top-K.

The kernels are written with torch, so the same code runs on CPU tensors (from pandas through
NumPy, zero-copy) and on CUDA tensors (from cudf through DLPack). The range join alone has a
compiled CPU twin (numba): torch must materialise every ion of the three bins around a peak
before the exact test, where the CPU sorts the peaks by m/z and merges them with the ions.
Both give the same pairs, in the same order (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch

from dask_assign.backends import compiled


@dataclass(frozen=True)
class MassBinIndex:
    """Start offsets of log-m/z bins over ions sorted by m/z.

    A bin is ``width`` wide in log(m/z), at least the widest one-sided ppm window searched, so a
    peak's window touches at most three bins: its own and the two beside it.

    Attributes
    ----------
    width : float
        Bin width in log(m/z).
    origin : int
        Bin number of the first entry of ``start``.
    start : numpy.ndarray
        ``start[b]`` is the first ion (in m/z order) in bin ``origin + b`` or later; one entry
        more than there are bins.
    """

    width: float
    origin: int
    start: np.ndarray

    @classmethod
    def build(cls, ion_mz: np.ndarray, max_ppm: float) -> MassBinIndex:
        """Index ions (sorted by m/z) for windows up to ``max_ppm`` either side."""
        # The window [m/(1+t), m/(1-t)] reaches log(1/(1-t)) above log(m), a little more than
        # log(1+t) below; a small margin absorbs rounding of the logarithms.
        width = -math.log1p(-max_ppm * 1e-6) * (1 + 1e-9) + 1e-12
        if len(ion_mz) == 0:
            return cls(width, 0, np.zeros(1, dtype=np.int64))
        bins = np.floor(np.log(ion_mz) / width).astype(np.int64)
        origin = int(bins[0])
        start = np.searchsorted(bins, np.arange(origin, int(bins[-1]) + 2), side="left")
        return cls(width, origin, start.astype(np.int64))


def window_bounds(peak_mz, index: MassBinIndex):
    """First and one-past-last ion of the three mass bins around each peak.

    Every ion within the widest indexed window lies in ``[lo, hi)``; ``hi - lo`` bounds the
    pairs a peak can produce before the exact test, which sizes the join's batches.
    """
    start = torch.as_tensor(index.start, device=peak_mz.device)
    nbins = start.shape[0] - 1
    b = torch.floor(torch.log(peak_mz) / index.width).to(torch.int64) - index.origin
    return start[torch.clamp(b - 1, 0, nbins)], start[torch.clamp(b + 2, 0, nbins)]


def batches_by_pairs(lo, hi, max_pairs: int):
    """Split peaks (in order) into runs of about ``max_pairs`` candidate pairs.

    A run holds at most ``max_pairs`` pairs plus those of its last peak, so memory stays
    bounded however crowded the m/z range is.

    Returns
    -------
    list of (start, stop)

    Examples
    --------
    >>> batches_by_pairs(torch.tensor([0, 0, 0, 0]), torch.tensor([3, 3, 3, 3]), 6)
    [(0, 2), (2, 4)]
    """
    sizes = (hi - lo).cpu().numpy()
    if sizes.size == 0:
        return [(0, 0)]
    before = np.cumsum(sizes) - sizes
    bucket = before // max(int(max_pairs), 1)
    cuts = (np.flatnonzero(np.diff(bucket)) + 1).tolist()
    edges = [0, *cuts, int(sizes.size)]
    return list(zip(edges[:-1], edges[1:], strict=True))


@numba.njit(cache=True, nogil=True)
def _merge_sweep(peak_mz, peak_rt, ion_mz, ion_rt, rel_tol, rt_window, out_p, out_i):
    """The pairs of :func:`range_join` for peaks sorted by m/z, written while they fit in
    ``out_*`` (``out_p``: the peak's position in this order). Returns their number.

    A merge of two sorted lists: the first ion a peak can match only moves forward (found by
    bisection from the last one), and each peak looks only at the ions between
    ``mz / (1 + tol)`` and ``mz / (1 - tol)`` (widened by 1e-12 against rounding); the exact
    test then decides, as in the torch kernel."""
    size = out_p.size
    n_ions = ion_mz.size
    lo = 0
    found = 0
    for p in range(peak_mz.size):
        mz = peak_mz[p]
        low = mz / (1.0 + rel_tol) * (1.0 - 1e-12)
        high = mz / (1.0 - rel_tol) * (1.0 + 1e-12)
        if lo < n_ions and ion_mz[lo] < low:
            # A binary search, not a walk: a batch of few peaks over millions of ions would
            # otherwise read every ion below it.
            lo += np.searchsorted(ion_mz[lo:], low)
        rt = peak_rt[p]
        i = lo
        while i < n_ions and ion_mz[i] <= high:
            m = ion_mz[i]
            if abs(mz - m) <= rel_tol * m:
                irt = ion_rt[i]
                if np.isnan(irt) or abs(rt - irt) <= rt_window:
                    if found < size:
                        out_p[found] = p
                        out_i[found] = i
                    found += 1
            i += 1
    return found


def run_filling(kernel, args: tuple, size: int, n_out: int) -> list[np.ndarray]:
    """Run a compiled kernel that writes its matches into ``n_out`` int64 buffers while they
    fit and returns how many it found; once more with exact room when ``size`` was short.

    Most runs fit a generous guess, so the matches are found in one pass."""
    out = [np.empty(size, dtype=np.int64) for _ in range(n_out)]
    n = kernel(*args, *out)
    if n > size:
        out = [np.empty(n, dtype=np.int64) for _ in range(n_out)]
        kernel(*args, *out)
    return [x[:n] for x in out]


def _range_join_cpu(peak_mz, peak_rt, ion_mz, ion_rt, ppm, rt_window):
    pm, pr = peak_mz.numpy(), peak_rt.numpy()
    # Peaks in m/z order make the join a merge of two sorted lists: consecutive peaks read
    # neighbouring ions, and each reads only its own window (timings: benchmarks/NOTES.md).
    order = np.argsort(pm)
    args = (pm[order], pr[order], ion_mz.numpy(), ion_rt.numpy(), ppm * 1e-6, float(rt_window))
    sp, si = run_filling(_merge_sweep, args, 4 * pm.shape[0] + 1024, 2)
    p = np.empty_like(sp)
    i = np.empty_like(si)
    _to_peak_order(sp, si, order, p, i)
    return torch.from_numpy(p), torch.from_numpy(i)


@numba.njit(cache=True, nogil=True)
def _to_peak_order(sorted_p, ion, order, out_p, out_i):
    """Pairs found in m/z order (``sorted_p``, non-decreasing, indexes ``order``) -> grouped
    by peak, peaks in their own order, each peak's ions in the order found (ascending): a
    counting sort whose reads of ``sorted_p`` and ``order`` are sequential."""
    n_peaks = order.size
    count = np.zeros(n_peaks, dtype=np.int64)
    for k in range(sorted_p.size):
        count[sorted_p[k]] += 1
    start = np.empty(n_peaks + 1, dtype=np.int64)
    for s in range(n_peaks):
        start[order[s] + 1] = count[s]
    start[0] = 0
    for q in range(n_peaks):
        start[q + 1] += start[q]
    k = 0
    for s in range(n_peaks):
        q = order[s]
        at = start[q]
        for _ in range(count[s]):
            out_p[at] = q
            out_i[at] = ion[k]
            at += 1
            k += 1


def range_join(peak_mz, peak_rt, ion_mz, ion_rt, index: MassBinIndex, ppm: float,
               rt_window: float, kernel: str = "auto"):
    """All (peak, ion) pairs within ``ppm`` and, where the ion has an RT, ``rt_window``.

    A pair matches when ``|peak_mz - ion_mz| <= ppm * 1e-6 * ion_mz`` and either the ion's RT is
    unknown (NaN) or ``|peak_rt - ion_rt| <= rt_window``.

    Parameters
    ----------
    peak_mz, peak_rt : torch.Tensor
        Peaks, any order.
    ion_mz, ion_rt : torch.Tensor
        Ions sorted by m/z, on the same device.
    index : MassBinIndex
        Built for these ions with ``max_ppm >= ppm`` (the torch kernel's bins; the compiled
        merge needs only the ions' order).
    ppm, rt_window : float
    kernel : {"auto", "torch", "numba"}
        ``auto``: the compiled merge for CPU tensors, torch otherwise (CUDA); see
        :func:`dask_assign.backends.compiled`.

    Returns
    -------
    peak_idx, ion_idx : torch.Tensor (int64)
        Matching pairs, ordered by peak, then by ion.

    Examples
    --------
    >>> ions = torch.tensor([100.0, 100.0005, 200.0], dtype=torch.float64)
    >>> rt = torch.tensor([1.0, float("nan"), 1.0], dtype=torch.float64)
    >>> idx = MassBinIndex.build(ions.numpy(), 10.0)
    >>> p, i = range_join(torch.tensor([100.0004], dtype=torch.float64),
    ...                   torch.tensor([5.0], dtype=torch.float64), ions, rt, idx, 10.0, 0.5)
    >>> i.tolist()  # 100.0 is 4 ppm off but 4 min away in RT; 100.0005 has no RT
    [1]
    """
    device = peak_mz.device
    if compiled(peak_mz, peak_rt, ion_mz, ion_rt, kernel=kernel):
        return _range_join_cpu(peak_mz.contiguous(), peak_rt.contiguous(), ion_mz.contiguous(),
                               ion_rt.contiguous(), ppm, rt_window)
    n = peak_mz.shape[0]
    lo, hi = window_bounds(peak_mz, index)
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    peak_idx = torch.repeat_interleave(torch.arange(n, device=device), counts)
    # Position of each pair within its peak's block, added to the block's first ion.
    block_start = torch.cumsum(counts, 0) - counts
    ion_idx = (torch.arange(total, device=device) - block_start[peak_idx]) + lo[peak_idx]
    tol = ppm * 1e-6 * ion_mz[ion_idx]
    keep = torch.abs(peak_mz[peak_idx] - ion_mz[ion_idx]) <= tol
    irt = ion_rt[ion_idx]
    keep &= torch.isnan(irt) | (torch.abs(peak_rt[peak_idx] - irt) <= rt_window)
    return peak_idx[keep], ion_idx[keep]


@numba.njit(cache=True, nogil=True)
def _rank_grouped(peak, score, order, rank):
    """Stable descending insertion sort of ``score`` within runs of equal ``peak``."""
    n = peak.size
    a = 0
    while a < n:
        b = a + 1
        while b < n and peak[b] == peak[a]:
            b += 1
        for k in range(a, b):
            order[k] = k
        for k in range(a + 1, b):
            cur = order[k]
            m = k - 1
            while m >= a and score[order[m]] < score[cur]:
                order[m + 1] = order[m]
                m -= 1
            order[m + 1] = cur
        for k in range(a, b):
            rank[k] = k - a
        a = b


def rank_within_peak(peak_idx, score, kernel: str = "auto"):
    """Order pairs by peak, best ``score`` first, and number them within each peak.

    Ties keep the pairs' incoming order (ions by m/z), so the ranking of a peak never depends on
    the other peaks of its partition.

    Parameters
    ----------
    peak_idx : torch.Tensor (int64)
        Peak of each pair.
    score : torch.Tensor
        Higher is better.
    kernel : {"auto", "torch", "numba"}
        ``auto``: the compiled sort within groups for CPU tensors (when the pairs come
        grouped by peak, as the join gives them), torch sorts otherwise.

    Returns
    -------
    order : torch.Tensor
        Permutation of the pairs: grouped by peak, best first.
    rank : torch.Tensor
        0-based rank of each pair in ``order`` within its peak.
    counts : torch.Tensor
        Pairs per peak, for peaks ``0 .. peak_idx.max()``.
    """
    if (compiled(peak_idx, score, kernel=kernel) and peak_idx.numel() > 1
            and bool((peak_idx[1:] >= peak_idx[:-1]).all())):
        # Pairs already grouped by peak (as the join gives them): sort within each group.
        order = np.empty(peak_idx.numel(), dtype=np.int64)
        rank = np.empty_like(order)
        _rank_grouped(peak_idx.contiguous().numpy(), score.contiguous().numpy(), order, rank)
        n = int(peak_idx[-1]) + 1
        return (torch.from_numpy(order), torch.from_numpy(rank),
                torch.bincount(peak_idx, minlength=n))
    by_score = torch.sort(score, descending=True, stable=True).indices
    by_peak = torch.sort(peak_idx[by_score], stable=True).indices
    order = by_score[by_peak]
    sorted_peaks = peak_idx[order]
    n = int(sorted_peaks[-1]) + 1 if sorted_peaks.numel() else 0
    counts = torch.bincount(sorted_peaks, minlength=n)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - first[sorted_peaks]
    return order, rank, counts
