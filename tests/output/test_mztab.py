"""The mzTab-M 2.0 export (``--format mztab``), read back by an independent reader (pyteomics)
and checked field by field against the run's Parquet tables, the inputs and hand-known ion
masses."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from dask_assign.chemistry.isotopes import label_shift
from tests.conftest import DEMO, SHARED
from tests.test_cli import cli

SET = SHARED / "repoRT_0392_rp_pos"
#: Mass added to M by each adduct (proton 1.007276467, Na+ 22.989220702, NH4+ 18.033825567,
#: K+ 38.963157906 u; water 18.010564684 u), and the 13C-12C spacing.
#: Hand-known adduct masses (NIST atomic masses, electron 0.000548580): multiplier, shift.
ADDUCT_SHIFT = {"[M+H]+": (1, 1.007276467), "[M+Na]+": (1, 22.989220702),
                "[M+NH4]+": (1, 18.033825567), "[M+K]+": (1, 38.963157906),
                "[M-H2O+H]+": (1, 1.007276467 - 18.010564684),
                "[M+H-NH3]+": (1, 1.007276467 - 17.026549101),
                "[2M+H]+": (2, 1.007276467), "[2M+Na]+": (2, 22.989220702),
                "[2M+NH4]+": (2, 18.033825567), "[3M+H]+": (3, 1.007276467)}
#: Mass of each heavy isotope over its element's lightest (NIST).
HEAVY = {"13C": 1.003354835, "2H": 1.006276746, "15N": 0.997034893, "17O": 1.004217137,
         "18O": 2.004244993, "33S": 0.999387735, "34S": 1.995795836, "36S": 3.995009,
         "37Cl": 1.997049908, "81Br": 1.997953, "41K": 1.998119274, "30Si": 1.996843}


def heavy_shift(label: str) -> float:
    """Mass over the monoisotopic ion of an isotopologue label such as ``13C2+18O1``."""
    if label in ("", "M"):
        return 0.0
    total = 0.0
    for part in label.split("+"):
        iso, n = re.fullmatch(r"(\d+[A-Z][a-z]?)(\d+)", part).groups()
        total += HEAVY[iso] * int(n)
    return total
#: Metadata the specification marks mandatory (for one ms_run, assay, study variable, cv,
#: database and confidence measure), in the order it fixes.
MANDATORY = ["mzTab-version", "mzTab-ID", "software[1]", "quantification_method",
             "ms_run[1]-location", "ms_run[1]-scan_polarity[1]", "assay[1]",
             "assay[1]-ms_run_ref", "study_variable[1]", "study_variable[1]-assay_refs",
             "study_variable[1]-description", "cv[1]-label", "cv[1]-full_name",
             "cv[1]-version", "cv[1]-uri", "database[1]", "database[1]-prefix",
             "database[1]-version", "database[1]-uri", "small_molecule-quantification_unit",
             "small_molecule_feature-quantification_unit", "id_confidence_measure[1]"]
#: The specification's columns of each table, in order (one assay, one study variable).
SPEC_COLUMNS = {
    "SMH": ["SML_ID", "SMF_ID_REFS", "database_identifier", "chemical_formula", "smiles",
            "inchi", "chemical_name", "uri", "theoretical_neutral_mass", "adduct_ions",
            "reliability", "best_id_confidence_measure", "best_id_confidence_value",
            "abundance_assay[1]", "abundance_study_variable[1]",
            "abundance_variation_study_variable[1]"],
    "SFH": ["SMF_ID", "SME_ID_REFS", "SME_ID_REF_ambiguity_code", "adduct_ion", "isotopomer",
            "exp_mass_to_charge", "charge", "retention_time_in_seconds",
            "retention_time_in_seconds_start", "retention_time_in_seconds_end",
            "abundance_assay[1]"],
    "SEH": ["SME_ID", "evidence_input_id", "database_identifier", "chemical_formula", "smiles",
            "inchi", "chemical_name", "uri", "derivatized_form", "adduct_ion",
            "exp_mass_to_charge", "charge", "theoretical_mass_to_charge", "spectra_ref",
            "identification_method", "ms_level", "id_confidence_measure[1]", "rank"],
}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    if not (SET / "peaks.csv").exists():
        pytest.skip("../shared/data/repoRT_0392_rp_pos is absent")
    out = tmp_path_factory.mktemp("mztab") / "run"
    res = cli("run", SET / "peaks.csv", SET / "library.csv", "--out", out, "--format", "mztab",
              "--workers", "2")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def tab(export):
    from pyteomics import mztab

    with open(export / "results.mzTab", encoding="utf-8") as fh:
        return mztab.MzTab(fh)


def test_pyteomics_reads_it_as_mztab_m_2(tab, export):
    assert tab.variant == "M" and tab.version == "2.0.0-M"
    for key in MANDATORY:
        assert key in tab.metadata, key
    assert [k for k in tab.metadata if k in MANDATORY] == MANDATORY  # the specified order
    assert tab.metadata["mzTab-ID"] == "run"
    assert tab.metadata["ms_run[1]-scan_polarity[1]"] == "positive scan"
    assert tab.metadata["study_variable[1]"] == "undefined"
    assert tab.metadata["ms_run[1]-location"] == (SET / "peaks.csv").resolve().as_uri()
    # The Parquet tables stay beside it, the lossless record, and the run is committed.
    assert {"assignments.parquet", "candidates.parquet", "results.mzTab", "manifest.json",
            "_SUCCESS"} <= {p.name for p in export.iterdir()}
    assert not list(export.parent.glob("run.*"))  # no staging or input folders left


def test_sections_follow_the_specification(export):
    lines = (export / "results.mzTab").read_text(encoding="utf-8").splitlines()
    tags = [line.split("\t", 1)[0] for line in lines if line]
    order = [t for i, t in enumerate(tags) if i == 0 or t != tags[i - 1]]
    assert order == ["COM", "MTD", "SMH", "SML", "SFH", "SMF", "SEH", "SME"]
    for line in lines:
        cells = line.split("\t")
        if cells[0] in SPEC_COLUMNS:
            columns = cells[1:]
            spec = SPEC_COLUMNS[cells[0]]
            assert columns[:len(spec)] == spec
            assert all(c.startswith("opt_global_") for c in columns[len(spec):])
        if cells[0] in ("SML", "SMF", "SME"):
            assert all(cells), line  # no empty cells: "null" where missing
            # Numbers in plain decimal notation: no exponent anywhere.
            assert not any(re.fullmatch(r"-?\d+(\.\d+)?[eE][-+]?\d+", c) for c in cells), line


def test_features_are_the_called_peaks_field_by_field(tab, export):
    a = pd.read_parquet(export / "assignments.parquet")
    called = a[a["compound_id"].notna()].set_index("peak_id")
    smf = tab.small_molecule_feature_table.set_index("opt_global_peak_id")
    smf.index = smf.index.astype(str)
    assert sorted(smf.index) == sorted(called.index) and len(called) > 500
    c = called.loc[smf.index]
    np.testing.assert_array_equal(smf["exp_mass_to_charge"], c["mz"])
    np.testing.assert_array_equal(smf["retention_time_in_seconds"], c["rt"] * 60.0)
    assert (smf["adduct_ion"] == c["adduct"]).all()
    np.testing.assert_array_equal(smf["opt_global_prob"], c["prob"])
    np.testing.assert_array_equal(smf["opt_global_p_null"], c["p_null"])
    assert (smf["charge"] == 1).all()  # every adduct called here is singly charged
    # pyteomics reads a parameter as (name, value).
    iso = [f"+{label_shift(x)}" for x in c["isotope"]]
    assert smf["isotopomer"].tolist() == [("isotopomer MS peak", v) for v in iso]
    np.testing.assert_array_equal(smf["opt_global_p_formula"], c["p_formula"])
    peaks = pd.read_csv(SET / "peaks.csv", dtype={"peak_id": str}).set_index("peak_id")
    np.testing.assert_array_equal(smf["abundance_assay[1]"], peaks.loc[smf.index, "intensity"])
    for col in ("opt_global_prob", "opt_global_p_null"):
        assert smf[col].between(0, 1).all()


def test_evidence_is_the_candidates_field_by_field(tab, export):
    from dask_assign.io.library import read_library

    a = pd.read_parquet(export / "assignments.parquet")
    cands = pd.read_parquet(export / "candidates.parquet")
    cands = cands[cands["peak_id"].isin(a.loc[a["compound_id"].notna(), "peak_id"])]
    sme = tab.small_molecule_evidence_table
    sme["peak_id"] = sme["evidence_input_id"].astype(str)
    assert len(sme) == len(cands) and sme["SME_ID"].tolist() == list(range(1, len(sme) + 1))
    key = ["peak_id", "rank"]
    sme = sme.assign(rank0=sme["rank"] - 1).merge(
        cands, left_on=["peak_id", "rank0"], right_on=key, validate="one_to_one",
        suffixes=("", "_pq"))
    assert len(sme) == len(cands)
    assert (sme["database_identifier"] == "library:" + sme["compound_id"]).all()
    assert (sme["adduct_ion"] == sme["adduct"]).all()
    np.testing.assert_array_equal(sme["id_confidence_measure[1]"], sme["prob"])
    assert sme["id_confidence_measure[1]"].between(0, 1).all()
    np.testing.assert_array_equal(sme["opt_global_ppm_error"], sme["ppm_error"])
    assert (sme["spectra_ref"] == "ms_run[1]").all()
    lib = read_library(SET / "library.csv").set_index("compound_id")
    assert (sme["chemical_formula"] == lib.loc[sme["compound_id"], "formula"].to_numpy()).all()
    # Theoretical m/z from the library mass and hand-known adduct masses.
    labels = sme["isotope"].fillna("").map(lambda x: all(
        re.fullmatch(r"\d+[A-Z][a-z]?\d+", p) and re.match(r"\d+[A-Z][a-z]?", p)[0] in HEAVY
        for p in x.split("+")) if x not in ("", "M") else True)
    known = sme[sme["adduct"].isin(ADDUCT_SHIFT) & labels]
    assert len(known) > 0.9 * len(sme)
    mult = known["adduct"].map(lambda a: ADDUCT_SHIFT[a][0]).to_numpy()
    shift = known["adduct"].map(lambda a: ADDUCT_SHIFT[a][1]).to_numpy()
    heavy = known["isotope"].fillna("").map(heavy_shift).to_numpy()
    mass = lib.loc[known["compound_id"], "monoisotopic_mass"].to_numpy()
    want = mult * mass + shift + heavy
    got = known["theoretical_mass_to_charge"].to_numpy()
    # Isotopologues closer than the run's merge tolerance (the larger of the configured one
    # and the fitted mass spread) are one ion at their abundance-weighted m/z, named by its
    # most abundant member (13C1 with 17O1 here): off by a share of that tolerance, never
    # more. All others are exact.
    manifest = json.loads((export / "manifest.json").read_text())
    tol = max(manifest["config"]["isotope_merge_ppm"],
              manifest["calibration"]["mass_sigma_ppm"])
    off = np.abs(got - want)
    assert (off <= tol * 1e-6 * want).all()
    assert np.median(off) < 1e-6
    assert (off <= 1e-6 * want).mean() > 0.99
    # Each feature references exactly its own peak's candidates, best first.
    smf = tab.small_molecule_feature_table
    by_sme = sme.set_index("SME_ID")
    for _, row in smf.iterrows():
        refs = [int(r) for r in str(row["SME_ID_REFS"]).split("|")]
        assert set(by_sme.loc[refs, "peak_id"]) == {str(row["opt_global_peak_id"])}
        assert by_sme.loc[refs, "rank"].tolist() == list(range(1, len(refs) + 1))
        assert (row["SME_ID_REF_ambiguity_code"] == 1) == (len(refs) > 1)


def test_small_molecules_are_the_called_compounds(tab, export):
    from dask_assign.io.library import read_library

    a = pd.read_parquet(export / "assignments.parquet")
    called = a[a["compound_id"].notna()]
    sml = tab.small_molecule_table
    smf = tab.small_molecule_feature_table.set_index("SMF_ID")
    lib = read_library(SET / "library.csv").set_index("compound_id")
    raw = pd.read_csv(SET / "library.csv", dtype={"compound_id": str}).set_index("compound_id")
    ids = sml["database_identifier"].str.removeprefix("library:")
    assert sorted(ids) == sorted(called["compound_id"].unique())
    np.testing.assert_allclose(sml["theoretical_neutral_mass"],
                               lib.loc[ids, "monoisotopic_mass"], rtol=1e-12)
    assert (sml["chemical_formula"].to_numpy() == lib.loc[ids, "formula"].to_numpy()).all()
    assert (sml["smiles"].to_numpy() == raw.loc[ids, "smiles"].to_numpy()).all()
    assert (sml["reliability"] == 3).all()
    for (_, row), cid in zip(sml.iterrows(), ids, strict=True):
        refs = [int(r) for r in str(row["SMF_ID_REFS"]).split("|")]
        mine = called[called["compound_id"] == cid]
        peaks = smf.loc[refs, "opt_global_peak_id"].astype(str)
        assert sorted(peaks) == sorted(mine["peak_id"])
        adducts = row["adduct_ions"]  # pyteomics reads "a|b" as a list
        assert set(adducts if isinstance(adducts, list) else [adducts]) == set(mine["adduct"])
        assert row["best_id_confidence_value"] == mine["prob"].max()
        assert row["abundance_assay[1]"] == smf.loc[refs, "abundance_assay[1]"].max()
    assert sml["best_id_confidence_value"].between(0, 1).all()


def test_mztab_in_a_job_spec(tmp_path):
    from dask_assign.graph.jobs import load_job

    (tmp_path / "job.yaml").write_text("peaks: package:demo/peaks.csv\n"
                                       "library: package:demo/library.csv\nout: r\n"
                                       "format: mztab\n")
    job = load_job(tmp_path / "job.yaml")
    assert job.format == "mztab" and job.peaks == (DEMO / "peaks.csv").resolve()
