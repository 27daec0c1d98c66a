"""Metrics against hand-made cases: compound- and formula-level truth, breakdowns, the plot."""

import numpy as np
import pandas as pd
import pytest

from dask_assign.report.evaluate import breakdown, correctness, evaluate, reliability_png

A = pd.DataFrame({"peak_id": ["1", "2", "3", "4"], "compound_id": ["A", "B", None, "C"],
                  "prob": [0.9, 0.6, 0.8, 0.7], "formula": ["C6H12O6", "C2H6O", None, "CH4"],
                  "mz": [150.0, 250.0, 450.0, 950.0]})
T = pd.DataFrame({"peak_id": ["1", "2", "3", "4"], "compound_id": ["A", "X", "", ""],
                  "adduct": ["[M+H]+", "[M+H]+", "[M+Na]+", "[M+H]+"],
                  "isotope": ["", "13C1", "", ""]})


def test_compound_level_by_hand():
    c = correctness(A, T)
    assert c["correct"].tolist() == [True, False, True, False]
    s = evaluate(A, T)
    assert (s["known_top1"], s["unknown_null"], s["overall"]) == (0.5, 0.5, 0.5)
    # ECE by hand: bins 9 (0.9, right), 6 (0.6, wrong), 8 (0.8, right), 7 (0.7, wrong)
    assert s["ece"] == pytest.approx((0.1 + 0.6 + 0.2 + 0.7) / 4, abs=1e-4)
    assert s["brier"] == pytest.approx(np.mean([0.01, 0.36, 0.04, 0.49]), abs=1e-4)


def test_formula_level_truth_counts_isomers_as_right():
    truth = pd.DataFrame({"peak_id": ["1", "2", "3", "4"],
                          "formula": ["O6C6H12", "C2H6O", "C5H5N5", "CH4"],
                          "in_library": ["True", "True", "False", "False"]})
    c = correctness(A, truth)
    assert c["correct"].tolist() == [True, True, True, False]  # Hill notation compared


def test_breakdown_groups():
    parts = breakdown(A, T)
    assert parts["by_adduct"].loc["[M+H]+", "n"] == 3
    assert parts["by_isotope"].loc["13C1", "accuracy"] == 0.0
    assert parts["by_mz"]["n"].to_dict() == {"0-200": 1, "200-400": 1, "400-600": 1, "800+": 1}


def test_reliability_png(tmp_path):
    reliability_png(A, T, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
