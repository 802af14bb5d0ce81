"""Experiment files that are valid JSON but not what the product writes (metrics.json, split.json), and init
inputs that used to pass and fail later (a split with no validation images, a seed NumPy refuses, a schema
that cannot be used, a config that is no regular file): one line, exit 2, nothing destroyed."""

import json
import math
import resource

import pytest

from conftest import ROOT, g, invoke, make_config, run_cli
from ignite_mnist import data
from ignite_mnist.errors import UserError
from ignite_mnist.experiment import create_experiment, load_config, open_experiment
from ignite_mnist.launch import run_training
from test_bad_input import assert_refused


def info_json(capsys, folder):
    code, out, err = invoke(capsys, *g(folder), "info", "--json")
    assert code == 0, err
    return json.loads(out)


# ---- metrics.json: what is not History's shape is read from the last checkpoint -----------------

def _drop_epoch_1(h):
    h["epochs"] = h["epochs"][1:]


def _no_validation_accuracy(h):
    for e in h["epochs"]:
        del e["validation_accuracy"]
        del e["validation_loss"]


EDITS = {
    "reviewer's example": lambda h: h.update(epochs=[{"epoch": 1}, {"epoch": 2, "validation_accuracy": "x"}]),
    "stopped_early a string": lambda h: h.update(stopped_early="yes"),
    "stopped_early a bool": lambda h: h.update(stopped_early=True),
    "stopped_early beyond the epochs": lambda h: h.update(stopped_early=7),
    "epoch 1 missing": _drop_epoch_1,
    "epochs out of order": lambda h: h["epochs"].reverse(),
    "epoch a string": lambda h: h["epochs"][0].update(epoch="1"),
    "epoch a float": lambda h: h["epochs"][0].update(epoch=1.0),
    "a metric a bool": lambda h: h["epochs"][1].update(test_accuracy=True),
    "a metric null": lambda h: h["epochs"][1].update(validation_loss=None),
    "a metric missing in one epoch": lambda h: h["epochs"][0].pop("test_loss"),
    "validation gone from a validated experiment": _no_validation_accuracy,
    "an epoch not a dict": lambda h: h["epochs"].__setitem__(0, [1]),
    "epochs a dict": lambda h: h.update(epochs={"1": {}}),
    "no stopped_early": lambda h: h.pop("stopped_early"),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_metrics_json_not_in_the_product_s_shape_is_read_from_the_checkpoint(copy, capsys, tiny_data, edit):
    metrics = copy / "experiments" / "exp" / "metrics.json"
    whole = json.loads(metrics.read_text())
    expected = info_json(capsys, copy)
    edit(whole)
    metrics.write_text(json.dumps(whole))

    assert info_json(capsys, copy) == expected
    code, out, err = invoke(capsys, *g(copy), "info")
    assert code == 0 and "  epoch 2" in out and "validation accuracy" in out, err
    code, out, err = invoke(capsys, "--experiments-path", copy / "experiments", "list", "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert "broken" not in row and row["epochs"] == 2 and row["best_epoch"] == expected["best_epoch"]
    assert row["stopped_early"] is None
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), "train", "--max-epochs", "2", "--device", "cpu")
    assert code == 0 and "already trained to epoch 2: nothing to do" in err, err


def test_metrics_json_in_the_product_s_shape_is_trusted_nan_included(copy, capsys):
    """Not stricter than the product: edited numbers, NaN and Infinity (a diverged loss) are read as they are."""
    metrics = copy / "experiments" / "exp" / "metrics.json"
    whole = json.loads(metrics.read_text())
    whole["epochs"][0].update(train_loss=float("nan"), validation_loss=float("inf"), validation_accuracy=99)
    metrics.write_text(json.dumps(whole))  # json writes NaN and Infinity, as History's mirror does
    experiment = open_experiment(copy / "experiments", "exp")
    history = experiment.history()
    assert math.isnan(history["epochs"][0]["train_loss"]) and history["epochs"][0]["validation_accuracy"] == 99
    assert experiment.best_epoch(history) == 1
    assert invoke(capsys, *g(copy), "info")[0] == 0


def test_metrics_json_without_validation_is_trusted_when_the_experiment_has_none(copy):
    """val_split 0: no validation_ keys is the product's shape; validation keys there would not be."""
    experiment = open_experiment(copy / "experiments", "exp")
    meta = json.loads(json.dumps(experiment.meta))
    meta["config"]["data"]["val_split"] = 0
    unvalidated = type(experiment)(experiment.root, meta)
    whole = json.loads(experiment.metrics_file.read_text())
    assert unvalidated.history()["epochs"][0]["validation_accuracy"] == whole["epochs"][0]["validation_accuracy"]
    for e in whole["epochs"]:
        e["test_accuracy"] = 12.5  # to tell metrics.json from the checkpoint
        for key in [k for k in e if k.startswith("validation_")]:
            del e[key]
    experiment.write_history(whole)
    assert unvalidated.history() == whole


# ---- split.json: the indexes the checkpoints were trained on ------------------------------------

def _split_edits(split, n):
    train, validation = split["train"], split["validation"]
    return {
        "a string": ({"train": [1, 2, "a"], "validation": []}, 'its train list holds "a"'),
        "negative": ({"train": [-1, 0], "validation": [5]}, "its train list holds -1, not an index into the 400"),
        "empty": ({"train": [], "validation": []}, "its train list holds 0 indexes, but experiment.json records 320"),
        "a bool": ({"train": [True, *train[1:]], "validation": validation}, "its train list holds true"),
        "a float": ({"train": [float(train[0]), *train[1:]], "validation": validation},
                    f"its train list holds {float(train[0])}, not an index"),
        "out of range": ({"train": [*train[:-1], n], "validation": validation}, "holds 400, not an index"),
        "a duplicate": ({"train": [train[0], *train[:-1]], "validation": validation}, "holds an index twice"),
        "in both": ({"train": [*train[:-1], validation[0]], "validation": validation}, "in both its train and"),
        "moved": ({"train": [*train, validation[0]], "validation": validation[1:]},
                  "its train list holds 321 indexes, but experiment.json records 320"),
    }


CASES = list(_split_edits({"train": list(range(320)), "validation": list(range(320, 400))}, 400))


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_split_json_is_refused(copy, capsys, tiny_data, case):
    path = copy / "experiments" / "exp" / "split.json"
    content, message = _split_edits(json.loads(path.read_text()), 400)[case]
    path.write_text(json.dumps(content))
    line = assert_refused(capsys, copy, [*g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu"],
                          2, f"error: split file {path} is damaged: ")
    assert message in line and "cannot be redrawn safely" in line


def test_an_intact_split_passes_the_checks(copy):
    experiment = open_experiment(copy / "experiments", "exp")
    split = experiment.load_split()
    assert (len(split["train"]), len(split["validation"])) == (320, 80)
    assert sorted(split["train"] + split["validation"]) == list(range(400))


# ---- init: inputs that used to pass and fail at train ----------------------------------------------

@pytest.mark.parametrize("val_split, message", [
    (0.001, "data.val_split 0.001 of 400 training images gives 0 validation images: use 0 for none or at least 1/400"),
    (0.999, "data.val_split 0.999 leaves no training images out of 400"),
])
def test_a_val_split_that_leaves_a_set_empty_is_refused_at_init(workdir, capsys, tiny_data, val_split, message):
    assert_refused(capsys, workdir, [*g(workdir, "x", tiny_data), "init", "--config-path", make_config(workdir),
                                     "--set", f"data.val_split={val_split}"], 2, message)
    assert not (workdir / "experiments" / "x").exists()


def test_the_smallest_val_split_that_gives_a_validation_image_is_accepted(workdir, capsys, tiny_data):
    code, _, err = invoke(capsys, *g(workdir, "x", tiny_data), "init", "--config-path", make_config(workdir),
                          "--set", "data.val_split=0.0025")
    assert code == 0 and "399 training, 1 validation" in err, err


@pytest.mark.parametrize("seed", [2**32, 2**63, -1])
def test_a_seed_numpy_refuses_is_refused_at_init(workdir, capsys, tiny_data, seed):
    assert_refused(capsys, workdir, [*g(workdir, "x", tiny_data), "init", "--config-path", make_config(workdir),
                                     "--seed", seed], 2, f"--seed must be between 0 and 2**32 - 1 (4294967295), not {seed}")
    with pytest.raises(UserError, match="--seed must be between 0 and 2"):  # any caller, not just the CLI
        create_experiment(workdir / "experiments", "y", load_config(make_config(workdir)), seed,
                          data.dataset_sizes("mnist", tiny_data))
    assert not (workdir / "experiments").exists()


def test_the_largest_seed_trains(workdir, tiny_data):
    experiment = create_experiment(workdir / "experiments", "x", load_config(make_config(workdir)), 2**32 - 1,
                                   data.dataset_sizes("mnist", tiny_data))
    assert run_training(experiment, tiny_data, max_epochs=1, device_name="cpu")["epoch"] == 1


@pytest.mark.parametrize("schema, reason", [
    ({"type": "object", "properties": {"data": {"$ref": "#/nope"}}}, "PointerToNowhere"),
    ({"properties": {"data": {"$ref": "https://example.com/schema.json"}}}, "example.com/schema.json"),
    ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}, "a $ref leads back to itself"),
])
def test_a_schema_that_cannot_be_used_is_refused(workdir, capsys, tiny_data, schema, reason):
    path = workdir / "s.json"
    path.write_text(json.dumps(schema))
    line = assert_refused(capsys, workdir, [*g(workdir, "x", tiny_data), "init", "--config-path", make_config(workdir),
                                            "--config-schema-path", path], 2,
                          f"config schema {path} is not a usable JSON schema (")
    assert reason in line


@pytest.mark.parametrize("schema, shown", [("5", "5"), ("null", "None")])  # jsonschema's words: Python's repr
def test_a_schema_that_is_not_an_object_is_refused(workdir, capsys, tiny_data, schema, shown):
    path = workdir / "s.json"
    path.write_text(schema)
    assert_refused(capsys, workdir, [*g(workdir, "x", tiny_data), "init", "--config-path", make_config(workdir),
                                     "--config-schema-path", path], 2,
                   f"config schema {path} is not a valid JSON schema: {shown} is not of type 'object', 'boolean'")


@pytest.mark.parametrize("option", ["--config-path", "--config-schema-path"])
def test_a_config_or_schema_over_a_mebibyte_is_refused_unread(workdir, capsys, tiny_data, option):
    path = workdir / "big.json"
    valid = make_config(workdir) if option == "--config-path" else ROOT / "config" / "config.schema.json"
    path.write_text(" " * (1 << 20) + valid.read_text())  # valid JSON, but no config is that large
    what = "config" if option == "--config-path" else "config schema"
    assert_refused(capsys, workdir, [*g(workdir, "x", tiny_data), "init", "--config-path", make_config(workdir),
                                     option, path], 2, f"{what} {path} is larger than 1 MiB: is it the right file?")


@pytest.mark.parametrize("option, what", [("--config-path", "config"), ("--config-schema-path", "config schema")])
def test_dev_zero_is_refused_before_it_is_read(workdir, tiny_data, option, what):
    """A device never ends: refused, not read until memory runs out (capped here, should it be read)."""
    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    r = run_cli(*g(workdir, "x", tiny_data), "init", option, "/dev/zero", timeout=120, preexec_fn=cap_memory)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {what} /dev/zero is not a regular file", r.stderr
    assert not (workdir / "experiments").exists()


# ---- a file where the experiment keeps a folder -------------------------------------------------

@pytest.mark.parametrize("folder", ["checkpoints", "tensorboard", "releases"])
def test_a_file_in_place_of_a_folder_is_named_before_training(copy, capsys, tiny_data, folder):
    import shutil

    root = copy / "experiments" / "exp"
    shutil.rmtree(root / folder)
    (root / folder).write_text("not a folder\n")
    message = f"{root / folder} is not a folder: the experiment keeps its {folder} there; move it away"
    assert_refused(capsys, copy, [*g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu"], 2, message)
    if folder == "releases":
        assert_refused(capsys, copy, [*g(copy, data=tiny_data), "export-release"], 2, message)
    if folder != "tensorboard":  # info and list say so too, not "none yet"
        assert_refused(capsys, copy, [*g(copy, data=tiny_data), "info"], 2, message)
        code, out, err = invoke(capsys, "--experiments-path", copy / "experiments", "list", "--json")
        assert code == 0 and json.loads(out) == [{"name": "exp", "broken": message}], out


def test_a_validation_split_of_a_one_image_dataset_is_refused_saying_why():
    from ignite_mnist.experiment import draw_split

    with pytest.raises(UserError, match="need at least 2 training images, and the dataset has 1: use data.val_split 0"):
        draw_split(1, 0.4, 0)
    assert draw_split(1, 0, 0) == {"train": [0], "validation": []}
