"""Small simulated runs for the tests: peaks made from a library with an independent isotope
calculator (IsoSpecPy's fine structure), adducts that co-elute, and unknown peaks."""

from __future__ import annotations

import numpy as np
import pandas as pd
from molmass import ELECTRON, Formula

PROTON_FORMULA = "H"


def random_formulas(rng, n, heteroatoms=("S", "Cl", "Br")):
    """Formulas of small molecules, most with one of ``heteroatoms``."""
    out = []
    for _ in range(n):
        parts = {"C": rng.integers(4, 25), "H": rng.integers(6, 40), "N": rng.integers(0, 4),
                 "O": rng.integers(1, 8)}
        if heteroatoms and rng.random() < 0.8:
            parts[heteroatoms[rng.integers(len(heteroatoms))]] = int(rng.integers(1, 3))
        out.append("".join(f"{e}{k}" for e, k in parts.items() if k))
    return out


def fine_structure(ion_formula: str, charge: int, threshold=2e-3, resolution_ppm=5.0):
    """(m/z, intensity relative to the monoisotopic peak, neutrons added) of an ion's
    isotopologues, from IsoSpecPy (not from dask-assign's own isotope code), as an
    instrument resolving ``resolution_ppm`` reports them: closer peaks as one centroid."""
    import IsoSpecPy

    hill = Formula(ion_formula).formula  # one count per element
    peaks = list(IsoSpecPy.IsoThreshold(formula=hill, threshold=threshold, absolute=False,
                                        get_confs=True))
    mono = Formula(hill).isotope.mass
    p0 = max(p for m, p, _ in peaks if abs(m - mono) < 1e-4)
    merged = []  # [mass * weight, weight, neutrons of the heaviest member]
    for m, p, _ in sorted(peaks):
        if merged and m - merged[-1][0] / merged[-1][1] < resolution_ppm * 1e-6 * m:
            merged[-1][0] += m * p
            merged[-1][1] += p
        else:
            merged.append([m * p, p, round(m - mono)])
    return [((mw / w - charge * ELECTRON.mass) / abs(charge), w / p0, shift)
            for mw, w, shift in merged]


def library_and_run(rng, n_lib=300, present=0.5, na_share=0.0, unknown_share=0.0,
                    decoy_at_na=0.0, ppm_sd=1.0, heteroatoms=("S", "Cl", "Br"),
                    adduct_rt_sd=0.0):
    """A library and a run of its present compounds' [M+H]+ (with fine-structure
    isotopologues) and, for a share ``na_share`` of them, a co-eluting [M+Na]+; plus unknown
    peaks: ``unknown_share`` of all peaks, of which ``decoy_at_na`` sit exactly where an
    absent or present library compound's [M+Na]+ would be, at a random RT (chance matches).
    Each ion is picked at its molecule's RT within 0.002 min; an [M+Na]+ feature's apex is
    further off by ``adduct_rt_sd`` (a separate feature).

    Returns
    -------
    library, peaks, truth : pandas.DataFrame
        ``truth`` has ``peak_id, compound_id, adduct, isotope_shift``.
    """
    formulas = random_formulas(rng, n_lib, heteroatoms)
    lib = pd.DataFrame({"compound_id": [f"c{i}" for i in range(n_lib)],
                        "name": [f"c{i}" for i in range(n_lib)], "formula": formulas,
                        "rt": rng.uniform(1.0, 14.0, n_lib).round(3)})
    rows = []
    for i in np.flatnonzero(rng.random(n_lib) < present):
        rt = lib["rt"][i] + rng.normal(0, 0.03)
        intensity = 10 ** rng.uniform(5.5, 7.5)
        for adduct, add, show in (("[M+H]+", "H", True), ("[M+Na]+", "Na",
                                                          rng.random() < na_share)):
            if not show:
                continue
            scale = intensity if adduct == "[M+H]+" else intensity * 0.3
            apex = rt + (rng.normal(0, adduct_rt_sd) if adduct_rt_sd and adduct != "[M+H]+"
                         else 0.0)
            for mz, rel, shift in fine_structure(formulas[i] + add, 1):
                if rel * scale < 2e3:  # the detection limit
                    continue
                rows.append((mz * (1 + rng.normal(0, ppm_sd) * 1e-6), apex + rng.normal(0, 0.002),
                             rel * scale, f"c{i}", adduct, shift))
    n_known = len(rows)
    n_unknown = int(n_known * unknown_share / max(1 - unknown_share, 1e-9))
    for _ in range(n_unknown):
        if rng.random() < decoy_at_na:
            i = int(rng.integers(n_lib))
            mz = Formula(formulas[i] + "Na").isotope.mass - ELECTRON.mass
        else:
            mz = rng.uniform(100, 700)
        rows.append((mz * (1 + rng.normal(0, ppm_sd) * 1e-6), rng.uniform(0.5, 15.0),
                     10 ** rng.uniform(3.5, 6.5), None, None, None))
    peaks = pd.DataFrame(rows, columns=["mz", "rt", "intensity", "compound_id", "adduct",
                                        "isotope_shift"])
    peaks.insert(0, "peak_id", [f"p{k:05d}" for k in range(len(peaks))])
    truth = peaks[["peak_id", "compound_id", "adduct", "isotope_shift"]]
    return lib, peaks[["peak_id", "mz", "rt", "intensity"]], truth
