"""What a model gets wrong: the worst-classified test images (an Ignite metric), and the figures that show them
with the confusion matrix (matplotlib, imported only when a figure is drawn)."""

import math
import os
import tempfile
from pathlib import Path

from ignite_mnist import lazy_imports  # noqa: F401, I001  (before Ignite: see there)
import ignite.distributed as idist
import numpy as np
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
# matplotlib's object API (Figure, FigureCanvasAgg), not pyplot: a third of the import time, no global state;
# the digits are one tiled image in one axis, not an axis each (24 axes cost 0.7 s to draw).


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def pixels(figure):
    """The figure rendered: uint8 [height, width, 3], as TensorBoard's add_image takes it (HWC)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def draw_confusion_matrix(ax, matrix, classes: list, title: str) -> None:
    """Counts, rows = true class, columns = predicted; the diagonal is what it got right."""
    matrix = torch.as_tensor(matrix)
    ax.imshow(matrix.float().log1p().numpy(), cmap="Blues")  # log: the off-diagonal mistakes stay visible
    ticks = range(len(classes))
    names = [str(c)[:8] for c in classes]
    ax.set_xticks(ticks, names, rotation=90 if max(map(len, names)) > 2 else 0)
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    dark = 0.6 * math.log1p(matrix.max().item())  # above this shade, white text reads better
    for i, row in enumerate(matrix.tolist()):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if math.log1p(count) > dark else "black")


def things(classes: list) -> str:
    """What the images are, for titles: digits, or (Fashion-MNIST's) images."""
    return "digits" if [str(c) for c in classes] == [str(i) for i in range(10)] else "images"


def draw_worst(ax, worst: list, images: torch.Tensor, classes: list, columns: int = 8, fontsize: float = 7) -> None:
    """The images tiled in one image, each captioned with its true and predicted class and the probability
    of the true class (red: misclassified). Class names longer than a digit's (Fashion-MNIST's) take two lines,
    the true one above the predicted one, so that neighbouring captions do not run into each other."""
    two_lines = any(len(str(c)) > 2 for c in classes)
    rows, width = max(1, -(-len(worst) // columns)), 40  # a 28-pixel image in a 40-pixel cell, room for captions
    height = 48 if two_lines else 40
    canvas = torch.zeros(rows * height, columns * width, dtype=torch.uint8)
    for k, w in enumerate(worst):
        top, left = (k // columns) * height + height - 30, (k % columns) * width + 6
        canvas[top:top + 28, left:left + 28] = images[w["index"]].cpu()
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=255)
    for k, w in enumerate(worst):
        p = w["probability"]
        true, predicted = (str(classes[w[key]])[:10] for key in ("label", "predicted"))
        caption = f"{true}>{chr(10) if two_lines else ''}{predicted} {p:.0%}" if p >= 0.1 else \
            f"{true}>{chr(10) if two_lines else ''}{predicted} {p:.1%}"
        ax.text((k % columns) * width + width / 2, (k // columns) * height + 1, caption, ha="center", va="top",
                fontsize=fontsize * (0.8 if two_lines else 1), linespacing=1.0,
                color="tomato" if w["label"] != w["predicted"] else "white")
    ax.axis("off")


def confusion_matrix_figure(matrix, classes: list, title: str):
    figure = _figure(figsize=(5, 5), dpi=80)
    draw_confusion_matrix(figure.add_subplot(), matrix, classes, title)
    return figure


def worst_figure(worst: list, images: torch.Tensor, classes: list, title: str):
    figure = _figure(figsize=(8, 1.2 + 1.1 * max(1, -(-len(worst) // 8))), dpi=80)
    draw_worst(figure.add_subplot(), worst, images, classes)
    figure.suptitle(title + " (true>predicted, probability of the true class)", fontsize=9)
    return figure


def save_test_figure(path: Path, matrix, worst: list, images: torch.Tensor, classes: list, title: str) -> None:
    """The confusion matrix and the worst-classified digits as one PNG, written whole or not at all."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    target = Path(os.path.realpath(path))  # a symlink is written through, as `cp` does, and stays a link
    figure = _figure(figsize=(13, 5.6), dpi=100)
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.45])
    draw_confusion_matrix(left, matrix, classes, "confusion matrix")
    draw_worst(right, worst, images, classes, columns=6, fontsize=10)
    right.set_title(f"worst-classified test {things(classes)} (true>predicted, probability of the true class)")
    figure.suptitle(title)
    try:
        # the name cut short in the temporary one, which must fit the file system's 255 bytes as the target does
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:100]}.", suffix=".png", dir=target.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            FigureCanvasAgg(figure).print_png(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone when replaced; left by a failure or Ctrl-C otherwise
