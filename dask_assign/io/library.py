"""Compound libraries: ids, names, formulas (or masses), RTs; element counts for the ion table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dask_assign.chemistry.formulas import parse_formula
from dask_assign.chemistry.isotopes import hill_order
from dask_assign.errors import InputError
from dask_assign.io.tables import (
    _check,
    _ids,
    _numeric,
    _resolve_columns,
    _row_numbers,
    read_tabular,
)

LIBRARY_ALIASES = {
    "compound_id": ["compound_id", "id", "identifier", "compound", "hmdb_id", "accession"],
    "name": ["name", "compound_name", "common_name"],
    "formula": ["formula", "molecular_formula", "chemical_formula"],
    "monoisotopic_mass": ["monoisotopic_mass", "exact_mass", "monoisotopic mass", "mass",
                          "neutral_mass"],
    "rt": ["rt", "retention_time", "rt_min", "retention time"],
}


#: Elements whose counts a library table always has (others where its formulas hold them).
LIBRARY_ELEMENTS = ("C", "H", "N", "O", "S", "P")


def read_library(path, columns=None, rt_unit: str = "min") -> pd.DataFrame:
    """Read and validate a compound library.

    Parameters
    ----------
    path : str or Path
        CSV, TSV or Parquet with ``compound_id``, ``name``, ``formula`` and/or
        ``monoisotopic_mass``, and an optional ``rt``.
    columns : dict, optional
        Explicit mapping of the canonical names to the file's columns.
    rt_unit : {"min", "s"}
        Unit of the library's retention times; converted to minutes.

    Returns
    -------
    pandas.DataFrame
        ``compound_id``, ``name``, ``formula`` (Hill notation; missing where only a mass is
        known), ``monoisotopic_mass``, ``rt`` (minutes; NaN where unknown), ``charge`` and
        element counts ``n_<element>`` of every element in the library (at least
        ``n_C``, ``n_H``, ``n_N``, ``n_O``, ``n_S``, ``n_P``; Hill order), used by the isotope
        patterns and the adducts' feasibility downstream. Isotope-labelled atoms (``[13C]``)
        are in the mass but not in the counts: they do not vary.
        The library is small next to the peaks, so it stays a pandas frame on the client.
    """
    source = str(path)
    frame, unit = read_tabular(path, "library")
    cols = _resolve_columns(frame.columns, LIBRARY_ALIASES, columns, ("compound_id",), source)
    if "formula" not in cols and "monoisotopic_mass" not in cols:
        raise InputError(source, "need a 'formula' or a 'monoisotopic_mass' column; found "
                         f"{list(frame.columns)}")
    ids = _ids(frame, cols["compound_id"], source, unit, "compound id")
    n = len(frame)
    mass = (_numeric(frame, cols["monoisotopic_mass"], source, unit, allow_missing=True).copy()
            if "monoisotopic_mass" in cols else np.full(n, np.nan))
    formulas = np.full(n, None, dtype=object)
    charge = np.zeros(n, dtype=np.int64)
    counts = {el: np.zeros(n, dtype=np.int64) for el in LIBRARY_ELEMENTS}
    if "formula" in cols:
        raw = frame[cols["formula"]]
        bad_rows, bad_vals, bad_msg = [], [], None
        for i, text in enumerate(raw.to_numpy(dtype=object)):
            if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
                continue
            try:
                f = parse_formula(text)
            except ValueError as err:
                bad_rows.append(i)
                bad_vals.append(text)
                bad_msg = bad_msg or str(err)
                continue
            formulas[i] = f.formula
            mass[i] = f.mass
            charge[i] = f.charge
            for el, k in f.elements.items():
                if el.isalpha():  # '13C' and the like are fixed labels, not elements
                    if el not in counts:
                        counts[el] = np.zeros(n, dtype=np.int64)
                    counts[el][i] = k
        if bad_rows:
            raise InputError(source, f"unparsable formula ({bad_msg})", column=cols["formula"],
                             rows=_row_numbers(np.array(bad_rows), unit), values=bad_vals[:5],
                             unit=unit)
    no_mass = np.isnan(mass)
    _check(no_mass, frame, cols.get("formula", cols.get("monoisotopic_mass")),
           ids.to_numpy(dtype=object), "neither a formula nor a mass", source, unit)
    _check(~(mass > 0), frame, cols.get("monoisotopic_mass", "formula"), mass,
           "mass must be positive", source, unit)
    if "rt" in cols:
        rt = _numeric(frame, cols["rt"], source, unit, allow_missing=True)
        _check(rt < 0, frame, cols["rt"], rt, "retention time must not be negative", source,
               unit)
        if rt_unit == "s":
            rt = rt / 60.0
    else:
        rt = np.full(n, np.nan)
    names = (frame[cols["name"]].astype("string") if "name" in cols
             else ids.astype("string"))
    out = pd.DataFrame({
        "compound_id": ids.to_numpy(dtype=object),
        "name": names.to_numpy(dtype=object),
        "formula": formulas,
        "monoisotopic_mass": mass,
        "rt": rt,
        "charge": charge,
        **{f"n_{el}": counts[el] for el in hill_order(counts)},
    })
    return out.astype({"compound_id": "string", "name": "string", "formula": "string"})
