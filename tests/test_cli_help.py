"""The command line: a help text for every flag, and the configuration logged as a key = value table."""
from __future__ import annotations

import dataclasses
import logging

import pytest

import fastntk.pipeline as pipeline
from fastntk.cli import HELP, _config_from_args, _parser, format_config, main
from fastntk.errors import ConfigError
from fastntk.pipeline import ExperimentConfig

FIELDS = [f.name for f in dataclasses.fields(ExperimentConfig)]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_config_field_has_a_help_string_and_no_stale_ones():
    missing = [n for n in FIELDS if not HELP.get(n, "").strip()]
    assert missing == [], f"add HELP entries in fastntk/cli.py for {missing}"
    stale = sorted(set(HELP) - set(FIELDS))
    assert stale == [], f"HELP entries for fields that no longer exist: {stale}"


def test_run_help_shows_every_flag_with_its_text_and_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping (also at hyphens:
    squeezed = out.replace(" ", "")  # compare the texts without blanks)
    defaults = ExperimentConfig()
    for name in FIELDS:
        if name == "progress":  # set by --quiet, not a flag of its own
            continue
        opt = "--out" if name == "out_dir" else flag(name)
        assert f"{opt} " in out, opt
        assert "".join(HELP[name].split()) in squeezed, name
        d = getattr(defaults, name)
        shown = ",".join(map(str, d)) if isinstance(d, list) else str(d)
        assert f"(default: {shown})" in out, name
    for action in _parser()._subparsers._group_actions[0].choices["run"]._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_demo_help_has_text_for_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    demo = _parser()._subparsers._group_actions[0].choices["demo"]
    assert all(a.help for a in demo._actions)


def parse_table(text: str) -> dict:
    rows = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(" = ")
        assert sep, f"not a key = value line: {line!r}"
        rows[key.strip()] = value
    return rows


def test_format_config_is_one_aligned_row_per_field():
    cfg = ExperimentConfig(limit=120, pretrain_classes=[1, 2], baselines=[], scale=None, seed=7)
    text = format_config(cfg)
    lines = text.splitlines()
    assert len(lines) == len(FIELDS)
    assert len({line.index(" = ") for line in lines}) == 1  # values start in one column
    rows = parse_table(text)
    assert list(rows) == FIELDS  # declaration order
    assert rows["limit"] == "120" and rows["seed"] == "7"
    assert rows["pretrain_classes"] == "1, 2" and rows["baselines"] == "(none)"
    assert rows["scale"] == "none" and rows["data_dir"] == "none"
    assert rows["dataset"] == cfg.dataset and rows["rtol"] == str(cfg.rtol)
    assert not text.lstrip().startswith("{")


def test_main_logs_the_table_not_json(monkeypatch, caplog, tmp_path):
    seen = {}

    def fake_run(cfg, dist=None):
        seen["cfg"] = cfg
        raise ConfigError("stop here (test)")

    monkeypatch.setattr(pipeline, "run_experiment", fake_run)
    caplog.set_level(logging.INFO, logger="fastntk")
    rc = main(["run", "--out", str(tmp_path / "o"), "--forget", "class", "--forget-class", "2", "--baselines", "GA,FT"])
    assert rc == 2 and seen["cfg"].forget_class == 2
    msg = next(r.getMessage() for r in caplog.records if "configuration" in r.getMessage())
    rows = parse_table("\n".join(msg.splitlines()[1:]))
    assert rows["forget"] == "class" and rows["forget_class"] == "2" and rows["baselines"] == "GA, FT"
    assert rows["out_dir"] == str(tmp_path / "o")


@pytest.mark.parametrize("value, expected", [("none", None), ("0.5", 0.5), ("trapezium", "trapezium")])
def test_scale_flag_values(value, expected):
    args = _parser().parse_args(["run", "--scale", value])
    assert _config_from_args(args).scale == expected


def test_bad_flag_values_are_refused(capsys):
    with pytest.raises(ConfigError):
        _config_from_args(_parser().parse_args(["run", "--scale", "lots"]))
    with pytest.raises(ConfigError):
        _config_from_args(_parser().parse_args(["run", "--limit", "1.5"]))
    assert _config_from_args(_parser().parse_args(["run", "--pretrained", "no"])).pretrained is False
    assert _config_from_args(_parser().parse_args(["run", "--pretrained", "Yes"])).pretrained is True
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["run", "--pretrained", "maybe"])
    assert e.value.code == 2 and "true/false" in capsys.readouterr().err
