"""The whole workflow through the real command line: init, train, resume, test, export-release, predict, info."""

import json
import os
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT, g, invoke, make_config, run_cli, snapshot, write_dataset
from ignite_mnist import data
from ignite_mnist.model import Net


def tensorboard_tags(folder: Path) -> set:
    """Scalar tags in the TFRecord event files of folder (read with tensorboardX's protobuf, no TensorBoard)."""
    from tensorboardX.proto.event_pb2 import Event

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        raw, offset = path.read_bytes(), 0
        while offset + 12 <= len(raw):
            (length,) = struct.unpack("<Q", raw[offset:offset + 8])
            event = Event.FromString(raw[offset + 12:offset + 12 + length])
            tags.update(value.tag for value in event.summary.value)
            offset += 12 + length + 4
    return tags


def readme_release_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using a release without ignite-mnist", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_workflow_end_to_end(tmp_path, tiny_data):
    opts = g(tmp_path, "demo", tiny_data)
    config = make_config(tmp_path)
    experiment = tmp_path / "experiments" / "demo"

    r = run_cli(*opts, "init", "--config-path", config, "--config-schema-path", ROOT / "config" / "config.schema.json",
                "--seed", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads((experiment / "experiment.json").read_text())
    assert meta["seed"] == 3 and meta["config"]["data"]["val_split"] == 0.2
    assert {k: v for k, v in meta["split"].items() if k != "digest"} == {"train": 320, "validation": 80, "test": 100}
    assert torch.__version__.startswith(meta["versions"]["torch"]) and meta["versions"]["pytorch-ignite"]
    split = json.loads((experiment / "split.json").read_text())
    assert sorted(split["train"] + split["validation"]) == list(range(400))

    r = run_cli(*opts, "train", "--max-epochs", "2", "--device", "cpu", "--log-period", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (experiment / "checkpoints").iterdir()) == ["checkpoint_1.pt", "checkpoint_2.pt"]
    log = (experiment / "verbose.log").read_text()
    assert "epoch 2/2: train loss" in log and "validation loss" in log and "test loss" in log
    assert re.search(r"epoch 1 iteration 5/10: loss \d", log)
    assert {"training/batch_loss", "training/loss", "lr/group_0", "validation/accuracy", "validation/loss",
            "test/accuracy", "test/loss"} <= tensorboard_tags(experiment / "tensorboard")
    checkpoint = torch.load(experiment / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer", "lr_scheduler", "trainer", "rng", "history", "owner"}
    assert checkpoint["owner"]["name"] == experiment.name and checkpoint["owner"]["created"]
    assert checkpoint["trainer"]["epoch_length"] == 10 and checkpoint["trainer"]["iteration"] == 20
    assert checkpoint["lr_scheduler"]["last_epoch"] == 2  # StepLR stepped once per epoch
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == 1.0 * 0.7 ** 2
    assert [e["epoch"] for e in checkpoint["history"]["epochs"]] == [1, 2]
    assert checkpoint["history"]["epochs"][-1]["lr"] == 0.7 and checkpoint["history"]["stopped_early"] is None
    assert json.loads((experiment / "metrics.json").read_text()) == checkpoint["history"]

    # the second train goes on from epoch 2, not from scratch
    r = run_cli(*opts, "train", "--max-epochs", "3", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming experiment demo from epoch 2" in r.stderr
    assert "epoch 1/3" not in r.stderr and "epoch 3/3" in r.stderr

    r = run_cli(*opts, "test", "--epoch", "3", "--device", "cpu", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    metrics = torch.load(experiment / "checkpoints" / "checkpoint_3.pt", weights_only=True)["history"]["epochs"][-1]
    assert result["epoch"] == 3 and result["total"] == 100
    assert result["accuracy"] == 100 * result["correct"] / 100 == metrics["test_accuracy"]
    assert abs(result["loss"] - metrics["test_loss"]) < 1e-6

    r = run_cli(*opts, "export-release", "--epoch", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    release_path = Path(r.stdout.strip().splitlines()[-1])
    release_path = release_path if release_path.is_absolute() else tmp_path / release_path
    release = torch.load(release_path, weights_only=True)
    assert not {"optimizer", "lr_scheduler", "trainer", "rng"} & set(release)
    assert release["epoch"] == 3 and release["classes"] == [str(d) for d in range(10)]
    assert release["metrics"]["test_accuracy"] == metrics["test_accuracy"]

    # predict on the test digits saved as PNG files == the experiment's own model == the README's plain torch
    images, labels = data.read_split(tiny_data / "t10k-images-idx3-ubyte.gz", tiny_data / "t10k-labels-idx1-ubyte.gz")
    paths = []
    for i in range(20):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(images[i].numpy()).save(paths[-1])
    r = run_cli("predict", "--release", release_path, "--json", *paths, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    predicted = json.loads(r.stdout.strip().splitlines()[-1])
    assert [p["path"] for p in predicted] == [str(p) for p in paths]
    assert all(0.1 <= p["probability"] <= 1 for p in predicted)

    checkpoint_model = torch.load(experiment / "checkpoints" / "checkpoint_3.pt", weights_only=True)["model"]
    model = Net()
    model.load_state_dict(checkpoint_model)
    model.eval()
    x, _ = data.TensorSet(images[:20], labels[:20], 0.1307, 0.3081).batch(slice(0, 20))
    with torch.no_grad():
        expected = model(x).argmax(1).tolist()
    assert [p["label"] for p in predicted] == expected
    assert sum(e == y for e, y in zip(expected, labels[:20].tolist())) >= 10  # it did learn something

    snippet = readme_release_snippet().replace('"experiments/demo/releases/release_epoch_10.pt"', repr(str(release_path)))
    snippet = snippet.replace("torch.zeros(1, 28, 28, dtype=torch.uint8)", "DIGITS")
    namespace = {"DIGITS": images[:20]}
    exec(compile(snippet, "README.md", "exec"), namespace)
    with torch.no_grad():
        assert namespace["model"](namespace["x"]).argmax(1).tolist() == expected
    assert all(torch.equal(checkpoint_model[k], v) for k, v in namespace["model"].state_dict().items())

    r = run_cli(*opts, "info", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["seed"] == 3 and info["config"] == meta["config"] and info["split"] == meta["split"]
    assert [e["epoch"] for e in info["epochs"]] == [1, 2, 3]
    assert info["epochs"][2]["test_accuracy"] == metrics["test_accuracy"]
    assert info["epochs"][2]["checkpoint"].endswith("checkpoint_3.pt")
    assert {"validation_accuracy", "validation_loss", "test_loss"} <= set(info["epochs"][0])
    best_of = lambda epochs: max(epochs, key=lambda e: (e["validation_accuracy"], -e["epoch"]))["epoch"]  # noqa: E731
    assert info["best_epoch"] == best_of(info["epochs"]) and info["stopped_early"] is None
    # export-release's, and each train's release of its best epoch so far
    assert {r["epoch"] for r in info["releases"]} == {3, best_of(info["epochs"][:2]), best_of(info["epochs"])}
    r = run_cli(*opts, "info", cwd=tmp_path)
    assert r.returncode == 0 and "  epoch 3" in r.stdout and "epoch 3 (pt): " in r.stdout and "release_epoch_3.pt" in r.stdout


def test_later_commands_read_the_data_where_init_found_it_from_any_folder(tmp_path, tiny_data):
    """init records its --data-path, made absolute; train, test and info use it without the option, from another
    folder; a --data-path given to a command still wins; a stopped run's hint needs no --data-path then."""
    (tmp_path / "elsewhere").mkdir()
    experiments = tmp_path / "experiments"
    r = run_cli("-e", "exp", "--experiments-path", experiments, "--data-path", os.path.relpath(tiny_data, tmp_path),
                "init", "--config-path", make_config(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((experiments / "exp" / "experiment.json").read_text())["data_path"] == os.path.abspath(tiny_data)
    options = ["-e", "exp", "--experiments-path", experiments]
    r = run_cli(*options, "train", "--max-epochs", 1, "--device", "cpu", cwd=tmp_path / "elsewhere")
    assert r.returncode == 0 and "trained exp to epoch 1" in r.stdout + r.stderr, r.stderr
    r = run_cli(*options, "test", "--epoch", 1, "--json", cwd=tmp_path / "elsewhere")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["total"] == 100, r.stderr
    r = run_cli(*options, "info", cwd=tmp_path / "elsewhere")
    assert r.returncode == 0 and f"data: {os.path.abspath(tiny_data)}" in r.stdout.splitlines(), r.stdout
    broken = shutil.copytree(tiny_data, tmp_path / "broken")  # another folder, whose test images are cut short
    (broken / "t10k-images-idx3-ubyte.gz").write_bytes((broken / "t10k-images-idx3-ubyte.gz").read_bytes()[:500])
    r = run_cli(*options, "--data-path", broken, "test", "--epoch", 1, cwd=tmp_path / "elsewhere")
    assert r.returncode == 2 and f"{broken / 't10k-images-idx3-ubyte.gz'} is truncated" in r.stderr, r.stderr


def test_a_recorded_data_folder_that_moved_is_named_and_another_can_be_given(tmp_path, tiny_data):
    data = shutil.copytree(tiny_data, tmp_path / "data-here")
    options = ["-e", "exp", "--experiments-path", tmp_path / "experiments"]
    r = run_cli(*options, "--data-path", data, "init", "--config-path", make_config(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert run_cli(*options, "train", "--max-epochs", 1, "--device", "cpu", cwd=tmp_path).returncode == 0
    data.rename(tmp_path / "data-moved")
    meta = tmp_path / "experiments" / "exp" / "experiment.json"
    for command in (["test", "--epoch", "1"], ["train", "--max-epochs", "2"], ["export-release", "--format", "onnx"]):
        r = run_cli(*options, *command, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.strip() == (
            f"error: the data folder {data}, where `init` found mnist (recorded in {meta}), is not there now: give "
            "its new place with --data-path (`train` records it)"), r.stderr
    assert not data.exists()  # nothing downloaded into the old place
    r = run_cli(*options, "export-release", cwd=tmp_path)  # a pt release reads no data
    assert r.returncode == 0, r.stderr
    r = run_cli(*options, "--data-path", tmp_path / "data-moved", "test", "--epoch", 1, "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["total"] == 100, r.stderr
    assert json.loads(meta.read_text())["data_path"] == str(data)  # test records nothing
    r = run_cli(*options, "--data-path", "other", "train", "--max-epochs", 1, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 2 and json.loads(meta.read_text())["data_path"] == str(data)  # (no data there)
    r = run_cli(*options, "--data-path", "data-moved", "train", "--max-epochs", 1, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0 and (f"the data of experiment exp is now read from {tmp_path / 'data-moved'} (recorded "
                                  f"in {meta}): its old folder is gone") in r.stderr.splitlines(), r.stderr
    assert "nothing to do" in r.stderr  # recorded with nothing left to train: the usual case
    assert json.loads(meta.read_text())["data_path"] == str(tmp_path / "data-moved")
    r = run_cli(*options, "test", "--epoch", 1, "--json", cwd=tmp_path / "data-moved")  # no --data-path needed now
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["total"] == 100, r.stderr


def test_other_data_under_the_same_file_names_is_refused(tmp_path, tiny_data, capsys):
    """init records a SHA-256 of each split it read; data that differs (another dataset, a file replaced) is refused
    by the commands that read that split, and changes nothing; the same data in another folder is taken."""
    options = ["-e", "exp", "--experiments-path", tmp_path / "experiments"]
    code, _, err = invoke(capsys, *options, "--data-path", tiny_data, "init", "--config-path", make_config(tmp_path))
    assert code == 0, err
    assert invoke(capsys, *options, "train", "--max-epochs", 1, "--device", "cpu")[0] == 0
    sample = data.load("mnist", tiny_data)
    (train_images, train_labels), (test_images, test_labels) = sample["train"], sample["test"]
    other_test = write_dataset(tmp_path / "other-test", sample["train"], (test_images, (test_labels + 1) % 10))
    other_train = write_dataset(tmp_path / "other-train", (train_images.flip(0), train_labels.flip(0)), sample["test"])
    same = write_dataset(tmp_path / "same", sample["train"], sample["test"], gz=False)  # other bytes, the same data
    def files():  # (verbose.log takes the errors)
        return {k: v for k, v in snapshot(tmp_path / "experiments").items() if k != "exp/verbose.log"}

    before = files()
    for folder, command, split in ((other_test, ["test", "--epoch", "1"], "test"),
                                   (other_train, ["train", "--max-epochs", "2", "--device", "cpu"], "training")):
        code, out, err = invoke(capsys, *options, "--data-path", folder, *command)
        assert code == 2 and err.strip() == (
            f"error: the {split} set of mnist in {folder} is not the one the experiment was created with (its images "
            "or labels differ): use the data the experiment was created with"), err
    assert files() == before
    code, out, err = invoke(capsys, *options, "--data-path", other_train, "test", "--epoch", 1, "--json")
    assert code == 0 and json.loads(out)["total"] == 100, err  # test reads the test set alone
    code, out, err = invoke(capsys, *options, "--data-path", same, "train", "--max-epochs", 2, "--device", "cpu")
    assert code == 0, err


def test_a_damaged_decoded_cache_is_decoded_again_where_the_digests_tell_it(tmp_path, tiny_data, capsys, monkeypatch):
    """A cached array whose bytes were damaged in place (its header and size intact) gives data that differs from the
    experiment's digest: the files are decoded again, the cache replaced, and the command goes on."""
    monkeypatch.setattr(data, "CACHE_FROM_BYTES", 0)  # the tiny files cached too
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    options = ["-e", "exp", "--experiments-path", tmp_path / "experiments", "--data-path", tiny_data]
    assert invoke(capsys, *options, "init", "--config-path", make_config(tmp_path))[0] == 0
    assert invoke(capsys, *options, "train", "--max-epochs", 1, "--device", "cpu")[0] == 0
    (cached,) = (tmp_path / "cache" / "ignite-mnist").glob("t10k-labels-*.npy")
    good = cached.read_bytes()
    cached.write_bytes(good[:-10] + bytes((b + 1) % 10 for b in good[-10:]))  # ten labels changed
    code, out, err = invoke(capsys, *options, "test", "--epoch", 1, "--json")
    assert code == 0 and json.loads(out)["total"] == 100, err
    assert cached.read_bytes() == good


def test_init_says_when_the_data_does_not_look_like_the_dataset_named(tmp_path, tiny_data, capsys):
    """MNIST and Fashion-MNIST share their files' names and format: a dataset named wrong is said at init (a dataset of
    one's own in MNIST's files may differ as much, so it is not refused), by the training images' mean pixel."""
    sample = data.load("mnist", tiny_data)
    (images, labels), test = sample["train"], sample["test"]
    mean = images.float().mean().item() / 255
    assert abs(mean - 0.1307) < 0.05
    grey = round((0.286 - 0.6 * mean) * 255)  # a grey background, the ink dimmed: a mean pixel as Fashion-MNIST's
    brighter = write_dataset(tmp_path / "brighter", ((images * 0.6 + grey).round().to(torch.uint8), labels), test)
    code, out, err = invoke(capsys, "-e", "a", "--experiments-path", tmp_path / "experiments", "--data-path", tiny_data,
                            "init", "--config-path", make_config(tmp_path))
    assert code == 0 and "may not be" not in out + err, out + err
    code, out, err = invoke(capsys, "-e", "b", "--experiments-path", tmp_path / "experiments", "--data-path", brighter,
                            "init", "--config-path", make_config(tmp_path))
    bright_mean = data.load("mnist", brighter)["train"][0].float().mean().item() / 255
    assert abs(bright_mean - 0.286) < 0.02, bright_mean  # as Fashion-MNIST's
    assert code == 0 and (tmp_path / "experiments" / "b" / "experiment.json").is_file()
    assert (f"the data in {brighter} may not be mnist: its training images' mean pixel is {bright_mean:.3f}, where "
            "mnist's is 0.131 (fashion-mnist's is 0.286); if it is another dataset, set data.dataset to it") in err, err


def test_hints_name_the_data_folder_only_where_it_is_not_the_experiment_s_own(tmp_path, monkeypatch):
    from ignite_mnist.experiment import command_line
    from ignite_mnist.release import _export_command

    assert command_line(Path("experiments"), "x", "test", Path("data")) == "ignite-mnist --data-path data -e x test"
    assert command_line(Path("experiments"), "x", "test") == "ignite-mnist -e x test"
    releases = tmp_path / "experiments" / "exp" / "releases"
    releases.mkdir(parents=True)
    monkeypatch.chdir(releases)
    absolute = f"ignite-mnist --experiments-path {tmp_path / 'experiments'} -e exp export-release --epoch 3"
    for given, command in (("../checkpoints/checkpoint_3.pt", absolute),  # its experiment's folder is ".."
                           ("../../exp/checkpoints/checkpoint_3.pt",
                            "ignite-mnist --experiments-path ../.. -e exp export-release --epoch 3"),
                           ("checkpoint_3.pt", "ignite-mnist -e NAME export-release --epoch E")):
        assert _export_command(Path(given)) == command, given
    monkeypatch.chdir(releases.parent)
    assert _export_command(Path("checkpoints/checkpoint_3.pt")) == absolute  # its experiment's folder is "."


def test_console_script_and_help_are_quick_to_load():
    script = Path(sys.executable).with_name("ignite-mnist")
    assert shutil.which(str(script)), "the ignite-mnist console script is installed"
    code = "import sys, ignite_mnist.cli; sys.exit('torch' in sys.modules)"
    r = run_cli("--help")
    assert r.returncode == 0 and "export-release" in r.stdout
    import subprocess

    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "importing the CLI must not import torch"


@pytest.mark.parametrize("columns", [80, 60])
def test_the_help_names_every_option_whole_in_a_narrow_terminal(columns):
    """At 80 columns (and what a pipe gets) rich's help tables cut long option names off: `--pruner-startup-tri…`."""
    import typer

    from ignite_mnist.cli import app

    root = typer.main.get_command(app)
    for name, command in [(None, root), *root.commands.items()]:
        r = run_cli(*([name] if name else []), "--help", env={"COLUMNS": str(columns)})
        assert r.returncode == 0, r.stderr
        for param in command.params:
            for option in param.opts if param.param_type_name == "option" else ():
                assert re.search(rf"(^|[\s,]){re.escape(option)}([\s,=]|$)", r.stdout, re.M), (name, option, r.stdout)
        assert "\u2026" not in r.stdout and max(map(len, r.stdout.splitlines())) <= columns, r.stdout


def test_no_command_prints_the_help_once_and_fails():
    r = run_cli()
    assert r.returncode == 2
    assert (r.stdout + r.stderr).count("Usage: ignite-mnist") == 1 and "export-release" in r.stdout + r.stderr


@pytest.mark.parametrize("module", ["engines", "launch", "analysis", "checkpoints"])
def test_ignite_is_imported_without_fsdp_and_torch_distributed_optim_stays_whole(module):
    """lazy_imports: each module that imports Ignite, imported first, imports it without
    torch.distributed.fsdp (0.5-1 s of start-up); the package Ignite takes ZeroRedundancyOptimizer from
    still gives every name, the same objects as the real one."""
    import subprocess

    code = f"""if True:
        import sys
        import ignite_mnist.{module}, ignite.handlers.checkpoint as checkpoint
        assert "torch.distributed.fsdp" not in sys.modules, "fsdp imported with Ignite"
        from torch.distributed.optim.zero_redundancy_optimizer import ZeroRedundancyOptimizer
        assert checkpoint.HAVE_ZERO and checkpoint.ZeroRedundancyOptimizer is ZeroRedundancyOptimizer
        import torch.distributed.optim as optim
        from torch.distributed.optim import *  # noqa: F403  the whole package, __all__ included
        assert optim.DistributedOptimizer is DistributedOptimizer and "torch.distributed.fsdp" in sys.modules
        assert optim.ZeroRedundancyOptimizer is ZeroRedundancyOptimizer and optim.named_optimizer._NamedOptimizer
        import torch.distributed
        assert torch.distributed.optim is sys.modules["torch.distributed.optim"] is optim
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_torch_dynamo_stand_in_survives_a_failed_load_threads_and_keeps_names():
    """If the real torch._dynamo fails to load (an interrupt, say), the stand-in stays and the next use
    tries again; another thread's optimizer steps go on while it loads; disable() keeps a function's
    name, and the function stays picklable."""
    import subprocess

    code = """if True:
        import pickle, sys, threading
        import ignite_mnist.engines, torch

        class FailOnce:  # the real __init__ fails halfway, the first time
            failed = False
            def find_spec(self, name, path=None, target=None):
                if name == "torch._dynamo.convert_frame" and not self.failed:
                    FailOnce.failed = True
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, FailOnce())

        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.Adadelta(model.parameters())
        x = torch.randn(4, 3)
        try:
            torch._dynamo.optimize
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError("the failure did not happen")
        model(x).sum().backward(); optimizer.step(); optimizer.zero_grad(); optimizer.state_dict()
        assert torch._dynamo.disable.__module__ == "ignite_mnist.lazy_imports"

        @torch.compiler.disable
        def helper():
            "a helper"
        assert helper.__name__ == "helper" and helper.__doc__ == "a helper" and pickle.loads(pickle.dumps(helper)) is helper

        errors, loading = [], threading.Event()
        def steps():
            while not loading.is_set():
                try:
                    model(x).sum().backward(); optimizer.step(); optimizer.zero_grad()
                except Exception as e:
                    errors.append(repr(e))
                    return
        thread = threading.Thread(target=steps)
        thread.start()
        torch._dynamo.optimize  # the second try loads it, while the other thread steps
        loading.set(); thread.join()
        assert not errors, errors
        assert torch._dynamo.disable is sys.modules["torch._dynamo.decorators"].disable and torch.is_grad_enabled()
        model(x).sum().backward(); optimizer.step()
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_training_imports_neither_torch_dynamo_nor_fsdp(tmp_path, tiny_data):
    """lazy_imports: torch.optim's calls into torch._dynamo are answered by the stand-in, so a whole
    `train` (optimizer, checkpoints, release) runs without importing it (1.5-2 s and 150 MiB on AVX2)."""
    import subprocess

    argv = [str(a) for a in g(tmp_path, "demo", tiny_data)]
    config = str(make_config(tmp_path))
    code = f"""if True:
        import sys
        from ignite_mnist import cli
        for command in (["init", "--config-path", {config!r}], ["train", "--max-epochs", "1", "--device", "cpu"]):
            try:
                cli.main({argv!r} + command)
            except SystemExit as e:
                assert not e.code, e.code
        assert "torch._dynamo.eval_frame" not in sys.modules, "torch._dynamo imported by a training"
        assert "torch.distributed.fsdp" not in sys.modules, "fsdp imported by a training"
        import torch
        assert torch._dynamo.disable.__module__ == "ignite_mnist.lazy_imports"
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "experiments" / "demo" / "checkpoints" / "checkpoint_1.pt").exists()


@pytest.mark.parametrize("first_use", ["import torch._dynamo.utils", "import torch._dynamo.config", "import torchvision",
                                       "torch._dynamo.optimize", "torch.export.export(model, (x,))"])
def test_torch_dynamo_becomes_the_real_package_on_first_use(first_use):
    """The stand-in for torch._dynamo, used by an optimizer first, turns into the whole package on the
    first name it does not provide or submodule import; the optimizer's methods then go through the real
    disable, and torch.compile and torch.export work, an optimizer step included."""
    import subprocess

    code = f"""if True:
        import sys
        import ignite_mnist.engines, torch
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.Adadelta(model.parameters())
        x = torch.randn(4, 3)
        model(x).sum().backward(); optimizer.step(); optimizer.zero_grad()
        assert "torch._dynamo.eval_frame" not in sys.modules
        {first_use}
        import torch._dynamo.utils, torch._dynamo.decorators
        assert "torch._dynamo.eval_frame" in sys.modules and sys.modules["torch._dynamo"] is torch._dynamo
        assert torch._dynamo.disable is torch._dynamo.decorators.disable
        assert torch._dynamo.graph_break is torch._dynamo.decorators.graph_break
        assert torch._dynamo.utils is sys.modules["torch._dynamo.utils"]
        # each submodule ran once: what dynamo's own modules imported is what users see
        assert sys.modules["torch._dynamo.convert_frame"].counters is torch._dynamo.utils.counters
        assert sys.modules["torch._dynamo.eval_frame"].config is torch._dynamo.config is sys.modules["torch._dynamo.config"]
        assert sys.modules["torch._dynamo.eval_frame"].Unsupported is torch._dynamo.exc.Unsupported
        before = model.weight.detach().clone()

        @torch.compile(backend="eager")
        def step():
            optimizer.step()

        model(x).sum().backward(); step(); optimizer.zero_grad()
        model(x).sum().backward(); optimizer.step(); optimizer.state_dict()
        assert not torch.equal(before, model.weight)
        assert type(torch.export.export(model, (x,))).__name__ == "ExportedProgram"
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_test_needs_the_test_files_alone(copy, tiny_data, capsys, tmp_path):
    """Testing an experiment on another machine takes the two t10k files, not the training set too."""
    import shutil

    test_only = tmp_path / "test-only"
    test_only.mkdir()
    for path in tiny_data.rglob("t10k-*"):
        shutil.copy(path, test_only / path.name)
    code, everything, err = invoke(capsys, *g(copy, data=tiny_data), "test", "--epoch", "2", "--json")
    assert code == 0, err
    code, alone, err = invoke(capsys, *g(copy, data=test_only), "test", "--epoch", "2", "--json")
    assert code == 0, err
    assert json.loads(alone) == json.loads(everything) and json.loads(alone)["total"] == 100
    code, _, err = invoke(capsys, *g(copy, data=test_only), "train", "--max-epochs", "3", "--device", "cpu")
    assert code == 2 and "mnist is not in" in err and "train-images-idx3-ubyte(.gz)" in err, err  # training: all four
