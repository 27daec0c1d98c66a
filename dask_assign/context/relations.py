"""Relations among co-eluting peaks: which peak sits where another ion of the same molecule
would be (a 13C isotope spacing, another adduct), found by a compiled sweep.

A relation is an affine map of m/z, ``mz_to = scale * mz_from + shift``: the 13C spacing of an
ion of charge z is ``+1.00336 / z``; another adduct of the same neutral mass is the map through
that mass. For every peak and map the sweep reports the co-eluting peak (``|rt difference| <=
rt_tol``) within ``ppm`` of the predicted m/z. Peaks are visited in m/z order and
every map is monotone, so each map is one pass over the sorted peaks: the cost grows with the
number of peaks times the number of maps, not with the square of the peak count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from dask_assign.chemistry.adducts import DECOY_SHIFTS
from dask_assign.chemistry.formulas import C13_SPACING
from dask_assign.filtering.join import run_filling

#: Relation kinds.
ISOTOPE, ADDUCT, DECOY = 0, 1, 2



@dataclass(frozen=True)
class RelationMaps:
    """The m/z maps searched between the ions of one molecule.

    Attributes
    ----------
    scale, shift : numpy.ndarray
        ``mz_to = scale * mz_from + shift``.
    kind : numpy.ndarray
        ``ISOTOPE``, ``ADDUCT`` or ``DECOY``.
    src, dst : numpy.ndarray
        Adduct index at each end of an adduct map (-1 for the others).
    step : numpy.ndarray
        13C atoms added by an isotope map (0 for the others).
    charge : numpy.ndarray
        Charge of the ions an isotope map joins (0 for the others).
    """

    scale: np.ndarray
    shift: np.ndarray
    kind: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    step: np.ndarray
    charge: np.ndarray

    def __len__(self) -> int:
        return int(self.scale.size)

    @classmethod
    def build(cls, mult, charge, delta, max_isotope: int = 2, adducts: bool = True,
              decoys: bool = False) -> RelationMaps:
        """Maps between the ions of the adducts ``(mult, |charge|, delta)`` (as in
        :meth:`dask_assign.chemistry.adducts.Adduct.mz`: ``mz = (mult * M + delta) / |charge|``).

        Isotope maps add or remove 1 to ``max_isotope`` 13C atoms, one set per charge (the
        spacing is ``1.00336 / z`` whatever the adduct); adduct maps go from every adduct to
        every other, between ions of one 13C count; decoy maps shift by ``DECOY_SHIFTS``.

        Examples
        --------
        >>> maps = RelationMaps.build([1, 1], [1, 1], [1.00728, 22.98922], max_isotope=1)
        >>> [(int(k), round(float(s), 5)) for k, s in zip(maps.kind, maps.shift)]
        [(0, 1.00335), (0, -1.00335), (1, 21.98194), (1, -21.98194)]
        """
        mult = np.asarray(mult, dtype=np.float64)
        z = np.abs(np.asarray(charge, dtype=np.float64))
        delta = np.asarray(delta, dtype=np.float64)
        rows = []
        for zz in sorted(set(z.tolist())):
            for k in range(1, max_isotope + 1):
                for step in (k, -k):
                    rows.append((1.0, step * C13_SPACING / zz, ISOTOPE, -1, -1, step, zz))
        if adducts:
            for a in range(mult.size):
                for b in range(mult.size):
                    if a != b:
                        # M = (z_a mz - delta_a) / mult_a, then mz_b = (mult_b M + delta_b) / z_b
                        scale = z[a] * mult[b] / (mult[a] * z[b])
                        shift = (delta[b] - delta[a] * mult[b] / mult[a]) / z[b]
                        rows.append((scale, shift, ADDUCT, a, b, 0, 0))
        if decoys:
            rows += [(1.0, d, DECOY, -1, -1, 0, 0) for d in DECOY_SHIFTS]
        cols = list(zip(*rows, strict=True)) if rows else [()] * 7
        types = (np.float64, np.float64, np.int8, np.int64, np.int64, np.int64, np.int64)
        return cls(*(np.asarray(c, dtype=t) for c, t in zip(cols, types, strict=True)))


@numba.njit(cache=True, nogil=True)
def _sweep(mz, rt, anchor, scale, shift, ppm, rt_tol, cap, out_q, out_k, out_m):
    """For each map and anchor peak, the co-eluting peaks within ``ppm`` of the mapped m/z
    (the first ``cap`` of them in m/z order; ``rt_tol`` per map). Peaks are given sorted by
    m/z; matches are written as positions in that order while they fit in ``out_*``;
    returns their number.
    """
    n = mz.size
    size = out_q.size
    found = 0
    tol = ppm * 1e-6
    for m in range(scale.size):
        lo = 0
        for q in range(n):  # scale > 0: the targets rise with the anchors' m/z
            if not anchor[q]:
                continue
            target = scale[m] * mz[q] + shift[m]
            if target <= 0:
                continue
            low = target * (1 - tol)
            high = target * (1 + tol)
            while lo < n and mz[lo] < low:
                lo += 1
            k = lo
            taken = 0
            while k < n and taken < cap and mz[k] <= high:
                if k != q and abs(rt[k] - rt[q]) <= rt_tol[m]:
                    if found < size:
                        out_q[found], out_k[found], out_m[found] = q, k, m
                    found += 1
                    taken += 1
                k += 1
    return found


#: Partners kept per peak and map. Real runs have a handful at most; a table of many copies
#: of one run (or duplicated features) would otherwise make the search quadratic.
MAX_PARTNERS = 4


def find_relations(mz, rt, maps: RelationMaps, ppm: float, rt_tol, anchor=None,
                   cap: int = MAX_PARTNERS):
    """Co-eluting partners of each peak under each map.

    Parameters
    ----------
    mz, rt : numpy.ndarray
        The peaks (m/z, RT in minutes).
    maps : RelationMaps
    ppm : float
        Largest distance (ppm of the predicted m/z) between a partner and the prediction.
    rt_tol : float or numpy.ndarray
        Largest RT difference (minutes) between co-eluting peaks: one, or one per map.
    anchor : numpy.ndarray of bool, optional
        Peaks to search from (all by default); partners may be any peak.
    cap : int
        Most partners kept per peak and map (the first in m/z order, ties in row order: the
        same peaks whatever else the block holds).

    Returns
    -------
    i, j, m : numpy.ndarray (int64)
        Peak ``j`` lies where map ``m`` of peak ``i`` predicts; sorted by ``(i, m, j)``.

    Notes
    -----
    Ties in m/z are broken by row, so the partners kept under ``cap`` are the same peaks
    whatever else the block holds, as long as the rows keep their relative order.

    Examples
    --------
    >>> maps = RelationMaps.build([1], [1], [1.00728], max_isotope=1)
    >>> mz = np.array([181.0707, 182.0740, 300.0])
    >>> rt = np.array([5.0, 5.001, 5.0])
    >>> i, j, m = find_relations(mz, rt, maps, ppm=10, rt_tol=0.02)
    >>> i.tolist(), j.tolist(), maps.step[m].tolist()
    ([0, 1], [1, 0], [1, -1])
    """
    mz = np.asarray(mz, dtype=np.float64)
    anchor = (np.ones(mz.size, dtype=np.bool_) if anchor is None
              else np.asarray(anchor, dtype=np.bool_))
    # Sorted copies: the sweep reads memory in order (no gather through an index).
    order = np.argsort(mz, kind="stable")
    args = (mz[order], np.asarray(rt, dtype=np.float64)[order], anchor[order],
            np.ascontiguousarray(maps.scale), np.ascontiguousarray(maps.shift), float(ppm),
            # A writable copy: one compiled signature whatever the caller passes.
            np.array(np.broadcast_to(np.asarray(rt_tol, dtype=np.float64), (len(maps),))),
            int(cap))
    q, k, m = run_filling(_sweep, args, 2 * int(anchor.sum()) * max(len(maps), 1) // 4 + 1024,
                          3)
    i, j = order[q], order[k]
    key = np.argsort((i * max(len(maps), 1) + m) * max(mz.size, 1) + j)
    return i[key], j[key], m[key]
