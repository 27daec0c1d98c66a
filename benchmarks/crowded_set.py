"""The isomer-crowded simulated set: RepoRT 0382 with only the compounds that share a formula.

Run: python benchmarks/crowded_set.py OUT [--check DIR]

The recipe: a copy of ``../shared/data/RepoRT/0382`` whose
``processed_data__0382_rtdata_canonical_success.tsv`` keeps only the rows whose ``formula``
occurs at least twice in that file (the other files of the folder are copied as they are),
then ``../shared/tools/make_eval.py --repo-dir <copy> --dataset 0382 --out OUT --seed 7
--library-frac 0.6`` with its other defaults. Every library compound then has an isomer
somewhere in the source (in the library or among the held-out unknowns), which the two shared
sets cannot show at this density. ``--check DIR`` compares the made set with an earlier one,
byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASET = "0382"
SEED = 7
LIBRARY_FRAC = 0.6
RT_TABLE = f"processed_data__{DATASET}_rtdata_canonical_success.tsv"
#: The files an annotator and the scorer read; the others (params, stats) name paths.
COMPARED = ("peaks.csv", "library.csv", "truth.csv")


def filtered_repo(target: Path, source: Path | None = None) -> Path:
    """Write the filtered copy of the RepoRT folder ``<target>/0382``.

    Parameters
    ----------
    target : Path
        The repository folder to write into (``make_eval.py --repo-dir``).
    source : Path, optional
        The RepoRT folder of the dataset; ``../shared/data/RepoRT/0382`` by default.

    Returns
    -------
    Path
        ``target``.
    """
    source = Path(source) if source is not None else SHARED / "data" / "RepoRT" / DATASET
    folder = Path(target) / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name != RT_TABLE:
            shutil.copyfile(path, folder / path.name)
    text = (source / RT_TABLE).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    table = pd.read_csv(source / RT_TABLE, sep="\t")
    # The kept rows are copied as text, not re-written by pandas, so that their values reach
    # make_eval.py exactly as RepoRT wrote them; that needs one line per row.
    if len(lines) != len(table) + 1:
        raise RuntimeError(f"{source / RT_TABLE}: {len(lines) - 1} lines for {len(table)} rows")
    counts = table["formula"].value_counts()
    keep = table["formula"].map(counts).ge(2).to_numpy()
    (folder / RT_TABLE).write_text(
        lines[0] + "".join(line for line, k in zip(lines[1:], keep, strict=True) if k),
        encoding="utf-8")
    return Path(target)


def make_crowded_set(out, python: str | None = None) -> Path:
    """Make the isomer-crowded set in ``out``.

    Parameters
    ----------
    out : str or Path
        Output folder of ``make_eval.py`` (``peaks.csv``, ``library.csv``, ``truth.csv``, ...).
    python : str, optional
        Interpreter for ``make_eval.py`` (it needs numpy, pandas and molmass); this one by
        default.

    Returns
    -------
    Path
        ``out``.
    """
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="crowded-repo-") as repo:
        filtered_repo(Path(repo))
        subprocess.run([python or sys.executable, str(SHARED / "tools" / "make_eval.py"),
                        "--repo-dir", repo, "--dataset", DATASET, "--out", str(out),
                        "--seed", str(SEED), "--library-frac", str(LIBRARY_FRAC)],
                       check=True, capture_output=True, text=True)
    return out


def compare(made, earlier) -> dict:
    """Whether the files of two sets agree byte for byte.

    Parameters
    ----------
    made, earlier : str or Path
        Set folders.

    Returns
    -------
    dict
        ``{file: "identical" | "differs" | "missing in <folder>"}`` for :data:`COMPARED`.
    """
    out = {}
    for name in COMPARED:
        a, b = Path(made) / name, Path(earlier) / name
        if not b.exists():
            out[name] = f"missing in {earlier}"
        elif not a.exists():
            out[name] = f"missing in {made}"
        else:
            out[name] = "identical" if filecmp.cmp(a, b, shallow=False) else "differs"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder to write the set into")
    ap.add_argument("--check", help="an earlier set to compare with, byte for byte")
    args = ap.parse_args()
    make_crowded_set(args.out)
    print(f"wrote {args.out}")
    if args.check:
        result = compare(args.out, args.check)
        for name, verdict in result.items():
            print(f"{name}: {verdict}")
        if any(v != "identical" for v in result.values()):
            sys.exit(1)


if __name__ == "__main__":
    main()
