"""What NetID's false calls of unknown peaks are: how many name an ion of exactly the truth's
elemental composition (same m/z: only RT and partners can tell them apart), and how many of
those are ions the curation marks as artifacts whose combined formula has two library parents
(which the truth build, ``shared/data/real/netid_hilic_neg/build.py: adduct_parent``, leaves
"unknown": it maps an artifact to its compound only where the parent is unique).

    .venv/bin/python benchmarks/netid_false_calls.py RESULT_FOLDER

``RESULT_FOLDER``: a ``dask-assign run`` of the NetID run (its ``assignments.parquet``).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pandas as pd
from molmass import Formula

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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
