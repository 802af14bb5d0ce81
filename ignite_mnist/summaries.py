"""What a training run writes to TensorBoard besides Ignite's scalar handlers: its hyper-parameters (for the
HParams dashboard), the best epoch's metrics, the validation confusion matrix and the worst-classified
test digits as pictures.

The HParams dashboard needs only a session-start summary in each run: it builds the table from those and
takes the metrics from the run's own scalars (validation/accuracy, best/validation_accuracy, ...), so
experiments with different config keys still line up.
"""

from ignite_mnist import analysis
from ignite_mnist.experiment import Experiment, flatten


def hparams(experiment: Experiment) -> dict:
    """The config as dotted keys (null: "null"), with the seed: values TensorBoard can show."""
    flat = {key: "null" if value is None else value for key, value in flatten(experiment.config).items()}
    return {**flat, "seed": experiment.seed}


def write_hparams(writer, experiment: Experiment) -> None:
    from tensorboardX.summary import hparams as hparams_summaries

    _, session_start, _ = hparams_summaries(hparams(experiment), {})
    writer._get_file_writer().add_summary(session_start)


def write_best(writer, experiment: Experiment, history: dict, step: int) -> None:
    """best/epoch, best/validation_accuracy and best/test_accuracy (at the best epoch), as of `step`."""
    best = experiment.best_epoch(history)
    if best is None:
        return
    record = next(e for e in history["epochs"] if e["epoch"] == best)
    writer.add_scalar("best/epoch", best, step)
    writer.add_scalar("best/validation_accuracy", record["validation_accuracy"], step)
    if "test_accuracy" in record:
        writer.add_scalar("best/test_accuracy", record["test_accuracy"], step)


def write_confusion_matrix(writer, matrix, classes: list, name: str, step: int) -> None:
    figure = analysis.confusion_matrix_figure(matrix.cpu(), classes, f"{name}, epoch {step}")
    writer.add_image(f"{name}/confusion_matrix", analysis.pixels(figure), step, dataformats="HWC")


def write_worst(writer, worst: list, images, classes: list, step: int) -> None:
    figure = analysis.worst_figure(worst, images, classes,
                                   f"worst-classified test {analysis.things(classes)}, epoch {step}")
    writer.add_image("test/worst_classified", analysis.pixels(figure), step, dataformats="HWC")
