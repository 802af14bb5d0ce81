"""Releases: the trained model alone, with what inference needs, and the `predict` that uses one.

Three formats, one input contract for the exported ones:
- pt (the default): a dict of tensors and plain data, no optimizer, scheduler or trainer state: it loads
  with plain torch.load(path, weights_only=True) and the model class of the PyTorch MNIST example;
- pt2: a torch.export program (torch.export.save), run with torch.export.load(path).module();
- onnx: one self-contained ONNX file (torch.onnx.export), run with onnxruntime.
pt2 and onnx take float32 N x 1 x 28 x 28 pixels in [0, 1] and hold the dataset's normalisation in their
graph; all three give N x 10 log-probabilities. The classes and the normalisation travel inside each file.
Every release is verified before it takes its name: on the experiment's test set its predictions must
equal the checkpoint's. open_release() loads any of the three, for `predict` and `serve`.
"""

import contextlib
import datetime
import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy  # noqa: F401  (before torch: see lazy_imports)
import torch
from torch import nn

from ignite_mnist import data
from ignite_mnist.checkpoints import check_checkpoint, check_crcs, epoch_metrics, read_checkpoint
from ignite_mnist.errors import UserError, error_text, exists, is_file
from ignite_mnist.experiment import (CHECKPOINT_NAME, Experiment, command_line, log, package_versions,
                                     partial_prefix)
from ignite_mnist.model import Net

FORMAT = "ignite-mnist-release/1"
MAX_ONNX_SNIFF = 64 << 20  # bytes read to tell an ONNX release given under another suffix (ours are about 5 MB)
SUFFIXES = {"pt": ".pt", "pt2": ".pt2", "onnx": ".onnx"}
METADATA_KEY = "ignite-mnist"  # ONNX metadata_props key; the pt2 program's extra file is METADATA_KEY + ".json"
DIGEST_KEY = METADATA_KEY + ".sha256"  # ONNX metadata_props key: the file's SHA-256 (see onnx_digest_slot)
POLARITY = "light strokes on a dark background, as MNIST"
VERIFY_BATCH = 256


class Normalized(nn.Module):
    """The exported graph: pixels in [0, 1] -> the dataset's normalisation -> Net -> log-probabilities."""

    def __init__(self, net: nn.Module, mean: float, std: float):
        super().__init__()
        self.net, self.mean, self.std = net, float(mean), float(std)

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def release_finished_training(experiment: Experiment, epoch: int, data_path: Path = None):
    """The release a finished training writes (its best epoch, else its last): its path, or None where that epoch's
    checkpoint was deleted or damaged by hand, said in one line: the training itself is done."""
    if epoch not in experiment.checkpoints():
        log.warning(f"no release written: the checkpoint of epoch {epoch}, which the release would hold, is missing "
                    "(deleted or moved away); `export-release --epoch N` writes another epoch's")
        return None
    try:  # a damaged checkpoint is said, and the training stays done
        checkpoint = _read_checked(experiment, epoch)
    except UserError as e:  # (the release's own writing fails as any command's: a full disk is an error)
        log.warning(f"no release written: {e}")
        return None
    return export_release(experiment, epoch, "pt", data_path, checkpoint)


def _read_checked(experiment: Experiment, epoch: int) -> dict:
    path = experiment.checkpoint(epoch)
    checkpoint = read_checkpoint(path, "cpu")
    check_checkpoint(path, checkpoint, epoch, experiment.owner)
    return checkpoint


def export_release(experiment: Experiment, epoch: int = None, fmt: str = "pt", data_path: Path = None,
                   checkpoint: dict = None) -> Path:
    """Write the release of `epoch` (default: the last checkpoint) in format `fmt`, verified, and return its path.
    data_path: --data-path, if given (Experiment.data_path); a pt release reads no data. checkpoint: that epoch's,
    already read and checked (_read_checked), else read here."""
    if fmt not in SUFFIXES:
        raise UserError(f"unknown release format {fmt!r}: use pt, pt2 or onnx")
    _check_export_packages(fmt)
    experiment.check_folders(experiment.releases_dir)
    path = experiment.checkpoint(epoch)
    epoch = epoch if epoch is not None else max(experiment.checkpoints())
    checkpoint = checkpoint or _read_checked(experiment, epoch)
    model = Net()
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} holds no model of this architecture "
                        f"({error_text(e, 300, whole=True)})") from None
    if not all(torch.isfinite(p).all() for p in model.state_dict().values()):
        raise UserError(f"the weights of epoch {epoch} are not all finite (NaN or infinite: the training diverged); "
                        "export an earlier epoch, or train again with a smaller training.lr")
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
    target = experiment.release_path(epoch).with_suffix(SUFFIXES[fmt])
    model.eval()
    if fmt != "pt":  # a pt release holds the checkpoint's weights: reading them back bitwise equal is the proof
        images = _test_images(dataset, experiment.data_path(data_path))
        verified_on = f"the {len(images)} test images of {dataset}"
        if not len(images):  # a dataset without a test set: random digits still tell a wrong graph
            images = torch.randint(0, 256, (VERIFY_BATCH, 28, 28), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(0))
            verified_on = f"{len(images)} random images (the test set of {dataset} is empty)"
        expected = _checkpoint_log_probabilities(model, spec, images)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # a temporary name that Experiment.remove_partial_files() knows (partial_prefix), in the same folder: the
        # release takes its name only once verified, whole; a failed export leaves nothing
        fd, name = tempfile.mkstemp(prefix=partial_prefix(target), suffix=SUFFIXES[fmt], dir=target.parent)
        os.close(fd)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)  # as any new file, not mkstemp's 0600
    except OSError as e:
        raise UserError(f"cannot write release {target}: {e.strerror}") from None
    temporary = Path(name)
    try:
        _WRITERS[fmt](release, model, temporary)
        if fmt == "pt":
            _verify_weights(temporary, model, epoch)
        else:
            difference = _verify(temporary, fmt, images, expected, epoch)
        os.replace(temporary, target)
    except OSError as e:
        raise UserError(f"cannot write release {target}: {e.strerror or e}") from None
    finally:
        temporary.unlink(missing_ok=True)
    if fmt == "pt":
        log.info(f"verified {target}: read back, bitwise the weights of checkpoint {path.name} (so the same "
                 "predictions; largest difference of log-probabilities 0)")
    else:
        log.info(f"verified {target}: the same predictions as checkpoint {path.name} on {verified_on}; "
                 f"largest difference of log-probabilities {difference:.3g}")
    return target


# ---- writing ------------------------------------------------------------------------------------


def _check_export_packages(fmt: str) -> None:
    import importlib.util

    needed = {"onnx": ["onnx", "onnxscript", "onnxruntime"]}.get(fmt, [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format {fmt} needs {' and '.join(missing)}: pip install -e '.[export]'")


def exported_metadata(release: dict, fmt: str) -> dict:
    """What a pt2 or onnx release carries besides its graph: the release's plain data, its input contract."""
    spec = release["input"]
    meta = {k: v for k, v in release.items() if k != "model"}
    meta["file_format"] = fmt
    meta["input"] = {"shape": ["N", 1, 28, 28], "dtype": "float32", "range": [0.0, 1.0], "mean": spec["mean"],
                     "std": spec["std"], "normalization": "inside the graph: (x - mean) / std",
                     "polarity": spec["polarity"]}
    meta["output"] = "N x 10 log-probabilities (log_softmax), in the order of classes"
    return meta


def _graph(release: dict, model: Net) -> Normalized:
    return Normalized(model, release["input"]["mean"], release["input"]["std"]).eval()


def _example_batch() -> torch.Tensor:
    return torch.rand(2, 1, 28, 28)  # 2, not 1: torch.export specialises sizes 0 and 1


# pt and pt2 are serialised in memory, then written: on a full disk, torch's zip writer raises a RuntimeError
# ("unexpected pos"), not the OSError, and a failed pt2 writer can abort the whole process when it is freed.
def _write_file(path: Path, content: bytes) -> None:
    with open(path, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def _write_pt(release: dict, model: Net, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(release, buffer)
    _write_file(path, buffer.getvalue())


def _write_pt2(release: dict, model: Net, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(_graph(release, model), (_example_batch(),), dynamic_shapes={"x": {0: batch}})
    for node in program.graph.nodes:  # the model alone: not the source paths of the machine that exported it
        node.meta.pop("stack_trace", None)
    extra = {METADATA_KEY + ".json": json.dumps(exported_metadata(release, "pt2"))}
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    _write_file(path, buffer.getvalue())


def _write_onnx(release: dict, model: Net, path: Path) -> None:
    meta = exported_metadata(release, "onnx")
    meta["digest"] = f"the file's SHA-256, its own 64 hex digits read as 0, in metadata_props {DIGEST_KEY!r}"
    with contextlib.redirect_stdout(io.StringIO()):  # torch.onnx prints its progress
        program = torch.onnx.export(_graph(release, model), (_example_batch(),), dynamo=True,
                                    input_names=["x"], output_names=["log_probabilities"],
                                    dynamic_shapes={"x": {0: "N"}})
    for node in program.model.graph.all_nodes():  # the model alone: not the exporting machine's source paths
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    program.model.metadata_props.update({
        METADATA_KEY: json.dumps(meta),
        "classes": json.dumps(meta["classes"]),
        "normalization": json.dumps({"mean": meta["input"]["mean"], "std": meta["input"]["std"]}),
        "input": "float32 N x 1 x 28 x 28, pixels in [0, 1], " + POLARITY,
    })
    program.model.metadata_props[DIGEST_KEY] = "0" * 64  # filled in below, once the file's bytes are known
    program.model.doc_string = f"ignite-mnist release: {release['architecture']}, trained on {release['dataset']}"
    program.save(str(path), external_data=False)  # one file: the weights inside, no .data file beside it
    with open(path, "rb+") as f:
        content = f.read()
        slot = onnx_digest_slot(content)
        if slot is None:
            raise UserError(f"the onnx export of epoch {release['epoch']} has no place for its SHA-256: "
                            "nothing was written")
        f.seek(slot)
        f.write(onnx_digest(content, slot).encode())
        f.flush()
        os.fsync(f.fileno())


# ONNX files carry no checksum, and onnxruntime runs flipped weights as any others: the file's SHA-256 is kept in
# its metadata_props, computed with its own 64 hex digits read as zeros, and checked by every load.
def onnx_digest_slot(content: bytes):
    """Where the 64 hex digits of DIGEST_KEY's value lie in an ONNX file's bytes (protobuf: the entry's key, field
    1, then its value, field 2, of length 64); None if it has none, or more than one."""
    key = DIGEST_KEY.encode()
    marker = b"\x0a" + bytes([len(key)]) + key + b"\x12\x40"
    at = content.find(marker)
    if at < 0 or content.find(marker, at + 1) >= 0:
        return None
    return at + len(marker)


def onnx_digest(content: bytes, slot: int) -> str:
    return hashlib.sha256(content[:slot] + b"0" * 64 + content[slot + 64:]).hexdigest()


_WRITERS = {"pt": _write_pt, "pt2": _write_pt2, "onnx": _write_onnx}


# ---- verifying ----------------------------------------------------------------------------------


def _test_images(dataset: str, data_path: Path) -> torch.Tensor:
    """The experiment's test images, uint8 [n, 28, 28]."""
    images_path, labels_path = data.locate(dataset, data_path, splits=("test",))["test"]
    images, _ = data.read_split(images_path, labels_path, len(data.DATASETS[dataset]["classes"]))
    return images


def _checkpoint_log_probabilities(model: Net, spec: dict, images: torch.Tensor) -> torch.Tensor:
    """The checkpoint's own answers, in fp32, normalised as in training (TensorSet.batch)."""
    test_set = data.TensorSet(images, torch.zeros(len(images), dtype=torch.int64), spec["mean"], spec["std"])
    with torch.inference_mode():
        return torch.cat([model(test_set.batch(slice(i, i + VERIFY_BATCH))[0])
                          for i in range(0, len(images), VERIFY_BATCH)])


def _verify_weights(path: Path, model: Net, epoch: int) -> None:
    """Load the written pt release as `predict` would: its weights must be the checkpoint's, bit for bit."""
    loaded = load_release(path)["model"]
    expected = model.state_dict()
    if loaded.keys() != expected.keys() or not all(torch.equal(loaded[k], expected[k]) for k in expected):
        raise UserError(f"the pt export of epoch {epoch} does not hold its checkpoint's weights: nothing was written")


def _verify(path: Path, fmt: str, images: torch.Tensor, expected: torch.Tensor, epoch: int) -> float:
    """Load the written file as `predict` would, run it on the test set, compare with the checkpoint."""
    loaded = open_release(path, fmt)
    try:
        got = torch.cat([loaded.log_probabilities_of(images[i:i + VERIFY_BATCH])
                         for i in range(0, len(images), VERIFY_BATCH)])
    except UserError:  # NaN or infinite answers: its message would name the temporary file
        raise UserError(f"the {fmt} export of epoch {epoch} answers NaN or infinite log-probabilities where its "
                        "checkpoint does not: nothing was written") from None
    if got.shape != expected.shape:
        raise UserError(f"the {fmt} export of epoch {epoch} answers {tuple(got.shape)} for {len(images)} images, "
                        f"not {tuple(expected.shape)}: nothing was written")
    difference = float((got - expected).abs().max()) if len(images) else 0.0
    other_labels = int((got.argmax(1) != expected.argmax(1)).sum())
    if other_labels or not difference <= 1e-3:
        raise UserError(f"the {fmt} export of epoch {epoch} does not match its checkpoint: {other_labels} of "
                        f"{len(images)} test images get another label, largest difference of log-probabilities "
                        f"{difference:.3g}; nothing was written")
    return difference


# ---- loading ------------------------------------------------------------------------------------


@dataclass
class LoadedRelease:
    """A release of any format, ready to run on the CPU in fp32."""

    path: Path
    file_format: str  # pt, pt2 or onnx
    meta: dict  # plain data: classes, input, dataset, epoch, metrics, experiment, created, versions, ...
    forward: Callable  # float32 [N, 1, 28, 28] pixels in [0, 1] -> float32 [N, 10] log-probabilities

    @property
    def classes(self) -> list:
        return self.meta["classes"]

    @property
    def of_digits(self) -> bool:
        """Whether it classifies digits (MNIST's, the sample's), whose images are prepared as MNIST's were; not
        Fashion-MNIST's garments (data.image_as_digit)."""
        return self.meta.get("dataset") != "fashion-mnist"

    def log_probabilities_of(self, digits: torch.Tensor) -> torch.Tensor:
        """uint8 digits [N, 28, 28] (as data.image_as_digit gives them) -> log-probabilities [N, 10]."""
        with torch.inference_mode():
            log_probabilities = self.forward(digits.unsqueeze(1).float().div_(255))
        expected = (len(digits), len(self.classes))
        if not (isinstance(log_probabilities, torch.Tensor) and tuple(log_probabilities.shape) == expected):
            shape = tuple(log_probabilities.shape) if isinstance(log_probabilities, torch.Tensor) else "no tensor"
            raise UserError(f"release {self.path} is not an ignite-mnist release: its model answers {shape} for "
                            f"{len(digits)} image(s), not {expected} log-probabilities")
        if not torch.isfinite(log_probabilities).all():  # NaN weights or a corrupt graph: no answer, not 'nan%'
            raise UserError(f"release {self.path} is corrupt: its model answers NaN or infinite log-probabilities; "
                            "export it again")
        total = torch.logsumexp(log_probabilities.double(), dim=1)  # each row's probabilities sum to 1
        if len(digits) and not bool((total.abs() < 1e-3).all()):
            raise UserError(f"release {self.path} is not an ignite-mnist release: its model's answers are not "
                            f"log-probabilities (their probabilities sum to {float(total.exp().max()):.4g}, not 1)")
        return log_probabilities


def format_of(path: Path) -> str:
    """pt2 and onnx by their suffix; anything else is read as a pt release."""
    return {".pt2": "pt2", ".onnx": "onnx"}.get(Path(path).suffix.lower(), "pt")


def open_release(path: Path, fmt: str = None, threads: int = None) -> LoadedRelease:
    """Load a release file of any format (by default, told by its suffix), checked, as untrusted input.

    threads: torch's CPU threads (for the whole process) for a pt or pt2 release; onnxruntime keeps its own
    choice (it measured best at its default, once kept from busy-waiting)."""
    path = Path(path)
    if not is_file(path):
        raise UserError(f"release {path} does not exist" if not exists(path) else f"release {path} is not a file")
    fmt = fmt or format_of(path)
    if threads and fmt != "onnx":
        torch.set_num_threads(threads)
    return {"pt": _open_pt, "pt2": _open_pt2, "onnx": _open_onnx}[fmt](path)


def load_release(path: Path) -> dict:
    path = Path(path)
    if not is_file(path):
        raise UserError(f"release {path} does not exist" if not exists(path) else f"release {path} is not a file")
    try:
        release = read_checkpoint(path, "cpu", what="release")  # CRCs checked: a flipped byte is refused
    except UserError:
        if _holds_onnx_digest(path):  # our ONNX release, renamed
            raise UserError(f"release {path} is an ONNX release, not torch.save's: give it its own suffix (.onnx)") \
                from None
        raise
    if release.get("format") != FORMAT:
        if {"model", "optimizer", "trainer"} <= set(release):  # a training checkpoint: say how to release it
            raise UserError(f"{path} is a training checkpoint, not a release: make a release of it with "
                            f"`{_export_command(path)}`, and use that")
        raise UserError(f"{path} is not an ignite-mnist release (no format {FORMAT!r})")
    return _checked_metadata(path, release, "pt")


def _holds_onnx_digest(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return onnx_digest_slot(f.read(MAX_ONNX_SNIFF)) is not None
    except OSError:  # (read_checkpoint names what is wrong)
        return False


def _export_command(checkpoint: Path) -> str:
    """The export-release command for a checkpoint at EXPERIMENTS/NAME/checkpoints/checkpoint_E.pt."""
    found = CHECKPOINT_NAME.fullmatch(checkpoint.name)
    for path in (checkpoint, Path(os.path.abspath(checkpoint))):  # as given where that shows the folders
        root = path.parent.parent
        if found and path.parent.name == "checkpoints" and root.name not in ("", ".", ".."):
            return command_line(root.parent, root.name, f"export-release --epoch {int(found.group(1))}")
    return "ignite-mnist -e NAME export-release --epoch E"


def _checked_metadata(path: Path, meta: dict, fmt: str) -> dict:
    """meta, if what predict uses of it is sound (10 class names; an input of 28x28 pixels, its normalisation);
    else a one-line error, rather than an IndexError or NaN output later."""

    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    spec, classes = meta.get("input"), meta.get("classes")
    if not isinstance(classes, list) or len(classes) != 10 or not all(isinstance(c, str) for c in classes):
        problem = "'classes' is not a list of 10 names"
    elif not all(c.isprintable() and c.strip() and len(c) <= 100 for c in classes) or len(set(classes)) != 10:
        problem = "'classes' is not 10 different names of printable characters"  # (escape codes, newlines: output)
    elif not isinstance(spec, dict):
        problem = "lacks 'input'"
    elif not (number(spec.get("mean")) and number(spec.get("std")) and spec["std"] > 0):
        problem = f"'input' has mean {spec.get('mean')!r} and std {spec.get('std')!r}: they must be numbers, std > 0"
    elif (fmt == "pt" and not (spec.get("height") == spec.get("width") == 28 and number(spec.get("scale"))
                               and spec["scale"] > 0)) or (fmt != "pt" and spec.get("shape") != ["N", 1, 28, 28]):
        problem = ("'input' is not of 28x28 pixels" if fmt != "pt" or spec.get("height") != 28 or
                   spec.get("width") != 28 else f"'input' has scale {spec.get('scale')!r}: it must be a number above 0")
    else:
        return meta
    raise UserError(f"release {path} is not an ignite-mnist release (its metadata {problem})")


def _open_pt(path: Path) -> LoadedRelease:
    release = load_release(path)  # torch.load(weights_only=True): a crafted pickle is refused unrun
    model = Net()
    try:
        model.load_state_dict(release["model"])
        spec = release["input"]
        graph = Normalized(model, spec["mean"], spec["std"]).eval()  # x = digits / spec["scale"] (255)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"release {path} holds no model of this architecture "
                        f"({error_text(e, 300, whole=True)})") from None
    meta = {k: v for k, v in release.items() if k != "model"}
    meta["file_format"] = "pt"
    return LoadedRelease(path, "pt", meta, graph)


# What torch.export.save writes (one program, named "model"): nothing else is accepted in a pt2 archive.
_PT2_LAYOUT = re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
                         r"models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_[0-9]+|"
                         r"data/constants/model_constants_config\.json|data/constants/tensor_[0-9]+|"
                         r"data/sample_inputs/model\.pt|extra/[A-Za-z0-9_.-]+")


def _check_pt2_archive(path: Path) -> None:
    """Refuse a pt2 file that torch.export.load would unpickle: torch.export.load reads pickled weights,
    constants and objects, falls back to weights_only=False for sample inputs, and loads AOTInductor's
    compiled code. What torch.export.save writes for a plain program has none of those: raw tensors,
    JSON, and sample inputs that load with weights_only=True. Anything else is refused before loading."""

    def refuse(reason):
        raise UserError(f"release {path} is corrupt or not an ignite-mnist release ({reason})")

    try:
        check_crcs(path)  # torch.export.load does not check them either
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(name.endswith("/data.pkl") for name in names):
                refuse("a torch.save file, not a pt2 archive: a pt release is read from a .pt file")
            roots = {name.split("/", 1)[0] for name in names}
            if len(roots) != 1:
                refuse("not a pt2 archive")
            root = roots.pop() + "/"
            for name in names:
                if not _PT2_LAYOUT.fullmatch(name[len(root):]):
                    refuse(f"unexpected file {name!r} in the archive")
            if archive.read(root + "archive_format").decode().strip() != "pt2":
                refuse("not a pt2 archive")
            for kind in ("weights", "constants"):
                config = json.loads(archive.read(f"{root}data/{kind}/model_{kind}_config.json"))["config"]
                for fqn, entry in config.items():
                    if entry.get("use_pickle") is not False or not re.fullmatch(r"(weight|tensor)_[0-9]+",
                                                                                str(entry.get("path_name"))):
                        refuse(f"{kind} {fqn!r} is stored as a pickle")
            torch.load(io.BytesIO(archive.read(root + "data/sample_inputs/model.pt")), weights_only=True)
    except UserError:
        raise
    except Exception as e:
        refuse(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}".rstrip(": "))


def _metadata(path: Path, text, fmt: str) -> dict:
    try:
        meta = json.loads(text)
    except (TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an ignite-mnist release (no {METADATA_KEY!r} metadata of format {FORMAT!r})")
    return _checked_metadata(path, meta, fmt)


def _open_pt2(path: Path) -> LoadedRelease:
    _check_pt2_archive(path)
    extra = {METADATA_KEY + ".json": ""}
    try:
        module = torch.export.load(path, extra_files=extra).module()
    except Exception as e:
        raise UserError(f"release {path} is corrupt or not an ignite-mnist release ({error_text(e)})") from None
    return LoadedRelease(path, "pt2", _metadata(path, extra[METADATA_KEY + ".json"], "pt2"), module)


def _open_onnx(path: Path) -> LoadedRelease:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"running the ONNX release {path} needs onnxruntime: pip install -e '.[export]'") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting between runs
    corrupt = UserError(f"release {path} is corrupt: its bytes do not have the SHA-256 it was written with "
                        f"(metadata {DIGEST_KEY!r}); export it again")
    try:
        with open(path, "rb") as f:  # (read once: the bytes checked are the bytes run)
            content = f.read()
        if content.startswith(b"PK\x03\x04"):  # what torch.save and torch.export write: a file renamed .onnx
            raise UserError(f"release {path} is a zip archive, as a pt or pt2 release or a checkpoint is, not ONNX: "
                            "give it its own suffix (.pt, .pt2)")
        slot = onnx_digest_slot(content)
        if slot is not None and content[slot:slot + 64].decode("latin-1") != onnx_digest(content, slot):
            raise corrupt  # before anything else is read from it: a flipped byte may be anywhere
        session = onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        properties = session.get_modelmeta().custom_metadata_map
        meta = properties.get(METADATA_KEY)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"release {path} is corrupt or not an ignite-mnist release ({error_text(e)})") from None
    meta = _metadata(path, meta, "onnx")
    if slot is None and (DIGEST_KEY in properties or meta.get("digest")):  # releases before it have neither
        raise corrupt
    input_name = session.get_inputs()[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: x.contiguous().numpy()})[0])

    return LoadedRelease(path, "onnx", meta, forward)


# ---- predict ------------------------------------------------------------------------------------


def answer(release: LoadedRelease, log_probabilities: torch.Tensor, digits: torch.Tensor) -> list:
    """[{label, class, probability, probabilities, blank}] for rows of log-probabilities of `digits`.

    blank: the image had no strokes (one colour), so its label is the model's guess at nothing.
    """
    probabilities = log_probabilities.exp()
    results = []
    for row, digit in zip(probabilities.tolist(), digits):
        label = max(range(len(row)), key=row.__getitem__)
        results.append({"label": label, "class": release.classes[label], "probability": row[label],
                        "probabilities": row, "blank": data.is_blank(digit)})
    return results


def predict(release_path: Path, image_paths: list) -> list:
    """Classify image files with a release of any format: [{path, label, class, probability, blank}], fp32, CPU;
    {path, error} for a file that is not an image that can be read (the others are classified all the same)."""
    release = open_release(release_path)
    digits, errors = {}, {}
    for i, path in enumerate(image_paths):
        try:
            digits[i] = data.image_as_digit(path, digits=release.of_digits)
        except UserError as e:
            errors[i] = str(e)
    if digits:
        stacked = torch.stack(list(digits.values()))
        answers = dict(zip(digits, answer(release, release.log_probabilities_of(stacked), stacked)))
    return [{"path": str(path), "error": errors[i]} if i in errors else
            {"path": str(path), **{k: answers[i][k] for k in ("label", "class", "probability", "blank")}}
            for i, path in enumerate(image_paths)]
