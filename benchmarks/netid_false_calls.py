"""What NetID's false calls of unknown peaks are: how many name an ion of exactly the truth's
elemental composition (same m/z: only RT and partners can tell them apart), and how many of
those are ions the curation marks as artifacts whose combined formula has two library parents
(which the truth build, ``shared/data/real/netid_hilic_neg/build.py: adduct_parent``, leaves
"unknown": it maps an artifact to its compound only where the parent is unique). And two kinds
of call the truth scores false whose chemistry the peak table confirms: doubly charged ions
(``[M-2H]2-``) with their 13C1 peak at half the 13C spacing, co-eluting; and ``[M+K-2H]-``
ions co-eluting with a peak called as the same compound's ``[M-H]-``, where the curation gave
the peak a formula without potassium (C2K and O2P differ by 0.0001 Da: a nucleotide's
potassium adduct and a phosphate-richer formula lie 0.3 ppm apart).

    .venv/bin/python benchmarks/netid_false_calls.py RESULT_FOLDER

``RESULT_FOLDER``: a ``dask-assign run`` of the NetID run (its ``assignments.parquet``).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pandas as pd
from molmass import Formula

from dask_assign.chemistry.formulas import C13_SPACING

#: Within this (minutes) a partner co-elutes, and within this (ppm) it lies where predicted.
COELUTE, PPM = 0.05, 3.0
C13_HALF = C13_SPACING / 2

NETID = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "netid_hilic_neg"
#: The adduct groups of the truth build (mult, added atoms), by dask-assign's adduct names.
GROUPS = {"[M-H]-": (1, {}), "[M+Hac-H]-": (1, {"C": 2, "H": 4, "O": 2}),
          "[M+FA-H]-": (1, {"C": 1, "H": 2, "O": 2}), "[M+Cl]-": (1, {"H": 1, "Cl": 1}),
          "[M-H2O-H]-": (1, {"H": -2, "O": -1}), "[2M-H]-": (2, {}), "[3M-H]-": (3, {})}


def composition(formula: str) -> dict:
    return {k: v.count for k, v in Formula(formula).composition().items()}


def combined(formula: str, adduct: str) -> dict | None:
    """The neutral formula X an ion reads as (its [X-H]- composition), or None."""
    if adduct not in GROUPS:
        return None
    mult, group = GROUPS[adduct]
    out = Counter({k: mult * v for k, v in composition(formula).items()})
    out.update(group)
    return {k: v for k, v in out.items() if v}


def parents(comp: dict, library: set) -> list:
    """Library formulas M with ``comp = mult * M + group`` for some adduct group."""
    hits = []
    for name, (mult, group) in GROUPS.items():
        if name == "[M-H]-":
            continue
        m = {el: comp.get(el, 0) - group.get(el, 0) for el in set(comp) | set(group)}
        if any(v % mult or v < 0 for v in m.values()) or not any(m.values()):
            continue
        key = Formula("".join(f"{e}{v // mult}" for e, v in m.items() if v)).formula
        if key in library:
            hits.append((key, name))
    return hits


def main(folder: Path):
    truth = pd.read_csv(NETID / "truth.csv")
    lib = pd.read_csv(NETID / "library.csv")
    library = {Formula(f).formula for f in lib["formula"]}
    calls = pd.read_parquet(folder / "assignments.parquet")
    m = truth[truth["formula"].notna()].merge(calls, on="peak_id", suffixes=("_t", ""))
    false = m[~m["in_library"].astype(bool) & m["compound_id"].notna()]
    same, artifacts = 0, Counter()
    for _, r in false.iterrows():
        if r["kind"].split("/")[0] != "M-H":
            continue
        if combined(r["formula"], r["adduct"]) == composition(r["formula_t"]):
            same += 1
            if r["class"] == "Artifact":
                artifacts[len(parents(composition(r["formula_t"]), library))] += 1
    print(f"unknown peaks with a formula called as a compound: {len(false)}")
    print(f"  of them an ion of exactly the truth's composition: {same}")
    print(f"  of those, curated artifacts, by number of library parents: {dict(artifacts)}")
    peaks = pd.read_csv(NETID / "peaks.csv")
    every = truth.merge(calls, on="peak_id", suffixes=("_t", ""))
    wrong = every[~every["in_library"].astype(bool) & every["compound_id"].notna()]
    print(f"unknown peaks called as a compound: {len(wrong)}")
    double = wrong[wrong["adduct"] == "[M-2H]2-"]
    confirmed = sum(_has_peak(peaks, r["mz"] + C13_HALF, r["rt"]) or
                    _has_peak(peaks, r["mz"] - C13_HALF, r["rt"]) for _, r in double.iterrows())
    print(f"  [M-2H]2- calls: {len(double)}; with a co-eluting peak half a 13C spacing away: "
          f"{confirmed}")
    potassium = wrong[wrong["adduct"] == "[M+K-2H]-"]
    main = calls[calls["adduct"] == "[M-H]-"]
    beside = isobaric = 0
    for _, r in potassium.iterrows():
        same = main[(main["compound_id"] == r["compound_id"])
                    & ((main["rt"] - r["rt"]).abs() <= COELUTE)]
        if len(same):
            beside += 1
            if isinstance(r["formula_t"], str) and "K" not in composition(r["formula_t"]):
                # The call's neutral plus K - H against the curated neutral: same [X-H]- mass.
                ours = Formula(r["formula"]).isotope.mass + Formula("K").isotope.mass \
                    - Formula("H").isotope.mass
                theirs = Formula(r["formula_t"]).isotope.mass
                isobaric += abs(ours - theirs) / theirs * 1e6 < 1.0
    print(f"  [M+K-2H]- calls: {len(potassium)}; beside the same compound's [M-H]- call: "
          f"{beside}, of which curated as a formula without K within 1 ppm: {isobaric}")


def _has_peak(peaks: pd.DataFrame, mz: float, rt: float) -> bool:
    """Whether a peak lies within ``PPM`` of ``mz`` and ``COELUTE`` of ``rt``."""
    near_mz = (peaks["mz"] - mz).abs() <= mz * PPM * 1e-6
    near_rt = (peaks["rt"] - rt).abs() <= COELUTE
    return bool((near_mz & near_rt).any())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
