"""Training on Ignite: the trainer, the evaluators, and every event handler, wired in one place.

run_training() checks the request and starts the processes (idist.Parallel: one, N spawned, or those
torchrun started); training() runs in each process: it builds data, model and engines, and
attach_handlers() is the map of a run: everything that happens on an event is attached there.
"""

import ctypes
import logging
import multiprocessing
import os
import random
import signal
import socket
import sys
from contextlib import contextmanager, nullcontext

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, ProgressBar, TensorboardLogger, global_step_from_engine
from ignite.metrics import Accuracy, Average, Loss
from ignite.utils import manual_seed, setup_logger

from ignite_mnist import data
from ignite_mnist.errors import UserError
from ignite_mnist.experiment import Experiment, log, setup_logging
from ignite_mnist.model import Net

CHECKPOINT_PATTERN = "{name}_{global_step}.{ext}"  # checkpoint_<epoch>.pt: Experiment.checkpoints() reads these


# ---- device and precision -----------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """cpu, cuda, cuda:N or auto, checked against what this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise UserError(f"device {name!r} is not supported: use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise UserError(f"device {name} is not available: this machine has no usable CUDA GPU; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"device {name} does not exist: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", device.index or 0)


def native_bf16(device: torch.device) -> bool:
    """Does the hardware compute bf16 natively (CUDA with bf16, or a CPU with AVX512-BF16 or AMX)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def use_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


# ---- engines ------------------------------------------------------------------------------------


def make_train_step(model, optimizer, train_set: data.TensorSet, bf16: bool):
    """One optimisation step on a batch of indexes; returns the loss, left on the device (no sync)."""
    device_type = train_set.images.device.type

    def train_step(engine, index):
        model.train()
        x, y = train_set.batch(index)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.nll_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return train_step


def create_trainer(model, optimizer, train_set: data.TensorSet, bf16: bool) -> Engine:
    trainer = Engine(make_train_step(model, optimizer, train_set, bf16))
    Average(device=train_set.images.device).attach(trainer, "loss")  # the epoch's mean training loss
    return trainer


def create_evaluator(model, dataset: data.TensorSet, bf16: bool) -> Engine:
    """Loss and accuracy (correct / samples) over `dataset`, in eval mode; reduced across processes."""
    device = dataset.images.device

    def eval_step(engine, index):
        model.eval()
        x, y = dataset.batch(index)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x).float(), y

    evaluator = Engine(eval_step)
    Accuracy(device=device).attach(evaluator, "accuracy")
    Loss(F.nll_loss, device=device).attach(evaluator, "loss")
    return evaluator


def evaluate(evaluator: Engine, n: int, batch_size: int) -> dict:
    """Run `evaluator` over this process's share of n items: {accuracy (%), correct, total, loss}."""
    evaluator.run(data.eval_batches(n, batch_size, idist.get_rank(), idist.get_world_size()))
    accuracy = evaluator.state.metrics["accuracy"]
    return {"accuracy": 100 * accuracy, "correct": round(accuracy * n), "total": n,
            "loss": evaluator.state.metrics["loss"]}


# ---- state that checkpoints hold besides model, optimizer, scheduler and trainer ----------------


class RNGStates:
    """The random generators (Python, NumPy, torch, CUDA): dropout masks go on as in an uninterrupted run.

    Held as tensors and plain data, so that checkpoints load with torch.load(weights_only=True).
    The batch order needs no state here: ShuffledBatches draws it from (seed, epoch).
    """

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "cached_gaussian": cached},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class EpochRecord:
    """What was measured in one epoch (losses, accuracies, learning rate, times): saved with its checkpoint.

    Not a dict subclass: Checkpoint would walk into a dict instead of calling its state_dict().
    """

    def __init__(self):
        self.values = {}

    def state_dict(self) -> dict:
        return dict(self.values)

    def load_state_dict(self, state: dict) -> None:
        self.values = dict(state)


def read_checkpoint(path, device, what: str = "checkpoint", mmap: bool = False) -> dict:
    """torch.load with weights_only=True: a file that is not plain tensors and data (a crafted pickle)
    is refused without running it. Any failure is one line that names the file.

    mmap=True maps the tensors instead of reading them: for callers that only look at the plain data.
    """
    try:
        loaded = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{what} {path} is corrupt or not an ignite-mnist {what} ({reason[:200]})"
                        + (": move it away to go back to the one before" if what == "checkpoint" else "")) from None
    if not isinstance(loaded, dict):
        raise UserError(f"{what} {path} is not an ignite-mnist {what} (it holds a {type(loaded).__name__})")
    return loaded


def load_checkpoint(path, to_load: dict, device) -> None:
    """Restore the objects of `to_load` from a checkpoint file, or name the file in a one-line error."""
    checkpoint = read_checkpoint(path, device)
    missing = [key for key in to_load if key not in checkpoint]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}: it is not an ignite-mnist checkpoint")
    try:
        Checkpoint.load_objects(to_load, {key: checkpoint[key] for key in to_load})
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"checkpoint {path} does not fit this experiment ({reason[:200]})") from None


# ---- stopping on a signal -----------------------------------------------------------------------


class StopRequest:
    """SIGINT and SIGTERM ask for a clean stop: the trainer ends after the current iteration.

    One per process (STOP), installed for the whole run, so a signal during setup is not lost. Across
    processes every rank agrees first (one all-reduce per iteration), so no rank is left waiting in a
    collective that the others have left; a launcher forwards the signal to the ranks it spawned.
    """

    def __init__(self):
        self.signum = 0
        self._previous = []

    def __enter__(self):
        self._previous.append({s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)})
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.pop().items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        self.signum = self.signum or signum
        for child in multiprocessing.active_children():
            os.kill(child.pid, signum)

    def check(self, engine: Engine) -> None:
        signum = self.signum
        if idist.get_world_size() > 1:
            signum = int(idist.all_reduce(torch.tensor(signum, device=idist.device()), op="MAX").item())
        if signum:
            self.signum = signum
            engine.terminate()


STOP = StopRequest()


# ---- the run ------------------------------------------------------------------------------------


def attach_handlers(trainer, evaluators, sets, optimizer, lr_scheduler, batches, record, to_save, job):
    """Every event handler of a training run, in the order they fire at each event."""
    experiment: Experiment = job["experiment"]
    eval_batch_size = experiment.config["training"]["eval_batch_size"]
    is_writer = idist.get_rank() == 0  # only rank 0 writes checkpoints, logs, events and the progress bar

    @trainer.on(Events.EPOCH_STARTED)
    def start_epoch(engine):
        batches.set_epoch(engine.state.epoch)  # the epoch's batch order, drawn from (seed, epoch)
        record.values = {"epoch": engine.state.epoch, "lr": optimizer.param_groups[0]["lr"]}

    trainer.add_event_handler(Events.ITERATION_COMPLETED, STOP.check)

    @trainer.on(Events.ITERATION_COMPLETED(every=job["log_period"]))
    def log_iteration(engine):
        i = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        log.debug(f"epoch {engine.state.epoch} iteration {i}/{engine.state.epoch_length}: "
                  f"loss {engine.state.output.item():.4f}")

    @trainer.on(Events.EPOCH_COMPLETED)
    def evaluate_epoch(engine):
        r = record.values
        r.update(train_loss=engine.state.metrics["loss"], train_seconds=engine.state.times["EPOCH_COMPLETED"])
        for name, evaluator in evaluators.items():
            result = evaluate(evaluator, len(sets[name]), eval_batch_size)
            r.update({f"{name}_{key}": value for key, value in result.items()})
            r[f"{name}_seconds"] = evaluator.state.times["COMPLETED"]
        lr_scheduler.step()  # StepLR: once per epoch, after the epoch it applied to
        log.info(
            f"epoch {engine.state.epoch}/{engine.state.max_epochs}: train loss {r['train_loss']:.4f}"
            + "".join(f" | {name} loss {r[name + '_loss']:.4f} accuracy {r[name + '_accuracy']:.2f}%"
                      for name in evaluators)
            + f" | lr {r['lr']:.4g} | {r['train_seconds']:.1f}s"
        )

    checkpoint = Checkpoint(
        to_save,
        DiskSaver(experiment.checkpoints_dir, require_empty=False),  # atomic: a file is whole or absent
        n_saved=None,
        filename_pattern=CHECKPOINT_PATTERN,
        global_step_transform=lambda engine, _: engine.state.epoch,
    )

    @trainer.on(Events.EPOCH_COMPLETED)
    def save_checkpoint(engine):
        try:
            checkpoint(engine)
        except (OSError, RuntimeError) as e:  # a full or read-only disk; torch.save wraps the OSError
            os_error = e if isinstance(e, OSError) else e.__context__
            reason = os_error.strerror if isinstance(os_error, OSError) else str(e).strip()[:200]
            raise UserError(f"cannot write the checkpoint of epoch {engine.state.epoch} in "
                            f"{experiment.checkpoints_dir} ({reason}); the checkpoints before it are intact") from None

    trainer.add_event_handler(Events.EPOCH_COMPLETED, STOP.check)  # a signal during evaluation: stop here

    if is_writer:
        tb = TensorboardLogger(log_dir=experiment.tensorboard_dir)
        tb.attach_output_handler(trainer, Events.ITERATION_COMPLETED(every=job["log_period"]), tag="training",
                                 output_transform=lambda loss: {"batch_loss": loss.item()})
        tb.attach_output_handler(trainer, Events.EPOCH_COMPLETED, tag="training", metric_names=["loss"])
        tb.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer, param_name="lr")
        for name, evaluator in evaluators.items():
            tb.attach_output_handler(evaluator, Events.COMPLETED, tag=name, metric_names=["loss", "accuracy"],
                                     global_step_transform=global_step_from_engine(trainer, Events.EPOCH_COMPLETED))
        trainer.add_event_handler(Events.COMPLETED | Events.TERMINATE, lambda _: tb.close())
        if job["progress_bar"]:
            ProgressBar(persist=False).attach(trainer, output_transform=lambda loss: {"loss": loss.item()})


def training(local_rank: int, job: dict) -> None:
    """One process of a training run. job: experiment, data_path, device, max_epochs, log_period, ..."""
    with STOP:
        _training(local_rank, job)


def _training(local_rank: int, job: dict) -> None:
    experiment: Experiment = job["experiment"]
    rank, world_size = idist.get_rank(), idist.get_world_size()
    if job.get("spawned"):
        _die_with_parent()
    setup_logging(experiment if rank == 0 else None, job["verbose"], to_console=rank == 0)
    _quiet_ignite_launcher()
    device = torch.device(job["device"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world_size > 1 else device.index or 0)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_flush_denormal(True)  # denormals in late training slow the CPU down for nothing
        if world_size > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // idist.get_nproc_per_node()))
    cfg = experiment.config["training"]
    bf16 = use_bf16(cfg["precision"], device)

    manual_seed(experiment.seed)  # Python, NumPy, torch: the same initial weights on every rank
    with idist.one_rank_first(local=True):  # one process per node downloads, if anything must be
        sets = data.tensor_sets(experiment.config["data"]["dataset"], job["data_path"], experiment.load_split(),
                                device)
    net = Net().to(device, memory_format=torch.channels_last)
    model = idist.auto_model(net) if world_size > 1 else net  # DDP trains; evaluators and checkpoints use net
    optimizer = idist.auto_optim(torch.optim.Adadelta(model.parameters(), lr=cfg["lr"]))
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg["lr_gamma"])
    step_model = model
    if cfg["cuda_graphs"] and device.type == "cuda":
        step_model = torch.compile(model, mode="reduce-overhead")  # CUDA graphs; the CPU path never compiles

    batches = data.ShuffledBatches(len(sets["train"]), cfg["batch_size"], experiment.seed, rank, world_size, device)
    trainer = create_trainer(step_model, optimizer, sets["train"], bf16)
    evaluators = {name: create_evaluator(net, sets[name], bf16) for name in ("validation", "test") if len(sets[name])}
    record = EpochRecord()
    to_save = {"model": net, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "trainer": trainer,
               "rng": RNGStates(), "metrics": record}

    if rank == 0:
        experiment.remove_partial_files()  # of a save killed half-way; the lock keeps them ours
    checkpoints = experiment.checkpoints()
    if checkpoints:  # resume, before any handler writes anything
        last = max(checkpoints)
        load_checkpoint(checkpoints[last], to_save, device)
        if trainer.state.epoch != last:
            raise UserError(f"checkpoint {checkpoints[last]} holds epoch {trainer.state.epoch}, not {last}: move it away")
        trainer.state.epoch_length, trainer.state.iteration = len(batches), last * len(batches)  # any world size
        log.info(f"resuming experiment {experiment.name} from epoch {last}")
    if rank > 0:  # its own dropout masks; rank 0's generator is the one checkpoints keep and restore
        torch.manual_seed(experiment.seed * 1_000_003 + 7919 * rank + trainer.state.epoch)
    attach_handlers(trainer, evaluators, sets, optimizer, lr_scheduler, batches, record, to_save, job)
    if rank == 0:
        log.info(
            f"training {experiment.name} to epoch {job['max_epochs']} on {device}"
            + (f" x {world_size} processes ({idist.backend()})" if world_size > 1 else "")
            + f", {'bf16' if bf16 else 'fp32'}: {len(sets['train'])} training images, "
            + f"{len(sets['validation'])} validation, {len(sets['test'])} test"
        )
    trainer.run(batches, max_epochs=job["max_epochs"])
    if STOP.signum and rank == 0:
        log.info(f"stopped by {signal.Signals(STOP.signum).name} in epoch {trainer.state.epoch}")


def _die_with_parent() -> None:
    """A spawned rank must not outlive its launcher (killed by SIGKILL, it cannot forward anything)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)


def run_training(experiment: Experiment, data_path, max_epochs: int, device_name: str = "auto",
                 nproc_per_node: int = 1, backend: str = None, log_period: int = 50, verbose: bool = False) -> dict:
    """Train `experiment` until epoch max_epochs, resuming from its last checkpoint.

    Returns what was measured in the last epoch (its checkpoint's metrics); {} when there was nothing to do.
    """
    device = resolve_device(device_name)
    done = max(experiment.checkpoints(), default=0)
    if max_epochs < 1:
        raise UserError(f"--max-epochs must be at least 1, not {max_epochs}")
    if max_epochs < done:
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
    if world_size > 1:
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl" and device.type != "cuda":
            raise UserError("backend nccl runs on CUDA GPUs only: use --backend gloo with --device cpu")
        if device.type == "cuda" and nproc_per_node > torch.cuda.device_count():
            raise UserError(f"--nproc-per-node {nproc_per_node} with nccl needs as many GPUs; this machine has "
                            f"{torch.cuda.device_count()}")
    else:
        backend = None
    if max_epochs == done:
        log.info(f"experiment {experiment.name} is already trained to epoch {done}: nothing to do")
        return {}

    job = {"experiment": experiment, "data_path": data_path, "device": str(device), "max_epochs": max_epochs,
           "log_period": log_period, "verbose": verbose, "spawned": world_size > 1 and not launched,
           "progress_bar": sys.stderr.isatty()}
    _quiet_ignite_launcher()
    spawn, spawned_env = {}, {}
    if job["spawned"]:
        spawn = {"nproc_per_node": nproc_per_node, "master_port": _free_port()}
        # multiprocessing's resource tracker would end a run whose rank was killed with a warning about the
        # semaphores that rank left: after our one-line error, not instead of it
        spawned_env["PYTHONWARNINGS"] = os.environ.get("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")
        if device.type == "cpu":
            spawned_env["CUDA_VISIBLE_DEVICES"] = ""  # --device cpu: spawned ranks must not pick a GPU
    STOP.signum = 0
    with _lock_on_rank_zero(experiment, launched), STOP, _environment(spawned_env):
        try:
            with idist.Parallel(backend=backend, **spawn) as parallel:
                parallel.run(training, job)
        except torch.multiprocessing.ProcessRaisedException as e:
            raise _rank_failure(e) from None
        except torch.multiprocessing.ProcessExitedException as e:
            how = f"was killed by {signal.Signals(-e.exit_code).name}" if (e.exit_code or 0) < 0 else \
                f"exited with code {e.exit_code}"
            raise UserError(f"rank {e.error_index} {how}; the other ranks were stopped", exit_code=1) from None
    done = max(experiment.checkpoints(), default=0)
    resume = f"run `ignite-mnist -e {experiment.name} train --max-epochs {max_epochs}` to resume"
    if STOP.signum:
        raise UserError(f"training stopped by {signal.Signals(STOP.signum).name}; checkpoints are kept up to "
                        f"epoch {done}: {resume}", exit_code=128 + STOP.signum)
    if done < max_epochs and (not launched or int(os.environ.get("RANK", "0")) == 0):
        raise UserError(f"training ended at epoch {done}, before epoch {max_epochs}: a process was stopped; "
                        f"{resume}", exit_code=1)
    return read_checkpoint(experiment.checkpoints()[done], "cpu")["metrics"] if done else {}


def _quiet_ignite_launcher() -> None:
    """idist's launcher and auto_model announce themselves at INFO on the console: keep it for our lines."""
    for name in ("ignite.distributed.launcher.Parallel", "ignite.distributed.auto.auto_model"):
        setup_logger(name, level=logging.WARNING)


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


# ---- evaluation of a checkpoint (the `test` command) --------------------------------------------


def evaluate_checkpoint(experiment: Experiment, data_path, epoch: int, device_name: str = "auto") -> dict:
    """Restore the model of `epoch` and measure it on the test set: {epoch, accuracy, correct, total, loss}."""
    path = experiment.checkpoint(epoch)
    device = resolve_device(device_name)
    model = Net().to(device, memory_format=torch.channels_last)
    load_checkpoint(path, {"model": model}, device)
    sets = data.tensor_sets(experiment.config["data"]["dataset"], data_path, {}, device)
    cfg = experiment.config["training"]
    evaluator = create_evaluator(model, sets["test"], use_bf16(cfg["precision"], device))
    return {"epoch": epoch, **evaluate(evaluator, len(sets["test"]), cfg["eval_batch_size"])}
