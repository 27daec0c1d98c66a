"""Ion table: its size and build time, on the demo library and a 100k-compound library.

Run: OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/ion_table.py [--out FILE.json]

The 100k library is made of real formulas: each compound takes a formula of the RepoRT sets in
``../shared/data/RepoRT`` (2.8k distinct, with their N, O, S, P, F, Cl, Br, I) and adds 0 to
30 CH2, so the heteroatoms keep their real frequencies; without ``../shared``, random CHNOS
formulas. Each library is built for both polarities' default adducts with the default
settings (``prepare_library``: ions, isotopologues, merge, sort, mass-bin index), best of
three builds.

The same script runs against an older checkout (``PYTHONPATH=OLD_CHECKOUT python
benchmarks/ion_table.py``) for the before/after table of the README: it only uses
``prepare_library`` and ``AssignConfig``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dask_assign import DEMO_DATA, __version__
from dask_assign.config import AssignConfig
from dask_assign.filtering.space import prepare_library

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "RepoRT"


def real_formulas() -> list[str]:
    """The distinct neutral formulas of the RepoRT sets on this disk (empty without them)."""
    found = set()
    for path in SHARED.glob("*/*_rtdata_canonical_success.tsv"):
        found.update(pd.read_csv(path, sep="\t", usecols=["formula"])["formula"].dropna())
    return sorted(f for f in found if re.fullmatch(r"([A-Z][a-z]?\d*)+", f))


def add_ch2(formula: str, k: int) -> str:
    """``formula`` plus ``k`` CH2 (element counts kept in their order)."""
    counts = {el: int(n or 1) for el, n in re.findall(r"([A-Z][a-z]?)(\d*)", formula)}
    counts["C"] = counts.get("C", 0) + k
    counts["H"] = counts.get("H", 0) + 2 * k
    return "".join(f"{el}{n if n != 1 else ''}" for el, n in counts.items() if n)


def large_library(path: Path, n: int = 100_000, seed: int = 0) -> Path:
    """A library of ``n`` compounds with real heteroatom patterns, written as CSV."""
    rng = np.random.default_rng(seed)
    base = real_formulas()
    if base:
        pick = rng.integers(0, len(base), n)
        formula = [add_ch2(base[i], int(k)) for i, k in zip(pick, rng.integers(0, 31, n),
                                                             strict=True)]
    else:
        c, nn, o, s = (rng.integers(lo, hi, n) for lo, hi in ((3, 40), (0, 4), (0, 10), (0, 2)))
        h = 2 * c + 2 + nn
        formula = [f"C{a}H{b}N{x}O{y}S{z}" for a, b, x, y, z in zip(c, h, nn, o, s,
                                                                      strict=True)]
    pd.DataFrame({"compound_id": [f"L{i:06d}" for i in range(n)], "name": "",
                  "formula": formula, "rt": rng.uniform(0.5, 15.0, n).round(3)}).to_csv(
        path, index=False)
    return path


def space_bytes(space) -> int:
    """Memory of the search space's arrays (what each worker holds)."""
    total = 0
    for value in vars(space).values():
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif hasattr(value, "__dict__"):
            total += sum(v.nbytes for v in vars(value).values() if isinstance(v, np.ndarray))
    return total


def measure(library: Path, mode: str, repeat: int = 3) -> dict:
    config = AssignConfig(mode=mode)
    seconds = []
    for _ in range(repeat):
        t = time.perf_counter()
        space = prepare_library(library, config)
        seconds.append(time.perf_counter() - t)
    n_compounds = len(space.compounds)
    return {"compounds": n_compounds, "mode": mode, "adducts": len(space.adduct_names),
            "ions": int(space.mz.size), "ions_per_compound": round(space.mz.size / n_compounds, 2),
            "labels": len(getattr(space, "isotope_labels", ())) or None,
            "space_mib": round(space_bytes(space) / 2**20, 1), "build_s": round(min(seconds), 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big = large_library(Path(tmp) / "library_100k.csv")
        for name, lib in (("demo", DEMO_DATA / "library.csv"), ("100k", big)):
            for mode in ("positive", "negative"):
                rows.append({"library": name, **measure(lib, mode, 3 if name == "demo" else 2)})
    print(f"dask-assign {__version__}, {platform.processor() or platform.machine()}")
    cols = ["library", "mode", "compounds", "adducts", "ions", "ions_per_compound", "labels",
            "space_mib", "build_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
