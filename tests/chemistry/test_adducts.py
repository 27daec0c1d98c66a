import pytest

from dask_assign.chemistry.adducts import builtin_adducts, default_adduct_names, select_adducts
from dask_assign.chemistry.ions import build_ions
from dask_assign.errors import InputError
from tests.conftest import library_frame


def test_at_least_forty_common_adducts_with_the_named_ones():
    pos, neg = builtin_adducts("positive"), builtin_adducts("negative")
    assert len(pos) + len(neg) >= 40
    for name in ["[2M+H]+", "[M+2H]2+", "[M-H2O+H]+", "[M+H]+", "[M+Na]+", "[M+NH4]+"]:
        assert name in pos
    for name in ["[M+FA-H]-", "[M+Cl]-", "[M-H]-"]:
        assert name in neg
    assert all(a.charge > 0 for a in pos.values()) and all(a.charge < 0 for a in neg.values())
    assert all(a.prior > 0 for a in pos.values())


def test_defaults_are_a_subset_with_protonation_first():
    assert default_adduct_names("positive")[0] == "[M+H]+"
    assert default_adduct_names("negative")[0] == "[M-H]-"


def test_unknown_adduct_is_named():
    with pytest.raises(InputError, match=r"unknown adduct\(s\) \['\[M\+Xx\]\+'\]"):
        select_adducts("positive", ["[M+H]+", "[M+Xx]+"])


def test_wrong_polarity_is_refused():
    with pytest.raises(InputError):
        select_adducts("negative", ["[M+H]+"])


def test_user_table(tmp_path):
    path = tmp_path / "adducts.tsv"
    path.write_text("name\tmode\tmult\tadd\tsub\tcharge\tprior\n"
                    "[M+H]+\tpositive\t1\tH\t-\t1\t1\n[M+Ag]+\tpositive\t1\tAg\t-\t1\t0.5\n")
    chosen = select_adducts("positive", None, str(path))
    assert [a.name for a in chosen] == ["[M+H]+", "[M+Ag]+"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("name\tmode\tmult\tadd\tsub\tcharge\tprior\n[M+Q]+\tpositive\t1\tQq\t-\t1\t1\n")
    with pytest.raises(InputError, match=r"bad.tsv: column 'add'.*rows 1"):
        select_adducts("positive", None, str(bad))


def test_no_water_loss_without_oxygen():
    lib = library_frame([("benzene", "C6H6", 1.0), ("glucose", "C6H12O6", 1.0)])
    table = build_ions(lib, select_adducts("positive", ["[M+H]+", "[M-H2O+H]+"]), 0)
    ions = table.ions.assign(cid=lambda d: lib["compound_id"].to_numpy()[d["compound"]])
    water = table.adduct_names.index("[M-H2O+H]+")
    assert set(ions.loc[ions["adduct"] == water, "cid"]) == {"glucose"}
    assert len(ions) == 3
