"""export-release --format pt|pt2|onnx: verified exports that run without ignite-mnist, and predict on each."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import g, invoke, make_config, snapshot, write_dataset
from ignite_mnist import data, release
from ignite_mnist.model import Net

FORMATS = ["pt", "pt2", "onnx"]


def tiny_test_images(tiny_data):
    return data.read_split(tiny_data / "t10k-images-idx3-ubyte.gz", tiny_data / "t10k-labels-idx1-ubyte.gz")[0]


def checkpoint_log_probabilities(experiment: Path, images: torch.Tensor, epoch: int = 2) -> torch.Tensor:
    """The checkpoint's own answers, computed here from its state dict, as the evaluator normalises."""
    model = Net()
    model.load_state_dict(torch.load(experiment / "checkpoints" / f"checkpoint_{epoch}.pt", weights_only=True)["model"])
    model.eval()
    x, _ = data.TensorSet(images, torch.zeros(len(images), dtype=torch.int64), 0.1307, 0.3081).batch(slice(None))
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_exports_verified_and_alone(copy, capsys, tiny_data, fmt):
    releases = copy / "experiments" / "exp" / "releases"
    before = sorted(p.name for p in releases.iterdir())
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), "export-release", "--epoch", "1", "--format", fmt)
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1])
    assert path == releases / f"release_epoch_1.{fmt}" and path.is_file()
    assert sorted(p.name for p in releases.iterdir()) == sorted(before + [path.name])  # one file: no .data, no tmp
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    if fmt == "pt":  # the checkpoint's weights, read back bitwise equal: the same predictions by construction
        assert "read back, bitwise the weights of checkpoint checkpoint_1.pt" in err
    else:
        assert "the same predictions as checkpoint checkpoint_1.pt on the 100 test images" in err
    assert "largest difference of log-probabilities" in err
    code, out, _ = invoke(capsys, *g(copy, data=tiny_data), "info", "--json")
    assert {"epoch": 1, "format": fmt, "path": str(path)} in json.loads(out)["releases"]


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_the_onnx_file_is_self_contained_with_its_metadata(releases):
    import onnx

    path = releases["onnx"]
    model = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert sum(t.ByteSize() for t in model.graph.initializer) > 4_000_000  # the 1.2M weights are inside
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["ignite-mnist"])
    assert meta["classes"] == json.loads(props["classes"]) == [str(d) for d in range(10)]
    assert json.loads(props["normalization"]) == {"mean": 0.1307, "std": 0.3081}
    assert meta["epoch"] == 2 and meta["input"]["range"] == [0.0, 1.0] and meta["file_format"] == "onnx"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 1, 28, 28]
    assert not list(path.parent.glob("*.data"))


# Runs in a subprocess where ignite_mnist cannot be imported: only torch and onnxruntime.
WITHOUT_IGNITE_MNIST = r"""
import json, sys
sys.modules["ignite_mnist"] = None  # any import of ignite_mnist fails
import numpy as np, torch, onnxruntime
pt2, onnx_path, pixels_path = sys.argv[1:]
pixels = torch.load(pixels_path)  # float32 N x 1 x 28 x 28 in [0, 1]
extra = {"ignite-mnist.json": ""}
program = torch.export.load(pt2, extra_files=extra).module()
session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
result = {"pt2_meta": json.loads(extra["ignite-mnist.json"]),
          "onnx_meta": json.loads(session.get_modelmeta().custom_metadata_map["ignite-mnist"])}
for n in (1, 37):
    x = pixels[:n]
    result[f"pt2_{n}"] = program(x).tolist()
    result[f"onnx_{n}"] = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].tolist()
print(json.dumps(result))
"""


def test_pt2_and_onnx_run_without_ignite_mnist_for_any_batch(releases, tiny_data, tmp_path):
    images = tiny_test_images(tiny_data)
    pixels = images.unsqueeze(1).float() / 255
    torch.save(pixels, tmp_path / "pixels.pt")
    r = subprocess.run([sys.executable, "-c", WITHOUT_IGNITE_MNIST, releases["pt2"], releases["onnx"],
                        tmp_path / "pixels.pt"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    expected = checkpoint_log_probabilities(releases["pt"].parents[1], images)
    for fmt in ("pt2", "onnx"):
        meta = result[f"{fmt}_meta"]
        assert meta["classes"] == [str(d) for d in range(10)] and (meta["input"]["mean"], meta["input"]["std"]) == (0.1307, 0.3081)
        for n in (1, 37):
            got = torch.tensor(result[f"{fmt}_{n}"])
            assert got.shape == (n, 10)
            assert got.argmax(1).tolist() == expected[:n].argmax(1).tolist()
            assert (got - expected[:n]).abs().max() < 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_runs_each_format_as_the_checkpoint(releases, tiny_data, tmp_path, capsys, fmt):
    images = tiny_test_images(tiny_data)[:20]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(image.numpy()).save(paths[-1])
    code, out, err = invoke(capsys, "predict", "--release", releases[fmt], "--json", *paths)
    assert code == 0, err
    predicted = json.loads(out.strip().splitlines()[-1])
    expected = checkpoint_log_probabilities(releases["pt"].parents[1], images).exp()
    assert [p["label"] for p in predicted] == expected.argmax(1).tolist()
    assert [p["path"] for p in predicted] == [str(p) for p in paths]
    for p, row in zip(predicted, expected):
        assert abs(p["probability"] - float(row.max())) < 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_that_does_not_match_its_checkpoint_is_an_error_and_leaves_nothing(copy, capsys, tiny_data,
                                                                                     monkeypatch, fmt):
    if fmt == "pt":  # weights that are not the checkpoint's
        write = release._WRITERS["pt"]
        monkeypatch.setitem(release._WRITERS, "pt", lambda r, model, path: write(
            {**r, "model": {k: v + 1e-3 for k, v in r["model"].items()}}, model, path))
    else:  # a broken graph
        original = release.Normalized.forward
        monkeypatch.setattr(release.Normalized, "forward", lambda self, x: original(self, x).flip(1))
    before = snapshot(copy / "experiments" / "exp" / "releases")
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), "export-release", "--format", fmt)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    if fmt == "pt":
        assert lines[-1] == "error: the pt export of epoch 2 does not hold its checkpoint's weights: nothing was written"
    else:
        assert lines[-1].startswith(f"error: the {fmt} export of epoch 2 does not match its checkpoint: ")
        assert "test images get another label" in lines[-1] and lines[-1].endswith("nothing was written")
    assert snapshot(copy / "experiments" / "exp" / "releases") == before


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_an_export_whose_graph_answers_nan_is_refused_naming_the_release_not_a_temporary_file(
        copy, capsys, tiny_data, monkeypatch, fmt):
    original = release.Normalized.forward  # finite weights, a graph that answers NaN
    monkeypatch.setattr(release.Normalized, "forward", lambda self, x: original(self, x) * float("nan"))
    before = snapshot(copy / "experiments" / "exp" / "releases")
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), "export-release", "--format", fmt)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == (f"error: the {fmt} export of epoch 2 answers NaN or infinite "
                                            "log-probabilities where its checkpoint does not: nothing was written")
    assert snapshot(copy / "experiments" / "exp" / "releases") == before


def test_a_dataset_without_test_images_trains_exports_on_random_images_and_refuses_test(workdir, capsys, tiny_data):
    images, labels = data.read_split(tiny_data / "train-images-idx3-ubyte.gz", tiny_data / "train-labels-idx1-ubyte.gz")
    empty = write_dataset(workdir / "no-test", (images, labels), (images[:0], labels[:0]))
    opts = g(workdir, "notest", empty)
    assert invoke(capsys, *opts, "init", "--config-path", make_config(workdir))[0] == 0
    code, _, err = invoke(capsys, *opts, "train", "--max-epochs", "1", "--device", "cpu")
    assert code == 0, err
    code, out, err = invoke(capsys, *opts, "test", "--epoch", "1")
    assert code == 2 and out == "" and err.strip() == \
        "error: the test set of mnist has no images: there is nothing to test epoch 1 on"
    code, out, err = invoke(capsys, *opts, "export-release", "--format", "onnx")
    assert code == 0, err
    assert "on 256 random images (the test set of mnist is empty)" in err and out.strip().endswith(".onnx")


def test_onnx_export_without_its_packages_says_what_to_install(copy, capsys, tiny_data, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name, *a))
    before = snapshot(copy / "experiments" / "exp" / "releases")
    code, _, err = invoke(capsys, *g(copy, data=tiny_data), "export-release", "--format", "onnx")
    assert code == 2 and err.strip() == "error: --format onnx needs onnxscript: pip install -e '.[export]'"
    assert snapshot(copy / "experiments" / "exp" / "releases") == before


def test_an_unknown_format_is_a_usage_error(copy, capsys, tiny_data):
    code, _, err = invoke(capsys, *g(copy, data=tiny_data), "export-release", "--format", "tflite")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'tflite' is not one of" in err


# ---- untrusted files ------------------------------------------------------------------------------

class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def rewrite_pt2(source: Path, target: Path, change) -> None:
    """Copy a pt2 archive, passing each (name, bytes) through change(name, bytes) -> bytes."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, change(info.filename, old.read(info.filename)))


def pickled_weight(marker):
    def change(name, content):
        if name.endswith("model_weights_config.json"):
            config = json.loads(content)
            config["config"]["net.conv1.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return pickle.dumps(Payload(marker))
        return content
    return change


def pickled_sample_inputs(marker):
    def change(name, content):
        return pickle.dumps(Payload(marker)) if name.endswith("sample_inputs/model.pt") else content
    return change


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("plant", [pickled_sample_inputs, pickled_weight])
def test_a_crafted_pt2_is_refused_unrun(releases, tmp_path, capsys, plant):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt2"
    rewrite_pt2(releases["pt2"], evil, plant(marker))
    code, _, err = invoke(capsys, "predict", "--release", evil, tmp_path / "whatever.png")
    assert not marker.exists(), "the payload ran"
    assert code == 2 and f"error: release {evil} is corrupt or not an ignite-mnist release" in err
    if plant is pickled_sample_inputs:  # the threat is real: torch.export.load alone runs this one
        try:
            torch.export.load(evil)
        except Exception:
            pass
        assert marker.exists()


def test_a_pt2_archive_with_other_files_is_refused(releases, tmp_path, capsys):
    evil = tmp_path / "extra.pt2"
    rewrite_pt2(releases["pt2"], evil, lambda name, content: content)
    with zipfile.ZipFile(evil, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    code, _, err = invoke(capsys, "predict", "--release", evil, tmp_path / "whatever.png")
    assert code == 2 and "unexpected file" in err and "aotinductor" in err


@pytest.mark.parametrize("given, named, message", [
    ("pt2", "release.pt", "(a torch.export archive, not torch.save's: a pt2 release is read from a .pt2 file)"),
    ("pt", "release.pt2", "(a torch.save file, not a pt2 archive: a pt release is read from a .pt file)"),
    ("pt", "release.onnx", "is a zip archive, as a pt or pt2 release or a checkpoint is, not ONNX: give it its own "
                           "suffix (.pt, .pt2)"),
    ("pt2", "release.onnx", "is a zip archive, as a pt or pt2 release or a checkpoint is, not ONNX"),
    ("onnx", "release.pt", "is an ONNX release, not torch.save's: give it its own suffix (.onnx)"),
])
def test_a_release_under_the_other_suffix_is_told_by_its_content(releases, tmp_path, capsys, given, named, message):
    path = tmp_path / named
    shutil.copy(releases[given], path)
    code, _, err = invoke(capsys, "predict", "--release", path, tmp_path / "whatever.png")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("content, message", [
    (b"", "is corrupt or not an ignite-mnist release"),
    (os.urandom(3000), "is corrupt or not an ignite-mnist release"),
    (None, "is not an ignite-mnist release (no 'ignite-mnist' metadata"),
])
@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_bad_onnx_and_pt2_files_are_one_line_errors(releases, tmp_path, capsys, content, message, suffix):
    path = tmp_path / f"bad{suffix}"
    if content is not None:
        path.write_bytes(content)
    elif suffix == ".onnx":  # a valid ONNX model that is not ours: no metadata
        import onnx

        model = onnx.load(str(releases["onnx"]))
        del model.metadata_props[:]
        onnx.save(model, str(path))
    else:  # a valid pt2 program that is not ours
        module = torch.nn.Linear(3, 2)
        torch.export.save(torch.export.export(module, (torch.zeros(2, 3),)), path)
    code, _, err = invoke(capsys, "predict", "--release", path, tmp_path / "whatever.png")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_the_readme_snippets_for_pt2_and_onnx_run_without_ignite_mnist(releases, tmp_path):
    import re

    from conftest import ROOT

    section = (ROOT / "README.md").read_text().split("## Portable releases", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(snippets) == 2
    for snippet, fmt in zip(snippets, ("pt2", "onnx")):
        code = "import sys\nsys.modules['ignite_mnist'] = None\n" + snippet.replace(
            f'"experiments/demo/releases/release_epoch_10.{fmt}"', repr(str(releases[fmt])))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        printed = eval(r.stdout.strip().splitlines()[-1])
        assert len(printed) == 5 and all(label in [str(d) for d in range(10)] for label in printed)


def test_portable_releases_hold_no_source_path_of_the_exporting_machine(releases):
    """torch.export and torch.onnx record each node's stack trace, with the exporting machine's absolute paths
    (a user's home, a build folder): a release holds the model alone."""
    import zipfile

    source = str(Path(__file__).resolve().parents[1]).encode()  # this checkout, where ignite_mnist's files are
    assert source not in releases["onnx"].read_bytes()
    with zipfile.ZipFile(releases["pt2"]) as archive:
        assert not [name for name in archive.namelist() if source in archive.read(name)]
