"""Write the peak-table fixtures of tests/data/formats/: the shipped demo peaks as each tool
exports them (``python tests/make_format_fixtures.py`` rewrites them; a test checks that the
files are exactly what this script writes).

One set of peaks (``dask_assign/data/demo/peaks.csv``, 1,119 peaks) in every layout, laid out as
the tools write them (see ``../shared/data/formats/README.md``):

- ``xcms_featureDefinitions.csv``: ``write.csv(featureDefinitions(xdata))`` with the list column
  ``peakidx`` left out (``write.csv`` cannot write a list): R quotes the header and the row
  names (the feature ids ``FT0001``, ... in the unnamed first column), writes numbers with 15
  significant digits, RT in seconds; one column per sample group holds peak counts.
- ``mzmine2_gnps_quant.csv``: MZmine 2's GNPS export: ``row ID``, ``row m/z``, ``row retention
  time`` (minutes), ``FILE Peak area`` per file, a separator after every field (so the header
  ends in an empty name), Java's number format (``1.207252E8``), 0 where a file lacks the peak.
- ``mzmine3_feature_list.csv``: MZmine 3's CSV export of a feature list: row columns (``id``,
  ``rt`` in minutes, ranges, ``height``, ``area``, ``charge``, ``fragment_scans``,
  ``feature_group``, ``ion_identities:*``) then a ``datafile:FILE:*`` block per file; empty
  cells where a file lacks the feature; RT, heights and areas are single-precision floats.
- ``msdial4_Area.txt`` and ``msdial5_Height.txt``: MS-DIAL alignment results, tab-separated:
  four rows of sample metadata (Class, File type, Injection order, Batch ID, labels in the
  column before the first sample) above the header; MS-DIAL 4.x and 5.x header columns; RT
  rounded to 3 decimals in minutes, m/z to 5; then the class averages and standard deviations,
  named by class in the header (so those names repeat) and marked in the metadata rows.
- ``asari_full_Feature_table.tsv``: asari's full feature table (columns as in asari's own test
  data), ids ``F<n>`` with gaps, m/z to 4 decimals, RT in seconds, 0 where a sample lacks it.
- ``peaks.csv.gz``: the plain demo table, gzipped.

Each tool gets its own ids in its own row order; :func:`tool_ids` gives the map back to the
demo ids, and :func:`sample_values` the per-sample intensities the files hold.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "dask_assign" / "data" / "demo"
OUT = Path(__file__).resolve().parent / "data" / "formats"
FILES = ("xcms_featureDefinitions.csv", "mzmine2_gnps_quant.csv", "mzmine3_feature_list.csv",
         "msdial4_Area.txt", "msdial5_Height.txt", "asari_full_Feature_table.tsv",
         "peaks.csv.gz")
SAMPLES = ("QC_01", "QC_02", "S_A1", "S_B1")
CLASSES = ("QC", "QC", "A", "B")


def demo_peaks() -> pd.DataFrame:
    return pd.read_csv(DEMO / "peaks.csv", dtype={"peak_id": str})


def sample_values(peaks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample intensities of each peak (the peak's intensity times a sample effect and
    noise) and which samples detected it (at least one does; MS-DIAL gap-fills the rest)."""
    rng = np.random.default_rng(14)
    n = len(peaks)
    values = peaks["intensity"].to_numpy()[:, None] * np.exp(rng.normal(0, 0.1, (n, len(SAMPLES))))
    detected = rng.random((n, len(SAMPLES))) > 0.15
    detected[np.arange(n), rng.integers(0, len(SAMPLES), n)] = True
    return values, detected


def tool_ids(peaks: pd.DataFrame) -> dict[str, pd.Series]:
    """For each fixture, its ids of the demo peaks (a Series indexed by the demo peak id) and,
    through the order of the Series, the row order of the file."""
    rng = np.random.default_rng(41)
    n = len(peaks)
    by_mz = peaks.sort_values("mz", kind="stable")["peak_id"].to_numpy()
    by_rt = peaks.sort_values("rt", kind="stable")["peak_id"].to_numpy()
    width = len(str(n))
    xcms = pd.Series([f"FT{i + 1:0{width}d}" for i in range(n)], index=by_mz)
    mz2 = pd.Series(rng.permutation(n) + 1, index=by_rt).astype(str)  # rows by RT, ids not
    ids3 = rng.permutation(n) + 1
    mz3 = pd.Series(ids3, index=peaks["peak_id"].to_numpy()).sort_values().astype(str)
    dial = pd.Series(np.arange(n), index=by_mz).astype(str)
    asari = pd.Series([f"F{k}" for k in np.cumsum(rng.integers(1, 4, n)) - 1], index=by_mz)
    plain = pd.Series(peaks["peak_id"].to_numpy(), index=peaks["peak_id"].to_numpy())
    return {"xcms_featureDefinitions.csv": xcms, "mzmine2_gnps_quant.csv": mz2,
            "mzmine3_feature_list.csv": mz3, "msdial4_Area.txt": dial,
            "msdial5_Height.txt": dial, "asari_full_Feature_table.tsv": asari,
            "peaks.csv.gz": plain}


def r_number(x) -> str:
    """A number as R's write.csv writes it: 15 significant digits, NA for missing."""
    return "NA" if pd.isna(x) else format(float(x), ".15g")


def java_double(x) -> str:
    """A number as Java's ``Double.toString`` writes it (MZmine)."""
    x = float(x)
    if x == 0:
        return "0.0"
    if 1e-3 <= abs(x) < 1e7:
        text = repr(x)
        return text if "." in text else text + ".0"
    mantissa, exponent = f"{x:.16e}".split("e")
    digits = repr(float(mantissa)).rstrip("0").rstrip(".")
    digits = digits if "." in digits else digits + ".0"
    return f"{digits}E{int(exponent)}"


def java_float(x) -> str:
    """A single-precision number as Java's ``Float.toString`` writes it (MZmine 3 keeps RT,
    heights and areas as floats)."""
    x = np.float32(x)
    if x == 0:
        return "0.0"
    if 1e-3 <= abs(x) < 1e7:
        text = np.format_float_positional(x, unique=True, trim="0")
        return text if "." in text else text + ".0"
    mantissa, exponent = np.format_float_scientific(x, unique=True, trim="0").split("e")
    return f"{mantissa if '.' in mantissa else mantissa + '0'}E{int(exponent)}"


def _rows(peaks, order):
    return peaks.set_index("peak_id").loc[order.index]


def xcms(peaks, ids, values, detected) -> str:
    rows = _rows(peaks, ids)
    rng = np.random.default_rng(1)
    counts = detected[_positions(peaks, ids)]
    ko, wt = counts[:, :2].sum(axis=1), counts[:, 2:].sum(axis=1)
    rt = rows["rt"].to_numpy() * 60.0
    mz = rows["mz"].to_numpy()
    out = io.StringIO()
    out.write('"","mzmed","mzmin","mzmax","rtmed","rtmin","rtmax","npeaks","KO","WT",'
              '"ms_level"\n')
    for k, fid in enumerate(ids.to_numpy()):
        dmz, drt = mz[k] * rng.uniform(1e-6, 4e-6, 2), rng.uniform(1.0, 4.0, 2)
        cells = [f'"{fid}"', r_number(mz[k]), r_number(mz[k] - dmz[0]), r_number(mz[k] + dmz[1]),
                 r_number(rt[k]), r_number(rt[k] - drt[0]), r_number(rt[k] + drt[1]),
                 str(ko[k] + wt[k]), str(ko[k]), str(wt[k]), "1"]
        out.write(",".join(cells) + "\n")
    return out.getvalue()


def _positions(peaks, ids):
    where = pd.Series(np.arange(len(peaks)), index=peaks["peak_id"].to_numpy())
    return where.loc[ids.index].to_numpy()


def mzmine2(peaks, ids, values, detected) -> str:
    rows = _rows(peaks, ids)
    pos = _positions(peaks, ids)
    area = np.where(detected[pos], values[pos] * 9.0, 0.0)
    out = io.StringIO()
    out.write(",".join(["row ID", "row m/z", "row retention time",
                        *(f"{s}.mzML Peak area" for s in SAMPLES)]) + ",\n")
    for k, rid in enumerate(ids.to_numpy()):
        cells = [rid, java_double(rows["mz"].iloc[k]), java_double(rows["rt"].iloc[k]),
                 *(java_double(a) for a in area[k])]
        out.write(",".join(cells) + ",\n")
    return out.getvalue()


def _ion_networks(peaks):
    """MZmine 3's ion identity networks: the peaks of one compound seen as several adducts
    (monoisotopic), from the demo truth."""
    truth = pd.read_csv(DEMO / "truth.csv", dtype=str)
    library = pd.read_csv(DEMO / "library.csv", dtype={"compound_id": str})
    mono = truth[truth["compound_id"].notna() & (truth["isotope"] == "M+0")]
    groups = [g for _, g in mono.groupby("compound_id") if g["adduct"].nunique() > 1]
    mass = library.set_index("compound_id")["monoisotopic_mass"]
    out = {}
    for net, g in enumerate(groups, start=1):
        for pid, adduct in zip(g["peak_id"], g["adduct"], strict=True):
            out[pid] = (net, adduct, len(g), mass[g["compound_id"].iloc[0]],
                        [p for p in g["peak_id"] if p != pid])
    return out


def mzmine3(peaks, ids, values, detected) -> str:
    rows = _rows(peaks, ids)
    pos = _positions(peaks, ids)
    rng = np.random.default_rng(3)
    nets = _ion_networks(peaks)
    row_of = dict(zip(ids.index, ids.to_numpy(), strict=True))
    head = ["id", "rt", "rt_range:min", "rt_range:max", "mz", "mz_range:min", "mz_range:max",
            "height", "area", "charge", "fragment_scans", "feature_group",
            "ion_identities:iin_id", "ion_identities:ion_identities", "ion_identities:list_size",
            "ion_identities:neutral_mass", "ion_identities:partner_row_ids",
            "ion_identities:iin_relationship"]
    per_file = ["feature_state", "rt", "mz", "height", "area"]
    head += [f"datafile:{s}.mzML:{c}" for s in SAMPLES for c in per_file]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    for k, (pid, rid) in enumerate(zip(ids.index, ids.to_numpy(), strict=True)):
        mz, rt = float(rows["mz"].iloc[k]), float(rows["rt"].iloc[k])
        height = values[pos[k]]
        area = height * 9.0
        found = detected[pos[k]]
        net = nets.get(pid)
        iin = ([net[0], net[1], net[2], java_double(net[3]),
                ";".join(row_of[p] for p in net[4]), ""] if net else [""] * 6)
        row = [rid, java_float(rt), java_float(rt - 0.03), java_float(rt + 0.04),
               java_double(mz), java_double(mz - mz * 2e-6), java_double(mz + mz * 2e-6),
               java_float(height[found].max()), java_float(area[found].max()),
               "1", str(int(rng.integers(0, 3))), str(net[0]) if net else "", *iin]
        for j in range(len(SAMPLES)):
            if found[j]:
                row += ["DETECTED", java_float(rt + rng.normal(0, 0.005)),
                        java_double(round(mz * (1 + rng.normal(0, 1e-6)), 6)),
                        java_float(height[j]), java_float(area[j])]
            else:
                row += ["UNKNOWN", "", "", "", ""]
        writer.writerow(row)
    return out.getvalue()


MSDIAL4_COLUMNS = [
    "Alignment ID", "Average Rt(min)", "Average Mz", "Metabolite name", "Adduct type",
    "Post curation result", "Fill %", "MS/MS assigned", "Reference RT", "Reference m/z",
    "Formula", "Ontology", "INCHIKEY", "SMILES", "Annotation tag (VS1.0)", "RT matched",
    "m/z matched", "MS/MS matched", "Comment", "Manually modified for quantification",
    "Manually modified for annotation", "Isotope tracking parent ID",
    "Isotope tracking weight number", "Total score", "RT similarity", "Dot product",
    "Reverse dot product", "Fragment presence %", "S/N average", "Spectrum reference file name",
    "MS1 isotopic spectrum", "MS/MS spectrum"]
MSDIAL5_COLUMNS = [
    "Alignment ID", "Average Rt(min)", "Average Mz", "Metabolite name", "Adduct type",
    "Post curation result", "Fill %", "MS/MS assigned", "Reference RT", "Reference m/z",
    "Formula", "Ontology", "INCHIKEY", "SMILES", "Annotation tag (VS1.0)", "RT matched",
    "m/z matched", "MS/MS matched", "Comment", "Manually modified for quantification",
    "Manually modified for annotation", "Isotope tracking parent ID",
    "Isotope tracking weight number", "RT similarity", "m/z similarity", "Simple dot product",
    "Weighted dot product", "Reverse dot product", "Matched peaks count",
    "Matched peaks percentage", "Total score", "S/N average", "Spectrum reference file name",
    "MS1 isotopic spectrum", "MS/MS spectrum"]


def msdial(peaks, ids, values, detected, version: int) -> str:
    """MS-DIAL 4 (Area) or 5 (Height) alignment export."""
    columns = MSDIAL4_COLUMNS if version == 4 else MSDIAL5_COLUMNS
    rows = _rows(peaks, ids)
    pos = _positions(peaks, ids)
    quant = values[pos] * (9.0 if version == 4 else 1.0)  # gap-filled: every sample has one
    classes = sorted(set(CLASSES))
    pad = [""] * (len(columns) - 1)
    na = ["NA"] * len(classes)
    out = io.StringIO()
    meta = [("Class", list(CLASSES)), ("File type", ["Sample"] * len(SAMPLES)),
            ("Injection order", [str(i + 1) for i in range(len(SAMPLES))]),
            ("Batch ID", ["1"] * len(SAMPLES))]
    for label, cells in meta:
        tail = (["Average"] * len(classes) + ["Stdev"] * len(classes) if label == "Batch ID"
                else na + na)
        out.write("\t".join(pad + [label] + cells + tail) + "\n")
    out.write("\t".join(columns + list(SAMPLES) + classes + classes) + "\n")
    rng = np.random.default_rng(version)
    for k, aid in enumerate(ids.to_numpy()):
        mz, rt = float(rows["mz"].iloc[k]), float(rows["rt"].iloc[k])
        if version == 4:
            mz_text, rt_text = repr(round(mz, 5)), repr(round(rt, 3))
        else:
            mz_text, rt_text = f"{mz:.5f}", f"{rt:.3f}"
        ref = SAMPLES[int(np.argmax(quant[k]))]
        spectrum = f"{mz:.5f}:{quant[k].max():.0f} {mz + 1.00336:.5f}:{quant[k].max() / 9:.0f}"
        info = {"Alignment ID": aid, "Average Rt(min)": rt_text, "Average Mz": mz_text,
                "Metabolite name": "Unknown", "Adduct type": "[M+H]+", "Fill %": "1",
                "MS/MS assigned": "False", "Annotation tag (VS1.0)": "999",
                "RT matched": "False", "m/z matched": "False", "MS/MS matched": "False",
                "Comment": "" if version == 4 else "Normalized unit: Intensity",
                "Manually modified for quantification": "False",
                "Manually modified for annotation": "False",
                "Isotope tracking parent ID": aid, "Isotope tracking weight number": "0",
                "S/N average": f"{rng.uniform(5, 500):.2f}", "Spectrum reference file name": ref,
                "MS1 isotopic spectrum": spectrum,
                "MS/MS spectrum": "" if version == 4 else "null"}
        meta_cells = [info.get(c, "null") for c in columns]
        if version == 4:  # areas are single-precision floats in MS-DIAL 4
            q = [np.format_float_positional(np.float32(v), unique=True, trim="-")
                 for v in quant[k]]
        else:
            q = [f"{v:.0f}" for v in quant[k]]
        groups = [quant[k][[c == cls for c in CLASSES]] for cls in classes]
        avg = [format(g.mean(), ".15g") for g in groups]
        sd = [format(g.std(ddof=1) if len(g) > 1 else 0.0, ".15g") for g in groups]
        out.write("\t".join(meta_cells + q + avg + sd) + "\n")
    return out.getvalue()


def asari(peaks, ids, values, detected) -> str:
    rows = _rows(peaks, ids)
    pos = _positions(peaks, ids)
    rng = np.random.default_rng(5)
    areas = np.where(detected[pos], np.round(values[pos] * 9.0), 0).astype(np.int64)
    head = ["id_number", "mz", "rtime", "rtime_left_base", "rtime_right_base",
            "parent_masstrack_id", "peak_area", "cSelectivity", "goodness_fitting", "snr",
            "detection_counts", *(f"batch1_{s}" for s in SAMPLES)]
    out = io.StringIO()
    out.write("\t".join(head) + "\n")
    track = 0
    for k, fid in enumerate(ids.to_numpy()):
        mz, rt = float(rows["mz"].iloc[k]), float(rows["rt"].iloc[k]) * 60.0
        track += int(rng.integers(0, 3))
        cells = [fid, repr(round(mz, 4)), repr(round(rt, 2)),
                 repr(round(rt - rng.uniform(1, 4), 2)), repr(round(rt + rng.uniform(1, 4), 2)),
                 str(track), str(int(areas[k].sum() * 1.1)),
                 repr(round(float(rng.uniform(0.3, 1)), 2)),
                 repr(round(float(rng.uniform(0.5, 1)), 2)), str(int(rng.integers(2, 5000))),
                 str(int((areas[k] > 0).sum())), *(str(a) for a in areas[k])]
        out.write("\t".join(cells) + "\n")
    return out.getvalue()


def render() -> dict[str, bytes]:
    """The bytes of every fixture file."""
    peaks = demo_peaks()
    values, detected = sample_values(peaks)
    ids = tool_ids(peaks)
    text = {
        "xcms_featureDefinitions.csv": xcms(peaks, ids["xcms_featureDefinitions.csv"], values,
                                            detected),
        "mzmine2_gnps_quant.csv": mzmine2(peaks, ids["mzmine2_gnps_quant.csv"], values,
                                          detected),
        "mzmine3_feature_list.csv": mzmine3(peaks, ids["mzmine3_feature_list.csv"], values,
                                            detected),
        "msdial4_Area.txt": msdial(peaks, ids["msdial4_Area.txt"], values, detected, 4),
        "msdial5_Height.txt": msdial(peaks, ids["msdial5_Height.txt"], values, detected, 5),
        "asari_full_Feature_table.tsv": asari(peaks, ids["asari_full_Feature_table.tsv"],
                                              values, detected),
    }
    out = {name: t.encode("utf-8") for name, t in text.items()}
    out["peaks.csv.gz"] = gzip.compress((DEMO / "peaks.csv").read_bytes(), mtime=0)
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in render().items():
        (OUT / name).write_bytes(data)
        print(f"{OUT / name}: {len(data):,} bytes")


if __name__ == "__main__":
    main()
