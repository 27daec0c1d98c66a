"""One source for every setting: each AssignConfig field is a CLI option and a job-spec key,
with the same default and help."""

import argparse
import dataclasses

import pytest

from dask_assign.cli import _config, build_parser
from dask_assign.config import DEFAULT_MODEL, AssignConfig, settings
from dask_assign.graph.jobs import SETTING_TYPES, load_job


def run_options() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {opt: action for action in sub.choices["run"]._actions
            for opt in action.option_strings}


def test_every_field_is_a_setting():
    names = [s.name for s in settings()]
    fields = [f.name for f in dataclasses.fields(AssignConfig)]
    assert names == ["model" if f == "scorer" else f for f in fields]
    assert all(s.help and not s.help.endswith(".") for s in settings())


@pytest.mark.parametrize("setting", settings(), ids=lambda s: s.name)
def test_a_setting_has_one_option_and_one_job_key(setting):
    options = run_options()
    action = options[setting.flag]
    field_default = (DEFAULT_MODEL if setting.name == "model"
                     else AssignConfig.__dataclass_fields__[setting.name].default)
    assert action.default == setting.default == field_default
    assert action.help.startswith(setting.help)
    assert action.dest == setting.name
    if setting.choices:
        assert tuple(action.choices) == setting.choices
    if setting.kind is bool:  # --no-calibrate, --no-context: the negative form
        assert f"--no-{setting.flag[2:]}" in options
    want = list if setting.kind is tuple else setting.kind
    assert SETTING_TYPES[setting.name] is want


def test_no_option_and_no_settings_give_the_config_defaults(tmp_path):
    args = build_parser().parse_args(["run", "p.csv", "l.csv", "--out", "o"])
    assert _config(args) == AssignConfig()
    for name in ("peaks.csv", "library.csv"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "job.yaml").write_text("peaks: peaks.csv\nlibrary: library.csv\nout: out\n")
    assert load_job(tmp_path / "job.yaml").config == AssignConfig()


def test_options_set_their_fields(tmp_path):
    args = build_parser().parse_args(
        ["run", "p", "l", "--out", "o", "--no-context", "--k-max", "8", "--adducts",
         "[M+H]+,[M+Na]+", "--mode", "positive", "--isotope-merge-ppm", "1.5"])
    config = _config(args)
    assert not config.context and config.k_max == 8 and config.k_first == 8  # capped
    assert config.adducts == ("[M+H]+", "[M+Na]+") and config.isotope_merge_ppm == 1.5
    for name in ("peaks.csv", "library.csv"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "job.yaml").write_text(
        "peaks: peaks.csv\nlibrary: library.csv\nout: out\nsettings:\n  context: false\n"
        "  k_max: 8\n  k_first: 8\n  adducts: ['[M+H]+', '[M+Na]+']\n"
        "  isotope_merge_ppm: 1.5\n")
    assert load_job(tmp_path / "job.yaml").config == config
