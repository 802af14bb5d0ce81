"""Every bad input: one clear line, a non-zero exit (2 for usage and input errors), no traceback, and
nothing that existed before is changed (verbose.log only grows: the refusal is logged)."""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import ROOT, g, invoke, make_config, run_cli, snapshot
from ignite_mnist.model import Net


def assert_refused(capsys, folder: Path, args, code: int, message: str):
    """Run the CLI in-process; check exit code, the one error line, and that nothing changed."""
    before = snapshot(folder)
    got, out, err = invoke(capsys, *args)
    lines = err.strip().splitlines()
    assert got == code, err
    assert lines and lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, err
    assert message in lines[-1], lines[-1]
    assert "Traceback" not in err
    after = snapshot(folder)
    for name in set(before) | set(after):
        if name.endswith("verbose.log"):
            assert after[name].startswith(before[name]), "the log only grows"
        else:
            assert before.get(name) == after.get(name), f"{name} changed"
    return lines[-1]


# ---- names, experiments, epochs -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "../escape", "with space", "tab\there", "ünïcode", "x" * 101,
                                  "star*", "semi;colon", ".hidden"])
def test_bad_experiment_names_are_refused_and_stay_inside(copy, capsys, tiny_data, name):
    line = assert_refused(capsys, copy, [*g(copy, name, tiny_data), "init", "--config-path", make_config(copy.parent)],
                          2, "invalid experiment name")
    assert "letters, digits" in line
    assert not (copy / "escape").exists() and not (copy.parent / "escape").exists()


@pytest.mark.parametrize("command", [["info"], ["train", "--max-epochs", "1"], ["test", "--epoch", "1"],
                                     ["export-release"], ["tensorboard"]])
def test_unknown_experiment(copy, capsys, command):
    assert_refused(capsys, copy, [*g(copy, "nope"), *command], 2,
                   f"no experiment 'nope' in {copy / 'experiments'}: create it with `init`; experiments there: exp")


@pytest.mark.parametrize("command, why", [
    (["list"], "it lists every experiment in the experiments folder (info shows one)"),
    (["predict", "--release", "r.pt", "digit.png"], "it runs the release file given by --release"),
    (["serve", "--release", "r.pt"], "it runs the release file given by --release"),
    (["sweep", "--name", "s", "--status"], "its trials are experiments named after --name"),
])
def test_commands_that_take_no_experiment_refuse_one_rather_than_ignore_it(copy, capsys, command, why):
    line = assert_refused(capsys, copy, [*g(copy), *command], 2, f"{command[0]} takes no --experiment-name/-e ('exp')")
    assert why in line
    for option in ("-e", "--experiment-name"):  # given after the command: not "put it before the command" either
        line = assert_refused(capsys, copy, [command[0], option, "exp", *command[1:]], 2,
                              f"{command[0]} takes no --experiment-name/-e: {why}")


@pytest.mark.parametrize("value", ["nan", "-1", "10001", "inf"])
def test_serve_max_wait_ms_out_of_range_is_named(copy, capsys, value):
    assert_refused(capsys, copy, ["serve", "--release", "experiments/exp/releases/release_epoch_2.pt",
                                  "--max-wait-ms", value], 2, "--max-wait-ms takes milliseconds from 0 to 10000, not")


def test_verbose_adds_the_traceback_before_the_error_line(copy, capsys):
    code, _, err = invoke(capsys, "--verbose", *g(copy, "nope"), "info")
    assert code == 2 and "Traceback (most recent call last)" in err and "UserError" in err
    assert err.strip().splitlines()[-1].startswith("error: no experiment 'nope'")


def test_no_experiment_name(copy, capsys):
    assert_refused(capsys, copy, ["--experiments-path", copy / "experiments", "info"], 2,
                   "this command needs an experiment: pass --experiment-name NAME")


def test_init_of_an_existing_experiment_leaves_it_untouched(copy, capsys, tiny_data):
    assert_refused(capsys, copy, [*g(copy, "exp", tiny_data), "init", "--config-path", make_config(copy.parent)], 2,
                   f"experiment 'exp' already exists in {copy / 'experiments'}")


@pytest.mark.parametrize("epoch", ["3", "99"])
@pytest.mark.parametrize("command", ["test", "export-release"])
def test_epochs_that_do_not_exist_are_named_with_those_that_do(copy, capsys, command, epoch):
    assert_refused(capsys, copy, [*g(copy), command, "--epoch", epoch], 2,
                   f"experiment exp has no checkpoint of epoch {epoch}; epochs with a checkpoint: 1-2")


@pytest.mark.parametrize("epoch", ["0", "-1"])
@pytest.mark.parametrize("command", ["test", "export-release"])
def test_epochs_below_1_are_no_epochs(copy, capsys, command, epoch):
    assert_refused(capsys, copy, [*g(copy), command, "--epoch", epoch], 2,
                   f"--epoch takes an epoch number from 1 (epochs count from 1), best or last, not {epoch}")


def test_info_lists_release_files_only(copy, capsys):
    (copy / "experiments" / "exp" / "releases" / "release_epoch_1.onnx").mkdir()  # a folder of that name
    code, out, _ = invoke(capsys, *g(copy), "info", "--json")
    assert code == 0 and [r["format"] for r in json.loads(out)["releases"]] == ["pt"], out


def test_test_and_release_before_any_training(copy, capsys, tiny_data):
    assert invoke(capsys, *g(copy, "fresh", tiny_data), "init", "--config-path", make_config(copy.parent))[0] == 0
    for command in (["test", "--epoch", "1"], ["export-release"]):
        assert_refused(capsys, copy, [*g(copy, "fresh"), *command], 2, "has no checkpoints yet: run `train` first")


@pytest.mark.parametrize("args, message", [
    (["--max-epochs", "1"], "experiment exp is already at epoch 2: --max-epochs is the epoch to train until, so it "
                            "must be at least 2"),
    (["--max-epochs", "0"], "--max-epochs must be at least 1, not 0"),
    (["--max-epochs", "3", "--nproc-per-node", "0"], "--nproc-per-node must be at least 1, not 0"),
    (["--max-epochs", "3", "--nproc-per-node", "3"], "training.batch_size 32 is the global batch: it must divide among 3"),
    (["--max-epochs", "3", "--device", "meta"], "device 'meta' is not supported"),
    (["--max-epochs", "3", "--device", "tpu"], "unknown device 'tpu'"),
    (["--max-epochs", "3", "--device", "bogus"], "unknown device 'bogus'"),
    (["--max-epochs", "3", "--backend", "nccl", "--nproc-per-node", "2", "--device", "cpu"],
     "backend nccl runs on CUDA GPUs only"),
    (["--max-epochs", "3", "--backend", "nccl", "--device", "cpu"], "backend nccl runs on CUDA GPUs only"),
])
def test_bad_train_requests(copy, capsys, args, message):
    assert_refused(capsys, copy, [*g(copy), "train", *args], 2, message)


def test_a_stray_damaged_last_checkpoint_is_named_not_taken_for_the_epoch_trained_to(copy, capsys):
    (copy / "experiments" / "exp" / "checkpoints" / "checkpoint_99.pt").write_bytes(b"garbage")
    line = assert_refused(capsys, copy, [*g(copy), "train", "--max-epochs", "7"], 2, "checkpoint_99.pt is corrupt")
    assert "already at epoch" not in line  # (it had said: already at epoch 99, so --max-epochs at least 99)
    shutil.copy(copy / "experiments" / "exp" / "checkpoints" / "checkpoint_2.pt",
                copy / "experiments" / "exp" / "checkpoints" / "checkpoint_99.pt")  # whole, but of epoch 2
    assert_refused(capsys, copy, [*g(copy), "train", "--max-epochs", "7"], 2, "holds epoch 2, not 99: move it away")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
@pytest.mark.parametrize("command", [["train", "--max-epochs", "3"], ["test", "--epoch", "2"]])
def test_devices_this_machine_does_not_have(copy, capsys, command, device):
    if torch.cuda.is_available() and (device != "cuda:7" or torch.cuda.device_count() > 7):
        pytest.skip("this machine has that device")
    message = (f"device {device} is not available: this machine has no usable CUDA GPU; use --device cpu"
               if not torch.cuda.is_available() else f"device {device} does not exist")
    assert_refused(capsys, copy, [*g(copy), *command, "--device", device], 2, message)


@pytest.mark.parametrize("args, message", [
    (["train"], "Missing option '--max-epochs'"),
    (["train", "--max-epochs", "two"], "Invalid value for '--max-epochs'"),
    (["train", "--max-epochs", "3", "--log-period", "0"], "Invalid value for '--log-period'"),
    (["train", "--max-epochs", "3", "--backend", "mpi"], "'mpi' is not one of"),
    (["test"], "Missing option '--epoch'"),
    (["trian"], "No such command 'trian'"),
    (["info", "--bogus"], "No such option: --bogus"),
    (["info", "--data-path", "data"], "--data-path is an option of ignite-mnist itself: put it before the command"),
    (["test", "--epoch", "1", "--verbose"], "--verbose is an option of ignite-mnist itself: put it before"),
])
def test_usage_errors_are_one_line(copy, capsys, args, message):
    assert_refused(capsys, copy, [*g(copy), *args], 2, message)


# ---- files that are not what they should be -----------------------------------------------------

def _other_model_checkpoint(path):
    model = Net()
    model.fc2 = torch.nn.Linear(128, 5)  # another network: same keys, other shapes
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"] = model.state_dict()
    torch.save(checkpoint, path)


CORRUPTIONS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:1000]),
    "random bytes": lambda p: p.write_bytes(os.urandom(5000)),
    "empty": lambda p: p.write_bytes(b""),
    "another model": _other_model_checkpoint,
    "not a checkpoint": lambda p: torch.save({"weights": torch.zeros(3)}, p),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("command", [["train", "--max-epochs", "3", "--device", "cpu"], ["test", "--epoch", "2"],
                                     ["export-release", "--epoch", "2"]])
def test_a_corrupt_checkpoint_is_named_and_training_does_not_start_over(copy, capsys, tiny_data, corruption, command):
    path = copy / "experiments" / "exp" / "checkpoints" / "checkpoint_2.pt"
    CORRUPTIONS[corruption](path)
    line = assert_refused(capsys, copy, [*g(copy, data=tiny_data), *command], 2, f"checkpoint {path}")
    assert any(m in line for m in ("is corrupt or not an ignite-mnist checkpoint", "does not fit this experiment",
                                   "holds no model of this architecture", "lacks "))
    if corruption in ("truncated", "random bytes", "empty"):  # not torch's advice to load it unsafely
        assert "(not a zip archive, as torch.save writes)" in line and "weights_only" not in line
    assert not (copy / "experiments" / "exp" / "checkpoints" / "checkpoint_3.pt").exists()


def _owned_by_another_experiment(path):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["owner"] = {"name": "other", "created": "2026-01-01T00:00:00+00:00"}
    torch.save(checkpoint, path)


@pytest.mark.parametrize("command", [["train", "--max-epochs", "3", "--device", "cpu"], ["test", "--epoch", "2"],
                                     ["export-release", "--epoch", "2"], ["info"]])
@pytest.mark.parametrize("case", ["renamed", "another experiment's"])
def test_a_checkpoint_that_is_not_what_its_name_says_is_refused(copy, capsys, tiny_data, command, case):
    """Epoch 1's checkpoint renamed to epoch 2's, or epoch 2's copied in from another experiment: tested,
    exported, resumed or listed as this experiment's epoch 2, it would report another model's figures."""
    checkpoints = copy / "experiments" / "exp" / "checkpoints"
    if case == "renamed":
        shutil.copy(checkpoints / "checkpoint_1.pt", checkpoints / "checkpoint_2.pt")
        message = f"checkpoint {checkpoints / 'checkpoint_2.pt'} holds epoch 1, not 2: move it away"
    else:
        _owned_by_another_experiment(checkpoints / "checkpoint_2.pt")
        message = (f"checkpoint {checkpoints / 'checkpoint_2.pt'} belongs to another experiment ('other', created "
                   "2026-01-01T00:00:00+00:00), not to this one ('exp', created ")
    if command == ["info"]:  # info reads metrics.json; without it, the last checkpoint's history
        (copy / "experiments" / "exp" / "metrics.json").unlink()
    assert_refused(capsys, copy, [*g(copy, data=tiny_data), *command], 2, message)


def test_a_renamed_experiment_folder_keeps_its_checkpoints(copy, capsys, tiny_data):
    """A checkpoint's owner is the name init gave (experiment.json's), which travels with the folder."""
    (copy / "experiments" / "exp").rename(copy / "experiments" / "renamed")
    code, out, err = invoke(capsys, *g(copy, "renamed", data=tiny_data), "test", "--epoch", "2", "--json")
    assert code == 0 and json.loads(out)["epoch"] == 2, err


def test_a_checkpoint_saved_before_checkpoints_named_their_experiment_is_read(copy, capsys, tiny_data):
    path = copy / "experiments" / "exp" / "checkpoints" / "checkpoint_2.pt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["owner"]
    torch.save(checkpoint, path)
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), "test", "--epoch", "2", "--json")
    assert code == 0 and json.loads(out)["epoch"] == 2, err
    code, _, err = invoke(capsys, *g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu")
    assert code == 0, err
    assert torch.load(path.with_name("checkpoint_3.pt"), weights_only=True)["owner"]["name"] == "exp"


def test_a_file_in_place_of_the_checkpoints_folder_is_named(copy, capsys, tiny_data):
    folder = copy / "experiments" / "exp" / "checkpoints"
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    for command in (["test", "--epoch", "1"], ["info"], ["export-release"]):
        assert_refused(capsys, copy, [*g(copy, data=tiny_data), *command], 2,
                       f"{folder} is not a folder: the experiment keeps its checkpoints there; move it away")


def test_info_tells_a_checkpoint_deleted_by_hand_from_one_removed_by_retention(copy, capsys):
    (copy / "experiments" / "exp" / "checkpoints" / "checkpoint_1.pt").unlink()
    code, out, err = invoke(capsys, *g(copy), "info")
    assert code == 0, err
    assert "epoch 1: checkpoint missing (retention keeps it: it was deleted or moved away)" in out
    assert "removed by retention" not in out


def test_info_reports_a_corrupt_checkpoint_and_goes_on(copy, capsys):
    (copy / "experiments" / "exp" / "checkpoints" / "checkpoint_1.pt").write_bytes(b"junk")
    code, out, err = invoke(capsys, *g(copy), "info")
    assert code == 0 and "epoch 1:" in out and "is corrupt or not an ignite-mnist checkpoint" in out
    assert "  epoch 2" in out and "test accuracy" in out


@pytest.mark.parametrize("file, content, message", [
    ("experiment.json", "{oops", "is not valid JSON: Expecting property name"),
    ("experiment.json", '{"seed": 1}', "is malformed: it needs 'config' and 'seed'"),
    ("experiment.json", lambda text: text.replace('"batch_size": 32', '"batch_size": "many"'), "the config stored in"),
    ("experiment.json", lambda text: re.sub(r'"data_path": "[^"]*"', '"data_path": 7', text),
     "is malformed: its data_path must be a folder's path, not 7"),
    ("experiment.json", lambda text: re.sub(r'"test": "[0-9a-f]{64}"', '"test": null', text),
     "is malformed: its data_digests must map 'train' and 'test' to SHA-256 digests, not {\"train\": "),
    ("split.json", "[1, 2]", "is malformed: it needs 'train' and 'validation' lists"),
    ("split.json", '{"train": [1, 2', "is not valid JSON"),
    ("split.json", lambda text: json.dumps((lambda split: {"train": [split["validation"][0], *split["train"][1:]],
                                                           "validation": [split["train"][0], *split["validation"][1:]]})(
        json.loads(text))), "is damaged: its indexes are not those `init` drew (their SHA-256 differs from "
                            "experiment.json's)"),  # one training image and one validation image swapped by hand
])
def test_corrupt_experiment_files(copy, capsys, tiny_data, file, content, message):
    path = copy / "experiments" / "exp" / file
    if callable(content):  # the file edited by hand into something invalid
        content = content(path.read_text())
        assert content != path.read_text()
    path.write_text(content)
    assert_refused(capsys, copy, [*g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu"], 2, message)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes((d / "train-images-idx3-ubyte.gz").read_bytes()[:500]),
     "train-images-idx3-ubyte.gz is truncated or corrupt"),
    (lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage"), "t10k-labels-idx1-ubyte.gz is truncated"),
    (lambda d: shutil.copy(d / "t10k-labels-idx1-ubyte.gz", d / "t10k-images-idx3-ubyte.gz"), "holds labels, not images"),
])
def test_broken_data_files(copy, capsys, tiny_data, breakage, message):
    data = copy / "data"
    shutil.copytree(tiny_data, data)
    breakage(data)
    for command in (["train", "--max-epochs", "3", "--device", "cpu"], ["test", "--epoch", "2"]):
        if command[0] == "test" and "t10k" not in message and "holds labels" not in message:
            assert invoke(capsys, *g(copy, data=data), *command)[0] == 0  # test reads the t10k files alone
            continue
        assert_refused(capsys, copy, [*g(copy, data=data), *command], 2, message)


def test_a_file_given_as_the_data_folder_is_named_as_such(copy, capsys, tiny_data):
    image_file = tiny_data / "train-images-idx3-ubyte.gz"
    for command in (["test", "--epoch", "2"], ["-e", "new", "init", "--config-path", make_config(copy)]):
        options = [*g(copy, data=image_file)] if command[0] == "test" else \
            ["--experiments-path", copy / "experiments", "--data-path", image_file]
        assert_refused(capsys, copy, [*options, *command], 2,
                       f"--data-path {image_file} is not a folder: name the folder that holds the IDX files")


def test_missing_dataset_offline(copy, capsys, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    line = assert_refused(capsys, copy, [*g(copy, data=copy / "no-data" / "x" / "y"), "train", "--max-epochs", "3",
                                         "--device", "cpu"], 2, "mnist is not in")
    assert "mnist-sample" not in line  # the experiment's dataset is set: no advice to take another
    assert not (copy / "no-data").exists()  # the failed download leaves no empty folders behind, parents included


def test_a_failed_download_keeps_what_the_data_folder_held(tmp_path, monkeypatch):
    from ignite_mnist import data
    from ignite_mnist.errors import UserError

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("mine")

    def download_half(self, *args, **kwargs):  # as a download cut off after its first file
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", download_half)
    with pytest.raises(UserError, match="could not be downloaded"):
        data.locate("mnist", tmp_path / "data")
    assert sorted(p.name for p in raw.iterdir()) == ["notes.txt"] and (raw / "notes.txt").read_text() == "mine"


# ---- predict ------------------------------------------------------------------------------------

@pytest.mark.parametrize("release, image, message", [
    ("missing.pt", "digit.png", "release missing.pt does not exist"),
    ("a-directory", "digit.png", "release a-directory is not a file"),
    ("experiments/exp/checkpoints/checkpoint_1.pt", "digit.png", "experiments/exp/checkpoints/checkpoint_1.pt is a "
     "training checkpoint, not a release: make a release of it with `ignite-mnist -e exp export-release --epoch 1`, "
     "and use that"),
    ("experiments/exp/metrics.json", "digit.png", "is corrupt or not an ignite-mnist release"),
    ("not-an-image.png", "digit.png", "release not-an-image.png is corrupt or not an ignite-mnist release "
     "(not a zip archive, as torch.save writes)"),
    ("experiments/exp/releases/release_epoch_2.pt", "not-an-image.png", "not-an-image.png is not an image file"),
    ("experiments/exp/releases/release_epoch_2.pt", "empty.png", "empty.png is not an image file"),
    ("experiments/exp/releases/release_epoch_2.pt", "a-directory", "a-directory is a directory, not an image file"),
    ("experiments/exp/releases/release_epoch_2.pt", "nothing.png", "nothing.png does not exist"),
])
def test_bad_predict_inputs(copy, capsys, release, image, message):
    assert_refused(capsys, copy, ["predict", "--release", release, "digit.png", image], 2, message)


def test_predict_classifies_the_images_it_can_read_and_names_each_one_it_cannot(copy, capsys):
    """One bad file among many: the others are classified, each bad one has its line (the first had stopped it
    all, naming only itself), exit 2; --json gives {path, error} in its place."""
    release = "experiments/exp/releases/release_epoch_2.pt"
    (copy / "text.png").write_text("hello")
    (copy / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # a PNG's signature, then junk
    files = ["digit.png", "text.png", "digit.png", "broken.png", "nothing.png"]
    code, out, err = invoke(capsys, "predict", "--release", release, *files)
    assert code == 2 and [line.split(":")[0] for line in out.splitlines()] == ["digit.png", "digit.png"], out
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), err
    assert lines[0] == "error: text.png is not an image file that can be read (no image format recognised)"
    assert lines[1].startswith("error: broken.png is not an image file that can be read (") and "Error" in lines[1]
    assert lines[2] == "error: nothing.png does not exist"
    code, out, err = invoke(capsys, "predict", "--release", release, *files, "--json")
    results = json.loads(out)
    assert code == 2 and [sorted(r) for r in results[:2]] == [["blank", "class", "label", "path", "probability"],
                                                              ["error", "path"]], out
    assert results[4] == {"path": "nothing.png", "error": "nothing.png does not exist"}


def test_predict_needs_images(copy, capsys):
    assert_refused(capsys, copy, ["predict", "--release", "experiments/exp/releases/release_epoch_2.pt"], 2,
                   "Missing argument")


# ---- a folder that cannot be written ------------------------------------------------------------

@pytest.fixture
def immutable(copy):
    """Make a folder unwritable even for root (chattr +i), and writable again afterwards."""
    made = []

    def make(path):
        if subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available on this file system")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-R", "-i", str(path)])


def test_read_only_experiments_folder(copy, capsys, tiny_data, immutable):
    immutable(copy / "experiments")
    assert_refused(capsys, copy, [*g(copy, "new", tiny_data), "init", "--config-path", make_config(copy.parent)], 2,
                   f"cannot create the experiment in {copy / 'experiments'}")
    for command in (["train", "--max-epochs", "3", "--device", "cpu"], ["export-release"]):
        assert_refused(capsys, copy, [*g(copy, data=tiny_data), *command], 2, "cannot write")
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), "test", "--epoch", "2")  # testing only reads
    assert code == 0 and "test of epoch 2: accuracy" in out + err, err
    assert f"cannot write {copy / 'experiments' / 'exp' / 'verbose.log'} (Operation not permitted)" in err, err


def test_a_checkpoints_folder_that_cannot_be_written_is_named_before_an_epoch_is_trained(copy, capsys, tiny_data,
                                                                                          immutable):
    checkpoints = copy / "experiments" / "exp" / "checkpoints"
    immutable(checkpoints)
    line = assert_refused(capsys, copy, [*g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu"], 2,
                          f"cannot write in {checkpoints}: Operation not permitted")
    assert line == f"error: cannot write in {checkpoints}: Operation not permitted"


def test_a_full_disk_while_saving_a_checkpoint(copy, tiny_data):
    """Files may not grow beyond 1 MB (RLIMIT_FSIZE: EFBIG, as ENOSPC would come): the 14 MB checkpoint fails."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    before = snapshot(copy / "experiments" / "exp" / "checkpoints")
    r = run_cli(*g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu", cwd=copy, preexec_fn=limit)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write the checkpoint of epoch 3 in") and "(File too large)" in last, last
    assert "the checkpoints before it are intact" in last and "Traceback" not in r.stderr
    assert snapshot(copy / "experiments" / "exp" / "checkpoints") == before  # no partial file either


# ---- interruptions and ports outside training ---------------------------------------------------

def test_ctrl_c_outside_training_says_interrupted(copy, capsys, monkeypatch):
    from ignite_mnist.experiment import Experiment

    def interrupted(self):  # as a Ctrl-C while `info` reads the experiment
        raise KeyboardInterrupt

    monkeypatch.setattr(Experiment, "history", interrupted)
    assert_refused(capsys, copy, [*g(copy), "info"], 130, "interrupted")


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_tensorboard_ports_out_of_range(copy, capsys, port):
    assert_refused(capsys, copy, [*g(copy), "tensorboard", "--port", port], 2, "--port must be between 1 and 65535")
    (copy / "experiments" / "broken").mkdir()  # left out, with a line of its own: not before a bad port's error
    (copy / "experiments" / "broken" / "experiment.json").write_text("{oops")
    code, _, err = invoke(capsys, "--experiments-path", copy / "experiments", "tensorboard", "--port", port)
    assert code == 2 and err.strip().splitlines() == [f"error: --port must be between 1 and 65535, not {port}"], err


def test_tensorboard_on_a_busy_port(copy, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_refused(capsys, copy, [*g(copy), "tensorboard", "--port", str(port)], 2,
                       f"cannot serve TensorBoard on port {port}")


def test_json_output_is_strict_json_even_for_a_diverged_training(copy, capsys):
    """A NaN or infinite metric (a diverged loss) is null in --json: Python's own json.loads would take NaN, so
    the output is parsed here as strict JSON parsers do."""
    import json

    from ignite_mnist.cli import json_text

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    assert strict(json_text({"loss": float("nan"), "values": [float("inf"), 1.5, (float("-inf"),)]})) == \
        {"loss": None, "values": [None, 1.5, [None]]}
    metrics = copy / "experiments" / "exp" / "metrics.json"
    history = json.loads(metrics.read_text())
    history["epochs"][0]["train_loss"] = float("nan")
    metrics.write_text(json.dumps(history))
    code, out, err = invoke(capsys, *g(copy), "info", "--json")
    assert code == 0, err
    assert strict(out)["epochs"][0]["train_loss"] is None


def test_a_full_disk_when_a_resumed_run_first_writes_metrics(copy, capsys, tiny_data, monkeypatch):
    import errno

    from ignite_mnist.experiment import Experiment

    def full_disk(self, history):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Experiment, "publish_history", full_disk)
    assert_refused(capsys, copy, [*g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu"], 2,
                   "or apply retention after epoch 2 (No space left on device); the checkpoints are intact")


def test_more_processes_than_cores_are_refused(copy, capsys, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # as on a 2-core machine, whatever this one has
    assert_refused(capsys, copy, [*g(copy), "train", "--max-epochs", "3", "--nproc-per-node", "4", "--device", "cpu"],
                   2, "--nproc-per-node 4 is more than the 2 CPU cores this process may use")


@pytest.mark.parametrize("command", [["train", "--max-epochs", "3"], ["test", "--epoch", "2"]])
def test_a_cpu_other_than_cpu_is_refused(copy, capsys, command):
    assert_refused(capsys, copy, [*g(copy), *command, "--device", "cpu:1"], 2,
                   "device cpu:1 does not exist: the CPU is one device, cpu")


def test_names_taken_by_what_is_not_an_experiment_are_named_as_such(workdir, capsys, tiny_data):
    experiments = workdir / "experiments"
    (experiments / "empty").mkdir(parents=True)
    (experiments / "afile").write_text("notes\n")
    (experiments / "dangling").symlink_to(workdir / "nowhere")
    config = make_config(workdir)
    for name, what in (("empty", "a folder that holds no experiment.json"), ("afile", "a file"),
                       ("dangling", "a link to nothing")):
        message = f"{experiments / name} is {what}, not an experiment: pick another name, or move it away"
        assert_refused(capsys, workdir, [*g(workdir, name, tiny_data), "info"], 2, message)
        assert_refused(capsys, workdir, [*g(workdir, name, tiny_data), "init", "--config-path", config], 2, message)
    (workdir / "a-file").write_text("not a folder\n")
    for args in (["list"], ["-e", "x", "info"], ["-e", "x", "init", "--config-path", config]):
        assert_refused(capsys, workdir, ["--experiments-path", workdir / "a-file", "--data-path", tiny_data, *args], 2,
                       f"--experiments-path {workdir / 'a-file'} is not a folder: name the folder that holds the experiments")


# ---- files of odd kinds, sizes and depths; names too long ----------------------------------------

def test_json_nested_too_deeply_is_refused_and_lists_as_broken(copy, capsys, tiny_data):
    deep = copy / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # 200 KB, under the size cap: Python's parser recurses
    assert_refused(capsys, copy, [*g(copy, "new", tiny_data), "init", "--config-path", deep], 2,
                   f"config {deep} is not JSON that ignite-mnist reads: it is nested too deeply")
    assert_refused(capsys, copy, [*g(copy, "new", tiny_data), "init", "--set", "training.lr=" + "[" * 5000 + "]" * 5000],
                   2, "--set training.lr: the value is nested too deeply")
    shutil.copytree(copy / "experiments" / "exp", copy / "experiments" / "deep")
    shutil.copy(deep, copy / "experiments" / "deep" / "experiment.json")
    code, out, err = invoke(capsys, "--experiments-path", copy / "experiments", "list")
    assert code == 0, err
    assert "exp  " in out and "deep: broken: experiment file" in out and "nested too deeply" in out


@pytest.mark.parametrize("where", ["experiment.json", "split.json", "metrics.json", "checkpoints/checkpoint_2.pt"])
def test_a_pipe_in_place_of_an_experiment_file_is_refused_not_waited_on(copy, tiny_data, where):
    path = copy / "experiments" / "exp" / where
    path.unlink()
    os.mkfifo(path)
    if where == "metrics.json":  # not needed: read from the last checkpoint instead
        r = run_cli(*g(copy, data=tiny_data), "info", timeout=60)
        assert r.returncode == 0 and "epoch 2 (best)" in r.stdout, r.stderr
        return
    command = ["test", "--epoch", "2"] if where.startswith("checkpoints") else ["train", "--max-epochs", "3", "--device", "cpu"]
    r = run_cli(*g(copy, data=tiny_data), *command, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert f"{path.relative_to(copy)}" in r.stderr and "not a regular file" in r.stderr, r.stderr
    assert not (copy / "experiments" / "exp" / "checkpoints" / "checkpoint_3.pt").exists()


@pytest.mark.parametrize("seed", ["-5", "4294967296", "true", "1.5"])
def test_a_seed_edited_out_of_range_is_refused_naming_the_file(copy, capsys, seed):
    path = copy / "experiments" / "exp" / "experiment.json"
    path.write_text(re.sub(r'"seed": [0-9]+', f'"seed": {seed}', path.read_text()))
    line = assert_refused(capsys, copy, [*g(copy), "info"], 2, f"experiment file {path}")
    assert "'config' and 'seed'" in line if seed == "1.5" else f"its seed must be between 0 and 2**32 - 1, not {seed}" in line


def test_names_too_long_for_the_file_system_are_one_line(copy, capsys):
    long = "y" * 300
    assert_refused(capsys, copy, ["--experiments-path", long, "list"], 2, f"cannot use {long}: File name too long")
    assert_refused(capsys, copy, ["predict", "--release", "experiments/exp/releases/release_epoch_2.pt", f"{long}.png"],
                   2, "File name too long")


def test_compile_optimizer_without_a_cpp_compiler_is_set_aside_with_one_line(copy, capsys, tiny_data, monkeypatch):
    from torch._inductor import cpp_builder, exc

    def no_compiler():
        raise exc.InvalidCxxCompiler()

    def never(*args, **kwargs):
        raise AssertionError("torch.compile called without a compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    monkeypatch.setattr(torch, "compile", never)
    config = copy / "experiments" / "exp" / "experiment.json"
    config.write_text(config.read_text().replace('"compile_optimizer": false', '"compile_optimizer": true'))
    assert '"compile_optimizer": true' in config.read_text()
    code, _, err = invoke(capsys, *g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "training.compile_optimizer" in line]
    assert len(warnings) == 1 and "set aside: torch.compile needs a C++ compiler, and none was found" in warnings[0]
    assert "install g++" in warnings[0] and "Traceback" not in err
    assert (copy / "experiments" / "exp" / "checkpoints" / "checkpoint_3.pt").is_file()


def test_compile_optimizer_failing_to_compile_is_set_aside_with_one_line(copy, capsys, tiny_data, monkeypatch):
    from torch._inductor.exc import InductorError

    def broken_compiler(fn):  # as inductor fails when the C++ compiler found is not one (CXX=/bin/echo)
        def run(*args, **kwargs):
            raise InductorError(IndexError("list index out of range"), None)
        return run

    monkeypatch.setattr(torch, "compile", broken_compiler)
    config = copy / "experiments" / "exp" / "experiment.json"
    config.write_text(config.read_text().replace('"compile_optimizer": false', '"compile_optimizer": true'))
    code, _, err = invoke(capsys, *g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu")
    assert code == 0 and "Traceback" not in err, err
    warnings = [line for line in err.splitlines() if "training.compile_optimizer" in line]
    assert warnings == ["training.compile_optimizer set aside: torch.compile could not compile Adadelta's "
                        "step (IndexError: list index out of range); it runs uncompiled"], err
    checkpoint = torch.load(copy / "experiments" / "exp" / "checkpoints" / "checkpoint_3.pt", weights_only=True)
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.7 ** 3)  # StepLR went on
    assert checkpoint["optimizer"]["state"][0]["step"] > 0  # the uncompiled step updated the weights


def test_text_the_console_cannot_encode_is_escaped_and_path_bytes_written_back():
    from ignite_mnist.experiment import TEXT_AS_GIVEN

    assert "a é b".encode("ascii", TEXT_AS_GIVEN) == b"a \\xe9 b"  # a character the locale lacks: escaped
    assert "/tmp/\udcc3\udcbc/x".encode("ascii", TEXT_AS_GIVEN) == "/tmp/ü/x".encode()  # a path's bytes: as they were
    assert "é \udcff".encode("utf-8", TEXT_AS_GIVEN) == b"\xc3\xa9 \xff"


def test_a_process_that_only_sets_up_logging_prints_path_bytes_as_they_are():
    # a rank that train spawns never runs the CLI's main: its console is made to print any text by setup_logging
    script = ("from ignite_mnist.experiment import log, setup_logging\n"
              "setup_logging(None)\n"
              "log.info('in /tmp/\\udcc3\\udcbc/x, a \\u00e9')\n"
              "print('/tmp/\\udcff', flush=True)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C", "PYTHONIOENCODING": ""})
    assert r.returncode == 0, r.stderr
    assert r.stderr == "in /tmp/ü/x, a ".encode() + b"\\xe9\n"  # the path's bytes; a character ASCII lacks, escaped
    assert r.stdout == b"/tmp/\xff\n"  # stdout (strict by default in a C locale) too


@pytest.mark.parametrize("name", ["exp-ü", "exp-\udcff"])  # UTF-8 read in a C locale; a name that is not UTF-8
def test_paths_the_locale_cannot_encode_are_printed_and_logged_as_their_bytes(tmp_path, tiny_data, name):
    folder = os.fsencode(tmp_path / name)
    r = subprocess.run([sys.executable, "-m", "ignite_mnist", "--experiments-path", folder, "--data-path",
                        os.fsencode(tiny_data), "-e", "x", "init"], capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C", "PYTHONIOENCODING": ""})
    assert r.returncode == 0 and r.stderr.count(b"\n") == 1, r.stderr  # not logging's traceback
    assert r.stderr.startswith(b"created experiment x in " + folder + b"/x: ")
    log = (Path(os.fsdecode(folder)) / "x" / "verbose.log").read_bytes()
    assert b"created experiment x in " + folder + b"/x: " in log


def test_a_home_matplotlib_cannot_write_in_leaves_the_console_to_the_report(copy, tiny_data):
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    r = subprocess.run([sys.executable, "-m", "ignite_mnist", *map(str, g(copy, data=tiny_data)), "test", "--epoch", "2",
                        "--plot", "p.png"], cwd=copy, capture_output=True, text=True, timeout=120,
                       env={**env, "HOME": "/dev/null"})  # not a folder: matplotlib makes a temporary one
    assert r.returncode == 0 and (copy / "p.png").is_file(), r.stderr
    assert "Matplotlib" not in r.stderr and "MPLCONFIGDIR" not in r.stderr, r.stderr
    assert "MPLCONFIGDIR" in (copy / "experiments" / "exp" / "verbose.log").read_text()  # said, in the log


def test_a_plot_name_as_long_as_the_file_system_takes_is_written(copy, capsys, tiny_data):
    """The figure is written under a temporary name first: that name must fit in 255 bytes too."""
    name = "p" * 251 + ".png"
    code, _, err = invoke(capsys, *g(copy, data=tiny_data), "test", "--epoch", "2", "--plot", name)
    assert code == 0, err
    assert (copy / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in copy.iterdir() if p.name.startswith(".p")] == []


# ---- files and folders this user may not read ------------------------------------------------------

# Python 3.14's pathlib: is_file, is_dir and exists say False for any error, "Permission denied" included
PATHLIB_3_14 = """
import os.path, pathlib
pathlib.Path.is_file = lambda self, *, follow_symlinks=True: os.path.isfile(self)
pathlib.Path.is_dir = lambda self, *, follow_symlinks=True: os.path.isdir(self)
pathlib.Path.exists = lambda self, *, follow_symlinks=True: os.path.exists(self)
"""


def run_without_root_powers(*args, cwd, env=None):
    """The CLI in a subprocess, as a user whom chmod binds: this one where it is not root; as root, in a user namespace
    where it owns every file here without root's right to read what chmod forbids (skipped where there is none)."""
    command = [sys.executable, "-m", "ignite_mnist", *map(str, args)]
    if os.geteuid() != 0:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    unshare = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
    if shutil.which("unshare") is None:
        pytest.skip("running as root, without unshare to drop root's powers")
    probe = subprocess.run([*unshare, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root, and no user namespace to drop root's powers in: {probe.stderr.decode().strip()}")
    return subprocess.run([*unshare, *command], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("pathlib_3_14", [False, True], ids=["this-pathlib", "pathlib-3.14"])
def test_folders_this_user_may_not_read_are_one_line_and_list_goes_on(copy, tiny_data, pathlib_3_14, tmp_path):
    env = None
    if pathlib_3_14:  # (sitecustomize: imported at start-up from PYTHONPATH, before the CLI's modules)
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(PATHLIB_3_14)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *filter(None, [
            os.environ.get("PYTHONPATH")])])}
        probe = subprocess.run([sys.executable, "-c", "import pathlib; print(pathlib.Path.is_file.__name__)"],
                               env=env, capture_output=True, text=True)
        assert probe.stdout.strip() == "<lambda>", probe.stderr
    experiments, checkpoints = copy / "experiments", copy / "experiments" / "exp" / "checkpoints"
    shutil.copytree(experiments / "exp", experiments / "locked")
    shutil.copytree(tiny_data, copy / "data" / "MNIST" / "raw")  # torchvision's layout (--data-path is click's to check)
    shutil.copytree(tiny_data, copy / "flat")  # the files flat in --data-path too, torchvision's folder locked
    shutil.copytree(tiny_data, copy / "flat" / "MNIST" / "raw")
    releases = experiments / "exp" / "releases"
    locked = [experiments / "locked", checkpoints, copy / "data" / "MNIST", copy / "flat" / "MNIST", releases]

    def run(*args):
        return run_without_root_powers("--experiments-path", experiments, *args, cwd=copy, env=env)

    def refused(args, message):
        result = run(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(message), lines[0]

    test_epoch_2 = ["-e", "exp", "--data-path", copy / "data", "test", "--epoch", "2"]
    for path in locked:
        path.chmod(0)
    try:
        listed = run("list")
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"^exp\b", listed.stdout, re.M), listed.stdout  # the readable one, listed as ever
        assert re.search(r"^locked\b.*Permission denied", listed.stdout, re.M), listed.stdout
        refused(["-e", "exp", "info"], f"error: cannot use {checkpoints}: Permission denied")
        refused(["-e", "locked", "info"], f"error: cannot use {experiments / 'locked'}")
        refused(["predict", "--release", releases / "release_epoch_2.pt", copy / "digit.png"],
                f"error: cannot use {releases / 'release_epoch_2.pt'}: Permission denied")
        checkpoints.chmod(0o755)
        locked.append(checkpoints / "checkpoint_2.pt")
        locked[-1].chmod(0)
        refused(test_epoch_2, f"error: cannot read checkpoint {locked[-1]}: Permission denied")
        locked[-1].chmod(0o644)
        refused(test_epoch_2, f"error: cannot look for the data in {copy / 'data' / 'MNIST'}: Permission denied")
        tested = run("-e", "exp", "--data-path", copy / "flat", "test", "--epoch", "2")
        assert tested.returncode == 0 and "accuracy" in tested.stdout + tested.stderr, tested.stderr
    finally:
        for path in locked:
            path.chmod(0o755)


@pytest.mark.parametrize("breakage", ["full disk", "a folder in its place"])
def test_a_verbose_log_that_cannot_be_written_is_said_once_and_the_command_goes_on(copy, capsys, tiny_data, breakage):
    """A full disk under verbose.log (/dev/full) or a log that cannot be opened: one line on the console, not logging's
    traceback for every message; test and train go on (the checkpoints are what a run needs written)."""
    log_file = copy / "experiments" / "exp" / "verbose.log"
    log_file.unlink()
    if breakage == "full disk":
        log_file.symlink_to("/dev/full")
    else:
        log_file.mkdir()
    note = f"cannot write {log_file} ({'No space left on device' if breakage == 'full disk' else 'Is a directory'}): " \
           "this command's messages go to the console only"
    for command in (["test", "--epoch", "1"], ["train", "--max-epochs", "3", "--device", "cpu"]):
        code, out, err = invoke(capsys, *g(copy, data=tiny_data), *command)
        assert code == 0 and (out + err).count(note) == 1 and "Traceback" not in out + err, out + err
    assert (copy / "experiments" / "exp" / "checkpoints" / "checkpoint_3.pt").is_file()


def test_a_message_that_cannot_be_formatted_does_not_stop_the_log(tmp_path, capsys):
    """Only a failed write shuts verbose.log for the command: a library's record with a bad format is logging's own
    report, and the next messages reach the file."""
    import logging

    from ignite_mnist.experiment import LogFileHandler

    handler = LogFileHandler(tmp_path / "verbose.log", encoding="utf-8")
    logger = logging.getLogger("ignite_mnist.test_format")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("bad %d", "x")  # (a library's mistake)
        logger.warning("after it")
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert "cannot write" not in err and "--- Logging error ---" in err
    assert (tmp_path / "verbose.log").read_text().strip().endswith("after it")


def test_a_full_disk_under_the_training_lock_is_one_line(copy, capsys, tiny_data, monkeypatch):
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("train.lock"):
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    lock = copy / "experiments" / "exp" / "train.lock"
    assert_refused(capsys, copy, [*g(copy, data=tiny_data), "train", "--max-epochs", "3", "--device", "cpu"], 2,
                   f"cannot write {lock}: No space left on device")


def test_a_reader_that_closes_the_pipe_early_gets_141_as_from_a_unix_tool_not_a_failure(trained):
    """`ignite-mnist info | head -1`: click answered a closed stdout with a silent exit 1, which reads as a failed
    run; 141 is what any Unix tool stopped by SIGPIPE gives. Nothing on stderr either way."""
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first line is written: every write meets EPIPE
    try:
        for command in (["info"], ["info", "--json"]):
            out = subprocess.run([sys.executable, "-m", "ignite_mnist", *map(str, g(trained)), *command],
                                 stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
            assert out.returncode == 141 and out.stderr == "", (command, out.returncode, out.stderr)
    finally:
        os.close(writer)
    out = run_cli(*g(trained), "info")  # (a reader that stays: 0)
    assert out.returncode == 0 and out.stdout.startswith("experiment exp")


@pytest.mark.parametrize("args", [["-e", "--verbose", "info"], ["-e", "x", "init", "--config-path", "--verbose"],
                                  ["--experiments-path", "--verbose", "list"]])
def test_verbose_as_an_option_s_value_turns_no_traceback_on(workdir, capsys, args):
    """--verbose is a global option only before the command, and not where it is the value of one."""
    code, _, err = invoke(capsys, *args)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    code, _, err = invoke(capsys, "--verbose", "-e", "nothing-here", "info")
    assert code == 2 and "Traceback" in err  # (given as a global option: the traceback, as asked)


def test_the_global_options_that_take_a_value_are_those_verbose_given_skips():
    import typer

    from ignite_mnist import cli

    taking_values = {o for p in typer.main.get_command(cli.app).params if not getattr(p, "is_flag", False)
                     for o in p.opts + p.secondary_opts}
    assert taking_values == set(cli.GLOBAL_VALUE_OPTIONS)


def test_a_set_without_a_key_is_told_how_to_write_one(workdir, tiny_data, capsys):
    code, _, err = invoke(capsys, *g(workdir, data=tiny_data), "init", "--set", "=5", "--set", "training.foo=1")
    assert code == 2 and "--set takes KEY=VALUE with a dotted key into the config (training.lr=0.5), not '=5'" in err
