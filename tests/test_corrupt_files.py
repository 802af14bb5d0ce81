"""Files damaged where their format does not notice: bytes flipped inside a zip archive (torch's reader skips
the CRC-32s), a model that answers NaN, malformed release metadata, a disk that fills while a release is
written. Each is one `error:` line, exit 2, and nothing that was there before is changed."""

import json
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch

from conftest import g, invoke, run_cli, snapshot
from ignite_mnist.checkpoints import read_checkpoint
from ignite_mnist.errors import UserError


def flip(path: Path, offset: int = None, length: int = 256) -> None:
    """Invert `length` bytes at `offset` (default: the middle of the file, inside the tensor data), size kept."""
    raw = bytearray(path.read_bytes())
    offset = len(raw) // 2 if offset is None else offset
    raw[offset:offset + length] = bytes(b ^ 0xFF for b in raw[offset:offset + length])
    path.write_bytes(bytes(raw))


def refused(capsys, folder: Path, args, message: str) -> str:
    """Run the CLI in-process: exit 2, one error line that says `message`, no file under folder changed."""
    before = snapshot(folder)
    code, _, err = invoke(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], err
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in err, err
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if not k.endswith("verbose.log")} == \
           {k: v for k, v in before.items() if not k.endswith("verbose.log")}
    return lines[-1]


def restamp_onnx(path: Path) -> Path:
    """Write an ONNX release's SHA-256 anew, as the export does: a release edited after its export (NaN weights,
    bad metadata) then passes the digest check, so that the checks behind it are tested."""
    from ignite_mnist.release import onnx_digest, onnx_digest_slot

    content = path.read_bytes()
    slot = onnx_digest_slot(content)
    path.write_bytes(content[:slot] + onnx_digest(content, slot).encode() + content[slot + 64:])
    return path


def rewrite_pt(source: Path, target: Path, change) -> Path:
    release = torch.load(source, weights_only=True)
    change(release)
    torch.save(release, target)
    return target


# ---- bytes flipped inside a zip archive -----------------------------------------------------------

@pytest.mark.parametrize("command", [["test", "--epoch", "2"], ["export-release", "--epoch", "2"],
                                     ["train", "--max-epochs", "3", "--device", "cpu"]])
def test_bytes_flipped_inside_a_checkpoint_are_refused_and_the_release_kept(copy, capsys, tiny_data, command):
    path = copy / "experiments" / "exp" / "checkpoints" / "checkpoint_2.pt"
    flip(path)
    line = refused(capsys, copy, [*g(copy, data=tiny_data), *command], f"checkpoint {path} is corrupt")
    assert "Bad CRC-32 for file '" in line and "/data/" in line and "move it away" in line
    # export-release: release_epoch_2.pt, there before, is unchanged (refused() compared every file)


def test_a_checkpoint_read_for_its_history_only_has_its_plain_data_checked(copy):
    """mmap=True (info, resume of old checkpoints) skips the tensors, but a silently altered data.pkl is refused."""
    path = copy / "experiments" / "exp" / "checkpoints" / "checkpoint_2.pt"
    assert read_checkpoint(path, "cpu", mmap=True)["history"]["epochs"][-1]["epoch"] == 2
    path.write_bytes(path.read_bytes().replace(b"stopped_early", b"stopped_earlz", 1))  # still a valid pickle
    with pytest.raises(UserError, match=r"Bad CRC-32 for file '[^']*/data.pkl'"):
        read_checkpoint(path, "cpu", mmap=True)


@pytest.mark.parametrize("fmt, why", [("pt", "Bad CRC-32 for file"), ("pt2", "Bad CRC-32 for file"),
                                      ("onnx", "its bytes do not have the SHA-256 it was written with")])
def test_bytes_flipped_inside_a_release_are_refused(releases, tmp_path, capsys, trained, fmt, why):
    path = tmp_path / f"release.{fmt}"
    shutil.copy(releases[fmt], path)
    flip(path)  # inside fc1's weights, for all three: onnxruntime would run them, to another answer
    line = refused(capsys, tmp_path, ["predict", "--release", path, trained / "digit.png"],
                   f"release {path} is corrupt")
    assert why in line


def test_an_onnx_release_whose_digest_changed_is_refused(releases, tmp_path, capsys, trained):
    from ignite_mnist.release import onnx_digest_slot

    path = tmp_path / "release.onnx"
    raw = bytearray(releases["onnx"].read_bytes())
    at = onnx_digest_slot(bytes(raw)) + 10
    raw[at] = ord("0") if raw[at] != ord("0") else ord("1")  # another hex digit: the metadata still reads
    path.write_bytes(bytes(raw))
    refused(capsys, tmp_path, ["predict", "--release", path, trained / "digit.png"],
            f"release {path} is corrupt: its bytes do not have the SHA-256 it was written with")


def test_a_byte_changed_in_an_onnx_releases_metadata_is_named_as_corruption(releases, tmp_path, capsys, trained):
    """Not as metadata of the wrong shape: the digest is checked before anything is read from the file."""
    path = tmp_path / "release.onnx"
    path.write_bytes(releases["onnx"].read_bytes().replace(b'"classes": ["0"', b'"classes": ["O"', 1))
    assert path.read_bytes() != releases["onnx"].read_bytes()
    refused(capsys, tmp_path, ["predict", "--release", path, trained / "digit.png"],
            f"release {path} is corrupt: its bytes do not have the SHA-256 it was written with")


def test_an_onnx_release_made_before_its_digest_still_loads(releases, tmp_path, capsys, trained):
    """ONNX releases written before the digest have neither its entry nor the metadata's "digest": they load.
    One that lost only the entry (its metadata says it had one) is refused."""
    import onnx

    model = onnx.load(str(releases["onnx"]))
    entry = next(p for p in model.metadata_props if p.key == "ignite-mnist")
    meta = json.loads(entry.value)
    del model.metadata_props[[p.key for p in model.metadata_props].index("ignite-mnist.sha256")]
    onnx.save(model, str(tmp_path / "lost.onnx"))
    refused(capsys, tmp_path, ["predict", "--release", tmp_path / "lost.onnx", trained / "digit.png"],
            "its bytes do not have the SHA-256 it was written with")
    entry.value = json.dumps({k: v for k, v in meta.items() if k != "digest"})
    onnx.save(model, str(tmp_path / "old.onnx"))
    code, out, err = invoke(capsys, "predict", "--release", tmp_path / "old.onnx", trained / "digit.png", "--json")
    assert code == 0 and json.loads(out)[0]["label"] in range(10), err


# ---- a model that answers NaN -----------------------------------------------------------------------

def _nan_pt(source: Path, target: Path) -> None:
    rewrite_pt(source, target, lambda r: r["model"]["fc2.bias"].fill_(float("nan")))


def _nan_onnx(source: Path, target: Path) -> None:  # as a release edited after its export, its digest anew
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    bias = next(i for i in model.graph.initializer if i.name.endswith("fc2.bias"))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) * float("nan"), bias.name))
    onnx.save(model, str(target))
    restamp_onnx(target)


@pytest.mark.parametrize("fmt, make", [("pt", _nan_pt), ("onnx", _nan_onnx)])
def test_a_release_that_answers_nan_is_refused_not_printed(releases, tmp_path, capsys, trained, fmt, make):
    path = tmp_path / f"nan.{fmt}"
    make(releases[fmt], path)
    refused(capsys, tmp_path, ["predict", "--release", path, trained / "digit.png"],
            f"release {path} is corrupt: its model answers NaN or infinite log-probabilities")


@pytest.mark.parametrize("answer, problem", [
    (lambda out: out[:1], "its model answers (1, 10) for 2 image(s), not (2, 10) log-probabilities"),
    (lambda out: out[:, :5], "its model answers (2, 5) for 2 image(s), not (2, 10) log-probabilities"),
    (lambda out: out.exp() * 100, "its model's answers are not log-probabilities (their probabilities sum to"),
])
def test_a_release_whose_model_answers_something_else_is_refused(releases, tmp_path, capsys, trained, monkeypatch,
                                                                 answer, problem):
    """A graph of another shape (a hand-made ONNX file, accepted unverified as releases before the digest were):
    named, not answers dropped, an IndexError or a probability of 1e14 %."""
    from ignite_mnist import release

    opened = release.open_release

    def answering_otherwise(*args, **kwargs):
        loaded = opened(*args, **kwargs)
        forward = loaded.forward
        loaded.forward = lambda x: answer(forward(x))
        return loaded

    monkeypatch.setattr(release, "open_release", answering_otherwise)
    refused(capsys, tmp_path, ["predict", "--release", releases["onnx"], trained / "digit.png", trained / "digit.png"],
            f"release {releases['onnx']} is not an ignite-mnist release: {problem}")


# ---- malformed metadata ---------------------------------------------------------------------------

@pytest.mark.parametrize("change, problem", [
    (lambda r: r.update(classes=["0", "1", "2"]), "'classes' is not a list of 10 names"),
    (lambda r: r.update(classes=list(range(10))), "'classes' is not a list of 10 names"),
    (lambda r: r["input"].update(std=0.0), "'input' has mean 0.1307 and std 0.0"),
    (lambda r: r["input"].update(mean=float("nan")), "'input' has mean nan"),
    (lambda r: r["input"].update(height=32), "'input' is not of 28x28 pixels"),
    (lambda r: r["input"].update(scale=0), "'input' has scale 0: it must be a number above 0"),
    (lambda r: r.update(classes=["\x1b[31mred\x1b[0m"] + [str(d) for d in range(1, 10)]),
     "'classes' is not 10 different names of printable characters"),
    (lambda r: r.update(classes=["a"] * 10), "'classes' is not 10 different names of printable characters"),
    (lambda r: r.update(classes=["zero\nnine"] + [str(d) for d in range(1, 10)]),
     "'classes' is not 10 different names of printable characters"),
    (lambda r: r.pop("input"), "lacks 'input'"),
])
def test_malformed_metadata_of_a_pt_release(releases, tmp_path, capsys, trained, change, problem):
    path = rewrite_pt(releases["pt"], tmp_path / "bad.pt", change)
    refused(capsys, tmp_path, ["predict", "--release", path, trained / "digit.png"],
            f"release {path} is not an ignite-mnist release (its metadata {problem}")


def test_a_pt_release_of_another_shape_says_what_does_not_fit(releases, tmp_path, capsys, trained):
    path = rewrite_pt(releases["pt"], tmp_path / "other.pt", lambda r: r["model"].update(
        {"fc2.weight": torch.zeros(5, 128), "fc2.bias": torch.zeros(5)}))
    line = refused(capsys, tmp_path, ["predict", "--release", path, trained / "digit.png"],
                   f"release {path} holds no model of this architecture (Error(s) in loading state_dict for Net: "
                   "size mismatch for fc2.weight: copying a param with shape torch.Size([5, 128])")
    assert line.endswith(" ...)")  # cut at 300 characters
    assert len(line) <= len(f"error: release {path} holds no model of this architecture ()") + 300


def test_malformed_metadata_of_an_onnx_release(releases, tmp_path, capsys, trained):
    import onnx

    model = onnx.load(str(releases["onnx"]))
    entry = next(p for p in model.metadata_props if p.key == "ignite-mnist")
    entry.value = json.dumps({**json.loads(entry.value), "classes": ["zero", "one"]})
    onnx.save(model, str(tmp_path / "bad.onnx"))
    restamp_onnx(tmp_path / "bad.onnx")
    refused(capsys, tmp_path, ["predict", "--release", tmp_path / "bad.onnx", trained / "digit.png"],
            "(its metadata 'classes' is not a list of 10 names)")


# ---- a full disk --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["pt", "pt2"])
def test_a_full_disk_while_writing_a_release_keeps_the_one_before(copy, releases, tiny_data, fmt):
    """Files may not grow beyond 1 MB (RLIMIT_FSIZE: EFBIG, as ENOSPC would come); the release is ~5 MB. In a
    subprocess: torch's zip writer, failing so, used to abort the whole process (pt2)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    folder = copy / "experiments" / "exp" / "releases"
    target = folder / f"release_epoch_2.{fmt}"
    if fmt != "pt":
        shutil.copy(releases[fmt], target)
    before = snapshot(folder)
    r = run_cli(*g(copy, data=tiny_data), "export-release", "--epoch", "2", "--format", fmt, cwd=copy,
                preexec_fn=limit)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: cannot write release {target}: File too large", r.stderr
    assert snapshot(folder) == before  # the release before, intact; no temporary file left


def test_a_diverged_epoch_is_not_exported(copy, capsys):
    """A checkpoint whose weights hold NaN (a diverged training, whole on disk): export says so, writes nothing."""
    path = copy / "experiments" / "exp" / "checkpoints" / "checkpoint_2.pt"
    rewrite_pt(path, path, lambda c: c["model"]["fc2.bias"].fill_(float("nan")))
    refused(capsys, copy, [*g(copy), "export-release", "--epoch", "2"],
            "the weights of epoch 2 are not all finite (NaN or infinite: the training diverged)")
