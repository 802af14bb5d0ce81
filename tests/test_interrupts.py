"""Crashes and interruptions, with real processes: SIGKILL at random moments and in the middle of a
checkpoint save, SIGINT and SIGTERM, two trainings at once. Nothing half-written, nothing lost, and the
run that finishes equals the one that was never interrupted. The killed runs keep 2 checkpoints
(training.keep_checkpoints), so kills also land while retention deletes old ones."""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import assert_same, g, make_config, run_cli, wait_for
from ignite_mnist.experiment import open_experiment

EPOCHS = 4
KEEP = 2


def start_train(options, cwd, max_epochs=EPOCHS):
    return subprocess.Popen([sys.executable, "-m", "ignite_mnist", *map(str, options), "train", "--max-epochs",
                             str(max_epochs), "--device", "cpu"], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def assert_every_file_loads(experiment: Path, with_info: bool = False):
    """What a later command reads is whole: the experiment opens, every checkpoint loads (and info agrees)."""
    opened = open_experiment(experiment.parent, experiment.name)
    for epoch, path in opened.checkpoints().items():
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["trainer"]["iteration"] == 10 * epoch, path
    if with_info:
        r = run_cli("--experiments-path", experiment.parent, "-e", experiment.name, "info", "--json")
        assert r.returncode == 0, r.stderr
        assert not [e for e in json.loads(r.stdout)["epochs"] if "error" in e]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data):
    """The experiment of make_config(keep_checkpoints=KEEP) trained straight through, to compare with."""
    folder = tmp_path_factory.mktemp("reference")
    opts = g(folder, "straight", tiny_data)
    assert run_cli(*opts, "init", "--config-path", kept_config(folder)).returncode == 0
    r = run_cli(*opts, "train", "--max-epochs", EPOCHS, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return folder / "experiments" / "straight"


def kept_config(folder: Path) -> Path:
    return make_config(folder, **{"training.keep_checkpoints": KEEP})


def assert_same_as(reference: Path, experiment: Path):
    """The same checkpoints kept (the last KEEP and the best), bitwise equal; the same metrics.json."""
    history = json.loads((reference / "metrics.json").read_text())
    best = max(history["epochs"], key=lambda e: (e["validation_accuracy"], -e["epoch"]))["epoch"]
    kept = sorted({*range(EPOCHS - KEEP + 1, EPOCHS + 1), best})
    for folder in (reference, experiment):
        assert sorted(int(p.stem.split("_")[1]) for p in (folder / "checkpoints").glob("checkpoint_*.pt")) == kept
    for epoch in kept:
        name = f"checkpoints/checkpoint_{epoch}.pt"
        assert_same(torch.load(reference / name, weights_only=True), torch.load(experiment / name, weights_only=True),
                    f"epoch {epoch}")
    assert_same(history, json.loads((experiment / "metrics.json").read_text()), "metrics.json")


def test_sigkill_at_random_moments_then_resume_equals_the_uninterrupted_run(workdir, tiny_data, reference):
    opts = g(workdir, "killed", tiny_data)
    assert run_cli(*opts, "init", "--config-path", kept_config(workdir)).returncode == 0
    experiment = workdir / "experiments" / "killed"
    epochs = lambda: max((int(p.stem.split("_")[1]) for p in (experiment / "checkpoints").glob("checkpoint_*.pt")),  # noqa: E731
                         default=0)  # the last epoch saved
    rng, kills, in_training, deadline = random.Random(1234), 0, 0, time.monotonic() + 45
    while kills < 6 and time.monotonic() < deadline:
        process, before = start_train(opts, workdir), epochs()
        if kills % 2:  # at any moment from the start: imports, setup, training
            time.sleep(rng.uniform(0.3, 3.0))
        else:  # at a moment of training, after this run's first checkpoint
            wait_for(lambda: epochs() > before or process.poll() is not None)
            time.sleep(rng.uniform(0.0, 0.4))
        if process.poll() is not None:
            break  # training finished before the kill
        in_training += epochs() > before
        process.kill()
        process.wait()
        kills += 1
        assert_every_file_loads(experiment)
    assert kills >= 3 and in_training >= 1, (kills, in_training)
    r = run_cli(*opts, "train", "--max-epochs", EPOCHS, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert_every_file_loads(experiment, with_info=True)
    assert_same_as(reference, experiment)


def test_sigkill_in_the_middle_of_a_checkpoint_save_leaves_it_absent_not_broken(workdir, tiny_data, reference):
    opts = g(workdir, "mid-save", tiny_data)
    assert run_cli(*opts, "init", "--config-path", kept_config(workdir)).returncode == 0
    experiment = workdir / "experiments" / "mid-save"
    temporary = lambda: set((experiment / "checkpoints").glob("tmp*"))  # noqa: E731
    mid_save = 0
    for _ in range(2):
        left, process = temporary(), start_train(opts, workdir)
        # DiskSaver writes a temporary file first: kill while it exists, before os.replace
        wait_for(lambda: temporary() - left or process.poll() is not None, interval=0.0005)
        process.kill()
        process.wait()
        assert process.returncode == -signal.SIGKILL, "killed, not finished"
        mid_save += bool(temporary() - left)  # else the save ended in the instant before the kill
        assert_every_file_loads(experiment)
    assert mid_save >= 1
    r = run_cli(*opts, "train", "--max-epochs", EPOCHS, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert not list((experiment / "checkpoints").glob("tmp*")), "what the killed saves left is cleaned up"
    assert_same_as(reference, experiment)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_stop_cleanly_and_training_resumes(workdir, tiny_data, signum, code):
    opts = g(workdir, data=tiny_data)
    assert run_cli(*opts, "init", "--config-path", make_config(workdir)).returncode == 0
    experiment = workdir / "experiments" / "exp"
    process = start_train(opts, workdir, max_epochs=100)
    wait_for(lambda: (experiment / "checkpoints" / "checkpoint_1.pt").exists())
    process.send_signal(signum)
    sent = time.monotonic()
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert process.returncode == code, err
    kept = sorted(int(p.stem.split("_")[1]) for p in (experiment / "checkpoints").glob("checkpoint_*.pt"))
    assert kept and kept == list(range(1, len(kept) + 1)) and kept[-1] < 100
    last_line = err.strip().splitlines()[-1]
    assert last_line == (f"error: training stopped by {signal.Signals(signum).name}; checkpoints are kept up to "
                         f"epoch {kept[-1]}: run `ignite-mnist --experiments-path {workdir / 'experiments'} "
                         f"-e exp train --max-epochs 100 --device cpu` to resume")  # (init recorded the data's folder)
    assert "Traceback" not in err
    assert_every_file_loads(experiment)
    assert not list((experiment / "checkpoints").glob("tmp*"))
    r = run_cli(*opts, "train", "--max-epochs", kept[-1] + 1, "--device", "cpu")
    assert r.returncode == 0 and f"resuming experiment exp from epoch {kept[-1]}" in r.stderr


def test_a_training_started_ignoring_sigint_keeps_ignoring_it(workdir, tiny_data):
    """`ignite-mnist train ... &` in a script: the shell starts it ignoring SIGINT, so that a Ctrl-C meant for
    the script's foreground does not stop it. It trains on (SIGTERM stops it)."""
    opts = g(workdir, data=tiny_data)
    assert run_cli(*opts, "init", "--config-path", make_config(workdir)).returncode == 0
    checkpoints = workdir / "experiments" / "exp" / "checkpoints"
    process = subprocess.Popen([sys.executable, "-m", "ignite_mnist", *map(str, opts), "train", "--max-epochs", "100",
                                "--device", "cpu"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        wait_for(lambda: (checkpoints / "checkpoint_1.pt").exists() or process.poll() is not None)
        process.send_signal(signal.SIGINT)
        wait_for(lambda: (checkpoints / "checkpoint_3.pt").exists() or process.poll() is not None)
        assert process.poll() is None  # still training, two epochs after the SIGINT
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 143, err
    assert "training stopped by SIGTERM" in err.strip().splitlines()[-1]


def test_a_second_train_is_refused_at_once_and_a_dead_owners_lock_is_taken_over(workdir, tiny_data):
    opts = g(workdir, data=tiny_data)
    assert run_cli(*opts, "init", "--config-path", make_config(workdir)).returncode == 0
    experiment = workdir / "experiments" / "exp"
    first = start_train(opts, workdir, max_epochs=100)
    try:
        wait_for(lambda: (experiment / "checkpoints" / "checkpoint_1.pt").exists())
        before = {p.name for p in (experiment / "checkpoints").iterdir()}
        started = time.monotonic()
        second = run_cli(*opts, "train", "--max-epochs", 100, "--device", "cpu")
        assert time.monotonic() - started < 15
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: experiment exp is already being trained by process {first.pid}: "
            "wait for it to finish or stop it, then run `train` again")
        assert before <= {p.name for p in (experiment / "checkpoints").iterdir()}
    finally:
        first.kill()
        first.wait()
    assert (experiment / "train.lock").read_text().strip() == str(first.pid)  # stale: its owner is dead
    done = max(int(p.stem.split("_")[1]) for p in (experiment / "checkpoints").glob("checkpoint_*.pt"))
    r = run_cli(*opts, "train", "--max-epochs", done + 1, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert (experiment / "checkpoints" / f"checkpoint_{done + 1}.pt").exists()


def test_a_stop_before_the_first_checkpoint_says_there_is_none(workdir, tiny_data, capsys, monkeypatch):
    from conftest import invoke
    from ignite_mnist import engines

    make_train_step = engines.make_train_step

    def signalled_at_once(*args, **kwargs):  # as a SIGINT arriving during the first iteration
        step = make_train_step(*args, **kwargs)

        def first(engine, index):
            engines.STOP.signum = signal.SIGINT
            return step(engine, index)
        return first

    monkeypatch.setattr(engines.STOP, "signum", 0)  # restored after the test: later in-process runs are not stopped
    monkeypatch.setattr(engines, "make_train_step", signalled_at_once)
    options = ["--experiments-path", workdir / "experiments", "--data-path", tiny_data, "-e", "first"]
    assert invoke(capsys, *options, "init", "--config-path", make_config(workdir))[0] == 0
    code, _, err = invoke(capsys, *options, "train", "--max-epochs", "3", "--device", "cpu")
    assert code == 130
    hint = err.strip().splitlines()[-1]
    assert hint.startswith("error: training stopped by SIGINT; no epoch was finished, so no checkpoint: run `")
    command = shlex.split(hint.split("`")[1])  # as pasted: the folders of the run included (they were not)
    assert command[0] == "ignite-mnist" and command[-7:] == ["-e", "first", "train", "--max-epochs", "3", "--device",
                                                             "cpu"], command
    monkeypatch.setattr(engines, "make_train_step", make_train_step)
    code, _, err = invoke(capsys, *command[1:])
    assert code == 0 and "trained first to epoch 3" in err, err


IMPORT_ORDER = """
import sys
order = []
class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name in ("numpy", "torch"):
            order.append(name)
sys.meta_path.insert(0, Recorder())
import importlib
importlib.import_module(sys.argv[1])
print(" ".join(order))
"""


def test_every_module_imports_numpy_before_torch():
    """torch imports numpy from C++ and clears whatever that raises: a Ctrl-C that came meanwhile was lost
    and the command went on training. Each module that may be the first to import torch imports numpy first."""
    modules = sorted(p.stem for p in (Path(__file__).parents[1] / "ignite_mnist").glob("*.py") if p.stem != "__main__")
    def imports(module):
        return subprocess.run([sys.executable, "-c", IMPORT_ORDER, f"ignite_mnist.{module}"], capture_output=True,
                              text=True, timeout=300)

    with ThreadPoolExecutor(4) as pool:  # 4 interpreters at a time: each imports torch
        for module, r in zip(modules, pool.map(imports, modules)):
            assert r.returncode == 0, r.stderr
            order = r.stdout.split()
            assert "torch" not in order or order.index("numpy") < order.index("torch"), (module, order)


def test_sigterm_during_export_release_ends_it_in_one_line_and_leaves_nothing(copy, tiny_data):
    """Outside `train` and `serve` (their own handlers), SIGTERM ends a command as Ctrl-C does: its partial
    files removed, exit 143. It had died silently, leaving the release's temporary file in releases/."""
    releases = copy / "experiments" / "exp" / "releases"
    before = sorted(p.name for p in releases.iterdir())
    export = subprocess.Popen([sys.executable, "-m", "ignite_mnist", *map(str, g(copy, data=tiny_data)), "export-release", "--epoch", "1",
                               "--format", "onnx"], cwd=copy, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(".partial-" in p.name for p in releases.iterdir()) or export.poll() is not None, 120)
    export.send_signal(signal.SIGTERM)
    _, err = export.communicate(timeout=120)
    assert export.returncode == 143 and err.strip().splitlines()[-1] == "error: terminated", err[-2000:]
    assert sorted(p.name for p in releases.iterdir()) == before


def test_a_resumed_run_s_tensorboard_logs_show_each_step_once_as_an_unstopped_run_s(workdir, tiny_data, capsys,
                                                                                     monkeypatch):
    """Stopped in epoch 2, the iterations after checkpoint 1 are redone on resume and logged again: a reader of the
    event files (TensorBoard's EventAccumulator) sees each step once, with the values of a run never stopped. Both
    runs open their event files in the same second (tensorboardX names them by it): neither erases the other's."""
    import types

    import tensorboardX.event_file_writer
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import invoke
    from ignite_mnist import engines

    make_train_step = engines.make_train_step

    def signalled_in_epoch_2(*args, **kwargs):  # as a SIGINT arriving in the middle of epoch 2 (10 iterations each)
        step = make_train_step(*args, **kwargs)

        def stopping(engine, index):
            if engine.state.iteration == 15:
                engines.STOP.signum = signal.SIGINT
            return step(engine, index)
        return stopping

    def scalars(name):
        accumulator = EventAccumulator(str(workdir / "experiments" / name / "tensorboard"), size_guidance={"scalars": 0})
        accumulator.Reload()
        return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}

    monkeypatch.setattr(engines.STOP, "signum", 0)  # restored after the test: later in-process runs are not stopped
    second = time.time()
    monkeypatch.setattr(tensorboardX.event_file_writer, "time", types.SimpleNamespace(time=lambda: second))
    config = make_config(workdir)
    train = ["train", "--max-epochs", "3", "--device", "cpu", "--log-period", "2"]
    for name in ("straight", "stopped"):
        options = ["--experiments-path", workdir / "experiments", "--data-path", tiny_data, "-e", name]
        assert invoke(capsys, *options, "init", "--config-path", config, "--seed", "3")[0] == 0
        if name == "stopped":
            monkeypatch.setattr(engines, "make_train_step", signalled_in_epoch_2)
            assert invoke(capsys, *options, *train)[0] == 130
            monkeypatch.setattr(engines, "make_train_step", make_train_step)
            assert [step for step, _ in scalars(name)["training/batch_loss"]] == [2, 4, 6, 8, 10, 12, 14]
        code, _, err = invoke(capsys, *options, *train)
        assert code == 0, err
    assert len(list((workdir / "experiments" / "stopped" / "tensorboard").glob("events.out.tfevents.*"))) == 2
    straight, resumed = scalars("straight"), scalars("stopped")
    assert straight["training/batch_loss"] == resumed["training/batch_loss"]
    assert [step for step, _ in straight["training/batch_loss"]] == list(range(2, 31, 2))
    assert [step for step, _ in straight["validation/accuracy"]] == [1, 2, 3]
    assert straight.keys() == resumed.keys() and straight == resumed


def test_train_removes_dead_writers_partial_files_and_nothing_of_the_user_s(copy, tiny_data, capsys):
    """What train cleans up on start: DiskSaver's temporary checkpoints, and write_json's and export-release's
    temporary files whose writer (host and pid in the name) is dead. A running export's file and the user's own
    files whose names look alike (an editor's swap file, a tmp_ file) stay."""
    import socket

    from conftest import invoke

    root = copy / "experiments" / "exp"
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has ended
    removed = [root / f".metrics.json.partial-{host}-{dead_pid}-abcd_123",
               root / "releases" / f".release_epoch_1.onnx.partial-{host}-{dead_pid}-x1y2z3w4.onnx",
               root / "checkpoints" / "tmpk2j4_9az"]
    kept = [root / f".metrics.json.partial-{host}-{os.getpid()}-abcd_123",  # its writer (this test) is alive
            root / "releases" / f".release_epoch_1.pt.partial-another-host-{dead_pid}-abcdefgh.pt",  # not ours to judge
            root / ".experiment.json.swp", root / ".metrics.json.original", root / "releases" / "tmp_candidate.onnx",
            root / "checkpoints" / "tmp_keep.pt", root / "notes.json.txt", root / "releases" / "tmpabcd1234.onnx"]
    stale = [root / "releases" / f".release_epoch_2.pt.partial-another-host-{dead_pid}-abcdefgh.pt",  # a day old
             root / "releases" / "tmpq1w2e3r4.pt2"]  # an earlier version's name, an hour old
    for path in removed + kept + stale:
        path.write_text("x")
    for path, age in zip(stale, (86400 + 60, 3600 + 60)):
        os.utime(path, (time.time() - age, time.time() - age))
    removed += stale
    code, _, err = invoke(capsys, *g(copy, data=tiny_data), "train", "--max-epochs", 3, "--device", "cpu")
    assert code == 0, err
    assert [p for p in removed if p.exists()] == [] and [p for p in kept if not p.exists()] == []



def _signal_at_the_end(monkeypatch):
    """As a SIGINT arriving once the last epoch is done (its checkpoint written, the trainer ending)."""
    from ignite.engine import Events

    from ignite_mnist import engines

    attach_handlers = engines.attach_handlers

    def attach(trainer, *args, **kwargs):
        attach_handlers(trainer, *args, **kwargs)
        trainer.add_event_handler(Events.COMPLETED, lambda _: setattr(engines.STOP, "signum", signal.SIGINT))

    monkeypatch.setattr(engines, "attach_handlers", attach)
    return lambda: monkeypatch.setattr(engines, "attach_handlers", attach_handlers)  # no more signals


def test_a_signal_after_the_last_epoch_leaves_a_complete_training(copy, tiny_data, capsys, monkeypatch):
    from conftest import invoke

    _signal_at_the_end(monkeypatch)
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), "train", "--max-epochs", 3, "--device", "cpu")
    assert code == 0 and "SIGINT came after the last epoch: the training is complete" in err.splitlines(), err
    assert err.strip().splitlines()[-1].startswith("trained exp to epoch 3"), err


def test_a_signal_after_a_trial_s_last_epoch_completes_it_and_stops_the_sweep(workdir, tiny_data, capsys, monkeypatch):
    from conftest import invoke
    from test_sweep import status, sweep_args

    no_more_signals = _signal_at_the_end(monkeypatch)
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "z", 2, 1))
    assert code == 130 and err.strip().splitlines()[-1] == (
        "error: sweep z: stopped by SIGINT once its trial was complete: run the same `sweep` command to go on"), err
    assert [t["state"] for t in status(capsys, workdir, "z")["trials"]] == ["COMPLETE"]
    no_more_signals()
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "z", 2, 1))
    assert code == 0 and [t["state"] for t in status(capsys, workdir, "z")["trials"]] == ["COMPLETE", "COMPLETE"], err


def test_a_trial_stopped_mid_way_shows_its_epochs_so_far_in_the_status(workdir, tiny_data, capsys, monkeypatch):
    from ignite.engine import Events

    from conftest import invoke
    from ignite_mnist import engines
    from test_sweep import status, sweep_args

    attach_handlers = engines.attach_handlers

    def attach(trainer, *args, **kwargs):  # as a SIGINT in epoch 2, epoch 1 saved
        attach_handlers(trainer, *args, **kwargs)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: setattr(engines.STOP, "signum", signal.SIGINT))

    monkeypatch.setattr(engines, "attach_handlers", attach)
    code, _, err = invoke(capsys, *sweep_args(workdir, tiny_data, "f", 1, 2))
    assert code == 130, err
    (trial,) = status(capsys, workdir, "f")["trials"]
    history = json.loads((workdir / "experiments" / "f-0" / "metrics.json").read_text())["epochs"]
    assert (trial["state"], trial["best_epoch"]) == ("FAIL", 1)
    assert trial["best_val_accuracy"] == history[0]["validation_accuracy"]
