"""What a model gets wrong: the worst-classified digits (an Ignite metric), and the figures that show them
with the confusion matrix (matplotlib, imported only when a figure is drawn)."""

import math
import os
import tempfile
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.metrics import Metric

from ignite_mnist.errors import UserError


class WorstClassified(Metric):
    """The k samples whose true class got the lowest probability, over all processes, worst first:
    [{"index", "label", "predicted", "probability"}] (index: position in the evaluated set;
    probability: the one given to the true class).

    It needs the positions of the batch: the evaluator's output is {"y_pred", "y", "index", ...}.
    """

    required_output_keys = ("y_pred", "y", "index")

    def __init__(self, k: int = 24, device="cpu"):
        self.k = k
        super().__init__(device=device)

    def reset(self) -> None:
        self._rows = torch.empty(0, 4, dtype=torch.float64)  # log-probability of the truth, index, label, predicted

    def update(self, output) -> None:
        y_pred, y, index = (t.detach() if isinstance(t, torch.Tensor) else t for t in output)
        positions = torch.arange(index.start, index.stop) if isinstance(index, slice) else index.cpu()
        truth = y_pred.gather(1, y[:, None]).squeeze(1).cpu().double()
        rows = torch.stack([truth, positions.double(), y.cpu().double(), y_pred.argmax(1).cpu().double()], dim=1)
        self._rows = _lowest(torch.cat([self._rows, rows]), self.k)

    def compute(self) -> list:
        rows = self._rows
        if idist.get_world_size() > 1:  # every rank's k worst, padded to k rows, then the k worst of all
            padded = torch.full((self.k, 4), float("inf"), dtype=torch.float64)
            padded[:len(rows)] = rows
            rows = idist.all_gather(padded.to(idist.device())).cpu()
            rows = _lowest(rows[rows[:, 0].isfinite()], self.k)
        return [{"index": int(i), "label": int(label), "predicted": int(p), "probability": math.exp(lp)}
                for lp, i, label, p in rows.tolist()]


def _lowest(rows: torch.Tensor, k: int) -> torch.Tensor:
    return rows[rows[:, 0].argsort()[:k]]


# ---- figures ------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def draw_confusion_matrix(ax, matrix, classes: list, title: str) -> None:
    """Counts, rows = true class, columns = predicted; the diagonal is what it got right."""
    matrix = torch.as_tensor(matrix)
    ax.imshow(matrix.float().log1p().numpy(), cmap="Blues")  # log: the off-diagonal mistakes stay visible
    ticks = range(len(classes))
    ax.set_xticks(ticks, [str(c)[:8] for c in classes], rotation=90 if max(map(len, map(str, classes))) > 2 else 0)
    ax.set_yticks(ticks, [str(c)[:8] for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    dark = 0.6 * math.log1p(matrix.max().item())  # above this shade, white text reads better
    for i, row in enumerate(matrix.tolist()):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if math.log1p(count) > dark else "black")


def draw_worst(axes, worst: list, images: torch.Tensor, classes: list) -> None:
    """One digit per axis: the image, its true and predicted class, the probability of the true class."""
    for ax in axes:
        ax.axis("off")
    for ax, w in zip(axes, worst):
        ax.imshow(images[w["index"]].cpu().numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"true {classes[w['label']]}\npred {classes[w['predicted']]} ({100 * w['probability']:.0f}%)",
                     fontsize=7, color="black" if w["label"] == w["predicted"] else "firebrick")


def confusion_matrix_figure(matrix, classes: list, title: str):
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(5, 5), dpi=80, layout="constrained")
    draw_confusion_matrix(ax, matrix, classes, title)
    return figure


def worst_figure(worst: list, images: torch.Tensor, classes: list, title: str, columns: int = 8):
    plt = _pyplot()
    rows = max(1, -(-len(worst) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.45), dpi=80, layout="constrained",
                                squeeze=False)
    draw_worst(axes.flatten(), worst, images, classes)
    figure.suptitle(title, fontsize=9)
    return figure


def save_test_figure(path: Path, matrix, worst: list, images: torch.Tensor, classes: list, title: str) -> None:
    """The confusion matrix and the worst-classified digits as one PNG, written whole or not at all."""
    plt = _pyplot()
    columns, rows = 6, max(1, -(-len(worst) // 6))
    figure = plt.figure(figsize=(12, 6), dpi=100, layout="constrained")
    left, right = figure.subfigures(1, 2, width_ratios=[1, 1])
    draw_confusion_matrix(left.subplots(), matrix, classes, "confusion matrix")
    draw_worst(right.subplots(rows, columns).flatten(), worst, images, classes)
    right.suptitle("worst-classified test digits (probability of the true class)", fontsize=10)
    figure.suptitle(title)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--plot writes a PNG file: give a name ending in .png, not {path.name!r}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent if str(path.parent) else ".")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            figure.savefig(f, format="png")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    finally:
        plt.close(figure)
