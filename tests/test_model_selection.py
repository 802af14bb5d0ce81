"""Model selection: the best epoch (validation only), --epoch best|last, early stopping that resumes exactly,
checkpoint retention, and the release that training writes when it completes."""

import json
from pathlib import Path

import pytest
import torch

from conftest import assert_same, g, invoke, make_config, snapshot
from ignite_mnist import data
from ignite_mnist.checkpoints import read_checkpoint
from ignite_mnist.experiment import _ranges, create_experiment, load_config, open_experiment
from ignite_mnist.launch import run_training

# min_delta 100 points: no epoch after the first can improve, so early stopping fires at epoch patience + 1
NEVER_BETTER = {"patience": 4, "min_delta": 100}


def new_experiment(workdir, tiny_data, name, **changes):
    config = load_config(make_config(workdir, **changes))
    return create_experiment(workdir / "experiments", name, config, seed=5,
                             sizes=data.dataset_sizes("mnist", tiny_data))


def fake_history(experiment, validation: list, test: list, stopped_early=None):
    """metrics.json and empty checkpoint files for epochs 1..n with these accuracies (no training needed)."""
    experiment.checkpoints_dir.mkdir(exist_ok=True)
    epochs = []
    for epoch, (v, t) in enumerate(zip(validation, test), start=1):
        (experiment.checkpoints_dir / f"checkpoint_{epoch}.pt").write_bytes(b"")
        epochs.append({"epoch": epoch, **({"validation_accuracy": v} if v is not None else {}), "test_accuracy": t})
    experiment.write_history({"epochs": epochs, "stopped_early": stopped_early})


# ---- the best epoch -----------------------------------------------------------------------------


def test_the_best_epoch_is_chosen_on_validation_never_on_test_and_ties_go_to_the_earlier(workdir, tiny_data):
    experiment = new_experiment(workdir, tiny_data, "fake")
    fake_history(experiment, validation=[60.0, 80.0, 75.0, 80.0, 70.0], test=[99.0, 50.0, 98.0, 97.0, 99.5])
    assert experiment.best_epoch() == 2
    assert experiment.resolve_epoch("best") == 2 and experiment.resolve_epoch("last") == 5
    assert experiment.resolve_epoch("4") == 4


@pytest.fixture(scope="module")
def trained3(tmp_path_factory, tiny_data):
    """An experiment trained 3 epochs with the CLI's own code, in this process."""
    folder = tmp_path_factory.mktemp("trained3")
    experiment = new_experiment(folder, tiny_data, "exp")
    run_training(experiment, tiny_data, max_epochs=3, device_name="cpu")
    return folder


def test_epoch_best_and_last_on_test_and_export_release(trained3, tmp_path, capsys, tiny_data):
    import shutil

    shutil.copytree(trained3, tmp_path / "t")
    opts = g(tmp_path / "t", "exp", tiny_data)
    metrics = tmp_path / "t" / "experiments" / "exp" / "metrics.json"
    history = json.loads(metrics.read_text())
    for e, accuracy in zip(history["epochs"], (90.0, 80.0, 90.0)):  # best: epoch 1 (the earlier of a tie), not 3
        e["validation_accuracy"] = accuracy
    metrics.write_text(json.dumps(history))
    best = 1
    code, out, err = invoke(capsys, *opts, "test", "--epoch", "best", "--device", "cpu", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["epoch"] == best and result["accuracy"] == history["epochs"][best - 1]["test_accuracy"]
    code, out, err = invoke(capsys, *opts, "test", "--epoch", "last", "--device", "cpu", "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["epoch"] == 3
    code, out, err = invoke(capsys, *opts, "export-release", "--epoch", "best")
    assert code == 0 and out.strip().splitlines()[-1].endswith(f"release_epoch_{best}.pt")
    code, out, err = invoke(capsys, *opts, "info")
    assert code == 0 and f"epoch {best} (best):" in out and out.count("(best)") == 1
    code, out, err = invoke(capsys, *opts, "info", "--json")
    assert json.loads(out)["best_epoch"] == best and json.loads(out)["stopped_early"] is None


def test_training_releases_the_best_epoch_when_it_completes(workdir, tiny_data, monkeypatch):
    from ignite_mnist.experiment import Experiment

    experiment = new_experiment(workdir, tiny_data, "released")
    real = Experiment.best_epoch  # the best epoch: 2 once there is one, not the last (3)
    monkeypatch.setattr(Experiment, "best_epoch", lambda self, history=None: min(2, real(self, history)))
    run_training(experiment, tiny_data, max_epochs=3, device_name="cpu")
    assert [(r["epoch"], r["format"]) for r in experiment.releases()] == [(2, "pt")]
    release = torch.load(experiment.release_path(2), weights_only=True)
    checkpoint = read_checkpoint(experiment.checkpoints()[2], "cpu")
    assert release["epoch"] == 2 and release["metrics"]["validation_accuracy"] == \
        checkpoint["history"]["epochs"][-1]["validation_accuracy"]
    assert all(torch.equal(release["model"][k], v) for k, v in checkpoint["model"].items())
    assert "optimizer" not in release
    assert f"release of epoch 2 (the best) written: {experiment.release_path(2)}" in experiment.log_file.read_text()


def test_a_release_that_a_kill_prevented_is_written_by_the_next_train(workdir, tiny_data, capsys):
    experiment = new_experiment(workdir, tiny_data, "again")
    run_training(experiment, tiny_data, max_epochs=2, device_name="cpu")
    best = experiment.best_epoch()
    experiment.release_path(best).unlink()  # as if killed after the last checkpoint, before the release
    capsys.readouterr()
    code, _, err = invoke(capsys, *g(workdir, "again", tiny_data), "train", "--max-epochs", "2", "--device", "cpu")
    assert code == 0 and "is already trained to epoch 2: nothing to do" in err
    assert f"release of epoch {best} written" in err and experiment.release_path(best).is_file()


def test_without_validation_best_is_refused_and_the_last_epoch_is_released(workdir, tiny_data, capsys):
    experiment = new_experiment(workdir, tiny_data, "noval", **{"data.val_split": 0})
    run_training(experiment, tiny_data, max_epochs=2, device_name="cpu")
    assert [(r["epoch"], r["format"]) for r in experiment.releases()] == [(2, "pt")] and experiment.best_epoch() is None
    capsys.readouterr()
    for command in ("test", "export-release"):
        before = snapshot(experiment.root)
        code, _, err = invoke(capsys, *g(workdir, "noval", tiny_data), command, "--epoch", "best")
        assert code == 2 and err.count("\n") == 1 and err.startswith(
            "error: experiment noval has no validation set (data.val_split 0), so it has no best epoch: "
            "choosing on the test set would overfit it; use --epoch last or a number"), err
        after = snapshot(experiment.root)
        assert {k: v for k, v in after.items() if k != "verbose.log"} == \
            {k: v for k, v in before.items() if k != "verbose.log"}


@pytest.mark.parametrize("epoch", ["first", "2_0", "\u0662", " 2", "+2", "--1"])  # \u0662: an Arabic-Indic 2
def test_an_epoch_that_is_not_a_number_best_or_last_is_refused(trained3, capsys, tiny_data, epoch):
    code, _, err = invoke(capsys, *g(trained3, "exp", tiny_data), "test", "--epoch", epoch)
    assert code == 2 and err.strip() == f"error: --epoch takes an epoch number, best or last, not {epoch!r}"


# ---- early stopping -----------------------------------------------------------------------------


def test_early_stopping_fires_says_so_and_a_longer_train_has_nothing_to_do(workdir, tiny_data, capsys):
    opts = g(workdir, "es", tiny_data)
    config = make_config(workdir, **{"training.early_stopping": {"patience": 2, "min_delta": 100}})
    assert invoke(capsys, *opts, "init", "--config-path", config)[0] == 0
    code, _, err = invoke(capsys, *opts, "train", "--max-epochs", "10", "--device", "cpu")
    assert code == 0, err
    lines = err.splitlines()
    said = lines.index("stopping early at epoch 3: validation accuracy did not improve by more than 100 points for 2 epochs")
    assert lines[said - 1].startswith("epoch 3/10: ")  # after the epoch it judged
    experiment = open_experiment(workdir / "experiments", "es")
    assert list(experiment.checkpoints()) == [1, 2, 3]
    assert [r["epoch"] for r in experiment.releases()] == [experiment.best_epoch()]

    code, out, _ = invoke(capsys, *opts, "info")
    assert "stopped early at epoch 3: validation accuracy did not improve" in out
    code, out, _ = invoke(capsys, *opts, "info", "--json")
    assert json.loads(out)["stopped_early"] == 3
    before = snapshot(experiment.checkpoints_dir)
    code, _, err = invoke(capsys, *opts, "train", "--max-epochs", "20", "--device", "cpu")
    assert code == 0 and err.strip().splitlines()[-1] == (
        "experiment es stopped early at epoch 3: validation accuracy did not improve by more than 100 points "
        "for 2 epochs; nothing to do")
    assert snapshot(experiment.checkpoints_dir) == before

    # the rule edited by hand since, or turned off: the stop stands, said with the rule that made it
    rule = "validation accuracy did not improve by more than 100 points for 2 epochs"
    for edited in ({"patience": 5, "min_delta": 0}, None):
        meta = json.loads((experiment.root / "experiment.json").read_text())
        meta["config"]["training"]["early_stopping"] = edited
        (experiment.root / "experiment.json").write_text(json.dumps(meta))
        code, out, err = invoke(capsys, *opts, "info")
        assert code == 0 and f"stopped early at epoch 3: {rule}" in out, (out, err)
        code, _, err = invoke(capsys, *opts, "train", "--max-epochs", "20", "--device", "cpu")
        assert code == 0 and err.strip().splitlines()[-1] == \
            f"experiment es stopped early at epoch 3: {rule}; nothing to do", err
        assert snapshot(experiment.checkpoints_dir) == before
    metrics = json.loads(experiment.metrics_file.read_text())  # as an earlier version wrote it: no rule recorded
    assert metrics.pop("stopped_by") == {"patience": 2, "min_delta": 100}
    experiment.metrics_file.write_text(json.dumps(metrics))
    code, out, err = invoke(capsys, *opts, "info")
    assert code == 0 and ("stopped early at epoch 3: by the rule it was trained with (training.early_stopping is "
                          "null in experiment.json now)") in out, (out, err)


def test_early_stopping_set_by_hand_after_training_is_named_as_such(copy, tiny_data, capsys):
    meta = json.loads((copy / "experiments" / "exp" / "experiment.json").read_text())
    meta["config"]["training"]["early_stopping"] = {"patience": 2, "min_delta": 0}
    (copy / "experiments" / "exp" / "experiment.json").write_text(json.dumps(meta))
    code, _, err = invoke(capsys, *g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu")
    assert code == 2 and err.strip().splitlines()[-1].endswith(
        "checkpoint_2.pt holds no early-stopping state: it was trained without early stopping, and "
        "training.early_stopping was set in experiment.json since; set it back to null, or init another experiment "
        "with it"), err
    assert sorted(p.name for p in (copy / "experiments" / "exp" / "checkpoints").iterdir()) == \
        ["checkpoint_1.pt", "checkpoint_2.pt"]


def test_train_s_last_line_names_the_released_epoch_where_it_is_not_the_last(workdir, tiny_data, capsys, monkeypatch):
    from ignite_mnist.experiment import Experiment

    opts = g(workdir, "b", tiny_data)
    assert invoke(capsys, *opts, "init", "--config-path", make_config(workdir))[0] == 0
    monkeypatch.setattr(Experiment, "best_epoch", lambda self, history=None: 1 if self.history()["epochs"] else None)
    code, _, err = invoke(capsys, *opts, "train", "--max-epochs", "2", "--device", "cpu")
    assert code == 0, err
    epochs = open_experiment(workdir / "experiments", "b").history()["epochs"]
    assert err.strip().splitlines()[-1] == (
        f"trained b to epoch 2, validation accuracy {epochs[1]['validation_accuracy']:.2f}%, test accuracy "
        f"{epochs[1]['test_accuracy']:.2f}%; its best epoch, released, is 1, validation accuracy "
        f"{epochs[0]['validation_accuracy']:.2f}%, test accuracy {epochs[0]['test_accuracy']:.2f}%")
    monkeypatch.setattr(Experiment, "best_epoch", lambda self, history=None: 3 if self.history()["epochs"] else None)
    code, _, err = invoke(capsys, *opts, "train", "--max-epochs", "3", "--device", "cpu")
    assert code == 0 and "its best epoch" not in err.strip().splitlines()[-1], err  # the last epoch is the best


def test_early_stopping_resumed_from_epoch_3_stops_where_the_uninterrupted_run_stops(workdir, tiny_data):
    straight = new_experiment(workdir, tiny_data, "straight", **{"training.early_stopping": NEVER_BETTER})
    resumed = new_experiment(workdir, tiny_data, "resumed", **{"training.early_stopping": NEVER_BETTER})
    run_training(straight, tiny_data, max_epochs=10, device_name="cpu")
    run_training(resumed, tiny_data, max_epochs=3, device_name="cpu")
    state = read_checkpoint(resumed.checkpoints()[3], "cpu")["early_stopping"]
    assert state["counter"] == 2
    assert state["best_score"] == max(e["validation_accuracy"] for e in resumed.history()["epochs"])
    run_training(resumed, tiny_data, max_epochs=10, device_name="cpu")
    assert straight.history()["stopped_early"] == resumed.history()["stopped_early"] == 5
    assert list(straight.checkpoints()) == list(resumed.checkpoints()) == [1, 2, 3, 4, 5]
    for epoch in (3, 5):
        assert_same(read_checkpoint(straight.checkpoints()[epoch], "cpu"),
                    read_checkpoint(resumed.checkpoints()[epoch], "cpu"), f"epoch {epoch}")


def test_early_stopping_without_a_validation_set_is_refused_at_init(workdir, tiny_data, capsys):
    config = make_config(workdir, **{"data.val_split": 0, "training.early_stopping": {"patience": 3}})
    code, _, err = invoke(capsys, *g(workdir, "x", tiny_data), "init", "--config-path", config)
    assert code == 2 and err.count("\n") == 1 and "early stopping watches validation accuracy, but data.val_split " \
        "is 0 (no validation set)" in err
    assert not (workdir / "experiments" / "x").exists()


# ---- retention ----------------------------------------------------------------------------------


def test_retention_keeps_the_last_k_and_the_best(workdir, tiny_data):
    experiment = new_experiment(workdir, tiny_data, "fake", **{"training.keep_checkpoints": 2})
    fake_history(experiment, validation=[60.0, 90.0, 75.0, 80.0, 70.0, 85.0], test=[0] * 6)
    experiment.remove_unretained_checkpoints()
    assert list(experiment.checkpoints()) == [2, 5, 6]
    fake_history(experiment, validation=[60.0, 70.0, 75.0, 80.0, 90.0, 85.0], test=[0] * 6)
    experiment.remove_unretained_checkpoints()
    assert list(experiment.checkpoints()) == [5, 6]  # the best among the last: K files in all


def test_training_with_retention_and_a_removed_epoch(workdir, tiny_data, capsys):
    experiment = new_experiment(workdir, tiny_data, "kept", **{"training.keep_checkpoints": 1})
    run_training(experiment, tiny_data, max_epochs=4, device_name="cpu")
    best = experiment.best_epoch()
    assert list(experiment.checkpoints()) == sorted({best, 4})
    assert [e["epoch"] for e in experiment.history()["epochs"]] == [1, 2, 3, 4]  # the metrics of all stay
    removed = min({1, 2, 3} - {best})
    capsys.readouterr()
    code, _, err = invoke(capsys, *g(workdir, "kept", tiny_data), "test", "--epoch", str(removed))
    assert code == 2 and err.strip() == (
        f"error: experiment kept has no checkpoint of epoch {removed}: it was removed by retention "
        f"(training.keep_checkpoints 1); epochs with a checkpoint: {_ranges(sorted({best, 4}))}")
    code, out, _ = invoke(capsys, *g(workdir, "kept", tiny_data), "info")
    assert f"epoch {removed}: checkpoint removed by retention, validation accuracy" in out


def test_a_metrics_file_behind_the_last_checkpoint_is_read_from_the_checkpoint_and_mended(workdir, tiny_data):
    """A kill between the checkpoint save and the metrics.json write: the checkpoint is the truth."""
    experiment = new_experiment(workdir, tiny_data, "lag")
    run_training(experiment, tiny_data, max_epochs=2, device_name="cpu")
    whole = json.loads(experiment.metrics_file.read_text())
    experiment.write_history({**whole, "epochs": whole["epochs"][:1]})
    assert experiment.history() == whole
    run_training(experiment, tiny_data, max_epochs=3, device_name="cpu")
    assert [e["epoch"] for e in json.loads(experiment.metrics_file.read_text())["epochs"]] == [1, 2, 3]


def test_an_experiment_of_ignite_mnist_0_1_resumes_with_its_whole_history(workdir, tiny_data):
    """0.1's checkpoints held only their own epoch's "metrics", and there was no metrics.json."""
    experiment = new_experiment(workdir, tiny_data, "old")
    run_training(experiment, tiny_data, max_epochs=2, device_name="cpu")
    trained = experiment.history()["epochs"]
    for epoch, path in experiment.checkpoints().items():
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["metrics"] = checkpoint.pop("history")["epochs"][-1]
        torch.save(checkpoint, path)
    experiment.metrics_file.unlink()
    assert experiment.history()["epochs"] == trained  # gathered from the checkpoints
    run_training(experiment, tiny_data, max_epochs=3, device_name="cpu")
    history = read_checkpoint(experiment.checkpoints()[3], "cpu")["history"]
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3] and history["epochs"][:2] == trained


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_a_best_checkpoint_deleted_or_damaged_by_hand_stops_no_training(copy, capsys, tiny_data, monkeypatch, damage):
    """train's release of the best epoch, whose checkpoint was deleted or damaged by hand (retention keeps it): the
    training is done, so one line says why no release was written, and it exits 0; --epoch best then names the
    best epoch that still has a checkpoint. A damaged checkpoint that is not the last is not to be moved away."""
    from ignite_mnist.experiment import Experiment

    real = Experiment.best_epoch  # epoch 1 the best, 2 the last; among the others, the real choice
    monkeypatch.setattr(Experiment, "best_epoch", lambda self, history=None: 1 if history is None or any(
        e["epoch"] == 1 for e in history["epochs"]) else real(self, history))
    checkpoint = copy / "experiments" / "exp" / "checkpoints" / "checkpoint_1.pt"
    if damage == "deleted":
        checkpoint.unlink()
        why = (f"no release written: the checkpoint of epoch 1, which the release would hold, is missing (deleted or "
               "moved away); `export-release --epoch N` writes another epoch's")
    else:
        checkpoint.write_bytes(b"junk")
        why = (f"no release written: checkpoint {checkpoint} is corrupt or not an ignite-mnist checkpoint (not a zip "
               "archive, as torch.save writes): restore it from a copy, or use another epoch")
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), "train", "--max-epochs", 3, "--device", "cpu")
    assert code == 0 and why in err.splitlines() and "error" not in err, err
    history = json.loads((copy / "experiments" / "exp" / "metrics.json").read_text())["epochs"]
    best_left = max(history[1:], key=lambda e: (e["validation_accuracy"], -e["epoch"]))
    if damage == "deleted":
        code, out, err = invoke(capsys, *g(copy, data=tiny_data), "test", "--epoch", "best")
        assert code == 2 and err.strip() == (
            "error: the best epoch of experiment exp, 1, has no checkpoint: it was deleted or moved away; the best of "
            f"the epochs with one is {best_left['epoch']} (validation accuracy {best_left['validation_accuracy']:.2f}%):"
            f" use --epoch {best_left['epoch']}"), err


def test_a_damaged_last_checkpoint_s_advice_fits_what_is_left(copy, capsys, tiny_data):
    checkpoints = copy / "experiments" / "exp" / "checkpoints"
    (checkpoints / "checkpoint_2.pt").write_bytes(b"junk")
    train = [*g(copy, data=tiny_data), "train", "--max-epochs", 3, "--device", "cpu"]
    code, _, err = invoke(capsys, *train)
    assert code == 2 and err.strip().endswith(": move it away to go back to the one before"), err
    (checkpoints / "checkpoint_1.pt").unlink()  # as training.keep_checkpoints 1 leaves it
    code, _, err = invoke(capsys, *train)
    assert code == 2 and err.strip().endswith(": move it away to train again from epoch 1 (it is the only "
                                              "checkpoint)"), err
    (checkpoints / "checkpoint_2.pt").unlink()
    releases = copy / "experiments" / "exp" / "releases"
    before = snapshot(releases)
    code, out, err = invoke(capsys, *train)  # the releases of the epochs trained before would be replaced
    assert code == 2 and err.strip().endswith("has no checkpoints, but releases of the epochs trained before "
                                              f"(release_epoch_2.pt): training again from epoch 1 would replace them; "
                                              f"move {releases} away first (or init another experiment)"), err
    assert snapshot(releases) == before and not list(checkpoints.glob("*.pt"))
    releases.rename(copy / "old-releases")
    code, out, err = invoke(capsys, *train)
    assert code == 0 and ("experiment exp has no checkpoint left of the epochs its metrics.json records: training "
                          "starts again from epoch 1, and replaces it") in err.splitlines(), err
    assert len(json.loads((copy / "experiments" / "exp" / "metrics.json").read_text())["epochs"]) == 3


@pytest.mark.parametrize("when", ["after the choice", "as it is read"])
@pytest.mark.parametrize("command", ["test", "export-release"])
def test_last_is_chosen_again_when_a_running_train_removes_the_chosen_checkpoint(copy, tiny_data, capsys, monkeypatch,
                                                                              command, when):
    """A training with keep_checkpoints removes older checkpoints as it goes: the one --epoch last (or best) chose
    may go before it is read. Simulated: the chosen checkpoint goes right after the choice, or as torch.load
    opens it, once."""
    from ignite_mnist.experiment import Experiment

    checkpoints = copy / "experiments" / "exp" / "checkpoints"
    choose, load, gone = Experiment.resolve_epoch, torch.load, []

    def racing(self, spec):
        epoch = choose(self, spec)
        if not gone and len(self.checkpoints()) > 1 and when == "after the choice":
            gone.append(epoch)
            (checkpoints / f"checkpoint_{epoch}.pt").rename(copy / "aside.pt")
        return epoch

    def racing_load(path, *args, **kwargs):
        if not gone and when == "as it is read" and str(path).endswith("checkpoint_2.pt"):
            gone.append(2)
            Path(path).rename(copy / "aside.pt")
        return load(path, *args, **kwargs)

    monkeypatch.setattr(Experiment, "resolve_epoch", racing)
    monkeypatch.setattr(torch, "load", racing_load)
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), command, "--epoch", "last")
    assert code == 0 and gone == [2], err
    assert ("test of epoch 1:" in out) if command == "test" else out.strip().endswith("release_epoch_1.pt"), out
    (copy / "aside.pt").rename(checkpoints / "checkpoint_2.pt")
    gone.clear()
    code, _, err = invoke(capsys, *g(copy, data=tiny_data), command, "--epoch", "2")  # a number is the user's own choice: an error
    assert code == 2 and ("has no checkpoint of epoch 2" if when == "after the choice" else
                          "checkpoint_2.pt no longer exists (removed while it was being read)") in err, err


def test_a_best_epoch_without_its_checkpoint_is_one_to_choose_again(copy, monkeypatch):
    """The best epoch's checkpoint gone between reading the history and listing the checkpoints (a running training's
    new best made retention remove it) is CheckpointGone, which test and export-release choose again on."""
    from ignite_mnist.errors import CheckpointGone

    experiment = open_experiment(copy / "experiments", "exp")
    history, best = experiment.history(), experiment.best_epoch()
    monkeypatch.setattr(type(experiment), "history", lambda self: history)  # read before the checkpoint went
    experiment.checkpoint(best).rename(copy / "aside.pt")
    with pytest.raises(CheckpointGone, match=f"the best epoch of experiment exp, {best}, has no checkpoint"):
        experiment.resolve_epoch("best")
