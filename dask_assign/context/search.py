"""Partner searches within an RT block: the peaks near predicted m/z values (capped, nearest
in RT), and the isotopologue clusters of a candidate that an instrument resolves."""

from __future__ import annotations

import math

import numba
import numpy as np

from dask_assign.context.model import SIBLINGS
from dask_assign.context.relations import MAX_PARTNERS
from dask_assign.filtering.join import (
    run_filling,
)
from dask_assign.filtering.space import (
    SearchSpace,
)


def neighbours(rt: np.ndarray, within: float) -> np.ndarray:
    """Other peaks within ``within`` minutes of each peak (of those given)."""
    ordered = np.sort(rt)
    return (np.searchsorted(ordered, rt + within, side="right")
            - np.searchsorted(ordered, rt - within, side="left") - 1)


class _BlockPeaks:
    """A block's peaks sorted by m/z, for target searches (co-eluting peaks near a predicted
    m/z)."""

    def __init__(self, mz: np.ndarray, rt: np.ndarray, ppm: float):
        self.order = np.argsort(mz, kind="stable")
        self.mz = np.ascontiguousarray(mz[self.order], dtype=np.float64)
        self.rt = np.ascontiguousarray(rt[self.order], dtype=np.float64)
        self.ppm = ppm

    def find(self, target_mz: np.ndarray, target_rt: np.ndarray, rt_tol: float):
        """(target, block row) of the peaks within ``ppm`` of a target m/z and ``rt_tol`` of
        its RT, ordered by target: at most ``MAX_PARTNERS`` per target, those nearest in RT.

        The cap bounds the work where many peaks pile up at one m/z and RT (repeated
        injections concatenated, a contaminant across a gradient): the evidence of a partner
        cluster saturates after the first few peaks at its place."""
        if target_mz.size == 0 or self.mz.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        k = self.ppm * 1e-6
        tm = np.ascontiguousarray(target_mz, dtype=np.float64)
        # |t - p| <= k p  <=>  t / (1 + k) <= p <= t / (1 - k): the sweep starts at the
        # first peak above the lower bound and stops past the upper one.
        lo = np.searchsorted(self.mz, tm / (1 + k), side="left")
        t, j = run_filling(_capped_sweep, (tm, np.ascontiguousarray(target_rt, dtype=np.float64),
                                           self.mz, self.rt, lo, k, float(rt_tol),
                                           MAX_PARTNERS),
                           MAX_PARTNERS * tm.size, 2)
        return t, self.order[j]


@numba.njit(cache=True, nogil=True)
def _nearest_in_rt(target, target_rt, mz, rt, lo, k, rt_tol, best_d, best_j):
    """The peaks (sorted by m/z, from ``lo``, the first at or above ``target / (1 + k)``)
    within ``k`` of ``target`` relative to their m/z and ``rt_tol`` of ``target_rt`` (a peak
    without RT: any): the ``best_d.size`` nearest in RT (ties: lower row) into ``best_j``,
    their RT differences into ``best_d``; returns how many."""
    cap = best_d.size
    n = 0
    high = target / (1 - k)
    for j in range(lo, mz.size):
        if not mz[j] <= high:  # NaN m/z sorts last, out of every window
            break
        if abs(target - mz[j]) > k * mz[j]:
            continue
        d = abs(target_rt - rt[j])
        if not d <= rt_tol and not np.isnan(rt[j]):
            continue
        if np.isnan(d):
            d = 0.0
        if n == cap and d >= best_d[n - 1]:
            continue
        at = n if n < cap else cap - 1
        while at > 0 and best_d[at - 1] > d:
            best_d[at] = best_d[at - 1]
            best_j[at] = best_j[at - 1]
            at -= 1
        best_d[at] = d
        best_j[at] = j
        if n < cap:
            n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _capped_sweep(tm, trt, mz, rt, lo, k, rt_tol, cap, out_t, out_j):
    """Per target, the ``cap`` matches from ``lo`` nearest in RT (:func:`_nearest_in_rt`)."""
    best_d = np.empty(cap)
    best_j = np.empty(cap, dtype=np.int64)
    found = 0
    for t in range(tm.size):
        n = _nearest_in_rt(tm[t], trt[t], mz, rt, lo[t], k, rt_tol, best_d, best_j)
        for q in range(n):
            if found < out_t.size:
                out_t[found] = t
                out_j[found] = best_j[q]
            found += 1
    return found


def nearest_target(owner: np.ndarray, target_mz: np.ndarray, t: np.ndarray, j: np.ndarray,
                   peak_mz: np.ndarray) -> np.ndarray:
    """Which hits ``(t, j)`` (target, peak) to keep when the targets of one owner lie close
    together: a peak counts for the owner's target nearest to it in m/z only, so a peak that
    falls in two partner windows (a 13C2 peak near the 18O1 position) is not found twice."""
    if t.size == 0:
        return np.zeros(0, dtype=bool)
    err = np.abs(peak_mz[j] - target_mz[t])
    key = owner[t].astype(np.int64) * (int(j.max()) + 1) + j
    order = np.lexsort((err, key))
    first = np.ones(order.size, dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = np.zeros(t.size, dtype=bool)
    keep[order[first]] = True
    return keep


def _first_hit(owner: np.ndarray, drt: np.ndarray, n: int) -> np.ndarray:
    """Smallest ``|drt|`` per owner (``inf`` for owners without a hit)."""
    best = np.full(n, np.inf)
    np.minimum.at(best, owner, np.abs(drt))
    return best


def isotope_clusters(space: SearchSpace, groups: np.ndarray, ppm: float):
    """The isotopologues of some ions (compound x adduct groups) as a partner window of
    ``ppm`` sees them: each isotopologue joins the most abundant one of its ion within the
    window (itself, if none), and a cluster is searched and weighed as one partner.

    Returns
    -------
    rows : numpy.ndarray
        Every isotopologue (row of the space) of the groups.
    rep : numpy.ndarray
        The cluster (its most abundant row) each belongs to.
    log_abundance : numpy.ndarray
        log of its cluster's summed abundance.
    at_row : numpy.ndarray
        Position in ``rows`` of each of them, by row of the space (other entries unset).
    """
    groups = np.unique(groups)
    start, stop = space.group_start[groups], space.group_start[groups + 1]
    size = stop - start
    owner = np.repeat(np.arange(groups.size), size)
    rows = space.group_rows[_ranges(start, size)]
    rep = np.full(rows.size, -1, dtype=np.int64)
    mz = space.mz[rows]
    for k in range(int(size.max(initial=0))):  # the group's rows, most abundant first
        has = k < size[owner]
        other = space.group_rows[np.minimum(start[owner] + k, space.group_rows.size - 1)]
        close = has & (rep < 0) & (np.abs(space.mz[other] - mz) <= ppm * 1e-6 * mz)
        rep[close] = other[close]
    # Chains (a within the window of b, b of c) join one cluster.
    at_row = _positions(rows, space.mz.size)
    for _ in range(rows.size):
        deeper = rep[at_row[rep]]
        if np.array_equal(deeper, rep):
            break
        rep = deeper
    reps, which = np.unique(rep, return_inverse=True)
    total = np.bincount(which, weights=np.exp(space.log_abundance[rows]), minlength=reps.size)
    return rows, rep, np.log(total[which]), at_row


def _ranges(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The positions ``first[i] .. first[i] + count[i] - 1`` of every ``i``, one after the
    other (a CSR gather)."""
    return np.repeat(first - (np.cumsum(count) - count), count) + np.arange(count.sum())


def _positions(rows: np.ndarray, n: int) -> np.ndarray:
    """Where each of the distinct ``rows`` (of a space of ``n`` rows) stands in ``rows``:
    a lookup by row, in place of a search in a sorted copy (only those rows are read)."""
    at = np.empty(n, dtype=np.int64)
    at[rows] = np.arange(rows.size)
    return at


def sibling_targets(space: SearchSpace, ions: np.ndarray, ppm: float):
    """The isotopologue partners of each candidate ion: the cluster of its monoisotopic ion
    and the ``SIBLINGS`` most abundant other clusters of its compound and adduct
    (:func:`isotope_clusters`), never the candidate's own cluster.

    Worked out once per distinct ion (a block's candidates name the same ions many times),
    then given to each candidate.

    Returns
    -------
    owner : numpy.ndarray
        Candidate (index into ``ions``) of each partner cluster, in increasing order.
    cluster : numpy.ndarray
        Each partner's cluster: its most abundant row of the space.
    log_cluster, own_cluster : numpy.ndarray
        log abundance of each partner cluster, and of its candidate's own cluster.
    member, member_row : numpy.ndarray
        Every isotopologue to search: its partner (index into ``owner``) and its row.
    """
    ions = np.asarray(ions)
    distinct, inverse = np.unique(ions, return_inverse=True)
    owner_u, cluster_u, log_u, own_u, member_u, row_u = _distinct_sibling_targets(
        space, distinct, ppm)
    # Each distinct ion's partners (CSR by owner), then each candidate's: its ion's.
    p_start = np.r_[0, np.cumsum(np.bincount(owner_u, minlength=distinct.size))]
    count = (p_start[1:] - p_start[:-1])[inverse]
    owner = np.repeat(np.arange(ions.size), count)
    pick = _ranges(p_start[:-1][inverse], count)
    m_start = np.r_[0, np.cumsum(np.bincount(member_u, minlength=cluster_u.size))]
    m_count = (m_start[1:] - m_start[:-1])[pick]
    member = np.repeat(np.arange(pick.size), m_count)
    return (owner, cluster_u[pick], log_u[pick], own_u[pick], member,
            row_u[_ranges(m_start[:-1][pick], m_count)])


def _distinct_sibling_targets(space: SearchSpace, ions: np.ndarray, ppm: float):
    """:func:`sibling_targets` of distinct ions (same returns)."""
    rows, rep, log_total, at_row = isotope_clusters(space, space.group[ions], ppm)
    rep_of = rep[at_row[ions]]
    # Each group's clusters, most abundant first (CSR by group).
    heads = np.flatnonzero(rows == rep)
    c_group, c_rep, c_total = space.group[rows[heads]], rep[heads], log_total[heads]
    order = np.lexsort((-c_total, c_group))
    c_group, c_rep, c_total = c_group[order], c_rep[order], c_total[order]
    groups, first, count = np.unique(c_group, return_index=True, return_counts=True)
    g = np.searchsorted(groups, space.group[ions])
    start, size = first[g], count[g]
    mono = space.group_mono[space.group[ions]]
    # Where a group has no monoisotopic ion, no lookup (``at_row`` holds only the rows read).
    mono_rep = np.full(ions.size, -1, dtype=np.int64)
    mono_rep[mono >= 0] = rep[at_row[mono[mono >= 0]]]
    owner, cluster, taken = [], [], np.zeros(ions.size, dtype=np.int64)
    has_mono = np.zeros(ions.size, dtype=bool)
    for k in range(int(size.max(initial=0))):
        at = np.flatnonzero(k < size)
        c = c_rep[start[at] + k]
        ok = (c != rep_of[at]) & ((taken[at] < SIBLINGS) | (c == mono_rep[at]))
        owner.append(at[ok])
        cluster.append(c[ok])
        taken[at[ok]] += 1
        has_mono[at[ok & (c == mono_rep[at])]] = True
    owner, cluster = np.concatenate(owner), np.concatenate(cluster)
    key = np.lexsort((cluster, owner))
    owner, cluster = owner[key], cluster[key]
    total_of = np.empty(space.mz.size)  # by cluster head; only heads are read
    total_of[c_rep] = c_total
    log_cluster = total_of[cluster]
    own_cluster = total_of[rep_of][owner]
    # The members of each chosen cluster (CSR by cluster).
    by_rep = np.argsort(rep, kind="stable")
    reps, r_first, r_count = np.unique(rep[by_rep], return_index=True, return_counts=True)
    r = np.searchsorted(reps, cluster)
    member = np.repeat(np.arange(cluster.size), r_count[r])
    member_row = rows[by_rep][_ranges(r_first[r], r_count[r])]
    return owner, cluster, log_cluster, own_cluster, member, member_row


def distinct_sibling_targets(space: SearchSpace, ions: np.ndarray, ppm: float):
    """:func:`sibling_targets` of distinct, sorted ions (same returns), compiled: each
    group's clusters are formed once (:func:`_sibling_loop`), then handed to its ions.

    The same arrays as the vectorised :func:`_distinct_sibling_targets`, abundances to
    rounding (tested)."""
    ions = np.ascontiguousarray(ions, dtype=np.int64)
    groups, ion_group = np.unique(space.group[ions], return_inverse=True)
    return _sibling_loop(ions, np.ascontiguousarray(groups, dtype=np.int64),
                         np.ascontiguousarray(ion_group, dtype=np.int64), space.group_start,
                         space.group_rows, space.group_mono, space.mz, space.log_abundance,
                         float(ppm), SIBLINGS)


@numba.njit(cache=True, nogil=True)
def _sibling_loop(ions, groups, ion_group, group_start, group_rows, group_mono, mz,
                  log_abundance, ppm, siblings):
    """:func:`distinct_sibling_targets`: the clusters of each group (a row joins the most
    abundant row of its group within ``ppm``, chains followed; summed abundance per
    cluster), then per ion its partner clusters in :func:`_distinct_sibling_targets`'s
    order, and their members."""
    n_g = groups.size
    g_off = np.zeros(n_g + 1, dtype=np.int64)
    for gi in range(n_g):
        g_off[gi + 1] = g_off[gi] + group_start[groups[gi] + 1] - group_start[groups[gi]]
    rows = np.empty(g_off[n_g], dtype=np.int64)
    rep = np.empty(g_off[n_g], dtype=np.int64)  # position (in ``rows``) of each row's cluster
    total = np.zeros(g_off[n_g])  # summed abundance, at the cluster's head
    order = np.empty(g_off[n_g], dtype=np.int64)  # each group's heads, most abundant first
    n_heads = np.zeros(n_g, dtype=np.int64)
    for gi in range(n_g):
        s, o = group_start[groups[gi]], g_off[gi]
        size = g_off[gi + 1] - o
        for i in range(size):
            rows[o + i] = group_rows[s + i]
        for i in range(size):
            m = mz[rows[o + i]]
            rep[o + i] = o + i  # itself, unless a more abundant row is within the window
            for kk in range(i + 1):  # the most abundant row within the window (itself last)
                if abs(mz[rows[o + kk]] - m) <= ppm * 1e-6 * m:
                    rep[o + i] = o + kk
                    break
        for i in range(size):  # a chain's rows join its root (heads come first)
            rep[o + i] = rep[rep[o + i]]
        for i in range(size):
            total[rep[o + i]] += math.exp(log_abundance[rows[o + i]])
        h = 0
        for i in range(size):
            if rep[o + i] == o + i:
                order[o + h] = o + i
                h += 1
        n_heads[gi] = h
        for q in range(1, h):  # by falling abundance, ties in row order (insertion sort)
            x = order[o + q]
            at = q
            while at > 0 and total[order[o + at - 1]] < total[x]:
                order[o + at] = order[o + at - 1]
                at -= 1
            order[o + at] = x
    # Each cluster's members (positions, in row order), at its head: a CSR of the positions.
    size_of = np.zeros(rows.size, dtype=np.int64)
    for i in range(rows.size):
        size_of[rep[i]] += 1
    first_of = np.zeros(rows.size, dtype=np.int64)
    acc = 0
    for i in range(rows.size):
        first_of[i] = acc
        acc += size_of[i]
    fill = first_of.copy()
    by_cluster = np.empty(rows.size, dtype=np.int64)
    for i in range(rows.size):
        by_cluster[fill[rep[i]]] = i
        fill[rep[i]] += 1
    # Per ion: its own cluster, the monoisotopic ion's, and the partners chosen.
    n_i = ions.size
    own = np.empty(n_i, dtype=np.int64)
    mono = np.empty(n_i, dtype=np.int64)
    count = np.zeros(n_i, dtype=np.int64)
    for e in range(n_i):
        gi = ion_group[e]
        o, size = g_off[gi], g_off[gi + 1] - g_off[gi]
        own[e], mono[e] = -1, -1
        mono_row = group_mono[groups[gi]]
        for i in range(size):
            if rows[o + i] == ions[e]:
                own[e] = rep[o + i]
            if rows[o + i] == mono_row:
                mono[e] = rep[o + i]
        taken = 0
        for q in range(n_heads[gi]):
            c = order[o + q]
            if c != own[e] and (taken < siblings or c == mono[e]):
                taken += 1
        count[e] = taken
    p_off = np.zeros(n_i + 1, dtype=np.int64)
    for e in range(n_i):
        p_off[e + 1] = p_off[e] + count[e]
    owner = np.empty(p_off[n_i], dtype=np.int64)
    cluster = np.empty(p_off[n_i], dtype=np.int64)
    log_cluster = np.empty(p_off[n_i])
    own_cluster = np.empty(p_off[n_i])
    n_members = np.zeros(p_off[n_i], dtype=np.int64)
    for e in range(n_i):
        gi = ion_group[e]
        o = g_off[gi]
        at = p_off[e]
        taken = 0
        for q in range(n_heads[gi]):
            c = order[o + q]
            if c != own[e] and (taken < siblings or c == mono[e]):
                cluster[at + taken] = c
                taken += 1
        for q in range(1, taken):  # within an ion, partners by row of their head
            x = cluster[at + q]
            k = q
            while k > 0 and rows[cluster[at + k - 1]] > rows[x]:
                cluster[at + k] = cluster[at + k - 1]
                k -= 1
            cluster[at + k] = x
        for q in range(taken):
            owner[at + q] = e
            log_cluster[at + q] = math.log(total[cluster[at + q]])
            own_cluster[at + q] = math.log(total[own[e]])
            n_members[at + q] = size_of[cluster[at + q]]
    m_off = np.zeros(owner.size + 1, dtype=np.int64)
    for q in range(owner.size):
        m_off[q + 1] = m_off[q] + n_members[q]
    member = np.empty(m_off[owner.size], dtype=np.int64)
    member_row = np.empty(m_off[owner.size], dtype=np.int64)
    for q in range(owner.size):
        at, first = m_off[q], first_of[cluster[q]]
        for i in range(n_members[q]):
            member[at + i] = q
            member_row[at + i] = rows[by_cluster[first + i]]
    head_rows = np.empty(owner.size, dtype=np.int64)
    for q in range(owner.size):
        head_rows[q] = rows[cluster[q]]
    return owner, head_rows, log_cluster, own_cluster, member, member_row
