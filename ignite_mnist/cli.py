"""The command line: parse the arguments, call the module that does the work, report.

Every failure ends as one line on stderr and a non-zero exit (2 for usage and input errors); the
traceback only with --verbose. torch is imported by the commands that need it, so --help stays fast.
"""

import enum
import json
import logging
import os
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

from ignite_mnist.errors import UserError
from ignite_mnist.experiment import (DEFAULT_CONFIG, DEFAULT_SCHEMA, Experiment, create_experiment, load_config,
                                     log, open_experiment, setup_logging, validate_name)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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
    data_path: Path
    verbose: bool


@app.callback()
def global_options(
    ctx: typer.Context,
    experiment_name: Optional[str] = typer.Option(None, "--experiment-name", "-e", help="The experiment to work on."),
    experiments_path: Path = typer.Option(Path("experiments"), help="Folder that holds the experiments."),
    data_path: Path = typer.Option(Path("data"), help="Folder of the datasets (torchvision's layout, or the IDX files)."),
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


@app.command()
def init(
    ctx: typer.Context,
    config_path: Path = typer.Option(DEFAULT_CONFIG, "--config-path", help="The experiment's config (JSON)."),
    config_schema_path: Path = typer.Option(DEFAULT_SCHEMA, "--config-schema-path", "--config-schema-file",
                                            help="JSON schema the config must satisfy."),
    seed: int = typer.Option(0, help="Seed of the split, the initial weights and the batch order."),
):
    """Create an experiment: validated config, seed, and the train/validation split, drawn once."""
    g: Globals = ctx.obj
    setup_logging(None, g.verbose)
    name = validate_name(g.experiment_name)
    config = load_config(config_path, config_schema_path)
    if (g.experiments_path / name).exists():
        raise UserError(f"experiment {name!r} already exists in {g.experiments_path}: pick another name or delete it")
    if not 0 <= seed < 2**63:
        raise UserError(f"--seed must be between 0 and 2**63 - 1, not {seed}")
    from ignite_mnist import data

    sizes = data.dataset_sizes(config["data"]["dataset"], g.data_path)
    experiment = create_experiment(g.experiments_path, name, config, seed, sizes)
    setup_logging(experiment, g.verbose)
    split = experiment.meta["split"]
    log.info(f"created experiment {name} in {experiment.root}: {config['data']['dataset']}, "
             f"{split['train']} training, {split['validation']} validation and {split['test']} test images, seed {seed}")


@app.command()
def train(
    ctx: typer.Context,
    max_epochs: int = typer.Option(..., "--max-epochs", help="Train until this epoch (resumes from the last checkpoint)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, or auto (cuda if there is one)."),
    log_period: int = typer.Option(50, "--log-period", min=1, help="Log the training loss every K iterations."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Processes to spawn (distributed training)."),
    backend: Optional[Backend] = typer.Option(None, help="Distributed backend (default: nccl on CUDA, gloo on CPU)."),
):
    """Train (or go on training) with the Ignite trainer: a checkpoint and the metrics every epoch."""
    experiment = _open(ctx)
    from ignite_mnist.engines import run_training

    record = run_training(experiment, ctx.obj.data_path, max_epochs, device, nproc_per_node,
                          backend.value if backend else None, log_period, ctx.obj.verbose)
    if record:
        scores = "".join(f", {name} accuracy {record[name + '_accuracy']:.2f}%"
                         for name in ("validation", "test") if name + "_accuracy" in record)
        log.info(f"trained {experiment.name} to epoch {record['epoch']}{scores}")


@app.command()
def test(
    ctx: typer.Context,
    epoch: int = typer.Option(..., "--epoch", help="The epoch whose checkpoint to test."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, or auto."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object of the results."),
):
    """Restore the model of an epoch and measure its accuracy on the test set."""
    experiment = _open(ctx)
    experiment.checkpoint(epoch)  # a missing epoch is named before torch is even imported
    from ignite_mnist.engines import evaluate_checkpoint

    result = evaluate_checkpoint(experiment, ctx.obj.data_path, epoch, device)
    log.info(f"test of epoch {epoch}: accuracy {result['accuracy']:.2f}% ({result['correct']}/{result['total']}), "
             f"loss {result['loss']:.4f}")
    if as_json:
        print(json.dumps(result))


@app.command("export-release")
def export_release(
    ctx: typer.Context,
    epoch: Optional[int] = typer.Option(None, "--epoch", help="The epoch to release (default: the last)."),
    release_format: ReleaseFormat = typer.Option(ReleaseFormat.pt, "--format",
                                                 help="pt (a state dict), pt2 (torch.export) or onnx."),
):
    """Write a release of an epoch: the model alone, for inference, verified on the test set. Prints its path last."""
    experiment = _open(ctx)
    experiment.checkpoint(epoch)
    from ignite_mnist import release

    path = release.export_release(experiment, epoch, release_format.value, ctx.obj.data_path)
    log.info(f"release written: {path}")
    print(path)


@app.command()
def predict(
    ctx: typer.Context,
    release_path: Path = typer.Option(..., "--release", help="A release file (from export-release): .pt, .pt2 or .onnx."),
    images: List[Path] = typer.Argument(..., help="Image files (PNG, JPEG, ...), any size."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of {path, label, class, probability}."),
):
    """Classify image files with a release."""
    setup_logging(None, ctx.obj.verbose)
    from ignite_mnist import release

    results = release.predict(release_path, images)
    if as_json:
        print(json.dumps(results))
    else:
        for r in results:
            name = f" ({r['class']})" if r["class"] != str(r["label"]) else ""
            print(f"{r['path']}: {r['label']}{name} {100 * r['probability']:.1f}%")


@app.command()
def serve(
    ctx: typer.Context,
    release_path: Path = typer.Option(..., "--release", help="A release file (from export-release): .pt, .pt2 or .onnx."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port to listen on (0: any free port)."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most images in one forward pass."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0, help="How long a request waits for others to batch with."),
    max_body: int = typer.Option(1_000_000, "--max-body", min=1, help="Largest request body, in bytes (413 above)."),
):
    """Serve a release over HTTP: POST /predict, GET /health, GET /info, and a draw-a-digit page at /."""
    import importlib.util

    setup_logging(None, ctx.obj.verbose)
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
    """Show an experiment: config, seed, split sizes, checkpoints with their metrics, releases."""
    experiment = _open(ctx, log_to_file=False)
    checkpoints = []
    if experiment.checkpoints():
        from ignite_mnist.engines import read_checkpoint
    for epoch, path in experiment.checkpoints().items():
        entry = {"epoch": epoch, "path": str(path)}
        try:  # mmap: only the metrics are read, not the 14 MB of tensors
            entry["metrics"] = read_checkpoint(path, "cpu", mmap=True).get("metrics", {})
        except UserError as e:
            entry["error"] = str(e)
        checkpoints.append(entry)
    releases = [{"epoch": epoch, "path": str(path)} for epoch, path in experiment.releases().items()]
    meta = experiment.meta
    summary = {"name": experiment.name, "path": str(experiment.root), "created": meta.get("created"),
               "seed": experiment.seed, "config": experiment.config, "split": meta.get("split"),
               "versions": meta.get("versions"), "checkpoints": checkpoints, "releases": releases}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"experiment {experiment.name} ({experiment.root}), created {meta.get('created')}, seed {experiment.seed}")
    print(f"split: {json.dumps(meta.get('split'))}")
    print(f"config: {json.dumps(experiment.config)}")
    print("checkpoints:" if checkpoints else "checkpoints: none yet")
    for c in checkpoints:
        m = c.get("metrics", {})
        scores = "".join(f", {name} accuracy {m[name + '_accuracy']:.2f}% loss {m[name + '_loss']:.4f}"
                         for name in ("validation", "test") if name + "_accuracy" in m)
        print(f"  epoch {c['epoch']}: {c['path']}" + (f" ({c['error']})" if "error" in c else scores))
    print("releases:" if releases else "releases: none yet")
    for r in releases:
        print(f"  epoch {r['epoch']}: {r['path']}")


@app.command()
def tensorboard(
    ctx: typer.Context,
    port: int = typer.Option(6006, help="Port to serve TensorBoard on."),
):
    """Run TensorBoard on the experiment's logs (needs the tensorboard package)."""
    import importlib.util

    experiment = _open(ctx, log_to_file=False)
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("TensorBoard is not installed: pip install tensorboard (or pip install -e '.[tensorboard]')")
    if not experiment.tensorboard_dir.is_dir():
        raise UserError(f"experiment {experiment.name} has no TensorBoard logs yet: run `train` first")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(experiment.tensorboard_dir),
               "--port", str(port)]
    log.info(f"TensorBoard on {experiment.tensorboard_dir}: http://localhost:{port}/ (Ctrl-C to stop)")
    sys.stderr.flush()
    os.execv(sys.executable, command)  # TensorBoard takes this process's place: signals reach it directly


def main(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in args
    try:
        code = app(args=args, prog_name="ignite-mnist", standalone_mode=False)
    except click_exceptions.ClickException as e:  # usage errors: click's own message, made one line
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:
            print(e.ctx.get_help())
            sys.exit(2)
        command = e.ctx.command_path if getattr(e, "ctx", None) else "ignite-mnist"
        _fail(f"{e.format_message()} (see `{command} --help`)", e.exit_code)
    except UserError as e:
        if verbose:
            traceback.print_exc()
        _fail(str(e), e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except Exception as e:
        if verbose:
            traceback.print_exc()
        _fail(f"{type(e).__name__}: {e}" + ("" if verbose else " (run with --verbose for the traceback)"), 1)
    sys.exit(code if isinstance(code, int) else 0)  # --help returns 0


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
