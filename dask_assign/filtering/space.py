"""The search space: the library's ion table as the kernels need it.

Ions sorted by m/z with their mass-bin index and the lookups of the context pass, built once on
the client from the library (:func:`prepare_library`) and sent to each worker once; how a
calibration moves them (centred windows, mapped library RTs); and the candidate RT window."""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numba
import numpy as np
import pandas as pd
import torch

from dask_assign.chemistry.adducts import select_adducts
from dask_assign.chemistry.ions import IonTable, build_ions, ion_order
from dask_assign.chemistry.isotopes import merge_unresolved
from dask_assign.config import AssignConfig, Calibration
from dask_assign.errors import reading
from dask_assign.files import sha256
from dask_assign.filtering import ion_cache
from dask_assign.filtering.join import MassBinIndex
from dask_assign.io.library import read_library

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSpace:
    """The ion table as the kernels need it: numeric columns and the mass-bin index.

    Built once on the client and sent to each worker once. Besides the ion columns (sorted
    by m/z), ``group_start`` and ``group_rows`` list each compound x adduct's isotopologues
    (most abundant first; ``group_rows[group_start[g]:group_start[g + 1]]``) and
    ``group_mono[g]`` its monoisotopic ion, and ``monoisotopic[c, a]`` is the row of compound
    ``c``'s monoisotopic ion of adduct ``a`` (-1 where it cannot form it): the lookups of the
    context pass.
    """

    mz: np.ndarray
    rt: np.ndarray
    log_adduct_prior: np.ndarray
    log_abundance: np.ndarray
    bins: MassBinIndex
    compound: np.ndarray
    adduct: np.ndarray
    isotope: np.ndarray
    group: np.ndarray
    group_start: np.ndarray
    group_rows: np.ndarray
    group_mono: np.ndarray
    monoisotopic: np.ndarray
    compounds: pd.DataFrame
    adduct_names: tuple
    isotope_labels: tuple
    adduct_ions: np.ndarray
    n_carbon: np.ndarray
    carbon_per_mass: float
    merged_ppm: float = 0.0

    @classmethod
    def build(cls, table: IonTable, max_ppm: float, merged_ppm: float = 0.0) -> SearchSpace:
        """From an :class:`~dask_assign.chemistry.ions.IonTable`, for windows up to
        ``max_ppm``; ``merged_ppm``: the tolerance its isotopologues were merged at."""
        ions = table.ions

        def col(name, dtype):
            return np.ascontiguousarray(ions[name].to_numpy(dtype=dtype))

        return cls._from_columns(
            {"mz": col("mz", np.float64), "rt": col("rt", np.float64),
             "log_adduct_prior": col("log_adduct_prior", np.float64),
             "log_abundance": col("log_abundance", np.float64),
             "compound": col("compound", np.int64), "adduct": col("adduct", np.int64),
             "isotope": col("isotope", np.int64), "group": col("group", np.int64)},
            max_ppm, compounds=table.compounds, adduct_names=tuple(table.adduct_names),
            isotope_labels=tuple(table.isotope_labels), adduct_ions=table.adduct_ions,
            n_carbon=table.n_carbon, carbon_per_mass=table.carbon_per_mass,
            merged_ppm=merged_ppm)

    @classmethod
    def _from_columns(cls, columns: dict, max_ppm: float, **library) -> SearchSpace:
        """The space of ion columns sorted by m/z, with its lookups and mass-bin index."""
        group, compound = columns["group"], columns["compound"]
        adduct, iso = columns["adduct"], columns["isotope"]
        n_groups = int(group.max()) + 1 if group.size else 0
        start = np.zeros(n_groups + 1, dtype=np.int64)
        np.cumsum(np.bincount(group, minlength=n_groups), out=start[1:])
        mono = np.full((len(library["compounds"]), len(library["adduct_names"])), -1,
                       dtype=np.int64)
        m0 = np.flatnonzero(iso == 0)
        mono[compound[m0], adduct[m0]] = m0
        group_mono = np.full(n_groups, -1, dtype=np.int64)
        group_mono[group[m0]] = m0
        return cls(**columns, bins=MassBinIndex.build(columns["mz"], max_ppm),
                   group_start=start,
                   group_rows=rows_by_group(group, start, columns["log_abundance"]),
                   group_mono=group_mono, monoisotopic=mono, **library)

    def resolved(self, tol_ppm: float) -> SearchSpace:
        """The space as an instrument with this mass spread sees it: the isotopologues of one
        ion closer than ``tol_ppm`` merged into one
        (:func:`~dask_assign.chemistry.isotopes.merge_unresolved`). The space itself where
        it was merged at this tolerance or wider (merging again joins nothing)."""
        if tol_ppm <= self.merged_ppm or self.mz.size == 0:
            return self
        keep, mz, la = merge_unresolved(self.group, self.mz, self.log_abundance, self.isotope,
                                        tol_ppm, rows=self.group_rows)
        order = ion_order(mz, self.compound[keep], self.adduct[keep], self.isotope[keep])
        rows = keep[order]  # one gather a column
        columns = {k: getattr(self, k)[rows] for k in ION_ARRAYS}
        columns["mz"], columns["log_abundance"] = mz[order], la[order]
        return SearchSpace._from_columns(
            columns, self.bins_ppm, **{k: getattr(self, k) for k in LIBRARY_FIELDS},
            merged_ppm=float(tol_ppm))

    @property
    def nbytes(self) -> int:
        """Bytes of the space's arrays (the ion cache's estimate of an entry)."""
        arrays = [getattr(self, f.name) for f in dataclasses.fields(self)]
        arrays += [getattr(self.bins, f.name) for f in dataclasses.fields(self.bins)]
        return int(sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
                   + self.compounds.memory_usage(deep=True).sum())

    def indexed(self, max_ppm: float) -> SearchSpace:
        """The space with its mass bins indexed for windows up to ``max_ppm`` (the space
        itself where they already serve them): the ions stay as they are."""
        if max_ppm <= self.bins_ppm:
            return self
        return dataclasses.replace(self, bins=MassBinIndex.build(self.mz, max_ppm))

    def take(self, column: str, rows: torch.Tensor) -> torch.Tensor:
        """The ion column ``column`` at ``rows``, on ``rows``' device.

        Gathered on the host: a CUDA partition copies the values of its candidates, not the
        whole table (12M ions for a 100k-compound library).

        Parameters
        ----------
        column : str
            One of the ion arrays (``compound``, ``adduct``, ``mz``, ...).
        rows : torch.Tensor (int64)
            Ion rows, e.g. the candidates' ``ion``.

        Returns
        -------
        torch.Tensor
            ``column[rows]``, of the column's dtype.
        """
        values = getattr(self, column)[rows.cpu().numpy()]
        return torch.as_tensor(values, device=rows.device)

    @property
    def bins_ppm(self) -> float:
        """The widest window (ppm) the mass-bin index serves."""
        return float(-np.expm1(-self.bins.width) * 1e6)

    def tensors(self, device: str) -> dict:
        """The numeric ion columns as tensors (zero-copy on CPU; the kernels never write)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # arrays unpickled read-only
            return {k: torch.as_tensor(getattr(self, k), device=device)
                    for k in ("mz", "rt", "log_adduct_prior", "log_abundance", "adduct")}


def rows_by_group(group: np.ndarray, start: np.ndarray, log_abundance: np.ndarray) -> np.ndarray:
    """Rows grouped by ``group`` (``start``: each group's first position), most abundant
    first within a group, ties in row order: ``np.lexsort((-log_abundance, group))`` in
    linear time (groups hold a few isotopologues each)."""
    return _rows_by_group(np.ascontiguousarray(group, dtype=np.int64),
                          np.ascontiguousarray(start, dtype=np.int64),
                          np.ascontiguousarray(log_abundance, dtype=np.float64))


@numba.njit(cache=True, nogil=True)
def _rows_by_group(group, start, log_abundance):
    out = np.empty(group.size, np.int64)
    fill = start[:-1].copy()
    for r in range(group.size):  # counting sort: row order kept within a group
        out[fill[group[r]]] = r
        fill[group[r]] += 1
    for g in range(start.size - 1):  # then by abundance, stably
        for i in range(start[g] + 1, start[g + 1]):
            r = out[i]
            j = i
            while j > start[g] and log_abundance[out[j - 1]] < log_abundance[r]:
                out[j] = out[j - 1]
                j -= 1
            out[j] = r
    return out


#: The per-ion arrays of a SearchSpace, and what it keeps of the library.
ION_ARRAYS = ("mz", "rt", "log_adduct_prior", "log_abundance", "compound", "adduct", "isotope",
              "group")


LIBRARY_FIELDS = ("compounds", "adduct_names", "isotope_labels", "adduct_ions", "n_carbon",
                  "carbon_per_mass")


#: Spreads of the RT error model that the fitted candidate window spans.
RT_WINDOW_SIGMAS = 4.0


#: Spreads of the mass error model that the fitted candidate window spans at least.
MASS_WINDOW_SIGMAS = 4.0


def fitted_ppm(config: AssignConfig, calibration: Calibration, widen: float = 1.0) -> float:
    """Mass bound (ppm, either side of the run's fitted offset) a search needs: the
    tolerance ``config.ppm`` times ``widen`` (the refinement searches wider), or
    ``MASS_WINDOW_SIGMAS`` spreads of the run's fitted mass error where that is wider, so that
    a run whose masses spread more than the tolerance allows keeps its true candidates (the
    scorer weighs them; the window only bounds the cost). Past those spreads no true match is
    left to widen for."""
    ppm = float(config.ppm) * widen
    if calibration.iterations > 0:
        ppm = max(ppm, MASS_WINDOW_SIGMAS * float(calibration.mass_sigma_ppm))
    return ppm


def candidate_ppm(config: AssignConfig, calibration: Calibration, space: SearchSpace,
                  widen: float = 1.0) -> float:
    """Mass bound (ppm) of a candidate search: :func:`fitted_ppm`, at most the width the
    space's mass bins index. A space is indexed for the refinement's tolerance
    (``ppm * refine_widen``) and re-indexed once the run is calibrated
    (:meth:`SearchSpace.indexed`), so the bound binds only inside the calibration."""
    return min(fitted_ppm(config, calibration, widen), space.bins_ppm)


def candidate_rt_window(config: AssignConfig, calibration: Calibration) -> float:
    """RT bound (minutes, either side) of the candidate search: ``config.rt_window`` where
    set; else unbounded until the run's RT model is fitted, then ``RT_WINDOW_SIGMAS`` spreads
    of its broad component (of its core where no library RT is off)."""
    if config.rt_window is not None:
        return float(config.rt_window)
    if calibration.iterations == 0:
        return float("inf")
    spread = calibration.rt_tail_sigma if calibration.rt_tail_share > 0 else calibration.rt_sigma
    return RT_WINDOW_SIGMAS * spread


class _LastValue:
    """The last value computed from one search space (and a key), kept while that space
    lives and dropped with it: the tasks of a run on a worker share one space and one
    calibration, and the values derived from them cost a pass over millions of ions each.
    One entry, so that an EM fit (a new calibration each step) does not pile them up."""

    def __init__(self):
        # Re-entrant: the space's collection (its weak reference's callback) may happen
        # inside the locked region of the same thread.
        self._lock = threading.RLock()
        self._entry = None  # (weak reference to the space, key, value)

    def get(self, space: SearchSpace, key, make):
        with self._lock:
            entry = self._entry
        if entry is not None and entry[0]() is space and entry[1] == key:
            return entry[2]
        value = make()
        with self._lock:
            self._entry = (weakref.ref(space, self._forget), key, value)
        return value

    def _forget(self, ref):
        with self._lock:
            if self._entry is not None and self._entry[0] is ref:
                self._entry = None


_MAIN_ADDUCT = _LastValue()
_CALIBRATED = _LastValue()


def main_adduct(space: SearchSpace) -> int:
    """The adduct a run's compounds show most (the table's largest prior): the one the
    calibration learns the run's error models from."""
    def make():
        if space.adduct.size == 0:
            return 0
        prior = np.full(len(space.adduct_names), -np.inf)
        np.maximum.at(prior, space.adduct, space.log_adduct_prior)
        return int(np.argmax(prior))

    return _MAIN_ADDUCT.get(space, None, make)


def calibrated_ions(space: SearchSpace, calibration: Calibration, device: str) -> dict:
    """The ion tensors as a run's calibration sees them: the adduct priors it fitted (else the
    table's), and ``mapped_rt``, the library RT mapped to this run, which the RT window is
    centred on, and ``ppm_offset``, the systematic mass error expected at the ion's m/z.

    Built once per worker for a space and a calibration (every stage of every block reads
    the same), and shared: the kernels never write the tensors."""
    return dict(_CALIBRATED.get(space, (device, calibration),
                                lambda: _calibrated_ions(space, calibration, device)))


def _calibrated_ions(space: SearchSpace, calibration: Calibration, device: str) -> dict:
    ions = space.tensors(device)
    if calibration.log_adduct_priors is not None:
        fitted = torch.as_tensor(calibration.log_adduct_priors, dtype=torch.float64,
                                 device=ions["mz"].device)
        ions["log_adduct_prior"] = fitted[ions["adduct"]]
    if calibration.log_adduct_background is not None:
        # A denser background beside an adduct's ions: its matches are likelier chance.
        background = torch.as_tensor(calibration.log_adduct_background, dtype=torch.float64,
                                     device=ions["mz"].device)
        ions["log_adduct_prior"] = ions["log_adduct_prior"] - background[ions["adduct"]]
    ions["mapped_rt"] = calibration.rt_map(ions["rt"])
    ions["ppm_offset"] = calibration.mass_offset(ions["mz"])
    return ions


def centred_mz(mz: torch.Tensor, calibration: Calibration) -> torch.Tensor:
    """Peak m/z with the run's systematic mass error taken out, so that a window of fixed
    ppm around each ion is centred where the instrument puts that ion."""
    return mz / (1 + calibration.mass_offset(mz) * 1e-6)


#: The settings an ion table depends on, and so the ion cache's key: the table is built
#: from a view of the config that holds these alone (:func:`prepare_library`).
TABLE_SETTINGS = ("library_rt_unit", "mode", "adducts", "adduct_table", "max_isotope",
                  "isotope_min_abundance", "isotope_merge_ppm", "ppm", "refine_widen")


def prepare_library(library, config: AssignConfig, cache=None) -> SearchSpace:
    """Library -> search space: read, its ions and isotopologues built, sorted and indexed.

    Parameters
    ----------
    library : str, Path, pandas.DataFrame or SearchSpace
        Library file (read with :func:`~dask_assign.io.library.read_library`), or a frame
        it returned; a search space is returned as it is (built once for many calls).
    config : AssignConfig
        Of its fields, only ``TABLE_SETTINGS`` shape the table.
    cache : str or Path, optional
        Ion cache folder (:mod:`~dask_assign.filtering.ion_cache`): the space is read from
        it where the same library file, adduct table, settings and code built it before, and
        written to it where not. ``None`` (the default of the Python API; the command line
        uses :func:`~dask_assign.filtering.ion_cache.cache_dir`) builds it every time.
        Frames are never cached.

    Returns
    -------
    SearchSpace
    """
    if isinstance(library, SearchSpace):
        return library
    table_config = SimpleNamespace(**{name: getattr(config, name) for name in TABLE_SETTINGS})
    if cache is None or isinstance(library, pd.DataFrame) or Path(library).is_dir():
        return _build_space(library, table_config)  # (a folder: read_library refuses it)
    key = _cache_key(library, table_config)
    space = ion_cache.load(cache, key)
    if space is not None:
        log.info("library: %d compounds, %d ions, from the ion cache (%s)",
                 len(space.compounds), space.mz.size, cache)
        return space
    space = _build_space(library, table_config)
    if _cache_key(library, table_config) == key:  # not kept if an input changed meanwhile
        ion_cache.store(cache, key, space, nbytes=space.nbytes)
    return space


def _cache_key(library, config) -> str:
    """The ion cache's key of a library file and the table settings: the bytes of the
    library and of the adduct table, the library's file suffixes (they choose its reader)."""
    parts = {"settings": vars(config), "library_suffixes": Path(library).suffixes}
    with reading(library):
        parts["library_sha256"] = sha256(library)
    if config.adduct_table is not None:
        with reading(config.adduct_table):
            parts["adduct_table_sha256"] = sha256(config.adduct_table)
    return ion_cache.entry_key(parts)


def _build_space(library, config) -> SearchSpace:
    if not isinstance(library, pd.DataFrame):
        library = read_library(library, rt_unit=config.library_rt_unit)
    adducts = select_adducts(config.mode, config.adducts, config.adduct_table)
    table = build_ions(library, adducts, config.max_isotope, config.isotope_min_abundance,
                       config.isotope_merge_ppm)
    log.info("library: %d compounds, %d ions (%d adducts, %d isotopologue labels)",
             len(library), len(table), len(adducts), len(table.isotope_labels))
    return SearchSpace.build(table, config.ppm * config.refine_widen, config.isotope_merge_ppm)
