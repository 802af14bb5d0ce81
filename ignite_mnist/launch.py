"""Starting a training run: checks of the request, the lock, and the processes (idist.Parallel: this one,
N spawned, or those torchrun started), each of which runs engines.training()."""

import ctypes
import logging
import os
import shlex
import signal
import socket
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ignite_mnist import lazy_imports  # noqa: F401, I001  (before Ignite: see there)
import ignite.distributed as idist
import torch
from ignite.utils import setup_logger

from ignite_mnist.device import resolve_device
from ignite_mnist.engines import STOP, training
from ignite_mnist.errors import UserError
from ignite_mnist.experiment import Experiment, command_line, log


def run_training(experiment: Experiment, data_path, max_epochs: int, device_name: str = "auto",
                 nproc_per_node: int = 1, backend: str = None, log_period: int = 50, verbose: bool = False,
                 trial=None) -> dict:
    """Train `experiment` until epoch max_epochs (or until early stopping), resuming from its last checkpoint.
    trial: an Optuna trial that may prune the run (a sweep's; one process only).

    Returns what the last epoch measured; {} when there was nothing to do.
    """
    device = resolve_device(device_name)
    experiment.check_folders()
    if experiment.moved_data_path(data_path) and int(os.environ.get("RANK", "0")) == 0:
        _record_moved_data(experiment, data_path)
    done = max(experiment.checkpoints(), default=0)
    releases = experiment.releases() if not done else []
    if releases:  # every checkpoint deleted by hand: training again from epoch 1 would overwrite them, one by one
        names = ", ".join(Path(r["path"]).name for r in releases[:3]) + ", ..." * (len(releases) > 3)
        raise UserError(f"experiment {experiment.name} has no checkpoints, but releases of the epochs trained before "
                        f"({names}): training again from epoch 1 would replace them; move {experiment.releases_dir} "
                        "away first (or init another experiment)")
    if max_epochs < 1:
        raise UserError(f"--max-epochs must be at least 1, not {max_epochs}")
    if max_epochs < done:
        from ignite_mnist.checkpoints import check_checkpoint, read_checkpoint

        path = experiment.checkpoints()[done]  # a stray or damaged last checkpoint is said as such, not obeyed
        check_checkpoint(path, read_checkpoint(path, "cpu", mmap=True), done, experiment.owner)
        raise UserError(f"experiment {experiment.name} is already at epoch {done}: --max-epochs is the epoch to "
                        f"train until, so it must be at least {done}")
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # started by torchrun (or another launcher)
    if launched and nproc_per_node > 1:
        raise UserError("--nproc-per-node and torchrun both start processes: use one of them")
    world_size = int(os.environ["WORLD_SIZE"]) if launched else nproc_per_node
    if world_size < 1:
        raise UserError(f"--nproc-per-node must be at least 1, not {nproc_per_node}")
    batch_size = experiment.config["training"]["batch_size"]
    if batch_size % world_size:
        raise UserError(f"training.batch_size {batch_size} is the global batch: it must divide among "
                        f"{world_size} processes")
    if backend == "nccl" and device.type != "cuda":  # refused with one process too, not silently unused
        raise UserError("backend nccl runs on CUDA GPUs only: use --backend gloo with --device cpu")
    if world_size > 1:
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda" and nproc_per_node > torch.cuda.device_count():
            raise UserError(f"--nproc-per-node {nproc_per_node} with nccl needs as many GPUs; this machine has "
                            f"{torch.cuda.device_count()}")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if device.type == "cpu" and nproc_per_node > cores:  # each holds the data and torch: 64 would exhaust memory
            raise UserError(f"--nproc-per-node {nproc_per_node} is more than the {cores} CPU core{'s' * (cores > 1)} "
                            "this process may use: each process trains on at least one")
    else:
        backend = None
    history = experiment.history() if done else {}
    stopped = history.get("stopped_early")
    if stopped or max_epochs == done:
        if stopped:
            log.info(f"experiment {experiment.name} stopped early at epoch {stopped}: "
                     f"{experiment.early_stopping_rule(history)}; nothing to do")
        else:
            log.info(f"experiment {experiment.name} is already trained to epoch {done}: nothing to do")
        with _lock_on_rank_zero(experiment, launched):
            if not launched or int(os.environ.get("RANK", "0")) == 0:
                _release_if_missing(experiment, data_path)
        return {}

    experiment.check_folders(writable=True)  # a folder that cannot be written in: named now, not after an epoch
    job = {"experiment": experiment, "data_path": data_path, "device": str(device), "max_epochs": max_epochs,
           "log_period": log_period, "verbose": verbose, "spawned": world_size > 1 and not launched,
           "progress_bar": sys.stderr.isatty(), "trial": trial}
    _quiet_ignite_launcher()
    spawn, spawned_env = {}, {}
    if job["spawned"]:
        spawn = {"nproc_per_node": nproc_per_node, "master_port": _free_port()}
        # multiprocessing's resource tracker would end a run whose rank was killed with a warning about the
        # semaphores that rank left: after our one-line error, not instead of it
        spawned_env["PYTHONWARNINGS"] = os.environ.get("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")
        if device.type == "cpu":
            spawned_env["CUDA_VISIBLE_DEVICES"] = ""  # --device cpu: spawned ranks must not pick a GPU
    again = f"train --max-epochs {max_epochs}"  # with the run's options: resumed so, it goes on bit for bit
    if device_name != "auto":
        again += f" --device {shlex.quote(device_name)}"
    if nproc_per_node > 1:
        again += f" --nproc-per-node {nproc_per_node}" + (f" --backend {backend}" if backend else "")
    # the experiment's own data folder (the one read without --data-path) needs no option in the hint
    own_data = os.path.abspath(data_path) == os.path.abspath(experiment.own_data_path)
    again = command_line(experiment.root.parent, experiment.name, again, None if own_data else data_path)
    resume = f"run `{again}` to resume"
    STOP.signum = 0
    with _lock_on_rank_zero(experiment, launched), STOP, _environment(spawned_env):
        try:
            with _ranks_start_with_sigint_blocked(), idist.Parallel(backend=backend, **spawn) as parallel:
                parallel.run(_rank_main, job)
        # after Ctrl-C or SIGTERM, a rank still importing torch dies of the forwarded signal: that is the stop below
        except torch.multiprocessing.ProcessRaisedException as e:
            if not STOP.signum:
                raise _rank_failure(e) from None
        except torch.multiprocessing.ProcessExitedException as e:
            if not STOP.signum:
                how = f"was killed by {signal.Signals(-e.exit_code).name}" if (e.exit_code or 0) < 0 else \
                    f"exited with code {e.exit_code}"
                raise UserError(f"rank {e.error_index} {how}; the other ranks were stopped; "
                                f"{_kept(experiment)}: {resume}", exit_code=1) from None
    done = max(experiment.checkpoints(), default=0)
    finished = done >= max_epochs or bool(done and experiment.history()["stopped_early"])
    if STOP.signum and finished:  # the signal came after the last epoch: the training is whole (STOP.signum stays
        # set, for a sweep to stop at); the release, if the stop came before it
        log.info(f"{signal.Signals(STOP.signum).name} came after the last epoch: the training is complete")
        with _lock_on_rank_zero(experiment, launched):
            if not launched or int(os.environ.get("RANK", "0")) == 0:
                _release_if_missing(experiment, data_path)
    elif STOP.signum:
        raise UserError(f"training stopped by {signal.Signals(STOP.signum).name}; {_kept(experiment)}: {resume}",
                        exit_code=128 + STOP.signum)
    if launched and int(os.environ.get("RANK", "0")) != 0:
        return {}
    history = experiment.history()
    if done < max_epochs and not history["stopped_early"]:
        raise UserError(f"training ended at epoch {done}, before epoch {max_epochs}: a process was stopped; "
                        f"{resume}", exit_code=1)
    return history["epochs"][-1] if done else {}


def _kept(experiment: Experiment) -> str:
    done = max(experiment.checkpoints(), default=0)
    return f"checkpoints are kept up to epoch {done}" if done else "no epoch was finished, so no checkpoint"


def _record_moved_data(experiment: Experiment, data_path) -> None:
    """--data-path is the new place of the experiment's data, its recorded folder gone: recorded in experiment.json
    where both splits prove the same (their digests), so that later commands find it without the option (even with
    nothing left to train); other data is left to the training's own check to refuse."""
    from ignite_mnist import data

    loaded = data.load(experiment.config["data"]["dataset"], data_path)
    if all(data.digest(*loaded[split]) == experiment.data_digests.get(split) for split in ("train", "test")):
        experiment.record_data_path(data_path)
        log.info(f"the data of experiment {experiment.name} is now read from {experiment.meta['data_path']} "
                 f"(recorded in {experiment.meta_file}): its old folder is gone")


def _release_if_missing(experiment: Experiment, data_path) -> None:
    """The release a finished training writes, if a kill or a signal came before it: training is done."""
    epoch = experiment.best_epoch() or max(experiment.checkpoints())
    if not experiment.release_of(epoch):
        from ignite_mnist import release

        path = release.release_finished_training(experiment, epoch, data_path)
        if path:
            log.info(f"release of epoch {epoch} written: {path} (the last training ended before it could write it)")


def _rank_main(local_rank: int, job: dict) -> None:
    if job.get("spawned"):
        _die_with_parent()
    _quiet_ignite_launcher()
    training(local_rank, job)


def _die_with_parent() -> None:
    """A spawned rank must not outlive its launcher (killed by SIGKILL, it cannot forward anything)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)


def _quiet_ignite_launcher() -> None:
    """idist's launcher and auto_model announce themselves at INFO on the console: keep it for our lines."""
    for name in ("ignite.distributed.launcher.Parallel", "ignite.distributed.auto.auto_model"):
        setup_logger(name, level=logging.WARNING)


@contextmanager
def _ranks_start_with_sigint_blocked():
    """Spawn the ranks with SIGINT blocked; training() unblocks it once its handler is in place (StopRequest).

    A Ctrl-C reaches every process of the terminal's group: a rank still importing torch would die of its
    KeyboardInterrupt, printing a traceback. Blocked (the mask survives fork and exec), it waits, and the
    rank stops cleanly as soon as it can. A stop this process was asked for before the new rank was counted
    among the children it forwards signals to (StopRequest) is forwarded to it once it is: else that rank
    would train to the end. (Blocking SIGINT here does not hold it back: another thread may take it.)
    """
    from multiprocessing import resource_tracker
    from multiprocessing.context import SpawnProcess

    own_start, start = SpawnProcess.__dict__.get("start"), SpawnProcess.start  # (BaseProcess's)

    def start_with_sigint_blocked(process):
        resource_tracker.ensure_running()  # its first start unblocks SIGINT (and SIGTERM) when it is done
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            start(process)  # forks, then counts the rank among the active children
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if STOP.signum:  # asked before the rank was counted: the forwarding missed it
            os.kill(process.pid, STOP.signum)

    SpawnProcess.start = start_with_sigint_blocked
    try:
        yield
    finally:
        if own_start is None:
            del SpawnProcess.start
        else:
            SpawnProcess.start = own_start


@contextmanager
def _environment(values: dict):
    """Set environment variables for the processes started inside; put the old values back after."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lock_on_rank_zero(experiment: Experiment, launched: bool):
    """Under torchrun every rank runs this command; rank 0 holds the lock for all of them."""
    if launched and int(os.environ.get("RANK", "0")) != 0:
        return nullcontext()
    return experiment.training_lock()


def _rank_failure(error) -> UserError:
    """A spawned rank's exception, as one line that names the rank."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    if last.startswith(prefix):
        return UserError(f"rank {error.error_index}: {last[len(prefix):]}")
    return UserError(f"rank {error.error_index} failed: {last}", exit_code=1)
