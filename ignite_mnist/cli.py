"""The command line: parse the arguments, call the module that does the work, report.

Every failure ends as one line on stderr and a non-zero exit (2 for usage and input errors); the
traceback only with --verbose. torch is imported by the commands that need it, so --help stays fast.
"""

import enum
import errno
import json
import logging
import math
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

from ignite_mnist.errors import CheckpointGone, UserError, is_dir, is_file
from ignite_mnist.experiment import (DEFAULT_CONFIG, DEFAULT_SCHEMA, Experiment, check_experiments_folder,
                                     command_line, console_shows_any_text, flatten, forget_unwritable_logs,
                                     init_experiment, log, open_experiment, report_log, setup_logging,
                                     summarize_experiments, tensorboard_runs)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: it wraps at any width, where rich's tables cut option names off
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Train and manage MNIST digit classifiers as experiments, on PyTorch-Ignite.",
)


class Backend(str, enum.Enum):
    gloo = "gloo"
    nccl = "nccl"


class ReleaseFormat(str, enum.Enum):
    pt = "pt"
    pt2 = "pt2"
    onnx = "onnx"


@dataclass
class Globals:
    experiment_name: Optional[str]
    experiments_path: Path
    data_path: Optional[Path]  # None: the experiment's own (Experiment.data_path)
    verbose: bool


@app.callback()
def global_options(
    ctx: typer.Context,
    experiment_name: Optional[str] = typer.Option(None, "--experiment-name", "-e", help="The experiment to work on."),
    experiments_path: Path = typer.Option(Path("experiments"), help="Folder that holds the experiments."),
    data_path: Optional[Path] = typer.Option(
        None, help="Folder of the datasets (torchvision's layout, or the IDX files). init records it in the "
                   "experiment, whose later commands read from there unless given another.",
        show_default="the experiment's, else ./data"),
    verbose: bool = typer.Option(False, "--verbose", help="Debug messages on the console, tracebacks on errors."),
):
    ctx.obj = Globals(experiment_name, experiments_path, data_path, verbose)


def _open(ctx: typer.Context, log_to_file: bool = True) -> Experiment:
    """The experiment named by --experiment-name; commands that change it also log to its verbose.log."""
    g: Globals = ctx.obj
    experiment = open_experiment(g.experiments_path, g.experiment_name)
    is_rank_zero = int(os.environ.get("RANK", "0")) == 0  # under torchrun, only rank 0 writes the log
    setup_logging(experiment if log_to_file and is_rank_zero else None, g.verbose)
    return experiment


NO_EXPERIMENT = {  # the commands that work on no one experiment, and why
    "predict": "it runs the release file given by --release",
    "serve": "it runs the release file given by --release",
    "list": "it lists every experiment in the experiments folder (info shows one)",
    "sweep": "its trials are experiments named after --name (NAME-<n>)",
}


def _takes_no_experiment(ctx: typer.Context, command: str) -> None:
    """Refuse --experiment-name where a command would silently ignore it."""
    if ctx.obj.experiment_name is not None:
        raise UserError(f"{command} takes no --experiment-name/-e ({ctx.obj.experiment_name!r}): "
                        f"{NO_EXPERIMENT[command]}")


@app.command()
def init(
    ctx: typer.Context,
    config_path: Path = typer.Option(DEFAULT_CONFIG, "--config-path", help="The experiment's config (JSON).",
                                     show_default="the package's config.default.json"),
    config_schema_path: Path = typer.Option(DEFAULT_SCHEMA, "--config-schema-path", "--config-schema-file",
                                            help="JSON schema the config must satisfy.",
                                            show_default="the package's config.schema.json"),
    seed: int = typer.Option(0, help="Seed of the split, the initial weights and the batch order."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", metavar="KEY=VALUE",
        help="Change a config value: a dotted key, a JSON value or a string (training.lr=0.5). Repeatable."),
):
    """Create an experiment: validated config, seed, and the train/validation split, drawn once."""
    g: Globals = ctx.obj
    setup_logging(None, g.verbose)
    experiment = init_experiment(g.experiments_path, g.experiment_name, config_path, config_schema_path,
                                 overrides or [], seed, g.data_path)
    setup_logging(experiment, g.verbose)
    split = experiment.meta["split"]
    log.info(f"created experiment {experiment.name} in {experiment.root}: {experiment.config['data']['dataset']}, "
             f"{split['train']} training, {split['validation']} validation and {split['test']} test images, seed {seed}")


@app.command()
def train(
    ctx: typer.Context,
    max_epochs: int = typer.Option(..., "--max-epochs", help="Train until this epoch (resumes from the last checkpoint)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, or auto (cuda if there is one)."),
    log_period: int = typer.Option(50, "--log-period", min=1, help="Log the training loss and learning rate every K iterations."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Processes to spawn (distributed training)."),
    backend: Optional[Backend] = typer.Option(None, help="Distributed backend (default: nccl on CUDA, gloo on CPU)."),
):
    """Train (or go on training) with the Ignite trainer: a checkpoint and the metrics every epoch."""
    experiment = _open(ctx)
    from ignite_mnist.launch import run_training

    record = run_training(experiment, experiment.data_path(ctx.obj.data_path), max_epochs, device, nproc_per_node,
                          backend.value if backend else None, log_period, ctx.obj.verbose)
    if record:
        def scores(r):
            return "".join(f", {name} accuracy {r[name + '_accuracy']:.2f}%"
                           for name in ("validation", "test") if name + "_accuracy" in r)

        history = experiment.history()
        best = experiment.best_epoch(history)
        released = "" if best in (None, record["epoch"]) else \
            f"; its best epoch{', released,' if experiment.release_of(best) else ''} is {best}" \
            + scores(next(e for e in history["epochs"] if e["epoch"] == best))
        log.info(f"trained {experiment.name} to epoch {record['epoch']}{scores(record)}{released}")


EPOCH_HELP = "N, best (the highest validation accuracy; ties: the earlier) or last."


@app.command()
def test(
    ctx: typer.Context,
    epoch: str = typer.Option(..., "--epoch", help="The epoch whose checkpoint to test: " + EPOCH_HELP),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, or auto."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object of the results."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE.png",
                                        help="Draw the confusion matrix and the worst-classified digits in a PNG."),
):
    """Restore the model of an epoch and measure it on the test set: accuracy, per class, confusion matrix."""
    experiment = _open(ctx)
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot writes a PNG file: give a name ending in .png, not {plot.name!r}")
    written = Path(os.path.realpath(plot)) if plot is not None else None  # a symlink is written through
    if written is not None and not is_dir(written.parent):
        raise UserError(f"--plot {plot}: folder {written.parent} does not exist")
    if written is not None and is_dir(written):
        raise UserError(f"--plot {plot} is a folder: give a file name ending in .png")

    def evaluate(n: int) -> dict:
        from ignite_mnist.engines import evaluate_checkpoint  # (after the epoch's checkpoint is found: torch)

        return evaluate_checkpoint(experiment, experiment.data_path(ctx.obj.data_path), n, device, plot)

    epoch, result = _on_epoch(experiment, epoch, evaluate)
    width = max(4, *(len(str(n)) + 1 for row in result["confusion_matrix"] for n in row))
    report = [f"test of epoch {epoch}: accuracy {result['accuracy']:.2f}% ({result['correct']}/{result['total']}), "
              f"loss {result['loss']:.4f}",
              "per class: " + ", ".join(f"{c['class']} {c['accuracy']:.1f}%" for c in result["per_class"]
                                        if c["accuracy"] is not None),
              "confusion matrix (rows: true class, columns: predicted):",
              " " * 4 + "".join(f"{label:>{width}}" for label in range(len(result["confusion_matrix"]))),
              *(f"{label:>4}" + "".join(f"{n:>{width}}" for n in row)
                for label, row in enumerate(result["confusion_matrix"]))]
    for line in report:  # the result: on stdout, unless --json's object is (then on stderr); always in verbose.log
        if as_json:
            log.info(line)
        else:
            print(line)
            report_log.info(line)
    if plot is not None:
        log.info(f"figure written: {plot}")
    if as_json:
        print(json_text(result))


def _on_epoch(experiment: Experiment, spec: str, work) -> tuple:
    """(epoch, work(epoch)) for --epoch `spec`, its checkpoint found first (a missing epoch is named before work
    imports torch). For last and best, chosen again where the chosen epoch's checkpoint went before it was read: a
    training running meanwhile removes older ones (training.keep_checkpoints)."""
    for attempt in range(3):
        epoch = experiment.resolve_epoch(spec)
        try:
            experiment.checkpoint(epoch)
            return epoch, work(epoch)
        except CheckpointGone:
            if spec not in ("last", "best") or attempt == 2:
                raise
            log.debug(f"the checkpoint of epoch {epoch} went before it was read: --epoch {spec} chosen again")


@app.command("export-release")
def export_release(
    ctx: typer.Context,
    epoch: str = typer.Option("last", "--epoch", help="The epoch to release: " + EPOCH_HELP),
    release_format: ReleaseFormat = typer.Option(ReleaseFormat.pt, "--format",
                                                 help="pt (a state dict), pt2 (torch.export) or onnx."),
):
    """Write a release of an epoch: the model alone, for inference, verified (pt: its weights read back bitwise;
    pt2, onnx: its predictions on the test set against the checkpoint's). Prints its path last."""
    experiment = _open(ctx)

    def export(n: int) -> Path:
        from ignite_mnist import release  # (after the epoch's checkpoint is found: torch)

        return release.export_release(experiment, n, release_format.value, ctx.obj.data_path)

    _, path = _on_epoch(experiment, epoch, export)
    log.info(f"release written: {path}")
    print(path)


@app.command()
def predict(
    ctx: typer.Context,
    release_path: Path = typer.Option(..., "--release", help="A release file (from export-release): .pt, .pt2 or .onnx."),
    images: List[Path] = typer.Argument(..., help="Image files (PNG, JPEG, ...), any size."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of {path, label, class, probability, blank}."),
):
    """Classify image files with a release."""
    setup_logging(None, ctx.obj.verbose)
    _takes_no_experiment(ctx, "predict")
    from ignite_mnist import release

    results = release.predict(release_path, images)
    if as_json:
        print(json_text(results))
    else:
        for r in results:
            if "error" not in r:
                name = f" ({r['class']})" if r["class"] != str(r["label"]) else ""
                blank = " (a blank image: no strokes to read)" if r["blank"] else ""
                print(f"{r['path']}: {r['label']}{name} {100 * r['probability']:.1f}%{blank}")
    errors = [r["error"] for r in results if "error" in r]  # one line each, after the files that could be read
    for error in errors[:-1]:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        raise UserError(errors[-1])


@app.command()
def serve(
    ctx: typer.Context,
    release_path: Path = typer.Option(..., "--release", help="A release file (from export-release): .pt, .pt2 or .onnx."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port to listen on (0: any free port)."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most images in one forward pass."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms",
                                     help="How long a request waits for others to batch with (0 to 10000 ms)."),
    max_body: int = typer.Option(1_000_000, "--max-body", min=1, help="Largest request body, in bytes (413 above)."),
):
    """Serve a release over HTTP: POST /predict, GET /health, GET /info, and a draw-a-digit page at /."""
    import importlib.util

    setup_logging(None, ctx.obj.verbose)
    _takes_no_experiment(ctx, "serve")
    if not 0 <= max_wait_ms <= 10_000:  # checked here, not by typer, which says of nan that it is over 10000
        raise UserError(f"--max-wait-ms takes milliseconds from 0 to 10000, not {max_wait_ms}")
    packages = {"starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}
    missing = [package for module, package in packages.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"serve needs {', '.join(missing)}: pip install -e '.[serve]'")
    from ignite_mnist import serve as serving

    serving.serve(release_path, host, port, max_batch, max_wait_ms, max_body)


@app.command()
def info(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Show an experiment: config, seed, split, every epoch's metrics, the best epoch, checkpoints, releases."""
    experiment = _open(ctx, log_to_file=False)
    history = experiment.history()
    checkpoints = experiment.checkpoints()
    best = experiment.best_epoch(history)
    epochs = [{**e, "checkpoint": str(checkpoints[e["epoch"]]) if e["epoch"] in checkpoints else None}
              for e in history["epochs"]]
    retained = experiment.retained(history)
    for e in epochs:
        problem = e["checkpoint"] and experiment.checkpoint_problem(Path(e["checkpoint"]))
        if problem:
            e["error"] = problem
    releases = experiment.releases()
    meta = experiment.meta
    summary = {"name": experiment.name, "path": str(experiment.root), "created": meta.get("created"),
               "seed": experiment.seed, "config": experiment.config, "data_path": meta.get("data_path"),
               "split": meta.get("split"),
               "versions": meta.get("versions"), "epochs": epochs, "best_epoch": best,
               "stopped_early": history["stopped_early"], "releases": releases, "sweep": meta.get("sweep"),
               "training_pid": experiment.trainer_pid()}
    if as_json:
        print(json_text(summary, indent=2))
        return
    print(f"experiment {experiment.name} ({experiment.root}), created {meta.get('created')}, seed {experiment.seed}")
    if summary["training_pid"]:
        print(f"being trained now, by process {summary['training_pid']}: the epochs below are those finished so far")
    sizes = meta.get("split")
    sizes = {k: v for k, v in sizes.items() if k != "digest"} if isinstance(sizes, dict) else sizes
    print(f"split: {json.dumps(sizes)}")
    if experiment.config["data"]["dataset"] != "mnist-sample":  # (the bundled sample is read from the package)
        print(f"data: {meta.get('data_path', 'not recorded (./data, or --data-path)')}")
    print(f"config: {json.dumps(experiment.config)}")
    print("epochs:" if epochs else "epochs: none trained yet")
    for e in epochs:
        scores = "".join(f", {name} accuracy {e[name + '_accuracy']:.2f}%"
                         + (f" loss {e[name + '_loss']:.4f}" if name + "_loss" in e else "")
                         for name in ("validation", "test") if name + "_accuracy" in e)
        where = e["checkpoint"] or ("checkpoint removed by retention" if e["epoch"] not in retained
                                    else "checkpoint missing (retention keeps it: it was deleted or moved away)")
        print(f"  epoch {e['epoch']}{' (best)' * (e['epoch'] == best)}: {where}"
              + (f" ({e['error']})" if "error" in e else scores))
    if history["stopped_early"]:
        print(f"stopped early at epoch {history['stopped_early']}: {experiment.early_stopping_rule(history)}")
    if "sweep" in meta:
        s = meta["sweep"]
        state = s["state"] + (f" at epoch {s['pruned_at_epoch']}" if "pruned_at_epoch" in s else "")
        score = f", score {s['score']:.2f}% (best validation accuracy)" if s.get("score") is not None else ""
        print(f"sweep {s['study']}: trial {s['trial']}, {state}{score}, params {json.dumps(s['params'])}")
    print("releases:" if releases else "releases: none yet")
    for r in releases:
        print(f"  epoch {r['epoch']} ({r['format']}): {r['path']}")


@app.command("list")
def list_experiments(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of objects."),
):
    """Compare the experiments: best epoch and its accuracies, the config values that differ, releases."""
    setup_logging(None, ctx.obj.verbose)
    _takes_no_experiment(ctx, "list")
    rows = summarize_experiments(ctx.obj.experiments_path)
    if as_json:
        print(json_text(rows, indent=2))
        return
    if not rows:
        print(f"no experiments in {ctx.obj.experiments_path}")
        return
    configs = [flatten(r["config"]) for r in rows if "config" in r]
    differing = [k for k in dict.fromkeys(k for c in configs for k in c)  # (the dataset has its own column)
                 if k != "data.dataset" and len({_shown(c.get(k)) for c in configs}) > 1]
    table = [["name", "dataset", "epochs", "best", "val acc", "test acc", *differing, "releases"]]
    for r in rows:
        if "broken" in r:
            continue
        flat = flatten(r["config"])
        epochs = f"{r['epochs']}" + (" (stopped early)" if r["stopped_early"] else "") + _trial_mark(r) \
            + (" (training)" if r["training"] else "")
        table.append([r["name"], r["dataset"], epochs, "-" if r["best_epoch"] is None else str(r["best_epoch"]),
                      _percent(r["best_val_accuracy"]), _percent(r["test_accuracy"]),
                      *(_shown(flat.get(k)) for k in differing),
                      ", ".join(f"{x['epoch']} ({x['format']})" for x in r["releases"]) or "-"])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for r in rows:
        if "broken" in r:
            print(f"{r['name']}: broken: {r['broken']}")


class Pruner(str, enum.Enum):
    median = "median"
    none = "none"


@app.command()
def sweep(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="The sweep (Optuna study); its trials are experiments NAME-<n>."),
    space: Optional[Path] = typer.Option(None, "--space", help="The search space: dotted config keys -> distributions."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Run trials until the study has this many finished."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Epochs each trial trains (at most)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL (postgresql://...) or a journal "
                                          "file on a shared folder (default: sqlite EXPERIMENTS/NAME.sweep.db)."),
    config_path: Path = typer.Option(DEFAULT_CONFIG, "--config-path", help="The config the trials start from.",
                                     show_default="the package's config.default.json"),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, or auto."),
    seed: int = typer.Option(0, help="Every trial's experiment seed."),
    pruner: Pruner = typer.Option(Pruner.median, help="Optuna's median pruner on validation accuracy, or none."),
    pruner_startup_trials: int = typer.Option(5, min=0, help="Trials that finish before the pruner prunes any."),
    pruner_warmup_epochs: int = typer.Option(0, min=0, help="Epochs of each trial before it can be pruned."),
    status: bool = typer.Option(False, "--status", help="Show the trials instead of running them."),
    as_json: bool = typer.Option(False, "--json", help="With --status: print one JSON object."),
):
    """Search hyper-parameters with Optuna: every trial an experiment, pruned when unpromising."""
    g: Globals = ctx.obj
    setup_logging(None, g.verbose)
    _takes_no_experiment(ctx, "sweep")
    try:
        import optuna  # noqa: F401  (imported here to say what is missing; sweep.py uses them)
        import optuna_integration  # noqa: F401
    except ImportError:
        raise UserError("sweeps need Optuna: pip install -e '.[sweep]' (optuna, optuna-integration)") from None
    from ignite_mnist import sweep as sweeps

    if status:
        result = sweeps.sweep_status(name, g.experiments_path, storage)
    else:
        missing = [flag for flag, value in (("--space", space), ("--trials", trials), ("--max-epochs", max_epochs))
                   if value is None]
        if missing:
            raise UserError(f"sweep needs {', '.join(missing)} (or --status to show a sweep)")
        result = sweeps.run_sweep(name, space, trials, max_epochs, g.experiments_path, g.data_path, storage,
                                  config_path, device, seed, pruner.value, pruner_startup_trials,
                                  pruner_warmup_epochs, g.verbose)
    best, epoch, release = _best_trial_release(g.experiments_path, result)
    if as_json:
        print(json_text({"study": result["study"], "storage": result["storage"], "trials": result["trials"],
                         "best": result["best"], "best_release": release}))
        return
    finished = sum(t["state"] in ("COMPLETE", "PRUNED") for t in result["trials"])
    print(f"sweep {name} ({result['storage']}): {finished} finished trial{'s' * (finished != 1)}")
    for t in result["trials"]:
        params = " ".join(f"{k}={json.dumps(v)}" for k, v in t["params"].items())
        print(f"  trial {t['number']}: {t['state']:<8} {t['experiment'] or '-'}  best epoch "
              f"{t['best_epoch'] if t['best_epoch'] is not None else '-'}  validation {_percent(t['best_val_accuracy'])}"
              f"  {params}")
    if best is not None:
        if is_file(Path(ctx.obj.experiments_path) / best["experiment"] / "experiment.json"):
            if release:  # train released it at its end
                print(f"best: trial {best['number']}; its best epoch, {epoch}, is released: {release} (in another "
                      "format: " + command_line(g.experiments_path, best["experiment"],
                                                "export-release --epoch best --format onnx") + ")")
            else:
                print(f"best: trial {best['number']}; export its best epoch with: "
                      + command_line(g.experiments_path, best["experiment"], "export-release --epoch best"))
        else:
            print(f"best: trial {best['number']}; its experiment {best['experiment']} is no longer in "
                  f"{ctx.obj.experiments_path}")


def _best_trial_release(experiments_path: Path, result: dict) -> tuple:
    """(the best trial's row, its experiment's best epoch, the path of that epoch's pt release) of a sweep's status;
    None for what is not there (no best trial, its experiment gone or damaged since, no release)."""
    if result["best"] is None:
        return None, None, None
    best = next(t for t in result["trials"] if t["number"] == result["best"])
    try:
        experiment = open_experiment(experiments_path, best["experiment"])
        epoch = experiment.best_epoch()
    except UserError:  # gone or damaged since: the advice printed names it again when followed
        return best, None, None
    return best, epoch, experiment.release_of(epoch)


@app.command()
def tensorboard(
    ctx: typer.Context,
    port: int = typer.Option(6006, help="Port to serve TensorBoard on (localhost)."),
):
    """Run TensorBoard on one experiment (-e NAME) or on all of them, each a run named after it."""
    import importlib.util

    g: Globals = ctx.obj
    check_port_free(port)  # before the experiments are looked through (each left out would say so first)
    if g.experiment_name is not None:
        experiments = [_open(ctx, log_to_file=False)]
    else:
        setup_logging(None, g.verbose)
        check_experiments_folder(g.experiments_path, must_exist=True)
        experiments = []
        for meta in sorted(Path(g.experiments_path).glob("*/experiment.json")):
            try:
                experiments.append(open_experiment(g.experiments_path, meta.parent.name))
            except UserError as e:
                log.info(f"left out: {e}")
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("TensorBoard is not installed: pip install tensorboard")
    experiments = [e for e in experiments if is_dir(e.tensorboard_dir)]
    if not experiments:
        raise UserError(f"experiment {g.experiment_name} has no TensorBoard logs yet: run `train` first"
                        if g.experiment_name else
                        f"no experiment in {g.experiments_path} has TensorBoard logs yet: run `train` first")
    runs = tensorboard_runs(g.experiments_path, experiments, g.experiment_name or "_all")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(runs), "--port", str(port)]
    log.info(f"TensorBoard on {', '.join(e.name for e in experiments)}: http://localhost:{port}/ (Ctrl-C to stop)")
    sys.stderr.flush()
    os.execv(sys.executable, command)  # TensorBoard takes this process's place: signals reach it directly


def check_port_free(port: int) -> None:
    """TensorBoard takes this process's place (execv): a bad or busy port is said here, in one line, not in its
    own many-line output."""
    import socket

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, not {port}")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TensorBoard's server: TIME_WAIT is no conflict
        try:
            sock.bind(("localhost", port))
        except OSError as e:
            raise UserError(f"cannot serve TensorBoard on port {port} ({e.strerror}): pick another with --port") from None


def json_text(value, **kwargs) -> str:
    """Strict JSON for --json: a NaN or infinite metric (a diverged training) as null, which every parser reads."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), allow_nan=False, **kwargs)


def main(argv: Optional[List[str]] = None) -> None:
    """The command line; argv None: this process is the command (console script, python -m ignite_mnist)."""
    if argv is None:
        console_shows_any_text()
    forget_unwritable_logs()  # (a command run in-process after another)
    try:
        _main(argv)
    except SystemExit as e:
        if argv is None and "torch" in sys.modules:
            _exit_now(e.code)
        raise


def _exit_now(code) -> None:
    """End the process without the interpreter's teardown, which takes torch 0.5 to 1 s after a training.

    Everything the command wrote is closed or flushed by then (files are written whole, with fsync; the
    TensorBoard writer is closed): only the logs and the console buffers are left to flush."""
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it cleans up as after a Ctrl-C (train and serve install
    their own handlers for both)."""
    raised = False


def _terminate(signum, frame):
    Terminated.raised = True  # typer turns the exception into exit code 130, which _main then reads
    raise Terminated()


def _fail_stopped() -> None:
    """The command was stopped: by SIGTERM (exit 143) or by Ctrl-C (130)."""
    if Terminated.raised:
        _fail("terminated", 143)
    _fail("interrupted", 130)


def _main(argv: Optional[List[str]]) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    verbose = _verbose_given(args)
    if argv is None and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(args=args, prog_name="ignite-mnist", standalone_mode=False)
    except SystemExit as e:
        if e.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":  # click's answer to a reader that
            sys.exit(141)  # closed the pipe (`| head`): the code a Unix tool stopped by SIGPIPE gives, not 1 (failed)
        raise
    except click_exceptions.ClickException as e:  # usage errors: click's own message, made one line
        if type(e).__name__ == "NoArgsIsHelpError":  # no command: the help, once (typer's rich help printed
            help_text = e.format_message()                # itself when the error was made; click's is the message)
            if help_text.strip():
                print(help_text)
            sys.exit(2)
        ctx = getattr(e, "ctx", None)
        command = ctx.command_path if ctx else "ignite-mnist"
        if isinstance(e, click_exceptions.NoSuchOption) and ctx is not None and ctx.parent is not None:
            root = ctx.find_root()
            if e.option_name in ("-e", "--experiment-name") and ctx.info_name in NO_EXPERIMENT:  # not after it either
                _fail(f"{ctx.info_name} takes no --experiment-name/-e: {NO_EXPERIMENT[ctx.info_name]}", e.exit_code)
            if any(e.option_name in p.opts + p.secondary_opts for p in root.command.params):
                _fail(f"{e.option_name} is an option of ignite-mnist itself: put it before the command "
                      f"(`ignite-mnist {e.option_name} ... {ctx.info_name} ...`)", e.exit_code)
        _fail(f"{e.format_message()} (see `{command} --help`)", e.exit_code)
    except UserError as e:
        if verbose:
            traceback.print_exc()
        _fail(str(e), e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail_stopped()
    except Exception as e:
        if verbose:
            traceback.print_exc()
        if Terminated.raised:  # raised inside an import or a library, it can come out as another exception
            _fail_stopped()
        if isinstance(e, OSError) and e.errno in (errno.ENAMETOOLONG, errno.EACCES, errno.EPERM) and e.filename:
            _fail(f"cannot use {e.filename}: {e.strerror}", 2)  # a name too long, a folder or file not ours to read
        _fail(f"{type(e).__name__}: {e}" + ("" if verbose else " (run with --verbose for the traceback)"), 1)
    if code == 130:  # typer turns a Ctrl-C (or our SIGTERM) outside our own handling into exit 130, silently
        _fail_stopped()
    sys.exit(code if isinstance(code, int) else 0)  # --help returns 0


GLOBAL_VALUE_OPTIONS = ("-e", "--experiment-name", "--experiments-path", "--data-path")


def _verbose_given(args: list) -> bool:
    """Whether --verbose is among the global options (before the command), known before click parses them (a
    parse error then has its traceback); not where it is an option's value (`-e --verbose`)."""
    values_next = False
    for arg in args:
        if values_next:
            values_next = False
        elif arg == "--verbose":
            return True
        elif arg in GLOBAL_VALUE_OPTIONS:
            values_next = True
        elif not arg.startswith("-"):  # the command: what follows is its own
            return False
    return False


def _trial_mark(row: dict) -> str:
    """What `list` says of a sweep's trial beside its epochs: pruned (at which epoch, where it was trained on since),
    or failed (stopped, or its worker gone: its epochs are not all the sweep asked)."""
    record = row["sweep"] if isinstance(row["sweep"], dict) else {}
    if record.get("state") == "PRUNED":
        at = record.get("pruned_at_epoch")
        return f" (pruned at {at})" if isinstance(at, int) and row["epochs"] > at else " (pruned)"
    return " (trial failed)" if record.get("state") == "FAIL" else ""


def _shown(value) -> str:
    """A config value as `list` shows and compares it: 1 and 1.0 are the same learning rate; a string as it is
    (fp32), quoted only where it would read as another value or hide its ends ("1", "null", "", " x")."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value and value == value.strip() and value.isprintable():
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


def _percent(value) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _fail(message: str, code: int) -> None:
    """One line on stderr (and in the experiment's verbose.log, when one is open)."""
    message = " ".join(str(message).split())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:  # one of torchrun's processes
        message = f"rank {os.environ['RANK']}: {message}"
    file_handlers = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
    for handler in file_handlers:
        handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, f"error: {message}", None, None))
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
