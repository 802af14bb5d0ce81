"""Configs: the shipped ones are valid; every violation is reported with its JSON path; nothing is created."""

import json

import pytest

from conftest import ROOT, g, invoke, make_config
from ignite_mnist.experiment import load_config


@pytest.mark.parametrize("name", ["config.default.json", "config.sample.json"])
def test_shipped_configs_are_valid_and_hold_the_tutorial_values(name):
    config = load_config(ROOT / "config" / name, ROOT / "config" / "config.schema.json")
    assert config["data"]["val_split"] == 0.2
    assert config["training"]["batch_size"] == 64 and config["training"]["lr"] == 1.0
    assert config["training"]["lr_gamma"] == 0.7
    assert config["data"]["dataset"] == ("mnist" if name == "config.default.json" else "mnist-sample")


def test_optional_fields_take_the_schema_defaults(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": {"val_split": 0}, "training": {"batch_size": 8.0, "lr": 0.5, "lr_gamma": 1}}))
    config = load_config(path)
    assert config["data"] == {"val_split": 0, "dataset": "mnist"}
    assert config["training"]["precision"] == "auto" and config["training"]["eval_batch_size"] == 128
    assert config["training"]["batch_size"] == 8 and isinstance(config["training"]["batch_size"], int)


BAD_CONFIGS = [
    # (what to change, the message's expected parts)
    ({"training": {"batch_size": "64", "lr": 1.0, "lr_gamma": 0.7}}, ["$.training.batch_size", '"64" is not of type integer']),
    ({"training": {"batch_size": 0, "lr": 1.0, "lr_gamma": 0.7}}, ["$.training.batch_size", "less than the minimum"]),
    ({"training": {"batch_size": 64, "lr": -1, "lr_gamma": 0.7}}, ["$.training.lr", "less than or equal to the minimum"]),
    ({"training": {"batch_size": 64, "lr": 1.0, "lr_gamma": 2}}, ["$.training.lr_gamma", "greater than the maximum"]),
    ({"training": {"batch_size": 64, "lr": 1.0}}, ["$.training", "'lr_gamma' is a required property"]),
    ({"data": {"val_split": 1.0}}, ["$.data.val_split", "greater than or equal to the maximum"]),
    ({"data": {"val_split": 0.2, "dataset": "cifar"}}, ["$.data.dataset", '"cifar" is not one of']),
    ({"trainig": {"batch_size": 64}}, ["$", 'unknown key "trainig"']),
    ({"training": {"batch_size": 64, "lr": 1.0, "lr_gamma": 0.7, "precison": "bf16"}}, ['$.training: unknown key "precison"']),
    ({"training": {"batch_size": 64, "lr": 1.0, "lr_gamma": 0.7, "precision": "fp16"}}, ["$.training.precision"]),
]


@pytest.mark.parametrize("change, expected", BAD_CONFIGS)
def test_invalid_config_is_refused_with_its_json_path_and_creates_nothing(workdir, tiny_data, capsys, change, expected):
    config = json.loads((ROOT / "config" / "config.default.json").read_text())
    for section, value in change.items():
        config[section] = value
    path = workdir / "bad.json"
    path.write_text(json.dumps(config))
    code, out, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--config-path", path)
    assert code == 2
    assert err.startswith("error: invalid config") and len(err.strip().splitlines()) == 1
    for part in expected:
        assert part in err
    assert not (workdir / "experiments").exists() or not list((workdir / "experiments").iterdir())  # no temp folder


def test_every_violation_is_listed(workdir, tiny_data, capsys):
    path = workdir / "bad.json"
    path.write_text(json.dumps({"data": {"val_split": -1, "extra": 1}, "training": {"batch_size": 0, "lr": 1, "lr_gamma": 0.5}}))
    code, _, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--config-path", path)
    assert code == 2 and "(3 problems)" in err
    assert "$.data.val_split" in err and 'unknown key "extra"' in err and "$.training.batch_size" in err


@pytest.mark.parametrize("text, expected", [
    ("{not json", "is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ("", "is not valid JSON"),
    ('{"a": "one\ntwo"}', "is not valid JSON: Invalid control character at line 1 column 11"),  # (not "at at")
    ("[1, 2]", "[1, 2] is not of type object"),
    ('{"training": {"lr": 0.5, "lr": 2.0}}', 'gives the key "lr" twice in one object: which one is meant? Keep one'),
])
def test_malformed_json(workdir, tiny_data, capsys, text, expected):
    path = workdir / "bad.json"
    path.write_text(text)
    code, _, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--config-path", path)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "experiments" / "exp").exists()


def test_a_config_saved_with_a_byte_order_mark_is_read(workdir, tiny_data, capsys):
    path = workdir / "bom.json"  # as some editors save UTF-8
    path.write_bytes(b"\xef\xbb\xbf" + make_config(workdir).read_bytes())
    code, _, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--config-path", path)
    assert code == 0, err
    assert json.loads((workdir / "experiments" / "exp" / "experiment.json").read_text())["config"]["training"]["lr"] \
        == json.loads(make_config(workdir).read_text())["training"]["lr"]


def test_missing_config_and_schema_files(workdir, tiny_data, capsys):
    code, _, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--config-path", "nope.json")
    assert code == 2 and "config nope.json does not exist" in err
    code, _, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--config-path", make_config(workdir),
                          "--config-schema-file", "nope.schema.json")
    assert code == 2 and "config schema nope.schema.json does not exist" in err
    (workdir / "broken.schema.json").write_text('{"type": 12}')
    code, _, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--config-path", make_config(workdir),
                          "--config-schema-path", workdir / "broken.schema.json")
    assert code == 2 and "is not a valid JSON schema" in err
    assert not (workdir / "experiments" / "exp").exists()


def test_a_custom_schema_is_applied_and_cannot_let_unknown_fields_through(workdir, tiny_data, capsys):
    schema = json.loads((ROOT / "config" / "config.schema.json").read_text())
    schema["properties"]["training"]["properties"]["batch_size"]["maximum"] = 32
    (workdir / "strict.json").write_text(json.dumps(schema))
    config = make_config(workdir, **{"training.batch_size": 64})
    code, _, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--config-path", config,
                          "--config-schema-file", workdir / "strict.json")
    assert code == 2 and "$.training.batch_size: 64 is greater than the maximum of 32" in err
    (workdir / "lax.json").write_text(json.dumps({"type": "object"}))
    config = make_config(workdir, **{"training.momentum": 0.9})
    code, _, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--config-path", config,
                          "--config-schema-path", workdir / "lax.json")
    assert code == 2 and 'unknown key "momentum"' in err
