"""Training on Ignite: the trainer, the evaluators, and every event handler, wired in one place.

training() runs in each process of a run (launch.run_training starts them): it builds data, model and
engines, restores the last checkpoint, and attach_handlers() is the map of a run: everything that happens
on an event is attached there. evaluate_checkpoint() is the `test` command's evaluation.
"""

import functools
import logging
import multiprocessing
import os
import signal
import time

from ignite_mnist import lazy_imports  # noqa: F401, I001  (before Ignite: see there)
import ignite.distributed as idist
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import (Checkpoint, DiskSaver, EarlyStopping, ProgressBar, TensorboardLogger,
                             global_step_from_engine)
from ignite.metrics import Accuracy, Average, ConfusionMatrix, Loss, MetricsLambda
from ignite.utils import manual_seed

from ignite_mnist import data, kernels, release, summaries
from ignite_mnist.analysis import WorstClassified
from ignite_mnist.checkpoints import (FILENAME_PATTERN, History, Owner, RNGStates, check_checkpoint, history_of,
                                      load_checkpoint, read_checkpoint, restore)
from ignite_mnist.device import prepare_cpu_for_training, prepare_cuda_for_training, resolve_device, use_bf16
from ignite_mnist.errors import UserError, error_text, is_file
from ignite_mnist.experiment import Experiment, log, setup_logging
from ignite_mnist.model import Net


WORST = 24  # worst-classified test digits shown at the end of training and by `test --plot`


# ---- engines ------------------------------------------------------------------------------------


def make_train_step(model, optimizer, train_set: data.TensorSet, bf16: bool):
    """One optimisation step on a batch of indexes; returns the loss, left on the device (no sync)."""
    device_type = train_set.images.device.type
    net = getattr(model, "module", model)  # DDP's wrapper keeps a flag of its own, which the evaluators never clear

    def train_step(engine, index):
        if not net.training:  # (the evaluators leave the network in eval mode; train() walks every module)
            model.train()
        x, y = train_set.batch(index)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.nll_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return train_step


def graphed(model, cfg: dict, device: torch.device):
    """The model as the training step runs it: on CUDA with training.cuda_graphs, through torch.compile's
    CUDA graphs (each step one graph replay, not some 60 kernel launches); the CPU path never compiles it."""
    if cfg["cuda_graphs"] and device.type == "cuda":
        return torch.compile(model, mode="reduce-overhead")
    return model


def make_optimizer(params, lr: float, device: torch.device, compiled: bool = False) -> torch.optim.Adadelta:
    """Adadelta; on the CPU its step runs one fused loop a parameter (kernels.FusedAdadelta), unless
    training.compile_optimizer has inductor fuse it (compile_optimizer_step)."""
    if device.type == "cpu" and not compiled:
        return kernels.FusedAdadelta(params, lr=lr)
    return torch.optim.Adadelta(params, lr=lr)


def inductor_can_compile() -> bool:
    """Whether torch.compile can build code here: inductor needs a C++ compiler. Without one, training.compile_optimizer
    is set aside with a warning (a speed option: the fused Adadelta computes the same update, uncompiled)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except ImportError:  # (a private module: if it moves, a missing compiler is found at the first step)
        pass
    except Exception as e:
        log.warning(f"training.compile_optimizer set aside: torch.compile needs a C++ compiler, and none was found "
                    f"({error_text(e)}); Adadelta runs uncompiled (install g++ to compile it)")
        return False
    return True


def compile_optimizer_step(optimizer) -> None:
    """optimizer.step through torch.compile: inductor fuses Adadelta's eleven passes over each parameter into
    one loop (README, Speed). Its learning rate becomes a tensor, which StepLR fills in place; as a float,
    each epoch's new value would be compiled anew. Where inductor fails to compile it (at the first step, before
    anything is updated), the step runs uncompiled from then on, with a warning."""
    from torch._dynamo.exc import BackendCompilerFailed

    for group in optimizer.param_groups:  # float64: the values StepLR computes as floats, to the last digit
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float64)
    torch.compiler.reset()  # one run at a time in a process (a sweep's trials): past runs' steps would count
    uncompiled = optimizer.step
    compiled = torch.compile(uncompiled)  # against dynamo's limit of 8, then run uncompiled

    @functools.wraps(uncompiled)  # its marks too: StepLR warns of a step that it did not wrap
    def step(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except BackendCompilerFailed as e:  # compiled at the first step (inductor's InductorError is one)
            log.warning(f"training.compile_optimizer set aside: torch.compile could not compile Adadelta's step "
                        f"({error_text(e)}); it runs uncompiled")
            for group in optimizer.param_groups:
                group["lr"] = float(group["lr"])
            optimizer.step = uncompiled
            return uncompiled(*args, **kwargs)

    optimizer.step = step


def create_trainer(model, optimizer, train_set: data.TensorSet, bf16: bool) -> Engine:
    trainer = Engine(make_train_step(model, optimizer, train_set, bf16))
    Average(device=train_set.images.device).attach(trainer, "loss")  # the epoch's mean training loss
    return trainer


def create_evaluator(model, dataset: data.TensorSet, bf16: bool, worst: int = 0) -> Engine:
    """Over `dataset`, in eval mode, reduced across processes: accuracy (percent: correct / samples), loss,
    confusion_matrix (rows: true class) and, with worst=k, the k worst-classified samples."""
    device = dataset.images.device

    def eval_step(engine, index):
        model.eval()
        x, y = dataset.batch(index)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            y_pred = model(x).float()
        return {"y_pred": y_pred, "y": y, "index": index, "criterion_kwargs": {}}  # each metric takes its keys

    evaluator = Engine(eval_step)
    # percent, as every command prints it; rounded so that 949 of 1000 reads 94.9, not 94.89999999999999
    MetricsLambda(lambda fraction: round(100 * fraction, 10), Accuracy(device=device)).attach(evaluator, "accuracy")
    Loss(F.nll_loss, device=device).attach(evaluator, "loss")
    ConfusionMatrix(num_classes=10, device=device).attach(evaluator, "confusion_matrix")  # the network's 10 outputs
    if worst:
        WorstClassified(worst).attach(evaluator, "worst")
    return evaluator


def evaluate(evaluator: Engine, n: int, batch_size: int) -> dict:
    """Run `evaluator` over this process's share of n items: {accuracy (%), correct, total, loss}."""
    evaluator.run(data.eval_batches(n, batch_size, idist.get_rank(), idist.get_world_size()))
    metrics = evaluator.state.metrics
    return {"accuracy": metrics["accuracy"], "correct": round(metrics["accuracy"] * n / 100), "total": n,
            "loss": metrics["loss"]}


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
        # a signal the process was started ignoring stays ignored, as Python leaves it: a shell starts its
        # background jobs ignoring SIGINT, so that a Ctrl-C meant for the foreground does not stop them
        self._previous.append({s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)
                               if signal.getsignal(s) != signal.SIG_IGN})
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a spawned rank starts with it blocked
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
            engine.terminate(skip_completed=True)  # COMPLETED is for runs that end as planned


STOP = StopRequest()


# ---- the run ------------------------------------------------------------------------------------


def attach_handlers(trainer, evaluators, sets, optimizer, lr_scheduler, batches, history, to_save, job):
    """Every event handler of a training run, in the order they fire at each event."""
    experiment: Experiment = job["experiment"]
    eval_batch_size = experiment.config["training"]["eval_batch_size"]
    classes = data.DATASETS[experiment.config["data"]["dataset"]]["classes"]
    rank = idist.get_rank()
    is_writer = rank == 0  # only rank 0 writes checkpoints, logs, events, releases, the progress bar

    @trainer.on(Events.EPOCH_STARTED)
    def start_epoch(engine):
        batches.set_epoch(engine.state.epoch)  # the epoch's batch order, drawn from (seed, epoch)
        if rank > 0:  # its dropout masks from (seed, rank, epoch): rank 0's generator is the one checkpoints keep,
            # so a resumed run draws every rank's masks as the uninterrupted run did
            torch.manual_seed(experiment.seed * 1_000_003 + 7919 * rank + engine.state.epoch)
        history.epochs.append({"epoch": engine.state.epoch, "lr": float(optimizer.param_groups[0]["lr"])})

    trainer.add_event_handler(Events.ITERATION_COMPLETED, STOP.check)

    @trainer.on(Events.ITERATION_COMPLETED(every=job["log_period"]))
    def log_iteration(engine):
        i = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        log.debug(f"epoch {engine.state.epoch} iteration {i}/{engine.state.epoch_length}: "
                  f"loss {engine.state.output.item():.4f}")

    @trainer.on(Events.EPOCH_COMPLETED)
    def evaluate_epoch(engine):
        r = history.current
        r.update(train_loss=engine.state.metrics["loss"], train_seconds=engine.state.times["EPOCH_COMPLETED"])
        for name, evaluator in evaluators.items():
            result = evaluate(evaluator, len(sets[name]), eval_batch_size)
            r.update({f"{name}_{key}": value for key, value in result.items()})
            r[f"{name}_seconds"] = evaluator.state.times["COMPLETED"]
        log.info(
            f"epoch {engine.state.epoch}/{engine.state.max_epochs}: train loss {r['train_loss']:.4f}"
            + "".join(f" | {name} loss {r[name + '_loss']:.4f} accuracy {r[name + '_accuracy']:.2f}%"
                      for name in evaluators)
            + f" | lr {r['lr']:.4g} | {r['train_seconds']:.1f}s"
        )
        if history.stopped_early == engine.state.epoch:  # (note_early_stop, during the validation above)
            log.info(f"stopping early at epoch {engine.state.epoch}: {experiment.early_stopping_rule()}")

    if "early_stopping" in to_save:  # on validation accuracy, after each validation
        stopper = to_save["early_stopping"]
        # not stopper.attach(): it would reset the state restored from the checkpoint when the run starts
        evaluators["validation"].add_event_handler(Events.COMPLETED, stopper)

        @evaluators["validation"].on(Events.COMPLETED)
        def note_early_stop(_):
            if stopper.counter >= stopper.patience:  # the stopper has asked the trainer to terminate
                history.stopped_early = trainer.state.epoch  # said after the epoch's line (evaluate_epoch)
                history.stopped_by = dict(experiment.config["training"]["early_stopping"])  # (the config may change)

    @trainer.on(Events.EPOCH_COMPLETED)
    def step_lr(engine):
        lr_scheduler.step()  # StepLR: once per epoch, after the epoch it applied to, before the checkpoint

    checkpoint = Checkpoint(
        to_save,
        DiskSaver(experiment.checkpoints_dir, require_empty=False),  # atomic: a file is whole or absent
        n_saved=None,  # retention prunes after the save; Checkpoint(n_saved=K) deletes the oldest before it
        filename_pattern=FILENAME_PATTERN,
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

    if is_writer:
        @trainer.on(Events.EPOCH_COMPLETED)
        def publish_history(engine):  # the checkpoint is whole on disk: mirror its history, then apply retention
            publish(experiment, history, engine.state.epoch)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, STOP.check)  # a signal during evaluation: stop here

    if is_writer:
        @trainer.on(Events.COMPLETED)  # max_epochs reached or early stopping; not after a stop by signal
        def export_best_release(engine):
            epoch = experiment.best_epoch() or engine.state.epoch  # without validation: the last epoch
            path = release.release_finished_training(experiment, epoch, job["data_path"])
            if path:
                log.info(f"release of epoch {epoch}" + (" (the best)" if evaluators.get("validation") else "")
                         + f" written: {path}")

        # purge_step: a resumed run redoes the iterations after its checkpoint, and readers of the event files drop
        # the points from that step on written before (a fresh run marks step 1 too: TensorBoard's Python loader
        # takes a run's first mark for its start, not for a restart). filename_suffix: tensorboardX names a file by the second it
        # opens it in, and truncates one of that name: a run resumed within the second would erase its forerunner's
        # (the nanoseconds sort the runs' files in their order, as readers take them)
        tb = TensorboardLogger(log_dir=experiment.tensorboard_dir, purge_step=trainer.state.iteration + 1,
                               filename_suffix=f".{time.time_ns()}")
        if not history.epochs:  # a fresh run (not a resumed one): its hyper-parameters, once, for HParams
            summaries.write_hparams(tb.writer, experiment)
        tb.attach_output_handler(trainer, Events.ITERATION_COMPLETED(every=job["log_period"]), tag="training",
                                 output_transform=lambda loss: {"batch_loss": loss.item()})
        tb.attach_output_handler(trainer, Events.EPOCH_COMPLETED, tag="training", metric_names=["loss"])
        # on the iterations' axis, which the purge above covers: an epoch started again would log it twice
        tb.attach_opt_params_handler(trainer, Events.ITERATION_STARTED(every=job["log_period"]), optimizer,
                                     param_name="lr")
        for name, evaluator in evaluators.items():
            tb.attach_output_handler(evaluator, Events.COMPLETED, tag=name, metric_names=["loss", "accuracy"],
                                     global_step_transform=global_step_from_engine(trainer, Events.EPOCH_COMPLETED))

        @trainer.on(Events.EPOCH_COMPLETED)
        def log_epoch_pictures(engine):
            summaries.write_best(tb.writer, experiment, history.state_dict(), engine.state.epoch)
            if "validation" in evaluators:
                matrix = evaluators["validation"].state.metrics["confusion_matrix"]
                summaries.write_confusion_matrix(tb.writer, matrix, classes, "validation", engine.state.epoch)

        @trainer.on(Events.COMPLETED)
        def log_worst_digits(engine):
            if "test" in evaluators:
                summaries.write_worst(tb.writer, evaluators["test"].state.metrics["worst"], sets["test"].images,
                                      classes, engine.state.epoch)

        trainer.add_event_handler(Events.COMPLETED, lambda _: tb.close())  # after the pictures above

        @trainer.on(Events.TERMINATE)  # early stopping goes on to COMPLETED; a stop by signal does not
        def close_on_signal(engine):
            if STOP.signum:
                tb.close()

        @trainer.on(Events.EXCEPTION_RAISED)  # a pruned trial, a full disk: the events so far reach the file
        def close_logs(engine, error):
            tb.close()
            raise error

        if job["progress_bar"]:
            attach_progress_bar(trainer, len(batches))

    if job.get("trial") is not None:  # a sweep's trial: Optuna's pruner judges the validation accuracy, last:
        from optuna_integration import PyTorchIgnitePruningHandler  # a pruned epoch is saved and logged

        pruning = PyTorchIgnitePruningHandler(job["trial"], "accuracy", trainer)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: pruning(evaluators["validation"]))


def attach_progress_bar(trainer: Engine, epoch_length: int) -> None:
    """The training loss in a progress bar, advanced 100 times an epoch at most: each advance redraws it, 0.1 to
    0.6 ms of Python, which was 20% of a 3 ms step on a GPU (README, Speed; scripts/bench_progress_bar.py)."""
    every = max(1, epoch_length // 100)
    ProgressBar(persist=False).attach(trainer, event_name=Events.ITERATION_COMPLETED(every=every),
                                      output_transform=lambda loss: {"loss": loss.item()})


def publish(experiment: Experiment, history, epoch: int) -> None:
    """metrics.json and retention after the checkpoint of `epoch`, or one line on a full or read-only disk."""
    try:
        experiment.publish_history(history.state_dict())
    except OSError as e:
        raise UserError(f"cannot write {experiment.metrics_file} or apply retention after epoch {epoch} "
                        f"({e.strerror}); the checkpoints are intact") from None


def training(local_rank: int, job: dict) -> None:
    """One process of a training run. job: experiment, data_path, device, max_epochs, log_period, ..."""
    with STOP:
        _training(local_rank, job)


def _training(local_rank: int, job: dict) -> None:
    experiment: Experiment = job["experiment"]
    rank, world_size = idist.get_rank(), idist.get_world_size()
    setup_logging(experiment if rank == 0 else None, job["verbose"], to_console=rank == 0)
    device = torch.device(job["device"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world_size > 1 else device.index or 0)
        torch.cuda.set_device(device)
        prepare_cuda_for_training()
    else:
        prepare_cpu_for_training()
        if world_size > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // idist.get_nproc_per_node()))
    cfg = experiment.config["training"]
    bf16 = use_bf16(cfg["precision"], device)

    manual_seed(experiment.seed)  # Python, NumPy, torch: the same initial weights on every rank
    with idist.one_rank_first(local=True):  # one process per node downloads, if anything must be
        sets = data.tensor_sets(experiment.config["data"]["dataset"], job["data_path"], experiment.load_split(),
                                device, experiment.data_digests)
    net = Net().to(device, memory_format=torch.channels_last)
    model = idist.auto_model(net) if world_size > 1 else net  # DDP trains; evaluators and checkpoints use net
    compiled = cfg["compile_optimizer"] and device.type == "cpu" and inductor_can_compile()
    optimizer = idist.auto_optim(make_optimizer(model.parameters(), cfg["lr"], device, compiled))
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg["lr_gamma"])
    step_model = graphed(model, cfg, device)

    batches = data.ShuffledBatches(len(sets["train"]), cfg["batch_size"], experiment.seed, rank, world_size, device)
    trainer = create_trainer(step_model, optimizer, sets["train"], bf16)
    evaluators = {name: create_evaluator(net, sets[name], bf16, worst=WORST if name == "test" else 0)
                  for name in ("validation", "test") if len(sets[name])}
    history = History()
    to_save = {"model": net, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "trainer": trainer,
               "rng": RNGStates(), "history": history, "owner": Owner(experiment.owner)}
    if cfg["early_stopping"]:
        to_save["early_stopping"] = EarlyStopping(
            patience=cfg["early_stopping"]["patience"], threshold=cfg["early_stopping"]["min_delta"], trainer=trainer,
            score_function=lambda evaluator: float(evaluator.state.metrics["accuracy"]))  # plain float: weights_only
        # its own logger prints to the console in its own format: this one goes to verbose.log (setup_logging)
        to_save["early_stopping"].logger = logging.getLogger("ignite.handlers.early_stopping")
        to_save["early_stopping"].logger.setLevel(logging.DEBUG)

    if rank == 0:
        experiment.remove_partial_files()  # of a save killed half-way; the lock keeps them ours
    checkpoints = experiment.checkpoints()
    if checkpoints:  # resume, before any handler writes anything
        last = max(checkpoints)
        checkpoint = read_checkpoint(checkpoints[last], device)
        check_checkpoint(checkpoints[last], checkpoint, last, experiment.owner)
        if "history" not in checkpoint:  # ignite-mnist 0.1: each checkpoint held only its own epoch's metrics
            checkpoint["history"] = history_of(checkpoints, experiment.owner)
        restore(checkpoints[last], checkpoint, {k: v for k, v in to_save.items() if k != "owner"})  # (Owner: checked)
        trainer.state.epoch_length, trainer.state.iteration = len(batches), last * len(batches)  # any world size
        if rank == 0:  # what a kill between the checkpoint and publish_history left undone
            publish(experiment, history, last)
        log.info(f"resuming experiment {experiment.name} from epoch {last}")
    elif rank == 0 and is_file(experiment.metrics_file):  # written after a checkpoint: they were deleted by hand
        log.info(f"experiment {experiment.name} has no checkpoint left of the epochs its {experiment.metrics_file.name} "
                 "records: training starts again from epoch 1, and replaces it")
    if compiled:  # after the resume, which restores the learning rate
        compile_optimizer_step(optimizer)
    else:  # a checkpoint of a compiled run holds it as a tensor (on CUDA, each step would wait to read it)
        for group in optimizer.param_groups:
            group["lr"] = float(group["lr"])
    attach_handlers(trainer, evaluators, sets, optimizer, lr_scheduler, batches, history, to_save, job)
    if rank == 0:
        log.info(
            f"training {experiment.name} to epoch {job['max_epochs']} on {device}"
            + (f" x {world_size} processes ({idist.backend()})" if world_size > 1 else "")
            + f", {'bf16' if bf16 else 'fp32'}: {len(sets['train'])} training images, "
            + f"{len(sets['validation'])} validation, {len(sets['test'])} test"
        )
    trainer.run(batches, max_epochs=job["max_epochs"])
    if world_size > 1:  # ranks leave together: one that exits while rank 0 still writes aborted in gloo's teardown
        idist.barrier()
    if STOP.signum and rank == 0:
        log.info(f"stopped by {signal.Signals(STOP.signum).name} in epoch {trainer.state.epoch}")


# ---- evaluation of a checkpoint (the `test` command) --------------------------------------------


def evaluate_checkpoint(experiment: Experiment, data_path, epoch: int, device_name: str = "auto",
                        plot_path=None) -> dict:
    """Restore the model of `epoch` and measure it on the test set: {epoch, accuracy, correct, total, loss,
    per_class, confusion_matrix}; with plot_path, also draw the confusion matrix and the worst digits there."""
    path = experiment.checkpoint(epoch)
    device = resolve_device(device_name)
    model = Net().to(device, memory_format=torch.channels_last)
    load_checkpoint(path, {"model": model}, device, epoch, experiment.owner)
    dataset = experiment.config["data"]["dataset"]
    test_set = data.tensor_sets(dataset, data_path, {}, device, experiment.data_digests)["test"]
    if not len(test_set):
        raise UserError(f"the test set of {dataset} has no images: there is nothing to test epoch {epoch} on")
    cfg = experiment.config["training"]
    evaluator = create_evaluator(model, test_set, use_bf16(cfg["precision"], device), worst=WORST)
    result = {"epoch": epoch, **evaluate(evaluator, len(test_set), cfg["eval_batch_size"])}
    matrix = evaluator.state.metrics["confusion_matrix"].cpu()
    classes = data.DATASETS[dataset]["classes"]
    result["per_class"] = [
        {"label": label, "class": classes[label], "accuracy": 100 * correct / total if total else None,
         "correct": correct, "total": total}
        for label, (correct, total) in enumerate(zip(matrix.diagonal().tolist(), matrix.sum(1).tolist()))]
    result["confusion_matrix"] = matrix.tolist()
    if plot_path is not None:
        from ignite_mnist.analysis import save_test_figure

        title = (f"{experiment.name}, epoch {epoch}: test accuracy {result['accuracy']:.2f}% "
                 f"({result['correct']}/{result['total']})")
        save_test_figure(plot_path, matrix, evaluator.state.metrics["worst"], test_set.images, classes, title)
    return result
