"""Side by side on every labelled set: dask-assign, ``--model none``, an m/z rule and IPA.

Run: make bench-accuracy   (or PYTHONPATH=. .venv/bin/python benchmarks/accuracy.py [--no-ipa])

Sets: the two shared simulated sets (``../shared/data/repoRT_*``), the isomer-crowded
simulated set (made here from RepoRT 0382 by ``crowded_set.py``), and the three real runs
(``../shared/data/real``). Methods, every one on the same inputs in this one run:

- dask-assign with default settings (real runs: ``AssignConfig(mode=..., rt_unit="min")``, as
  ``tests/test_real.py`` runs them), on a 2-worker LocalCluster started and warmed up once;
- the same with ``--model none`` (``AssignConfig(scorer=scorer_params("none"))``). Both name
  the generative scorer today (no learned model ships), so identical numbers are expected:
  the column is there to show it, and the table says whether the calls were identical;
- the m/z rule each set's README gives as its reference: on the simulated sets the nearest
  ion of 5 adducts x 13C isotopes within 10 ppm and RT +/- 0.5 min (``shared/data/README``);
  on NetID the nearest [M-H]- / 13C ion within 3 ppm, no RT; on the E. coli runs 5 common
  adducts x 13C isotopes within 5 ppm and RT +/- 0.5 min, and on the negative run also at
  15 ppm (``shared/data/real/README``). The README does not name the 5 negative adducts:
  ``FIVE_NEG`` is the set that gives the README's figures;
- IPA (ipaPy2 1.4.0 in its own environment, ``make ipa-env``) through
  ``../shared/tools/ipa/run_ipa.py`` as its README says: MS1 stage, RT grouping, isotope
  peaks given the call of their group. Simulated sets: 8 ppm and the five adducts they were
  made with. Real runs: the mode of the run, dask-assign's default adducts of that mode (those
  IPA's table has), and the ppm of the set's rule (IPA does not recalibrate, so it is told how
  far off the instrument is). Where IPA fails, the table says why.

Every result is scored by ``../shared/tools/score.py`` from a CSV of ``peak_id, compound_id,
prob`` alone: at formula level (NetID) the scorer reads a result's own ``formula`` column in
place of the truth's where one is present. Seconds are the annotation alone (dask-assign:
calibration, scoring and writing on the running cluster; IPA: its runner, ion table build
included; rules: computing the calls). Prints a markdown table and writes
benchmarks/accuracy.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REAL = SHARED / "data" / "real"
IPA_TOOLS = SHARED / "tools" / "ipa"
IPA_PYTHON = ROOT / ".venv-ipa" / "bin" / "python"
IPA_LABEL = "IPA (ipaPy2 1.4.0, MS1)"
C13_SHIFT = 1.0033548378
#: Ions closer than this (ppm) are the same ion to the rule: the same elemental composition
#: (an isomer, or [M+H]+ of one compound and [M-H2O+H]+ of another) differs only by the
#: library's rounding of masses, and a tie goes to the nearest library RT, not to whichever
#: rounding error is smaller.
TIE_PPM = 0.01
FIVE = ("[M+H]+", "[M+Na]+", "[M+NH4]+", "[M+K]+", "[M-H2O+H]+")
FIVE_NEG = ("[M-H]-", "[M+Cl]-", "[M+FA-H]-", "[M-H2O-H]-", "[M+Na-2H]-")
#: Kept for benchmarks/vs_ipa.py, which times IPA on the simulated sets with these settings.
SETS = ["repoRT_0392_rp_pos", "repoRT_0228_hilic_pos"]


@dataclass(frozen=True)
class Rule:
    """A nearest-ion rule: ``adducts`` x {M+0, 13C1, 13C2}, the nearest within ``ppm``.

    Attributes
    ----------
    label : str
    adducts : tuple of str
        dask-assign adduct names.
    ppm : float
        Largest m/z error, relative to the ion's m/z.
    rt_window : float or None
        Largest |peak RT - library RT| (min); ``None``: RT is not used.
    """

    label: str
    adducts: tuple
    ppm: float
    rt_window: float | None = None


@dataclass(frozen=True)
class IPASettings:
    """How IPA is run on one set.

    Attributes
    ----------
    label : str
    ppm : float
        ``run_ipa.py --ppm``: the instrument's accuracy (mass prior N(0, ppm/2), candidates
        within 2 ppm).
    adducts : tuple of str or None
        dask-assign adduct names, translated to IPA's (:func:`ipa_adducts`); ``None``: the
        mode's defaults of dask-assign.
    """

    label: str = IPA_LABEL
    ppm: float = 8.0
    adducts: tuple | None = FIVE


@dataclass(frozen=True)
class BenchSet:
    """One labelled set and what runs on it.

    Attributes
    ----------
    name : str
    kind : {"simulated", "real"}
    mode : {"positive", "negative"}
    rules : tuple of Rule
    ipa : tuple of IPASettings
    config : dict
        ``AssignConfig`` fields besides the scorer (empty: the defaults).
    """

    name: str
    kind: str
    mode: str
    rules: tuple
    ipa: tuple
    config: dict = field(default_factory=dict)

    def folder(self, work: Path) -> Path:
        """Where the set's ``peaks.csv``, ``library.csv`` and ``truth.csv`` are."""
        if self.name == CROWDED:
            return work / CROWDED
        return (REAL if self.kind == "real" else SHARED / "data") / self.name


CROWDED = "crowded_0382"
SIM_RULE = Rule("nearest ion (5 adducts x 13C, 10 ppm, RT +/-0.5 min)", FIVE, 10.0, 0.5)
ALL_SETS = (
    BenchSet("repoRT_0392_rp_pos", "simulated", "positive", (SIM_RULE,), (IPASettings(),)),
    BenchSet("repoRT_0228_hilic_pos", "simulated", "positive", (SIM_RULE,), (IPASettings(),)),
    BenchSet(CROWDED, "simulated", "positive", (SIM_RULE,), (IPASettings(),)),
    BenchSet("netid_hilic_neg", "real", "negative",
             (Rule("nearest [M-H]- / 13C ion (3 ppm, no RT)", ("[M-H]-",), 3.0),),
             (IPASettings(f"{IPA_LABEL}, 3 ppm", 3.0, None),),
             {"mode": "negative", "rt_unit": "min"}),
    BenchSet("ipa_ecoli_pos", "real", "positive",
             (Rule("nearest ion (5 adducts x 13C, 5 ppm, RT +/-0.5 min)", FIVE, 5.0, 0.5),),
             (IPASettings(f"{IPA_LABEL}, 5 ppm", 5.0, None),),
             {"mode": "positive", "rt_unit": "min"}),
    BenchSet("ipa_ecoli_neg", "real", "negative",
             (Rule("nearest ion (5 adducts x 13C, 5 ppm, RT +/-0.5 min)", FIVE_NEG, 5.0, 0.5),
              Rule("nearest ion (5 adducts x 13C, 15 ppm, RT +/-0.5 min)", FIVE_NEG, 15.0,
                   0.5)),
             (IPASettings(f"{IPA_LABEL}, 5 ppm", 5.0, None),
              IPASettings(f"{IPA_LABEL}, 15 ppm", 15.0, None)),
             {"mode": "negative", "rt_unit": "min"}),
)
METRICS = ("known_top1", "unknown_null", "overall", "ece", "brier")


def score(data: Path, assignments: Path) -> dict:
    """Score a result with the reference scorer, from its ``peak_id, compound_id, prob`` alone.

    Parameters
    ----------
    data : Path
        Set folder (``truth.csv``, ``library.csv``).
    assignments : Path
        CSV or Parquet with one row per peak; ``prob`` is optional (a rule has none).

    Returns
    -------
    dict
        What ``score.py --json`` prints.
    """
    assignments = Path(assignments)
    table = (pd.read_parquet(assignments) if assignments.suffix == ".parquet"
             else pd.read_csv(assignments, dtype={"peak_id": str, "compound_id": str}))
    # Other columns stay out: a `formula` column would replace the truth's at formula level.
    table = table[[c for c in ("peak_id", "compound_id", "prob") if c in table.columns]]
    with tempfile.TemporaryDirectory(prefix="score-") as tmp:
        path = Path(tmp) / "calls.csv"
        table.to_csv(path, index=False)
        res = subprocess.run([sys.executable, str(SHARED / "tools" / "score.py"),
                              str(data / "truth.csv"), str(data / "library.csv"), str(path),
                              "--json"], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def run_dask_assign(data: Path, work: Path, client, config=None,
                    tag: str = "dask-assign") -> float:
    """Run dask-assign on a set into ``work/<tag>``; the seconds of :func:`pipeline.run`.

    Parameters
    ----------
    data, work : Path
        Set folder; scratch folder.
    client : distributed.Client
    config : AssignConfig, optional
        Default settings when omitted.
    tag : str
        Output subfolder.
    """
    from dask_assign.graph.run import run

    t = time.perf_counter()
    run(data / "peaks.csv", data / "library.csv", work / tag, config, client=client)
    return time.perf_counter() - t


def nearest_ion_calls(peaks: pd.DataFrame, library: pd.DataFrame, mode: str, rule: Rule):
    """A nearest-ion rule's calls: no probabilities, ``None`` where no ion is near.

    Parameters
    ----------
    peaks : pandas.DataFrame
        ``peak_id, mz, rt``.
    library : pandas.DataFrame
        ``compound_id, monoisotopic_mass, rt``.
    mode : {"positive", "negative"}
    rule : Rule

    Returns
    -------
    pandas.DataFrame
        ``peak_id, compound_id``.

    Notes
    -----
    The ions are the rule's adducts of every library compound (from its monoisotopic mass)
    and their 13C1 and 13C2 isotopologues (+1.00336 / |z| each). Ions within
    :data:`TIE_PPM` of the nearest count as tied; with an RT window the tie goes to the
    nearest library RT, otherwise to the first in library order.
    """
    from dask_assign.chemistry.adducts import builtin_adducts

    table = builtin_adducts(mode)
    mass = library["monoisotopic_mass"].to_numpy(float)
    index = np.arange(len(library))
    parts = [(table[name].mz(mass) + k * C13_SHIFT / abs(table[name].charge), index)
             for name in rule.adducts for k in range(3)]
    mz = np.concatenate([p[0] for p in parts])
    who = np.concatenate([p[1] for p in parts])
    order = np.argsort(mz, kind="stable")
    mz, who = mz[order], who[order]
    lib_rt = library["rt"].to_numpy(float)[who]
    ids = library["compound_id"].to_numpy()
    f = rule.ppm * 1e-6
    calls = []
    for pmz, prt in zip(peaks["mz"].to_numpy(float), peaks["rt"].to_numpy(float), strict=True):
        # |ion - peak| <= ppm x ion, as searchsorted bounds on the sorted ion m/z.
        lo, hi = np.searchsorted(mz, [pmz / (1 + f), pmz / (1 - f)], side="left")
        cand = np.arange(lo, hi)
        if rule.rt_window is not None:
            cand = cand[np.abs(lib_rt[cand] - prt) <= rule.rt_window]
        if not cand.size:
            calls.append(None)
            continue
        err = np.abs(mz[cand] - pmz) / mz[cand] * 1e6
        tied = cand[err <= err.min() + TIE_PPM]
        if rule.rt_window is not None:
            best = tied[np.argmin(np.abs(lib_rt[tied] - prt))]
        else:
            best = tied[np.argmin(who[tied])]
        calls.append(ids[who[best]])
    return pd.DataFrame({"peak_id": peaks["peak_id"].to_numpy(), "compound_id": calls})


def run_rule(data: Path, work: Path, mode: str, rule: Rule, tag: str) -> float:
    """Write a rule's calls to ``work/<tag>.csv``; the seconds it took (reading included)."""
    t = time.perf_counter()
    peaks = pd.read_csv(data / "peaks.csv", dtype={"peak_id": str})
    library = pd.read_csv(data / "library.csv", dtype={"compound_id": str})
    nearest_ion_calls(peaks, library, mode, rule).to_csv(work / f"{tag}.csv", index=False)
    return time.perf_counter() - t


def ipa_adducts(mode: str, names=None) -> tuple[list[str], list[str]]:
    """IPA's names for dask-assign adducts, by what the names say (molecules, atoms, charge).

    Parameters
    ----------
    mode : {"positive", "negative"}
    names : sequence of str, optional
        dask-assign adduct names; the mode's defaults when omitted.

    Returns
    -------
    ipa_names : list of str
        IPA's first name for each adduct its table has (it lists some twice, e.g.
        ``M+FA-H`` and ``M+CH2O2-H``; both would count one ion twice).
    missing : list of str
        The dask-assign names that IPA's table lacks.
    """
    from dask_assign.chemistry.adducts import (
        builtin_adducts,
        default_adduct_names,
        parse_adduct_name,
    )

    names = default_adduct_names(mode) if names is None else tuple(names)
    ours = builtin_adducts(mode)
    table = pd.read_csv(IPA_TOOLS / "adducts_ipaPy2.csv")
    theirs = {}
    for row in table[table["Ion_mode"] == mode].itertuples(index=False):
        try:
            mult, _, atoms = parse_adduct_name(row.name)
        except ValueError:
            continue
        theirs.setdefault((mult, int(row.Charge), atoms), row.name)
    found, missing = [], []
    for name in names:
        mult, _, atoms = parse_adduct_name(name)
        key = (mult, ours[name].charge, atoms)
        (found.append(theirs[key]) if key in theirs else missing.append(name))
    return found, missing


def run_ipa(data: Path, work: Path, mode: str = "positive",
            settings: IPASettings | None = None, tag: str = "ipa",
            timeout: float | None = None) -> float | None:
    """Run IPA on a set; its calls go to ``work/<tag>.csv`` (``peak_id, compound_id, prob``).

    Parameters
    ----------
    data, work : Path
    mode : {"positive", "negative"}
    settings : IPASettings, optional
        The simulated sets' settings when omitted.
    tag : str
    timeout : float, optional
        Seconds the runner may take.

    Returns
    -------
    float or None
        Seconds of the runner, ``None`` when the IPA environment is missing. Its log goes to
        ``work/<tag>_log.txt``.

    Raises
    ------
    subprocess.CalledProcessError
        When the runner fails (its stderr is on the exception).
    subprocess.TimeoutExpired
        When it runs past ``timeout``.
    """
    if not IPA_PYTHON.exists():
        return None
    settings = settings or IPASettings()
    adducts, _ = ipa_adducts(mode, settings.adducts)
    pd.read_csv(data / "peaks.csv").rename(columns={"peak_id": "id"}).to_csv(
        work / f"{tag}_peaks.csv", index=False)
    pd.read_csv(data / "library.csv").rename(columns={"compound_id": "id"}).to_csv(
        work / f"{tag}_lib.csv", index=False)
    t = time.perf_counter()
    res = subprocess.run([str(IPA_PYTHON), str(IPA_TOOLS / "run_ipa.py"),
                          str(work / f"{tag}_peaks.csv"), str(work / f"{tag}_lib.csv"),
                          str(work / f"{tag}_out.csv"), "--mode", mode[:3], "--ppm",
                          str(settings.ppm), "--adducts", ",".join(adducts), "--rt-unit", "min",
                          "--group", "rt", "--cache-dir", str(work / f"{tag}-cache")],
                         check=True, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t
    (work / f"{tag}_log.txt").write_text(res.stderr)
    subprocess.run([str(IPA_PYTHON), str(IPA_TOOLS / "ipa_to_assignments.py"),
                    str(work / f"{tag}_out.csv"), str(work / f"{tag}.csv"), "propagate"],
                   check=True, capture_output=True, text=True)
    return elapsed


def failure(err: Exception) -> str:
    """One line on why a run failed: the last line of its stderr, else the exception."""
    text = getattr(err, "stderr", None) or ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else f"{type(err).__name__}: {err}"


def same_calls(a: Path, b: Path) -> bool:
    """Whether two dask-assign results make the same calls with the same probabilities."""
    cols = ["peak_id", "compound_id", "prob"]
    x = pd.read_parquet(a)[cols].sort_values("peak_id", ignore_index=True)
    y = pd.read_parquet(b)[cols].sort_values("peak_id", ignore_index=True)
    return x.equals(y)


def machine() -> str:
    """The CPU model (as ``lscpu`` names it) and the cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def revision() -> str:
    """The checkout's commit, marked ``+dirty`` when it has uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                              text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def bench_set(spec: BenchSet, work: Path, client, with_ipa: bool,
              ipa_timeout: float | None = None) -> list[dict]:
    """Every method on one set: rows of the table.

    Parameters
    ----------
    spec : BenchSet
    work : Path
        Scratch folder (results go to ``work/<set>``).
    client : distributed.Client
    with_ipa : bool
    ipa_timeout : float, optional
        Seconds each IPA run may take; a longer one is reported as failed.

    Returns
    -------
    list of dict
    """
    from dask_assign.config import AssignConfig
    from dask_assign.scoring.model import scorer_params

    data = spec.folder(work)
    out = work / spec.name
    out.mkdir(parents=True, exist_ok=True)
    runs = []  # (method, seconds, result file or None, note)
    default = run_dask_assign(data, out, client, AssignConfig(**spec.config), "default")
    runs.append(("dask-assign (default)", default, out / "default" / "assignments.parquet", ""))
    none = run_dask_assign(data, out, client,
                           AssignConfig(**spec.config, scorer=scorer_params("none")), "none")
    identical = same_calls(out / "default" / "assignments.parquet",
                           out / "none" / "assignments.parquet")
    runs.append(("dask-assign --model none", none, out / "none" / "assignments.parquet",
                 "calls identical to default" if identical else "calls differ from default"))
    for i, rule in enumerate(spec.rules):
        runs.append((rule.label, run_rule(data, out, spec.mode, rule, f"rule{i}"),
                     out / f"rule{i}.csv", ""))
    for i, settings in enumerate(spec.ipa):
        if not with_ipa:
            runs.append((settings.label, None, None, "not run: --no-ipa"))
            continue
        _, missing = ipa_adducts(spec.mode, settings.adducts)
        notes = [f"IPA's table lacks {', '.join(missing)}"] if missing else []
        try:
            seconds = run_ipa(data, out, spec.mode, settings, f"ipa{i}", ipa_timeout)
        except subprocess.TimeoutExpired:
            runs.append((settings.label, None, None, f"fails: over {ipa_timeout:.0f} s"))
            continue
        except (subprocess.CalledProcessError, OSError) as err:
            runs.append((settings.label, None, None, f"fails: {failure(err)}"))
            continue
        if seconds is None:
            runs.append((settings.label, None, None, "not run: no .venv-ipa (make ipa-env)"))
            continue
        # What the runner says it left out (library rows it cannot parse) belongs in the table.
        log = (out / f"ipa{i}_log.txt").read_text().splitlines()
        notes += [line.removeprefix("[run_ipa] ") for line in log
                  if line.startswith(("[run_ipa] dropping", "[run_ipa] warning"))]
        runs.append((settings.label, seconds, out / f"ipa{i}.csv", "; ".join(notes)))
    rows = []
    for method, seconds, path, note in runs:
        scores = score(data, path) if path is not None else {}
        rows.append({"set": spec.name, "kind": spec.kind, "method": method,
                     **{k: scores.get(k) for k in METRICS},
                     "n": scores.get("n"), "n_known": scores.get("n_known"),
                     "seconds": None if seconds is None else round(seconds, 2), "note": note})
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (``-``: no value, e.g. a rule's ECE)."""
    def cell(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| set | method | known_top1 | unknown_null | overall | ECE | Brier | seconds |"
             " note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([r["set"], r["method"], *(cell(r[k]) for k in METRICS),
                                        cell(r["seconds"], 2), r["note"]]) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-ipa", action="store_true", help="skip IPA (no .venv-ipa needed)")
    ap.add_argument("--sets", nargs="+", choices=[s.name for s in ALL_SETS],
                    help="only these sets (default: all); accuracy.json is then not written")
    ap.add_argument("--ipa-timeout", type=float, default=1800.0,
                    help="seconds each IPA run may take (default %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "accuracy.json")
    args = ap.parse_args()
    from crowded_set import make_crowded_set

    import dask_assign
    from dask_assign.graph.cluster import connect

    chosen = [s for s in ALL_SETS if args.sets is None or s.name in args.sets]
    work = Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    if any(s.name == CROWDED for s in chosen):
        make_crowded_set(work / CROWDED)
    client, cluster = connect(workers=2)
    rows = []
    try:
        # The workers' first run loads the compiled kernels: done once, untimed, on the demo
        # set, as a long-lived cluster would have done it already.
        demo = Path(dask_assign.__file__).parent / "data" / "demo"
        run_dask_assign(demo, work, client, tag="warm-up")
        for spec in chosen:
            print(f"{spec.name} ...", file=sys.stderr, flush=True)
            rows.extend(bench_set(spec, work, client, not args.no_ipa, args.ipa_timeout))
    finally:
        client.close()
        cluster.close()
    table = markdown(rows)
    info = {"date": datetime.date.today().isoformat(), "machine": machine(),
            "command": "make bench-accuracy" + (" ARGS=--no-ipa" if args.no_ipa else ""),
            "revision": revision(), "dask_assign": str(Path(dask_assign.__file__).parent),
            "scratch": str(work)}
    print(table)
    print(f"\n{info['date']}, {info['machine']}, dask-assign {info['revision']} "
          f"({info['dask_assign']})")
    if args.sets is None:
        args.out.write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
