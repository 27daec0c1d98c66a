"""mzTab-M 2.0 export of a run (``--format mztab``): ``results.mzTab`` beside the run's Parquet
tables, which stay the lossless record (every peak, the uncalled ones and all candidates).

What goes where (HUPO-PSI mzTab-M 2.0.0, the release specification's sections and column order):

- **MTD**: the mandatory metadata: version ``2.0.0-M``, ``mzTab-ID`` (the output folder's name),
  ``software[1]`` (dask-assign and its settings), ``quantification_method``, one ``ms_run`` (the
  peak table: its location, SHA-256 and scan polarity), one ``assay`` and the single
  ``study_variable`` "undefined" that software without study design must report, the PSI-MS
  ``cv``, the ``database`` (the library file, prefix ``library``), the quantification units (the
  peak table's own intensity), the identification reliability scale (MS:1002896, the MSI
  levels 0-4) and ``id_confidence_measure[1]``, the posterior probability of a candidate.
- **SML**: one row per library compound called for at least one peak: formula, SMILES and InChI
  where the library has them, theoretical neutral mass, the adducts it was seen as, reliability
  3 ("most likely structure, including isomers": an accurate-mass and retention-time match,
  without fragmentation or a standard in this run), its best call probability, and its
  abundance: the largest intensity among its peaks.
- **SMF**: one row per peak with a call: m/z, RT in seconds, charge, adduct, isotopomer (peaks are
  not de-isotoped: the neutrons the isotopologue adds, ``+0`` for the monoisotopic peak,
  ``+2`` for 37Cl1 or 13C2), intensity, the references to its candidates (ambiguity code 1),
  and ``opt_global_peak_id`` (the peak table's own id), ``opt_global_prob`` (the probability
  of the call's compound, over its candidate ions), ``opt_global_p_null`` (the probability
  that the peak is none of the library's compounds), ``opt_global_p_formula`` (the
  probability of the call's formula: its library isomers' summed) and
  ``opt_global_isotopologue`` (the label: ``13C1``, ``37Cl1``, ``13C1+18O1``; null for the
  monoisotopic peak).
- **SME**: one row per kept candidate of those peaks: database id, formula, theoretical m/z,
  ``id_confidence_measure[1]`` (the candidate's probability), rank (1 = best),
  ``opt_global_ppm_error`` and ``opt_global_rt_error_seconds`` (observed - library).

Numbers are written in plain decimal notation (the specification allows no exponents), each
the shortest that reads back as the same float64; missing values are ``null``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dask_assign.chemistry.isotopes import label_shift

#: The export's file name inside the output folder.
MZTAB_NAME = "results.mzTab"


#: Prefix of the library's compound ids in ``database_identifier``.
DB_PREFIX = "library"


CONFIDENCE = "[,, dask-assign posterior probability, ]"


#: MSI level written for every call (scale MS:1002896): an MS1 match, isomers possible.
RELIABILITY = "3"


POLARITY = {"positive": "[MS, MS:1000130, positive scan, ]",
            "negative": "[MS, MS:1000129, negative scan, ]"}


def isotopomer(label) -> str:
    """The isotopomer cell of an isotopologue label: MS:1002957 with the neutrons it adds
    (``13C1`` and ``15N1`` are both ``+1``; the label itself is in
    ``opt_global_isotopologue``)."""
    return f"[MS, MS:1002957, isotopomer MS peak, +{label_shift(label)}]"


#: Columns of each table, in the order the specification fixes (one assay, one study variable).
SML_COLUMNS = ["SML_ID", "SMF_ID_REFS", "database_identifier", "chemical_formula", "smiles",
               "inchi", "chemical_name", "uri", "theoretical_neutral_mass", "adduct_ions",
               "reliability", "best_id_confidence_measure", "best_id_confidence_value",
               "abundance_assay[1]", "abundance_study_variable[1]",
               "abundance_variation_study_variable[1]"]


SMF_COLUMNS = ["SMF_ID", "SME_ID_REFS", "SME_ID_REF_ambiguity_code", "adduct_ion", "isotopomer",
               "exp_mass_to_charge", "charge", "retention_time_in_seconds",
               "retention_time_in_seconds_start", "retention_time_in_seconds_end",
               "abundance_assay[1]", "opt_global_peak_id", "opt_global_prob",
               "opt_global_p_null", "opt_global_p_formula", "opt_global_isotopologue"]


SME_COLUMNS = ["SME_ID", "evidence_input_id", "database_identifier", "chemical_formula",
               "smiles", "inchi", "chemical_name", "uri", "derivatized_form", "adduct_ion",
               "exp_mass_to_charge", "charge", "theoretical_mass_to_charge", "spectra_ref",
               "identification_method", "ms_level", "id_confidence_measure[1]", "rank",
               "opt_global_ppm_error", "opt_global_rt_error_seconds"]


def decimals(values) -> np.ndarray:
    """Numbers as mzTab text: plain decimal notation, shortest exact; ``null`` where missing.

    >>> decimals([0.5, 2.0, 1e-7, float("nan")]).tolist()
    ['0.5', '2', '0.0000001', 'null']
    """
    out = []
    for v in np.asarray(values, dtype=np.float64).tolist():
        if not math.isfinite(v):
            out.append("null")
            continue
        text = repr(v)  # the shortest exact digits; exponents only far from 1
        if "e" in text:
            text = np.format_float_positional(v, unique=True, trim="-")
        elif text.endswith(".0"):
            text = text[:-2]
        out.append(text)
    return np.array(out, dtype=object)


def _runs(keys: np.ndarray, values, combine) -> tuple[np.ndarray, list]:
    """``combine`` over each run of equal ``keys`` (sorted) of ``values``: the keys, results."""
    keys = np.asarray(keys)
    if keys.size == 0:
        return keys, []
    starts = np.r_[0, np.flatnonzero(keys[1:] != keys[:-1]) + 1]
    ends = np.r_[starts[1:], keys.size]
    values = list(values)
    return keys[starts], [combine(values[a:b]) for a, b in zip(starts, ends, strict=True)]


def _text(values) -> np.ndarray:
    """Text cells: ``null`` where missing; tabs and line breaks (which would split a cell)
    become spaces."""
    series = pd.Series(values, dtype="string")
    return series.str.replace(r"[\t\r\n]", " ", regex=True).fillna("null").to_numpy(
        dtype=object)


def _param(name: str, value: str = "") -> str:
    """A user parameter; a name with a comma is quoted, as the specification asks."""
    name = f'"{name}"' if "," in name else name
    return f"[,, {name}, {value}]"


def _ions(space) -> pd.DataFrame:
    """Each searched ion with its labels, m/z and charge (to look up the candidates')."""
    return pd.DataFrame({
        "compound_id": space.compounds["compound_id"].to_numpy(dtype=object)[space.compound],
        "adduct": np.asarray(space.adduct_names, dtype=object)[space.adduct],
        "isotope": np.asarray([lab or "" for lab in space.isotope_labels], dtype=object)[
            space.isotope],
        "theoretical_mz": space.mz,
    })


def neutral_masses(space) -> pd.Series:
    """Each compound's neutral monoisotopic mass, from its M+0 ions: ``mz = (mult * M + delta)
    / |z|`` solved for M (by compound id)."""
    mono = space.isotope == 0
    k = space.adduct[mono]
    mult, z, delta = (space.adduct_ions[k, i] for i in range(3))
    mass = (space.mz[mono] * z - delta) / mult
    ids = space.compounds["compound_id"].to_numpy(dtype=object)[space.compound[mono]]
    return pd.Series(mass, index=ids).groupby(level=0).first()


def _structures(library_path, compounds: pd.DataFrame) -> pd.DataFrame:
    """SMILES and InChI of the compounds where the library file has such columns."""
    from dask_assign.errors import InputError
    from dask_assign.io.library import LIBRARY_ALIASES
    from dask_assign.io.tables import _resolve_columns, read_tabular

    out = pd.DataFrame(index=compounds["compound_id"].to_numpy(dtype=object),
                       columns=["smiles", "inchi"], dtype="string")
    if library_path is None:
        return out
    try:
        frame, _ = read_tabular(library_path, "library")
    except InputError:
        return out
    lower = {c.lower(): c for c in frame.columns}
    cid = _resolve_columns(frame.columns, LIBRARY_ALIASES, None, ("compound_id",),
                           str(library_path))["compound_id"]
    ids = frame[cid].astype("string").str.strip()
    for name in ("smiles", "inchi"):
        if name in lower:
            values = pd.Series(frame[lower[name]].astype("string").to_numpy(), index=ids)
            out[name] = values[~values.index.duplicated()].reindex(out.index).to_numpy()
    return out


#: The header line's tag of each table.
HEADER_TAG = {"SML": "SMH", "SMF": "SFH", "SME": "SEH"}


def _lines(tag: str, columns: list, table: dict) -> list[str]:
    header = HEADER_TAG[tag] + "\t" + "\t".join(columns)
    cells = [table[c] for c in columns]
    return [header] + [tag + "\t" + "\t".join(row) for row in zip(*cells, strict=True)]


def metadata(space, config, inputs: dict, mztab_id: str) -> list[tuple[str, str]]:
    """The MTD section: (field, value) pairs in the order the specification fixes."""
    import json

    from dask_assign import __version__

    peaks, library = inputs.get("peaks", {}), inputs.get("library", {})
    settings = json.loads(config.to_json())
    scorer = settings.pop("scorer")
    rows = [("mzTab-version", "2.0.0-M"), ("mzTab-ID", mztab_id),
            ("title", f"dask-assign annotation of {Path(peaks.get('path', 'peaks')).name}"),
            ("description", "LC-MS peaks annotated against a compound library by dask-assign: "
             "compound, adduct and 13C isotope of each peak with posterior probabilities; "
             "opt_global_p_null is the probability that a peak is none of the library's "
             "compounds"),
            ("software[1]", _param("dask-assign", __version__))]
    settings["scorer"] = "trained" if scorer != _untrained() else "untrained"
    for k, (key, value) in enumerate(sorted(settings.items()), start=1):
        rows.append((f"software[1]-setting[{k}]", f"{key} = {_setting(value)}"))
    rows += [("quantification_method",
              "[MS, MS:1001834, LC-MS label-free quantitation analysis, ]"),
             ("ms_run[1]-location", _uri(peaks.get("path"))),
             ("ms_run[1]-format", _param("peak table")),
             ("ms_run[1]-id_format", _param("peak id of the peak table")),
             ("ms_run[1]-scan_polarity[1]", POLARITY[config.mode])]
    if peaks.get("sha256"):
        rows += [("ms_run[1]-hash", peaks["sha256"]),
                 ("ms_run[1]-hash_method", _param("SHA-256"))]
    rows += [("assay[1]", Path(peaks.get("path", "peaks")).stem),
             ("assay[1]-ms_run_ref", "ms_run[1]"),
             ("study_variable[1]", "undefined"),
             ("study_variable[1]-assay_refs", "assay[1]"),
             ("study_variable[1]-description", "all peaks of the table, one assay"),
             ("cv[1]-label", "MS"), ("cv[1]-full_name", "PSI-MS controlled vocabulary"),
             ("cv[1]-version", "4.1.192"),
             ("cv[1]-uri", "https://raw.githubusercontent.com/HUPO-PSI/psi-ms-CV/master/"
              "psi-ms.obo"),
             ("database[1]", _param(f"compound library {Path(library.get('path', '')).name}"
                                    .strip())),
             ("database[1]-prefix", DB_PREFIX),
             ("database[1]-version", f"sha256:{library['sha256']}" if library.get("sha256")
              else "Unknown"),
             ("database[1]-uri", _uri(library.get("path"))),
             ("small_molecule-quantification_unit", _param("peak intensity of the input table")),
             ("small_molecule_feature-quantification_unit",
              _param("peak intensity of the input table")),
             ("small_molecule-identification_reliability",
              "[MS, MS:1002896, compound identification confidence level, ]"),
             ("id_confidence_measure[1]", CONFIDENCE)]
    return rows


def _untrained():
    import dataclasses

    from dask_assign.config import ScorerParams

    return dataclasses.asdict(ScorerParams())


def _setting(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "none" if value is None else str(value)


def _uri(path) -> str:
    return Path(path).resolve().as_uri() if path else "null"


@dataclass(frozen=True)
class _Lookups:
    """What the tables look up by adduct or compound id."""

    charge: dict
    compounds: pd.DataFrame
    structures: pd.DataFrame
    mass: pd.Series

    @classmethod
    def of(cls, space, library_path):
        return cls(
            charge={n: int(space.adduct_ions[k, 1]) for k, n in enumerate(space.adduct_names)},
            compounds=space.compounds.set_index(
                space.compounds["compound_id"].to_numpy(dtype=object)),
            structures=_structures(library_path, space.compounds),
            mass=neutral_masses(space))

    def compound_columns(self, ids) -> dict:
        """Database id, formula, SMILES, InChI and name of the compounds ``ids``."""
        ids = np.asarray(ids, dtype=object)
        return {
            "database_identifier": _text(DB_PREFIX + ":" + pd.Series(ids, dtype="string")),
            "chemical_formula": _text(self.compounds["formula"].reindex(ids).to_numpy()),
            "smiles": _text(self.structures["smiles"].reindex(ids).to_numpy()),
            "inchi": _text(self.structures["inchi"].reindex(ids).to_numpy()),
            "chemical_name": _text(self.compounds["name"].reindex(ids).to_numpy()),
            "uri": _null(len(ids)),
        }

    def charges(self, adducts) -> np.ndarray:
        return np.array([str(self.charge[x]) for x in adducts], dtype=object)


def _null(n: int) -> np.ndarray:
    return np.full(n, "null", dtype=object)


def _evidence(called: pd.DataFrame, candidates: pd.DataFrame, space) -> pd.DataFrame:
    """The kept candidates of the called peaks, in SMF order and best first, with their SMF
    row (``smf``), SME id and theoretical m/z."""
    smf_of = pd.Series(np.arange(1, len(called) + 1),
                       index=called["peak_id"].to_numpy(dtype=object))
    ids = candidates["peak_id"].to_numpy(dtype=object)
    ev = candidates[smf_of.index.get_indexer(ids) >= 0].copy()
    ev["smf"] = smf_of.reindex(ev["peak_id"].to_numpy(dtype=object)).to_numpy()
    ev = ev.sort_values(["smf", "rank"], kind="stable").reset_index(drop=True)
    ev["iso_key"] = ev["isotope"].fillna("").astype(object)
    ev = ev.astype({"compound_id": object, "adduct": object})
    ev = ev.merge(_ions(space), how="left", left_on=["compound_id", "adduct", "iso_key"],
                  right_on=["compound_id", "adduct", "isotope"], suffixes=("", "_ion"))
    ev["SME_ID"] = np.arange(1, len(ev) + 1)
    return ev


def _sme_table(ev: pd.DataFrame, called: pd.DataFrame, look: _Lookups) -> dict:
    peak_mz = pd.Series(called["mz"].to_numpy(), index=called["peak_id"].to_numpy(dtype=object))
    n = len(ev)
    return {
        "SME_ID": ev["SME_ID"].astype(str).to_numpy(dtype=object),
        "evidence_input_id": _text(ev["peak_id"]),
        **look.compound_columns(ev["compound_id"]),
        "derivatized_form": _null(n),
        "adduct_ion": _text(ev["adduct"]),
        "exp_mass_to_charge": decimals(peak_mz.reindex(ev["peak_id"].to_numpy(dtype=object))),
        "charge": look.charges(ev["adduct"]),
        "theoretical_mass_to_charge": decimals(ev["theoretical_mz"]),
        "spectra_ref": np.full(n, "ms_run[1]", dtype=object),
        "identification_method": np.full(n, _software(), dtype=object),
        "ms_level": np.full(n, "[MS, MS:1000511, ms level, 1]", dtype=object),
        "id_confidence_measure[1]": decimals(ev["prob"]),
        "rank": (ev["rank"] + 1).astype(str).to_numpy(dtype=object),
        "opt_global_ppm_error": decimals(ev["ppm_error"]),
        "opt_global_rt_error_seconds": decimals(ev["rt_error"] * 60.0),
    }


def _smf_table(called: pd.DataFrame, ev: pd.DataFrame, intensity: np.ndarray,
               look: _Lookups) -> dict:
    smf_ids = np.arange(1, len(called) + 1)
    keys, refs = _runs(ev["smf"].to_numpy(), ev["SME_ID"].astype(str), list)
    joined = pd.Series(["|".join(r) for r in refs], index=keys, dtype=object)
    several = pd.Series([len(r) > 1 for r in refs], index=keys, dtype=bool)
    iso = called["isotope"].fillna("").astype(object).to_numpy()
    return {
        "SMF_ID": smf_ids.astype(str).astype(object),
        "SME_ID_REFS": joined.reindex(smf_ids).fillna("null").to_numpy(dtype=object),
        # 1: the same peak supports different identifications.
        "SME_ID_REF_ambiguity_code": np.where(several.reindex(smf_ids, fill_value=False),
                                              "1", "null").astype(object),
        "adduct_ion": _text(called["adduct"]),
        "isotopomer": np.array([isotopomer(i) for i in iso], dtype=object),
        "exp_mass_to_charge": decimals(called["mz"]),
        "charge": look.charges(called["adduct"]),
        "retention_time_in_seconds": decimals(called["rt"] * 60.0),
        "retention_time_in_seconds_start": _null(len(called)),
        "retention_time_in_seconds_end": _null(len(called)),
        "abundance_assay[1]": decimals(intensity),
        "opt_global_peak_id": _text(called["peak_id"]),
        "opt_global_prob": decimals(called["prob"]),
        "opt_global_p_null": decimals(called["p_null"]),
        "opt_global_p_formula": decimals(called["p_formula"]),
        "opt_global_isotopologue": _text(called["isotope"]),
    }


def _sml_table(called: pd.DataFrame, intensity: np.ndarray, look: _Lookups, space) -> dict:
    """One row per called compound, in library order."""
    order = {cid: k for k, cid in enumerate(space.compounds["compound_id"])}
    per = pd.DataFrame({"compound_id": called["compound_id"].to_numpy(dtype=object),
                        "smf": np.arange(1, len(called) + 1),
                        "adduct": called["adduct"].to_numpy(dtype=object),
                        "prob": called["prob"].to_numpy(), "intensity": intensity})
    per["order"] = per["compound_id"].map(order)
    per = per.sort_values(["order", "smf"], kind="stable")
    groups = per.groupby("order", sort=True)
    ids = groups["compound_id"].first().to_numpy(dtype=object)
    abundance = decimals(groups["intensity"].max())  # null when no intensity is known
    keys = per["order"].to_numpy()
    _, smf_refs = _runs(keys, per["smf"].astype(str), "|".join)
    _, adducts = _runs(keys, per["adduct"], lambda a: "|".join(sorted(set(a))))
    n = len(ids)
    return {
        "SML_ID": np.arange(1, n + 1).astype(str).astype(object),
        "SMF_ID_REFS": np.array(smf_refs, dtype=object),
        **look.compound_columns(ids),
        "theoretical_neutral_mass": decimals(look.mass.reindex(ids)),
        "adduct_ions": np.array(adducts, dtype=object),
        "reliability": np.full(n, RELIABILITY, dtype=object),
        "best_id_confidence_measure": np.full(n, CONFIDENCE, dtype=object),
        "best_id_confidence_value": decimals(groups["prob"].max()),
        "abundance_assay[1]": abundance,
        "abundance_study_variable[1]": abundance,
        "abundance_variation_study_variable[1]": _null(n),
    }


def write_mztab(folder, intensity: pd.DataFrame | None, space, config, inputs: dict,
                mztab_id: str) -> Path:
    """Write ``folder/results.mzTab`` from the run's tables in ``folder``, atomically.

    Parameters
    ----------
    folder : Path
        The run's (staging) folder, holding ``assignments.parquet`` and
        ``candidates.parquet``.
    intensity : pandas.DataFrame, optional
        ``peak_id``, ``intensity`` of the peaks as read.
    space : SearchSpace
        The run's ions (theoretical m/z, charges, neutral masses).
    config : AssignConfig
    inputs : dict
        ``{"peaks": {"path", "sha256"}, "library": {...}}`` as in the manifest.
    mztab_id : str

    Returns
    -------
    Path
    """
    from dask_assign import __version__
    from dask_assign.files import _atomic

    folder = Path(folder)
    a = pd.read_parquet(folder / "assignments.parquet")
    called = a[a["compound_id"].notna()].reset_index(drop=True)
    ev = _evidence(called, pd.read_parquet(folder / "candidates.parquet"), space)
    by_peak = (pd.Series(intensity["intensity"].to_numpy(dtype=np.float64),
                         index=intensity["peak_id"].to_numpy(dtype=object))
               if intensity is not None else pd.Series(dtype=np.float64))
    inten = by_peak.reindex(called["peak_id"].to_numpy(dtype=object)).to_numpy()
    look = _Lookups.of(space, inputs.get("library", {}).get("path"))
    tables = {"SML": (SML_COLUMNS, _sml_table(called, inten, look, space)),
              "SMF": (SMF_COLUMNS, _smf_table(called, ev, inten, look)),
              "SME": (SME_COLUMNS, _sme_table(ev, called, look))}
    lines = [f"COM\tWritten by dask-assign {__version__}; assignments.parquet and "
             "candidates.parquet beside this file hold every peak and every candidate."]
    lines += [f"MTD\t{key}\t{_clean(value)}"
              for key, value in metadata(space, config, inputs, mztab_id)]
    for tag, (columns, table) in tables.items():
        lines.append("")
        lines += _lines(tag, columns, table)
    path = folder / MZTAB_NAME
    _atomic(lambda p: p.write_text("\n".join(lines) + "\n", encoding="utf-8"), path)
    return path


def _software() -> str:
    from dask_assign import __version__

    return _param("dask-assign", __version__)


def _clean(value: str) -> str:
    return re.sub(r"[\t\r\n]", " ", str(value))
