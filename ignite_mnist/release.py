"""Releases: the trained model alone, with what inference needs, and the `predict` that uses one.

A release holds no optimizer, scheduler or trainer state, only tensors and plain data: it loads with
plain torch.load(path, weights_only=True) and the model class of the PyTorch MNIST example.
"""

import datetime
from pathlib import Path

import torch
from ignite.handlers import DiskSaver

from ignite_mnist import data
from ignite_mnist.checkpoints import epoch_metrics, read_checkpoint
from ignite_mnist.errors import UserError
from ignite_mnist.experiment import Experiment, package_versions
from ignite_mnist.model import Net

FORMAT = "ignite-mnist-release/1"


def export_release(experiment: Experiment, epoch: int = None) -> Path:
    """Write the release of `epoch` (default: the last checkpoint) and return its path."""
    path = experiment.checkpoint(epoch)
    epoch = epoch if epoch is not None else max(experiment.checkpoints())
    checkpoint = read_checkpoint(path, "cpu")
    model = Net()
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} holds no model of this architecture ({str(e).splitlines()[0]})") from None
    dataset = experiment.config["data"]["dataset"]
    spec = data.DATASETS[dataset]
    release = {
        "format": FORMAT,
        "model": {name: tensor.contiguous() for name, tensor in model.state_dict().items()},
        "architecture": "the CNN of the PyTorch MNIST example (pytorch/examples, mnist/main.py)",
        "input": {"height": 28, "width": 28, "scale": 255.0, "mean": spec["mean"], "std": spec["std"],
                  "polarity": "light strokes on a dark background, as MNIST"},
        "classes": spec["classes"],
        "dataset": dataset,
        "epoch": epoch,
        "metrics": {k: v for k, v in epoch_metrics(checkpoint).items() if not k.endswith("_seconds")},
        "experiment": experiment.name,
        "seed": experiment.seed,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }
    target = experiment.release_path(epoch)
    try:
        DiskSaver(target.parent, require_empty=False)(release, target.name)  # atomic: whole or absent
    except OSError as e:
        raise UserError(f"cannot write release {target}: {e.strerror}") from None
    return target


def load_release(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"release {path} does not exist" if not path.exists() else f"release {path} is not a file")
    release = read_checkpoint(path, "cpu", what="release")
    if release.get("format") != FORMAT:
        raise UserError(f"{path} is not an ignite-mnist release (no format {FORMAT!r})")
    return release


def predict(release_path: Path, image_paths: list) -> list:
    """Classify image files with a release: [{path, label, class, probability}], in fp32 on the CPU."""
    release = load_release(release_path)
    model = Net()
    model.load_state_dict(release["model"])
    model.eval()
    digits = torch.stack([data.image_as_digit(path) for path in image_paths])
    spec = release["input"]
    x = digits.unsqueeze(1).float().div_(spec["scale"]).sub_(spec["mean"]).div_(spec["std"])
    with torch.inference_mode():
        probabilities, labels = model(x).exp().max(dim=1)
    return [
        {"path": str(path), "label": int(label), "class": release["classes"][label], "probability": float(p)}
        for path, label, p in zip(image_paths, labels.tolist(), probabilities.tolist())
    ]
