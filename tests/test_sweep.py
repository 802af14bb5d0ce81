"""Sweeps on Optuna: trials as experiments, best trial, two workers on one study, a killed worker, pruning,
and one-line errors for bad search spaces."""

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import invoke, make_config, snapshot, wait_for
from ignite_mnist.experiment import open_experiment

SPACE = {"training.lr": {"float": [0.2, 1.5], "log": True}, "training.batch_size": {"choice": [16, 32]}}
EVERY_KIND = {"training.lr": {"float": [0.2, 1.5], "log": True}, "training.lr_gamma": {"float": [0.5, 0.9], "step": 0.1},
              "training.batch_size": {"int": [16, 32], "step": 16}, "training.eval_batch_size": {"int": [32, 128], "log": True},
              "training.precision": {"choice": ["fp32", "bf16"]}}


def sweep_args(folder: Path, tiny_data, name="s", trials=3, epochs=1, space=SPACE, *extra):
    space_path = folder / f"space-{name}.json"
    space_path.write_text(json.dumps(space))
    config = folder / "sweep-config.json"
    if not config.exists():
        config.write_bytes(make_config(folder).read_bytes())
    return ["--experiments-path", folder / "experiments", "--data-path", tiny_data, "sweep", "--name", name,
            "--space", space_path, "--trials", trials, "--max-epochs", epochs, "--config-path", config,
            "--device", "cpu", *extra]


def status(capsys, folder, name="s", storage=()):
    code, out, err = invoke(capsys, "--experiments-path", folder / "experiments", "sweep", "--name", name, "--status",
                            *storage, "--json")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_a_sweep_of_three_trials_and_its_best_trial_is_lists_best(workdir, tiny_data, capsys):
    code, out, err = invoke(capsys, *sweep_args(workdir, tiny_data, "s", 3, 1, EVERY_KIND, "--pruner", "none"))
    assert code == 0, err
    result = status(capsys, workdir)
    assert [t["state"] for t in result["trials"]] == ["COMPLETE"] * 3
    assert sorted(t["experiment"] for t in result["trials"]) == ["s-0", "s-1", "s-2"]
    for t in result["trials"]:
        meta = json.loads((workdir / "experiments" / t["experiment"] / "experiment.json").read_text())
        assert meta["sweep"]["trial"] == t["number"] and meta["sweep"]["params"] == t["params"]
        assert meta["sweep"]["state"] == "COMPLETE" and meta["sweep"]["score"] == t["best_val_accuracy"]
        assert meta["config"]["training"]["lr"] == t["params"]["training.lr"]  # through init --set's code path
        assert meta["config"]["training"]["batch_size"] in (16, 32)  # int with a step
        assert round(meta["config"]["training"]["lr_gamma"], 9) in (0.5, 0.6, 0.7, 0.8, 0.9)  # float with a step
        assert 32 <= meta["config"]["training"]["eval_batch_size"] <= 128  # int on a log scale
        assert meta["overrides"] == [f"{k}={json.dumps(v)}" for k, v in t["params"].items()]
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "list", "--json")
    listed = json.loads(out)
    assert listed[0]["name"] == f"s-{result['best']}" == result["trials"][0]["experiment"]
    assert listed[0]["best_val_accuracy"] == result["trials"][0]["best_val_accuracy"]
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "sweep", "--name", "s", "--status")
    best = open_experiment(workdir / "experiments", f"s-{result['best']}")
    released = best.release_path(best.best_epoch())  # by the trial's train, at its end
    advice = f"ignite-mnist --experiments-path {workdir / 'experiments'} -e s-{result['best']} export-release " \
             "--epoch best --format onnx"
    assert out.strip().splitlines()[-1] == (f"best: trial {result['best']}; its best epoch, {best.best_epoch()}, is "
                                            f"released: {released} (in another format: {advice})")
    assert released.exists()
    assert (result["study"], result["best_release"]) == ("s", str(released))  # --json: what the lines say
    assert result["storage"] == f"sqlite:///{(workdir / 'experiments' / 's.sweep.db').resolve()}"
    code, _, err = invoke(capsys, *shlex.split(advice)[1:])  # the advice, run as printed, works
    assert code == 0 and released.with_suffix(".onnx").exists(), err
    released.unlink()  # without the release, the advice is to make it
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "sweep", "--name", "s", "--status")
    advice = (f"best: trial {result['best']}; export its best epoch with: ignite-mnist --experiments-path "
              f"{workdir / 'experiments'} -e s-{result['best']} export-release --epoch best")
    assert out.strip().splitlines()[-1] == advice
    meta = workdir / "experiments" / f"s-{result['best']}" / "experiment.json"
    text = meta.read_text()
    meta.write_text("{oops")  # an experiment damaged since: the summary still comes, with the advice
    code, out, err = invoke(capsys, "--experiments-path", workdir / "experiments", "sweep", "--name", "s", "--status")
    assert code == 0 and out.strip().splitlines()[-1] == advice, err
    meta.write_text(text)
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "-e", "s-0", "info")
    assert "sweep s: trial 0, COMPLETE, score" in out
    import shutil

    shutil.rmtree(workdir / "experiments" / f"s-{result['best']}")  # the user deleted it: no advice to export it
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "sweep", "--name", "s", "--status")
    assert code == 0 and "export-release" not in out
    assert f"best: trial {result['best']}; its experiment s-{result['best']} is no longer in" in out


def start_worker(folder, tiny_data, *args):
    return subprocess.Popen([sys.executable, "-m", "ignite_mnist", *map(str, sweep_args(folder, tiny_data, *args))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_workers_on_one_study_finish_exactly_n_trials_with_distinct_experiments(workdir, tiny_data, capsys):
    workers = [start_worker(workdir, tiny_data, "two", 4, 2, SPACE, "--pruner", "none") for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    trials = status(capsys, workdir, "two")["trials"]
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len({t["experiment"] for t in finished}) == 4
    made = sorted(p.name for p in (workdir / "experiments").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert made == sorted(t["experiment"] for t in trials)  # no experiment for a trial that was not needed
    trained = sum(err.count(" complete: best validation accuracy") for _, err in outputs)
    assert trained == 4  # between them, each finished trial trained once (usually both share the work)


def test_a_worker_killed_mid_trial_then_rerun_reaches_n(workdir, tiny_data, capsys):
    args = ("killed", 1, 8, SPACE, "--pruner", "none")
    worker = start_worker(workdir, tiny_data, *args)
    first = workdir / "experiments" / "killed-0"
    wait_for(lambda: (first / "checkpoints" / "checkpoint_1.pt").exists() or worker.poll() is not None, timeout=120)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    assert worker.returncode == -signal.SIGKILL
    assert status(capsys, workdir, "killed")["trials"][0]["state"] == "RUNNING"  # as the killed worker left it
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, *args))
    assert code == 0, err
    assert "trial 0 (killed-0) lost its worker" in err
    trials = {t["number"]: t for t in status(capsys, workdir, "killed")["trials"]}
    assert trials[0]["state"] == "FAIL" and trials[1]["state"] == "COMPLETE"
    assert json.loads((first / "experiment.json").read_text())["sweep"]["state"] == "FAIL"
    kept = sorted(first.joinpath("checkpoints").glob("checkpoint_*.pt"))
    assert kept, "the killed trial's experiment is kept"
    code, _, err = invoke(capsys, "--experiments-path", workdir / "experiments", "--data-path", tiny_data,
                          "-e", "killed-0", "train", "--max-epochs", "8", "--device", "cpu")
    assert code == 0 and "resuming experiment killed-0" in err  # and resumable


def test_a_pruned_trial_is_marked_pruned_in_the_study_and_its_experiment(workdir, tiny_data, capsys):
    import optuna

    space = {"training.lr": {"float": [1e-5, 2.0], "log": True}}
    storage = f"sqlite:///{workdir / 'pruned.db'}"
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    study.enqueue_trial({"training.lr": 1.0})
    study.enqueue_trial({"training.lr": 1e-5})  # learns nothing: below the median at epoch 1
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "p", 2, 2, space, "--storage", storage,
                                              "--pruner-startup-trials", "1"))
    assert code == 0, err
    trials = {t["number"]: t for t in status(capsys, workdir, "p", ["--storage", storage])["trials"]}
    assert trials[0]["state"] == "COMPLETE" and trials[1]["state"] == "PRUNED"
    sweep = json.loads((workdir / "experiments" / "p-1" / "experiment.json").read_text())["sweep"]
    assert sweep["state"] == "PRUNED" and sweep["pruned_at_epoch"] == 1
    assert (workdir / "experiments" / "p-1" / "checkpoints" / "checkpoint_1.pt").exists()  # the pruned epoch stays
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "-e", "p-1", "info")
    assert "sweep p: trial 1, PRUNED at epoch 1" in out
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "list")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert " 1 (pruned) " in rows["p-1"] and "pruned" not in rows["p-0"], out
    code, _, err = invoke(capsys, "--experiments-path", workdir / "experiments", "--data-path", tiny_data, "-e", "p-1",
                          "train", "--max-epochs", 2, "--device", "cpu")  # trained on by hand since
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "list")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert " 2 (pruned at 1) " in rows["p-1"], out
    meta = workdir / "experiments" / "p-0" / "experiment.json"  # as a trial stopped by a signal is recorded
    meta.write_text(meta.read_text().replace('"state": "COMPLETE"', '"state": "FAIL"'))
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "list")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert " 2 (trial failed) " in rows["p-0"], out


@pytest.mark.parametrize("space, message", [
    ({"training.learning_rate": {"float": [0.1, 1]}}, "training.learning_rate: the config has no such key; the "
                                                      "nearest is training.lr"),
    ({"training.lr": {"float": [1]}}, "$['training.lr'].float: [1] is too short"),
    ({"training.lr": {"uniform": [0, 1]}}, """$['training.lr']: {"uniform": [0, 1]} has none of the allowed forms"""),
    ({"training.lr": {"choice": []}}, "$['training.lr'].choice: [] should be non-empty"),
    ({"training.batch_size": {"int": [32, 64], "step": 0}}, "$['training.batch_size'].step: 0 is less than the minimum"),
    ({"training.lr": {"float": [-1, 0.5]}}, "training.lr = -1 is refused by the config schema: $.training.lr: -1 is "
                                            "less than or equal to the minimum of 0"),
    ({"training.batch_size": {"choice": [32, "many"]}}, 'training.batch_size = "many" is refused by the config schema'),
    ({"training.lr": {"float": [2, 1]}}, "training.lr: the low bound 2 is above the high one 1"),
    ({"training.batch_size": {"int": [16, 64], "log": True, "step": 16}}, "training.batch_size: log and step do not go "
                                                                          "together"),
    ({"data.val_split": {"choice": [0, 0.2]}}, "data.val_split = 0 is refused by the config schema: a sweep scores its "
                                               "trials on validation accuracy: it needs data.val_split above 0"),
    ({"training.batch_size": {"int": [16.5, 32]}}, "$['training.batch_size'].int[0]: 16.5 is not of type integer"),
    ({"training.batch_size": {"float": [16, 64]}}, 'training.batch_size takes whole numbers, which a float '
                                                   'distribution does not draw: write {"int": [16, 64]}'),
    ({"training.lr": {"float": [0.5, 2.0], "step": 0.4}}, "training.lr: 0.5 to 2.0 is not a whole number of steps of "
                                                          "0.4: end it at 1.7, say"),
    ({"training.batch_size": {"int": [16, 70], "step": 16}}, "training.batch_size: 16 to 70 is not a whole number of "
                                                             "steps of 16: end it at 64, say"),
])
def test_bad_search_spaces_are_refused_in_one_line(workdir, tiny_data, capsys, space, message):
    args = sweep_args(workdir, tiny_data, "bad", 2, 1, space)
    before = snapshot(workdir)
    code, _, err = invoke(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert snapshot(workdir) == before


def test_status_of_an_unknown_sweep(workdir, capsys):
    code, _, err = invoke(capsys, "--experiments-path", workdir / "experiments", "sweep", "--name", "nope", "--status")
    assert code == 2 and err.startswith("error: no sweep 'nope'")


def test_an_experiment_named_as_a_trial_is_found_before_any_trial_trains(workdir, tiny_data, capsys):
    experiments = workdir / "experiments"
    code, _, err = invoke(capsys, "--experiments-path", experiments, "--data-path", tiny_data, "-e", "clash-1", "init",
                          "--config-path", make_config(workdir))
    assert code == 0, err
    (experiments / "clash-x").mkdir()  # not NAME-<number>: no trial could take its name
    before = snapshot(experiments / "clash-1")
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "clash", 3, 1))
    assert code == 2 and err.count("\n") == 1, err
    assert "experiment(s) clash-1 already exist but are not trials of the study" in err
    assert not (experiments / "clash-0").exists()  # refused before trial 0 trained
    assert snapshot(experiments / "clash-1") == before
    # the study's own trials are not foreign: a sweep run again after it finished goes on
    code, out, err = invoke(capsys, *sweep_args(workdir, tiny_data, "own", 1, 1))
    assert code == 0 and out.splitlines()[0].endswith("): 1 finished trial"), err
    code, out, err = invoke(capsys, *sweep_args(workdir, tiny_data, "own", 2, 1))
    assert code == 0 and out.splitlines()[0].endswith("): 2 finished trials"), err
    assert sorted(p.name for p in experiments.glob("own-*")) == ["own-0", "own-1"]



def test_a_damaged_sweep_database_is_named_as_such_and_left_alone(workdir, tiny_data, capsys):
    """--status used to say "holds no Optuna study (run `sweep` first ...)", and `sweep` then refused the file."""
    import sqlite3

    database = workdir / "experiments" / "d.sweep.db"
    database.parent.mkdir()
    with sqlite3.connect(database) as db:  # Optuna's table, over several pages
        db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
        db.executemany("INSERT INTO studies (study_name) VALUES (?)", [(f"study {i}" * 20,) for i in range(500)])
    database.write_bytes(database.read_bytes()[:5000])  # truncated
    before = database.read_bytes()
    for args in (["--experiments-path", workdir / "experiments", "sweep", "--name", "d", "--status"],
                 sweep_args(workdir, tiny_data, "d", 1, 1)):
        code, _, err = invoke(capsys, *args)
        assert code == 2 and err.count("\n") == 1, err
        assert f"the sweep storage {database} is damaged or not an SQLite database (" in err, err
    assert database.read_bytes() == before


def test_a_busy_sweep_database_is_not_called_damaged(workdir, tiny_data, capsys, monkeypatch):
    """Locked past the wait, or holding a killed writer's journal (a read-only open cannot roll it back): --status
    says so; `sweep` goes on to Optuna's own read-write open, which waits or recovers."""
    import sqlite3

    database = workdir / "experiments" / "b.sweep.db"
    database.parent.mkdir()
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY)")
    connect = sqlite3.connect

    def busy(target, *args, **kwargs):
        if str(target).endswith("?mode=ro"):
            raise sqlite3.OperationalError("database is locked")
        return connect(target, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", busy)
    code, _, err = invoke(capsys, "--experiments-path", workdir / "experiments", "sweep", "--name", "b", "--status")
    assert code == 2 and err.strip() == (f"error: the sweep storage {database} cannot be read now (database is locked):"
                                         " try again later; a `sweep` run recovers a database a killed worker left "
                                         "half-written"), err
    from ignite_mnist.sweep import check_sqlite

    check_sqlite(database)  # no error: Optuna's open takes it from there


def test_storage_files_of_something_else_are_left_alone(workdir, tiny_data, capsys):
    import sqlite3

    notes = workdir / "notes.txt"
    notes.write_text("precious data\n")
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "j", 1, 1), "--storage", notes)
    assert code == 2 and err.count("\n") == 1 and "is not an Optuna journal file" in err, err
    assert notes.read_text() == "precious data\n"
    other = workdir / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE mine (x)")
    code, _, err = invoke(capsys, "--experiments-path", workdir / "experiments", "sweep", "--name", "j", "--status",
                          "--storage", f"sqlite:///{other}")
    assert code == 2 and "holds no Optuna study" in err, err
    before = other.read_bytes()
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "j", 1, 1), "--storage", f"sqlite:///{other}")
    assert code == 2 and err.count("\n") == 1 and "is an SQLite file without Optuna's tables" in err, err
    assert other.read_bytes() == before
    with sqlite3.connect(other) as db:
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["mine"]
    fifo = workdir / "journal.fifo"
    os.mkfifo(fifo)  # reading it would wait forever
    for args in (sweep_args(workdir, tiny_data, "j", 1, 1), ["--experiments-path", workdir / "experiments", "sweep",
                                                              "--name", "j", "--status"]):
        code, _, err = invoke(capsys, *args, "--storage", fifo)
        assert code == 2 and "is not a regular file" in err, err
    assert not (workdir / "experiments").exists() or not list((workdir / "experiments").iterdir())


@pytest.mark.parametrize("option, message", [(("--device", "cuda:7"), "cuda:7"), (("--seed", "-5"), "--seed must be"),
                                             (("--name", "a/b"), "invalid sweep name 'a/b'"),
                                             (("--name", "n" * 95), "is too long: its trials' experiments are named "
                                                                    "after it, " + "n" * 95 + "-<trial number>, in at "
                                                                    "most 100 characters; use at most 94")])
def test_a_refused_sweep_makes_nothing(workdir, tiny_data, capsys, option, message):
    """Options are checked before the study is opened: no database, no failed trial, no experiment."""
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "k", 1, 1), *option)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (workdir / "experiments").exists() or not list((workdir / "experiments").iterdir())


def test_a_sweep_name_too_long_is_told_its_own_limit(workdir, tiny_data, capsys):
    for name in ("n" * 95, "n" * 101):  # (over the experiments' 100 too: the sweep's limit, 94, is the one to tell)
        code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, name, 1, 1))
        assert code == 2 and "use at most 94" in err, err


def test_a_sweep_without_its_data_makes_nothing(workdir, tiny_data, capsys, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # offline, at once
    args = sweep_args(workdir, tiny_data, "k", 1, 1)
    args[args.index("--data-path") + 1] = workdir / "no-data"
    code, _, err = invoke(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "mnist is not in" in err, err
    assert not (workdir / "experiments").exists() or not list((workdir / "experiments").iterdir())


def test_a_sweep_over_datasets_without_one_of_them_makes_nothing(workdir, tiny_data, capsys, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # offline, at once
    space = {"data.dataset": {"choice": ["mnist-sample", "mnist"]}}
    args = sweep_args(workdir, tiny_data, "k", 2, 1, space)
    args[args.index("--config-path") + 1] = make_config(workdir, **{"data.dataset": "mnist-sample"})  # bundled
    args[args.index("--data-path") + 1] = workdir / "no-data"
    code, _, err = invoke(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and f"mnist is not in {workdir / 'no-data'}" in err, err
    assert not (workdir / "experiments").exists() or not list((workdir / "experiments").iterdir())


def test_a_base_config_without_validation_is_named_as_such(workdir, tiny_data, capsys):
    args = sweep_args(workdir, tiny_data, "v", 1, 1)
    config = make_config(workdir, **{"data.val_split": 0})
    args[args.index("--config-path") + 1] = config
    code, _, err = invoke(capsys, *args)
    assert code == 2 and err.strip() == (f"error: config {config} has data.val_split 0: a sweep scores trials on "
                                         "validation accuracy, so it needs a validation set"), err
    Path(args[args.index("--space") + 1]).write_text("5")  # a space that is no object: its own one line
    code, _, err = invoke(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "invalid search space" in err and "Traceback" not in err, err


def test_a_study_s_trials_share_their_base_config_and_epochs(workdir, tiny_data, capsys):
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "m", 1, 1))
    assert code == 0, err
    database = workdir / "experiments" / "m.sweep.db"
    before = database.read_bytes()
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "m", 2, 2))
    assert code == 2 and err.strip() == ("error: sweep m's trials were run with --max-epochs 1 (this run: 2): their "
                                         "scores would not compare; use another --name"), err
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "m", 2, 1), "--seed", "7")  # another split
    assert code == 2 and err.strip() == ("error: sweep m's trials were run with --seed 0 (this run: 7): their "
                                         "scores would not compare; use another --name"), err
    other = make_config(workdir, **{"training.lr_gamma": 0.5, "training.batch_size": 16})  # batch_size: swept
    args = sweep_args(workdir, tiny_data, "m", 2, 1)
    args[args.index("--config-path") + 1] = other
    code, _, err = invoke(capsys, *args)
    assert code == 2 and "sweep m's trials were run with training.lr_gamma 0.7 (this run: 0.5): their" in err, err
    assert database.read_bytes() == before and [p.name for p in (workdir / "experiments").glob("m-*")] == ["m-0"]
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "m", 2, 1))  # the same setup goes on
    assert code == 0 and sorted(p.name for p in (workdir / "experiments").glob("m-*")) == ["m-0", "m-1"], err


def test_a_clash_with_a_new_sweep_leaves_no_database(workdir, tiny_data, capsys):
    experiments = workdir / "experiments"
    code, _, err = invoke(capsys, "--experiments-path", experiments, "--data-path", tiny_data, "-e", "y-0", "init",
                          "--config-path", make_config(workdir))
    assert code == 0, err
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "y", 1, 1))
    assert code == 2 and "experiment(s) y-0 already exist but are not trials of the study" in err, err
    assert sorted(p.name for p in experiments.iterdir()) == ["y-0"]


def test_a_range_narrowed_or_widened_since_the_study_s_trials_is_refused(workdir, tiny_data, capsys):
    """Optuna itself takes other bounds of the same kind without a word: the study's draws would mix two searches."""
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "r", 1, 1, {"training.lr": {"float": [0.5, 1]}}))
    assert code == 0, err
    database = workdir / "experiments" / "r.sweep.db"
    before = database.read_bytes()
    for other in ({"float": [0.5, 0.8]}, {"float": [0.1, 1.0]}, {"float": [0.5, 1.0], "log": True},
                  {"float": [0.5, 1.0], "step": 0.25}):
        code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "r", 2, 1, {"training.lr": other}))
        assert code == 2 and err.count("\n") == 1 and err.strip().endswith(
            'which drew it from {"float": [0.5, 1.0]} (trial 0): use another --name for another space'), err
        assert database.read_bytes() == before
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "r", 2, 1, {"training.lr": {"float": [0.5, 1.0]}}))
    assert code == 0, err  # the same bounds, written 1 or 1.0

    # a study whose trials drew from two ranges (an earlier version took the second silently): its latest range goes on
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.load_study(study_name="r", storage=f"sqlite:///{database}")
    study.add_trial(optuna.trial.create_trial(params={"training.lr": 0.6}, value=50.0,
                                              distributions={"training.lr": FloatDistribution(0.5, 0.8)}))
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "r", 2, 1, {"training.lr": {"float": [0.5, 1.0]}}))
    assert code == 2 and 'which drew it from {"float": [0.5, 0.8]} (trial 2)' in err, err
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "r", 4, 1, {"training.lr": {"float": [0.5, 0.8]}}))
    assert code == 0, err


def test_a_space_that_does_not_fit_the_study_is_refused_before_a_trial(workdir, tiny_data, capsys):
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "d", 1, 1, {"training.lr": {"choice": [0.5, 1.0]}}))
    assert code == 0, err
    database = workdir / "experiments" / "d.sweep.db"
    before = database.read_bytes()
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "d", 2, 1, {"training.lr": {"float": [0.5, 1.0]}}))
    assert code == 2 and err.count("\n") == 1, err
    assert err.strip().endswith('training.lr = {"float": [0.5, 1.0]} does not fit the trials of sweep d, which drew it '
                                'from {"choice": [0.5, 1.0]} (trial 0): use another --name for another space'), err
    assert database.read_bytes() == before
    for other in ({"choice": [0.5, 1.0, 2.0]}, {"choice": [1.0, 0.5]}):  # other choices, or in another order
        code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "d", 2, 1, {"training.lr": other}))
        assert code == 2 and "does not fit the trials of sweep d" in err and database.read_bytes() == before, err
    assert [t["state"] for t in status(capsys, workdir, "d")["trials"]] == ["COMPLETE"]
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "d", 2, 1, {"training.lr": {"choice": [0.5, 1.0]}}))
    assert code == 0 and "the space changed" not in err, err  # the same space goes on
    grown = {"training.lr": {"choice": [0.5, 1.0]}, "training.lr_gamma": {"choice": [0.5, 0.7]}}
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "d", 3, 1, grown))
    assert code == 0 and ("sweep d: the space changed since its earlier trials: training.lr_gamma drawn from now on "
                          "(they ran with the base config's)") in err.splitlines(), err


@pytest.mark.parametrize("distribution", [{"choice": [0.5, 1.0]}, {"choice": ["auto", "fp32"]},
                                          {"float": [1e-05, 2.0], "log": True}, {"float": [0.1, 1.0], "step": 0.1},
                                          {"int": [16, 128]}, {"int": [16, 128], "step": 16},
                                          {"int": [1, 64], "log": True}])
def test_a_drawn_distribution_is_named_as_the_space_writes_it(distribution):
    from ignite_mnist.sweep import optuna_distribution, space_distribution

    assert space_distribution(optuna_distribution(distribution)) == distribution


def test_a_rerun_says_what_it_runs_and_when_there_is_nothing_to_run(workdir, tiny_data, capsys):
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "r", 1, 1))
    assert code == 0 and "sweep r: trial 0 (0 of 1 finished before it), experiment r-0: " in err, err
    code, out, err = invoke(capsys, *sweep_args(workdir, tiny_data, "r", 1, 1))
    assert code == 0 and ("sweep r has 1 finished trial already, for --trials 1: nothing to run (a larger --trials "
                          "runs more)") in err.splitlines(), err
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "r", 2, 1))
    assert code == 0 and "sweep r: trial 1 (1 of 2 finished before it), experiment r-1: " in err, err
