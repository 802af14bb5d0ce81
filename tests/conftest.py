"""Shared fixtures: a tiny MNIST-format dataset cut from the bundled sample, and ways to run the CLI."""

import atexit
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ignite_mnist import data
from ignite_mnist.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write images [n, 28, 28] or labels [n] as an IDX file (.gz if the name says so)."""
    magic = 2051 if array.ndim == 3 else 2049
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *array.shape))
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_dataset(folder: Path, train, test, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for (images, labels), (images_name, labels_name) in zip((train, test), data.FILES.values()):
        suffix = ".gz" if gz else ""
        write_idx(folder / (images_name + suffix), np.asarray(images))
        write_idx(folder / (labels_name + suffix), np.asarray(labels))
    return folder


def three_training_steps(bf16: bool = True) -> dict:
    """The weights after three training steps of model.Net (torch's Adadelta, batches of 16 random images) from
    seed 0: to compare the model's code paths (bit for bit, or within rounding where a path sums otherwise)."""
    import torch.nn.functional as F

    from ignite_mnist.model import Net

    torch.manual_seed(0)
    net = Net().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adadelta(net.parameters(), lr=1.0)
    batches = torch.Generator().manual_seed(1)
    for _ in range(3):
        images = torch.randn(16, 1, 28, 28, generator=batches).to(memory_format=torch.channels_last)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            F.nll_loss(net(images), torch.randint(0, 10, (16,), generator=batches)).backward()
        optimizer.step()
    return net.state_dict()


def pytest_configure(config):
    """Datasets decoded and kernels built by the tests (and the commands they run) are cached in a temporary
    folder, not in the user's home: set before the test modules are collected (test_kernels builds at import)."""
    folder = tempfile.mkdtemp(prefix="ignite-mnist-tests-cache-")
    os.environ["XDG_CACHE_HOME"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


@pytest.fixture(scope="session")
def sample():
    """The bundled sample as tensors: {"train": (images, labels), "test": (images, labels)}."""
    return data.load("mnist-sample", Path("unused"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, sample):
    """400 training digits (40 per class, still sorted by class) and 100 test digits: real MNIST, tiny."""
    images, labels = sample["train"]
    keep = np.concatenate([np.flatnonzero(labels.numpy() == c)[:40] for c in range(10)])
    test_images, test_labels = sample["test"]
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data",
                         (images[keep].numpy(), labels[keep].numpy()),
                         (test_images[:100].numpy(), test_labels[:100].numpy()))


def make_config(folder: Path, **changes) -> Path:
    """The default config, as dataset "mnist" (read from --data-path), fp32, with `changes` ({"training.lr": 0.5})."""
    config = json.loads((ROOT / "config" / "config.default.json").read_text())
    config["data"]["dataset"] = "mnist"
    config["training"].update(precision="fp32", batch_size=32, eval_batch_size=64)
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        config[section][key] = value
    path = folder / f"config-{len(list(folder.glob('config-*.json')))}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def workdir(tmp_path, tiny_data, monkeypatch):
    """A folder to run in, with the experiments under it and --data-path pointing at the tiny dataset."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(capsys, *args):
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*args, cwd=None, timeout=300, env=None, **kwargs):
    """Run `python -m ignite_mnist ARGS` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "ignite_mnist", *map(str, args)], cwd=cwd, timeout=timeout,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, **kwargs)


def snapshot(folder: Path) -> dict:
    """{relative path: bytes} of every file under folder: to prove that a refused command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_data):
    """An experiment "exp" trained to epoch 2, with a release of epoch 2 and a digit image."""
    folder = tmp_path_factory.mktemp("trained")
    options = g(folder, data=tiny_data)
    assert run_cli(*options, "init", "--config-path", make_config(folder)).returncode == 0
    assert run_cli(*options, "train", "--max-epochs", 2, "--device", "cpu").returncode == 0
    assert run_cli(*options, "export-release").returncode == 0
    Image.new("L", (28, 28)).save(folder / "digit.png")
    (folder / "not-an-image.png").write_text("hello")
    (folder / "empty.png").write_bytes(b"")
    (folder / "a-directory").mkdir()
    return folder


@pytest.fixture
def copy(trained, tmp_path, monkeypatch):
    """A fresh copy of the trained experiment's folder, to break things in; the cwd is that folder."""
    shutil.copytree(trained, tmp_path / "t")
    monkeypatch.chdir(tmp_path / "t")
    return tmp_path / "t"


def g(folder, name="exp", data=None):
    """Global options for experiment `name` under folder/experiments, with --data-path data."""
    return ["-e", name, "--experiments-path", folder / "experiments", "--data-path", data or folder / "unused"]


def wait_for(condition, timeout=60.0, interval=0.01):
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    raise AssertionError("timed out")


def assert_same(a, b, path="checkpoint"):
    """Equal tensors (bitwise), equal plain data; timings, the run's target (max_epochs) and the experiment that
    saved it (owner: the runs compared are two experiments) excepted."""
    if path.endswith(".trainer"):
        a, b = ({k: v for k, v in x.items() if k != "max_epochs"} for x in (a, b))
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        keys = {k for k in a if not str(k).endswith("_seconds") and k != "owner"}
        assert keys == {k for k in b if not str(k).endswith("_seconds") and k != "owner"}, path
        for k in keys:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.fixture(scope="session")
def releases(tmp_path_factory, trained, tiny_data):
    """The trained experiment (a copy) released in each format: {"pt": path, "pt2": path, "onnx": path}."""
    from ignite_mnist import release
    from ignite_mnist.experiment import open_experiment

    folder = tmp_path_factory.mktemp("releases")
    shutil.copytree(trained / "experiments", folder / "experiments")
    experiment = open_experiment(folder / "experiments", "exp")
    return {fmt: release.export_release(experiment, 2, fmt, tiny_data) for fmt in release.SUFFIXES}
