"""Distributed training through ignite.distributed: 2 processes with gloo on the CPU, spawned by
`train --nproc-per-node 2` or started by torchrun; one writer; checkpoints that any world size resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_same, g, make_config, run_cli, wait_for, write_dataset

TWO = ["--nproc-per-node", "2", "--backend", "gloo", "--device", "cpu"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, sample):
    """1,000 training digits (shuffled classes) and 500 test digits: enough for accuracies to compare."""
    images, labels = sample["train"]
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:1000]
    test_images, test_labels = sample["test"]
    return write_dataset(tmp_path_factory.mktemp("small") / "data", (images[keep], labels[keep]),
                         (test_images[:500], test_labels[:500]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_data):
    """The same experiment trained 2 epochs by one process and by two."""
    folder = tmp_path_factory.mktemp("runs")
    config = make_config(folder)
    results = {}
    for name, extra in (("one", ["--device", "cpu"]), ("two", TWO)):
        opts = g(folder, name, small_data)
        assert run_cli(*opts, "init", "--config-path", config, cwd=folder).returncode == 0
        started = time.monotonic()
        r = run_cli(*opts, "train", "--max-epochs", 2, *extra, cwd=folder)
        assert r.returncode == 0, r.stderr
        results[name] = {"stderr": r.stderr, "seconds": time.monotonic() - started, "root": folder / "experiments" / name}
    return folder, results


def metrics(root: Path, epoch: int) -> dict:
    return torch.load(root / "checkpoints" / f"checkpoint_{epoch}.pt", weights_only=True)["history"]["epochs"][-1]


def test_two_processes_train_with_one_writer(runs):
    _, results = runs
    root = results["two"]["root"]
    assert "x 2 processes (gloo)" in results["two"]["stderr"]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["checkpoint_1.pt", "checkpoint_2.pt"]
    log = (root / "verbose.log").read_text()
    assert log.count("epoch 1/2:") == 1 and log.count("epoch 2/2:") == 1  # rank 1 logs nothing
    assert results["two"]["stderr"].count("epoch 2/2:") == 1
    assert len(list((root / "tensorboard").glob("events.out.tfevents.*"))) == 1
    checkpoint = torch.load(root / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["model"])  # the unwrapped model
    assert checkpoint["trainer"]["epoch_length"] == 25  # 800 images, global batch 32, 16 per rank


def test_two_processes_learn_as_one_does(runs):
    _, results = runs
    one, two = metrics(results["one"]["root"], 2), metrics(results["two"]["root"], 2)
    assert one["test_accuracy"] > 80 and two["test_accuracy"] > 80
    # 500 test digits; only dropout masks differ. Seeds 0, 1, 2 (`init --seed`) measured 4.0, 2.6 and 2.8 points
    # apart with the fused kernels, 3.2, 2.6 and 2.8 without (2026-12-03): one process is the lower in two of three
    assert abs(one["test_accuracy"] - two["test_accuracy"]) < 5
    assert abs(one["test_loss"] - two["test_loss"]) < 0.15


def test_metrics_reduced_over_ranks_equal_one_process_on_the_same_model(runs, small_data):
    folder, results = runs
    recorded = metrics(results["two"]["root"], 2)  # each rank evaluated half the test set
    r = run_cli(*g(folder, "two", small_data), "test", "--epoch", 2, "--device", "cpu", "--json", cwd=folder)
    assert r.returncode == 0, r.stderr
    alone = json.loads(r.stdout.strip().splitlines()[-1])
    assert alone["total"] == recorded["test_total"] == 500
    assert alone["correct"] == recorded["test_correct"] and alone["accuracy"] == recorded["test_accuracy"]
    assert abs(alone["loss"] - recorded["test_loss"]) < 1e-5


def test_a_two_process_checkpoint_resumes_in_one_process_and_back(runs, small_data, tmp_path):
    folder, results = runs
    shutil.copytree(results["two"]["root"], tmp_path / "experiments" / "two")
    opts = g(tmp_path, "two", small_data)
    r = run_cli(*opts, "train", "--max-epochs", 3, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming experiment two from epoch 2" in r.stderr and "x 2 processes" not in r.stderr
    r = run_cli(*opts, "train", "--max-epochs", 4, *TWO, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming experiment two from epoch 3" in r.stderr and "x 2 processes" in r.stderr
    checkpoint = torch.load(tmp_path / "experiments" / "two" / "checkpoints" / "checkpoint_4.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 4 * 25 and checkpoint["history"]["epochs"][-1]["test_accuracy"] > 80


def test_two_processes_stopped_and_resumed_train_as_two_processes_straight(runs, small_data, tmp_path):
    """Epoch 2 resumed from epoch 1's checkpoint equals epoch 2 trained straight on, bit for bit. It did not: after
    the first evaluation DDP's wrapper still said "training" while the network was in eval mode, so the straight run
    trained epoch 2 without dropout; and rank 1 drew its masks from a seed set once per process."""
    folder, results = runs
    copied = tmp_path / "experiments" / "two"
    shutil.copytree(results["two"]["root"], copied)
    (copied / "checkpoints" / "checkpoint_2.pt").unlink()
    r = run_cli(*g(tmp_path, "two", small_data), "train", "--max-epochs", 2, *TWO, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming experiment two from epoch 1" in r.stderr
    straight, resumed = (torch.load(root / "checkpoints" / "checkpoint_2.pt", weights_only=True)
                         for root in (results["two"]["root"], copied))
    assert_same(straight, resumed)


def test_torchrun_launches_the_same_command(runs, small_data, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    opts = g(tmp_path, "tr", small_data)
    assert run_cli(*opts, "init", "--config-path", make_config(tmp_path), cwd=tmp_path).returncode == 0
    r = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "ignite_mnist", *map(str, opts),
                        "train", "--max-epochs", "1", "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "experiments" / "tr"
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["checkpoint_1.pt"]
    assert (root / "verbose.log").read_text().count("epoch 1/1:") == 1
    assert "x 2 processes (gloo)" in r.stderr


def children_of(pid: int) -> list:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start(opts, cwd, max_epochs, new_session=False):
    return subprocess.Popen([sys.executable, "-m", "ignite_mnist", *map(str, opts), "train", "--max-epochs",
                             str(max_epochs), *TWO], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session)


def test_a_rank_that_dies_takes_the_group_down_and_is_named(small_data, tmp_path):
    opts = g(tmp_path, "dies", small_data)
    assert run_cli(*opts, "init", "--config-path", make_config(tmp_path), cwd=tmp_path).returncode == 0
    launcher = start(opts, tmp_path, 100)
    wait_for(lambda: (tmp_path / "experiments" / "dies" / "checkpoints" / "checkpoint_1.pt").exists(), timeout=120)
    ranks = [pid for pid in children_of(launcher.pid) if "ignite_mnist" in Path(f"/proc/{pid}/cmdline").read_text()
             or "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(ranks) >= 2, ranks
    killed = time.monotonic()
    os.kill(max(ranks), signal.SIGKILL)  # one rank dies, as under the OOM killer
    _, err = launcher.communicate(timeout=120)
    assert time.monotonic() - killed < 60
    assert launcher.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank ") and "was killed by SIGKILL; the other ranks were stopped" in last, last
    wait_for(lambda: not any(alive(pid) for pid in ranks), timeout=30)
    checkpoints = tmp_path / "experiments" / "dies" / "checkpoints"
    kept = max(int(p.stem.split("_")[1]) for p in checkpoints.glob("checkpoint_*.pt"))
    assert f"; checkpoints are kept up to epoch {kept}: run `" in last and "--nproc-per-node 2" in last and \
        last.endswith("` to resume"), last
    assert all(torch.load(p, weights_only=True)["history"]["epochs"][-1] for p in checkpoints.glob("checkpoint_*.pt"))


def test_sigint_to_the_launcher_stops_every_rank_cleanly(small_data, tmp_path):
    opts = g(tmp_path, "int", small_data)
    assert run_cli(*opts, "init", "--config-path", make_config(tmp_path), cwd=tmp_path).returncode == 0
    launcher = start(opts, tmp_path, 100)
    checkpoints = tmp_path / "experiments" / "int" / "checkpoints"
    wait_for(lambda: (checkpoints / "checkpoint_1.pt").exists(), timeout=120)
    ranks = children_of(launcher.pid)
    launcher.send_signal(signal.SIGINT)  # only the launcher: it forwards to the ranks
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, err
    assert "training stopped by SIGINT; checkpoints are kept up to epoch" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    wait_for(lambda: not any(alive(pid) for pid in ranks), timeout=30)
    assert not list(checkpoints.glob("tmp*"))
    epochs = sorted(int(p.stem.split("_")[1]) for p in checkpoints.glob("checkpoint_*.pt"))
    assert epochs == list(range(1, len(epochs) + 1))
    r = run_cli(*opts, "train", "--max-epochs", epochs[-1] + 1, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("to", ["launcher", "group"])
def test_sigint_while_the_ranks_start_is_a_stop_not_a_rank_failure(small_data, tmp_path, to):
    """Ctrl-C while the ranks still import torch: from the launcher, which forwards it, or from a terminal,
    which sends it to every process of its group. The ranks start with SIGINT blocked, so none dies of a
    KeyboardInterrupt with a traceback: that is the user's stop (exit 130, the stop's line), not 'rank 1
    was killed by SIGINT' (exit 1)."""
    opts = g(tmp_path, "early", small_data)
    assert run_cli(*opts, "init", "--config-path", make_config(tmp_path), cwd=tmp_path).returncode == 0
    launcher = start(opts, tmp_path, 100, new_session=to == "group")
    wait_for(lambda: len(children_of(launcher.pid)) >= 2 or launcher.poll() is not None, timeout=60, interval=0.05)
    if to == "group":
        os.killpg(launcher.pid, signal.SIGINT)
    else:
        launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: training stopped by SIGINT; ") or last == "error: interrupted", last
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not (tmp_path / "experiments" / "early" / "checkpoints" / "checkpoint_1.pt").exists()


def test_a_sigint_while_a_rank_is_spawned_is_forwarded_to_that_rank_too(monkeypatch):
    """A Ctrl-C to the launcher while it spawns a rank, handled before the rank is counted among the children it
    forwards signals to, reached no rank, and the ranks trained to the end. Here the SIGINT comes during the
    fork; the child, its SIGINT still blocked (it is not a rank: nothing unblocks it), must hold it pending."""
    from multiprocessing.context import SpawnProcess

    from ignite_mnist.engines import STOP
    from ignite_mnist.launch import _ranks_start_with_sigint_blocked

    popen = SpawnProcess._Popen

    def signalled_while_spawned(process_obj):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, to this process, during the fork
        return popen(process_obj)

    monkeypatch.setattr(SpawnProcess, "_Popen", staticmethod(signalled_while_spawned))
    STOP.signum = 0
    child = SpawnProcess(target=time.sleep, args=(60,))
    try:
        with STOP, _ranks_start_with_sigint_blocked():
            child.start()
        assert STOP.signum == signal.SIGINT  # the launcher's own stop
        status = dict(line.split(":", 1) for line in Path(f"/proc/{child.pid}/status").read_text().splitlines())
        pending = int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)
        assert pending & (1 << (signal.SIGINT - 1)), status  # forwarded, waiting for the rank's handler
    finally:
        STOP.signum = 0
        if child.pid is not None:
            child.kill()
            child.join()
    assert "start" not in SpawnProcess.__dict__  # put back as it was
