"""Comparing runs and looking at them: init --set, list, TensorBoard across experiments (run names, percent
accuracy, hparams, pictures), and test's per-class accuracy, confusion matrix and --plot."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import g, invoke, make_config, snapshot


def new(capsys, folder, name, tiny_data, *sets, config=None):
    args = [*g(folder, name, tiny_data), "init", "--config-path", config or make_config(folder)]
    for s in sets:
        args += ["--set", s]
    return invoke(capsys, *args)


# ---- init --set ---------------------------------------------------------------------------------


def test_set_changes_each_kind_of_field_and_is_recorded(workdir, tiny_data, capsys):
    sets = ["training.lr=0.5", "training.batch_size=16", "data.dataset=mnist", "training.cuda_graphs=true",
            "training.keep_checkpoints=3", "training.keep_checkpoints=null", "training.early_stopping.patience=3",
            "data.val_split=0.25"]
    code, _, err = new(capsys, workdir, "set", tiny_data, *sets)
    assert code == 0, err
    meta = json.loads((workdir / "experiments" / "set" / "experiment.json").read_text())
    training = meta["config"]["training"]
    assert training["lr"] == 0.5 and training["batch_size"] == 16 and training["cuda_graphs"] is True
    assert training["keep_checkpoints"] is None  # the last --set of a key wins
    assert training["early_stopping"] == {"patience": 3, "min_delta": 0}  # the section was null: made, defaults filled
    assert meta["config"]["data"] == {"dataset": "mnist", "val_split": 0.25} and meta["split"]["validation"] == 100
    assert meta["overrides"] == sets
    code, _, err = new(capsys, workdir, "obj", tiny_data, 'training.early_stopping={"patience": 2, "min_delta": 0.5}')
    assert code == 0, err
    meta = json.loads((workdir / "experiments" / "obj" / "experiment.json").read_text())
    assert meta["config"]["training"]["early_stopping"] == {"patience": 2, "min_delta": 0.5}


def test_set_defaults_to_the_packaged_config(workdir, tiny_data, capsys):
    code, _, err = invoke(capsys, *g(workdir, "default", tiny_data), "init", "--set", "data.dataset=mnist")
    assert code == 0, err
    config = json.loads((workdir / "experiments" / "default" / "experiment.json").read_text())["config"]
    assert config["training"]["lr"] == 1.0 and config["training"]["precision"] == "auto"


@pytest.mark.parametrize("override, message", [
    ("training.learning_rate=0.5", "(1 problem): --set training.learning_rate: the config has no such key; the nearest is "
                                   "training.lr"),
    ("trainig.lr=0.5", "(1 problem): --set trainig.lr: the config has no such key; the nearest is training.lr"),
    (("training.lr=-1", "training.foo=3", "training.batch_size=abc"), "(3 problems): --set training.foo: the config has no "
     'such key; the nearest is training.lr; $.training.batch_size: "abc" is not of type integer; $.training.lr: -1 is '
     "less than or equal to the minimum of 0"),  # every problem at once, not one a run
    ("training.lr=-1", "(1 problem): $.training.lr: -1 is less than or equal to the minimum of 0"),
    ("training.lr=fast", '(1 problem): $.training.lr: "fast" is not of type number'),
    ("training.lr=.5", '$.training.lr: ".5" is not of type number (a string: JSON writes 0.5, not .5 or +1, and '
                       "true, false, null in lower case)"),
    ('training.lr="0.5"', '$.training.lr: "0.5" is not of type number (a string: without its quotes it is one)'),
    ("training.lr=nan", '$.training.lr: "nan" is not of type number\n'),  # (no hint: JSON has no NaN)
    ("training.batch_size=1_000", '$.training.batch_size: "1_000" is not of type integer\n'),
    ('training.early_stopping={"patience": 1, "patience": 2}', 'error: --set training.early_stopping: the value gives '
                                                               'the key "patience" twice in one object'),
    ("data.dataset=cifar", '$.data.dataset: "cifar" is not one of ["mnist", "mnist-sample", "fashion-mnist"]'),
    ("training.lr", "error: --set takes KEY=VALUE with a dotted key into the config (training.lr=0.5), not "
                    "'training.lr'"),
])
def test_set_refuses_unknown_keys_and_bad_values(workdir, tiny_data, capsys, override, message):
    config = make_config(workdir)
    before = snapshot(workdir)
    code, _, err = new(capsys, workdir, "bad", tiny_data, *(override if isinstance(override, tuple) else [override]),
                       config=config)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (workdir / "experiments" / "bad").exists() and snapshot(workdir) == before


# ---- two trained experiments: list, TensorBoard, test --------------------------------------------


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_data):
    """Experiments "z-fast" (lr 1.0) and "a-slow" (lr 0.1), each trained 2 epochs, and a broken folder: by name
    the slow one comes first, by validation accuracy the fast one."""
    folder = tmp_path_factory.mktemp("compared")
    for name, lr in (("z-fast", 1.0), ("a-slow", 0.1)):
        opts = g(folder, name, tiny_data)
        from ignite_mnist.cli import main

        for args in (["init", "--config-path", make_config(folder), "--set", f"training.lr={lr}"],
                     ["train", "--max-epochs", "2", "--device", "cpu"]):
            try:
                main([str(a) for a in [*opts, *args]])
            except SystemExit as e:
                assert e.code == 0, args
    (folder / "experiments" / "broken").mkdir()
    (folder / "experiments" / "broken" / "experiment.json").write_text("{oops")
    return folder


def test_list_compares_the_experiments_best_first_and_shows_a_broken_one(compared, capsys, tiny_data):
    code, out, err = invoke(capsys, "--experiments-path", compared / "experiments", "list", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["best_val_accuracy"] > rows[1]["best_val_accuracy"]
    assert [r["name"] for r in rows[:2]] == ["z-fast", "a-slow"]  # by accuracy, not by name
    assert rows[2]["name"] == "broken" and "is not valid JSON" in rows[2]["broken"]
    for row in rows[:2]:
        history = json.loads((compared / "experiments" / row["name"] / "metrics.json").read_text())
        best = max(history["epochs"], key=lambda e: (e["validation_accuracy"], -e["epoch"]))
        assert set(row) == {"name", "dataset", "epochs", "best_epoch", "best_val_accuracy", "test_accuracy",
                            "stopped_early", "sweep", "training", "config", "releases"} and row["sweep"] is None
        assert row["training"] is False
        assert (row["epochs"], row["best_epoch"], row["best_val_accuracy"], row["test_accuracy"]) == \
            (2, best["epoch"], best["validation_accuracy"], best["test_accuracy"])
        assert row["releases"] == [{"epoch": best["epoch"], "format": "pt"}] and row["dataset"] == "mnist"
    assert {r["config"]["training"]["lr"] for r in rows[:2]} == {1.0, 0.1}

    code, out, err = invoke(capsys, "--experiments-path", compared / "experiments", "list")
    assert code == 0, err
    lines = out.strip().splitlines()
    header = lines[0].split()
    assert header[:6] == ["name", "dataset", "epochs", "best", "val", "acc"] and "training.lr" in header
    assert "training.batch_size" not in header  # only the values that differ
    assert lines[1].split()[0] == rows[0]["name"] and lines[2].split()[0] == rows[1]["name"]
    assert lines[-1].startswith("broken: broken: experiment file") and "is not valid JSON" in lines[-1]


def test_list_takes_1_and_1_0_as_the_same_value(workdir, tiny_data, capsys):
    assert new(capsys, workdir, "float", tiny_data, "training.lr=1.0")[0] == 0
    assert new(capsys, workdir, "int", tiny_data, "training.lr=1")[0] == 0
    code, out, err = invoke(capsys, "--experiments-path", workdir / "experiments", "list")
    assert code == 0 and "training.lr" not in out.splitlines()[0], out
    assert new(capsys, workdir, "half", tiny_data, "training.lr=0.5")[0] == 0
    code, out, err = invoke(capsys, "--experiments-path", workdir / "experiments", "list")
    lines = out.strip().splitlines()
    column = lines[0].split().index("training.lr") - 2  # "val acc" and "test acc" are two words each
    assert {line.split()[0]: line.split()[column] for line in lines[1:]} == {"float": "1", "int": "1", "half": "0.5"}


def test_list_shows_the_dataset_once_and_the_released_epoch_s_test_accuracy_without_validation(workdir, tiny_data,
                                                                                             capsys):
    assert new(capsys, workdir, "with", tiny_data)[0] == 0
    assert new(capsys, workdir, "without", tiny_data, "data.dataset=mnist-sample", "data.val_split=0")[0] == 0
    code, _, err = invoke(capsys, *g(workdir, "without", tiny_data), "train", "--max-epochs", "1", "--device", "cpu")
    assert code == 0, err
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "list", "--json")
    row = next(r for r in json.loads(out) if r["name"] == "without")
    tested = json.loads((workdir / "experiments" / "without" / "metrics.json").read_text())["epochs"][0]["test_accuracy"]
    assert row["best_epoch"] is None and row["best_val_accuracy"] is None and row["test_accuracy"] == tested
    code, out, _ = invoke(capsys, "--experiments-path", workdir / "experiments", "list")
    header, *lines = out.strip().splitlines()
    assert "data.dataset" not in header and "data.val_split" in header, header  # the dataset column says it
    assert f"{tested:.2f}%" in next(line for line in lines if line.startswith("without"))
    assert [line.split()[0] for line in lines] == ["without", "with"]  # without validation: the trained one first


def test_list_marks_an_experiment_that_a_train_holds_now(workdir, tiny_data, capsys):
    from ignite_mnist.experiment import open_experiment

    assert new(capsys, workdir, "busy", tiny_data)[0] == 0
    assert new(capsys, workdir, "idle", tiny_data)[0] == 0
    experiments = workdir / "experiments"
    with open_experiment(experiments, "busy").training_lock():  # as a running train holds it (this pid, alive)
        code, out, err = invoke(capsys, "--experiments-path", experiments, "list")
        assert code == 0 and [line.split()[:3] for line in out.splitlines()[1:]] == [["busy", "mnist", "0"],
                                                                                      ["idle", "mnist", "0"]], out
        assert "0 (training)" in out.splitlines()[1] and "(training)" not in out.splitlines()[2]
        code, out, err = invoke(capsys, "--experiments-path", experiments, "list", "--json")
        assert {r["name"]: r["training"] for r in json.loads(out)} == {"busy": True, "idle": False}
        code, out, err = invoke(capsys, "--experiments-path", experiments, "-e", "busy", "info")
        assert code == 0 and out.splitlines()[1] == f"being trained now, by process {os.getpid()}: the epochs below " \
            "are those finished so far", out
        code, out, err = invoke(capsys, "--experiments-path", experiments, "-e", "idle", "info", "--json")
        assert code == 0 and json.loads(out)["training_pid"] is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, 1, os.getpid()):  # what a killed train leaves: its pid, gone, or since another process's
        (experiments / "idle" / "train.lock").write_text(f"{pid}\n")
        code, out, err = invoke(capsys, "--experiments-path", experiments, "list", "--json")
        assert {r["name"]: r["training"] for r in json.loads(out)} == {"busy": False, "idle": False}


def test_list_shows_strings_as_they_are_and_quotes_only_those_that_would_read_as_another_value(workdir, tiny_data,
                                                                                            capsys):
    for name, value in (("auto", "auto"), ("fp32", "fp32")):
        assert new(capsys, workdir, name, tiny_data, f"training.precision={value}")[0] == 0
    assert new(capsys, workdir, "e", tiny_data, "training.early_stopping=null")[0] == 0
    code, out, err = invoke(capsys, "--experiments-path", workdir / "experiments", "list")
    lines = out.strip().splitlines()
    column = lines[0].split().index("training.precision") - 2  # "val acc" and "test acc" are two words each
    assert {line.split()[0]: line.split()[column] for line in lines[1:]} == {"auto": "auto", "fp32": "fp32", "e": "fp32"}
    from ignite_mnist.cli import _shown

    assert [_shown(v) for v in ("bf16", "1", "null", "", " x", "a\tb", None, 1.0)] == \
        ["bf16", '"1"', '"null"', '""', '" x"', '"a\\tb"', "null", "1"]


def read_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_logs_percent_accuracy_hparams_and_pictures(compared):
    from tensorboard.plugins.hparams import plugin_data_pb2

    for name, lr in (("z-fast", 1.0), ("a-slow", 0.1)):
        root = compared / "experiments" / name
        events = read_events(root / "tensorboard")
        history = json.loads((root / "metrics.json").read_text())
        accuracy = [e.value for e in events.Scalars("validation/accuracy")]
        assert accuracy == pytest.approx([e["validation_accuracy"] for e in history["epochs"]])
        assert max(accuracy) > 1  # percent, not a fraction
        best = max(history["epochs"], key=lambda e: (e["validation_accuracy"], -e["epoch"]))
        assert events.Scalars("best/validation_accuracy")[-1].value == pytest.approx(best["validation_accuracy"])
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert start.hparams["training.lr"].number_value == lr
        assert start.hparams["data.dataset"].string_value == "mnist"
        images = events.Tags()["images"]
        assert "validation/confusion_matrix" in images and "test/worst_classified" in images
        assert [e.step for e in events.Images("validation/confusion_matrix")] == [1, 2]
        picture = events.Images("test/worst_classified")[-1]
        assert picture.step == 2 and picture.encoded_image_string.startswith(b"\x89PNG")


def test_tensorboard_serves_every_experiment_as_a_run_named_after_it(compared):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for options, runs in (([], ["a-slow", "z-fast"]), (["-e", "a-slow"], ["a-slow"])):
        process = subprocess.Popen([sys.executable, "-m", "ignite_mnist", "--experiments-path", compared / "experiments",
                                    *options, "tensorboard", "--port", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline, served = time.monotonic() + 60, None
            while time.monotonic() < deadline and served != runs:
                try:
                    with urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=2) as page:
                        served = sorted(json.loads(page.read()))
                except OSError:
                    pass
                time.sleep(0.5)
            assert served == runs
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_tensorboard_without_logs_says_so(workdir, tiny_data, capsys):
    assert new(capsys, workdir, "fresh", tiny_data)[0] == 0
    experiments = workdir / "experiments"
    for options, message in (([], f"no experiment in {experiments} has TensorBoard logs yet: run `train` first"),
                             (["-e", "fresh"], "experiment fresh has no TensorBoard logs yet: run `train` first")):
        code, _, err = invoke(capsys, "--experiments-path", experiments, *options, "tensorboard")
        assert code == 2 and err.strip() == f"error: {message}", err


def test_list_and_tensorboard_say_the_same_of_a_missing_experiments_folder(workdir, capsys):
    for command in ("list", "tensorboard"):
        code, _, err = invoke(capsys, "--experiments-path", workdir / "none", command)
        assert code == 2 and err.strip() == (f"error: no experiments folder {workdir / 'none'}: create an experiment "
                                             "with `init` first"), err


def test_test_reports_per_class_accuracy_and_the_confusion_matrix_and_plots_them(compared, capsys, tiny_data, tmp_path):
    opts = g(compared, "z-fast", tiny_data)
    code, out, err = invoke(capsys, *opts, "test", "--epoch", "best", "--device", "cpu", "--json",
                            "--plot", tmp_path / "fast.png")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    matrix = result["confusion_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    assert sum(map(sum, matrix)) == result["total"] == 100
    assert sum(matrix[i][i] for i in range(10)) == result["correct"]  # ConfusionMatrix agrees with Accuracy
    assert [c["total"] for c in result["per_class"]] == [sum(row) for row in matrix]
    assert all(c["accuracy"] == pytest.approx(100 * matrix[i][i] / sum(matrix[i]))
               for i, c in enumerate(result["per_class"]) if c["total"])
    assert "confusion matrix (rows: true class, columns: predicted):" in err and "per class: 0 " in err  # --json
    code, out, err = invoke(capsys, *opts, "test", "--epoch", "best", "--device", "cpu")
    assert code == 0 and err == "", err  # without --json the report is the output, on stdout (once)
    lines = out.strip().splitlines()
    assert lines[0].startswith("test of epoch ") and f"({result['correct']}/100)" in lines[0], out
    assert lines[2] == "confusion matrix (rows: true class, columns: predicted):" and len(lines) == 4 + 10
    log_file = compared / "experiments" / "z-fast" / "verbose.log"
    assert log_file.read_text().rstrip().endswith(lines[-1])  # and in verbose.log
    with Image.open(tmp_path / "fast.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 600 and picture.size[1] > 300
    code, _, err = invoke(capsys, *opts, "test", "--epoch", "1", "--plot", tmp_path / "fast.jpg")
    assert code == 2 and "--plot writes a PNG file" in err
    code, _, err = invoke(capsys, *opts, "test", "--epoch", "1", "--plot", tmp_path / "nowhere" / "a.png")
    assert code == 2 and "does not exist" in err
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "kept.png").write_text("the old figure")
    (tmp_path / "link.png").symlink_to(tmp_path / "figures" / "kept.png")  # written through, stays a link
    code, _, err = invoke(capsys, *opts, "test", "--epoch", "1", "--plot", tmp_path / "link.png")
    assert code == 0, err
    assert (tmp_path / "link.png").is_symlink() and sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["kept.png"]
    with Image.open(tmp_path / "figures" / "kept.png") as picture:
        assert picture.format == "PNG"
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere" / "b.png")
    code, _, err = invoke(capsys, *opts, "test", "--epoch", "1", "--plot", tmp_path / "dangling.png")
    assert code == 2 and f"folder {tmp_path / 'nowhere'} does not exist" in err
    (tmp_path / "folder.png").mkdir()
    code, _, err = invoke(capsys, *opts, "test", "--epoch", "1", "--plot", tmp_path / "folder.png")
    assert code == 2 and "is a folder" in err and (tmp_path / "folder.png").is_dir()


def test_worst_classified_keeps_the_lowest_probabilities_of_the_true_class_across_batches():
    import torch

    from ignite_mnist.analysis import WorstClassified

    torch.manual_seed(0)
    log_probabilities = torch.randn(50, 10).log_softmax(1)
    labels = torch.randint(0, 10, (50,))
    metric = WorstClassified(k=5)
    metric.reset()
    for start in range(0, 50, 16):  # batches as the evaluator gives them: slices of the set
        index = slice(start, min(start + 16, 50))
        metric.update((log_probabilities[index], labels[index], index))
    worst = metric.compute()
    truth = log_probabilities.gather(1, labels[:, None]).squeeze(1)
    assert [w["index"] for w in worst] == truth.argsort()[:5].tolist()
    assert all(w["label"] == labels[w["index"]] and w["predicted"] == log_probabilities[w["index"]].argmax()
               and abs(w["probability"] - truth[w["index"]].exp()) < 1e-6 for w in worst)


def test_accuracy_is_an_exact_looking_percent():
    """949 of 1000 reads 94.9 in every output, not 94.89999999999999 (100 times Ignite's fraction)."""
    import torch
    from torch import nn

    from ignite_mnist import data
    from ignite_mnist.engines import create_evaluator, evaluate

    class ReadsItsAnswer(nn.Module):  # the class to predict is written in each image's first pixel
        def forward(self, x):
            return nn.functional.one_hot((x[:, 0, 0, 0] * 255 / 20).round().long(), 10).float().log_softmax(1)

    for correct, total in ((949, 1000), (57, 100), (1, 3)):
        predicted = torch.arange(total) % 10
        labels = torch.where(torch.arange(total) < correct, predicted, (predicted + 1) % 10)
        images = torch.zeros(total, 28, 28, dtype=torch.uint8)
        images[:, 0, 0] = (predicted * 20).to(torch.uint8)
        evaluator = create_evaluator(ReadsItsAnswer(), data.TensorSet(images, labels, 0.0, 1.0), bf16=False)
        result = evaluate(evaluator, total, 128)
        assert result["correct"] == correct and result["accuracy"] == round(100 * correct / total, 10)
        assert repr(result["accuracy"]) in ("94.9", "57.0", "33.3333333333")


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_the_worst_images_captions_do_not_run_into_each_other(dataset):
    """Fashion-MNIST's class names are long: 'Trouser>T-shirt 1.9%' had run into its neighbours' captions."""
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ignite_mnist import analysis, data

    classes = data.DATASETS[dataset]["classes"]
    worst = [{"index": i, "label": i % 10, "predicted": (i * 7 + 3) % 10, "probability": 0.019} for i in range(24)]
    images = torch.zeros(24, 28, 28, dtype=torch.uint8)
    # test --plot's panel (13 inches, 1.45 of 2.45 parts of them) and TensorBoard's figure
    for columns, figsize, dpi, fontsize in ((6, (13 * 1.45 / 2.45, 5.6), 100, 10), (8, (8, 5.6), 80, 7)):
        figure = analysis._figure(figsize=figsize, dpi=dpi)
        ax = figure.add_subplot()
        analysis.draw_worst(ax, worst, images, classes, columns=columns, fontsize=fontsize)
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)
        boxes = [text.get_window_extent(renderer) for text in ax.texts]
        assert len(boxes) == 24
        overlapping = [(a, b) for a in range(24) for b in range(a + 1, 24) if boxes[a].overlaps(boxes[b])]
        assert not overlapping, [(ax.texts[a].get_text(), ax.texts[b].get_text()) for a, b in overlapping[:3]]
    assert analysis.things(classes) == ("digits" if dataset == "mnist" else "images")


def test_tensorboard_s_run_links_go_elsewhere_where_the_experiments_folder_cannot_take_them(compared, tmp_path,
                                                                                            monkeypatch):
    """A read-only or shared experiments folder (stood for here by a file in the links' way): the links that name the
    runs are made in the temporary folder instead, and TensorBoard is started on them."""
    import shutil
    import tempfile

    from ignite_mnist.experiment import open_experiment, tensorboard_runs

    experiments = tmp_path / "experiments"
    shutil.copytree(compared / "experiments", experiments, ignore=shutil.ignore_patterns(".tensorboard"))
    (experiments / ".tensorboard").write_text("in the way")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    opened = [open_experiment(experiments, name) for name in ("a-slow", "z-fast")]
    runs = tensorboard_runs(experiments, opened, "_all")
    assert runs.is_relative_to(tmp_path / "tmp") and sorted(p.name for p in runs.iterdir()) == ["a-slow", "z-fast"]
    assert all((runs / e.name).resolve() == e.tensorboard_dir.resolve() for e in opened)
    assert (experiments / ".tensorboard").read_text() == "in the way"
