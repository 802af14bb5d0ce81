"""scripts/bench.py's paired measurement of the engine: it runs inside the real training, and its interval."""

import importlib.util
import json
import shutil
import subprocess
import sys

from conftest import ROOT

from ignite_mnist import kernels

spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_median_interval_is_the_sign_tests():
    # n = 100: the textbook ranks are 40 and 61 (1-based); the 0-based values here equal their ranks - 1
    assert bench.median_ci95(list(range(100))) == [39, 60]
    assert bench.median_ci95([5, 0, 3, 1, 4, 2]) == [0, 5]  # 6 values: min to max covers 1 - 2/64 > 95%
    assert bench.median_ci95(list(range(5))) is None  # 1 - 2/32 < 95%: no interval exists


def test_the_engine_is_measured_in_blocks_inside_a_real_training(tmp_path):
    """bench.py wraps engines.attach_handlers to pair every 10 of the trainer's iterations with 10 bare steps:
    this fails if that wrapping no longer matches how training() attaches its handlers."""
    out = subprocess.run(
        [sys.executable, "scripts/bench.py", "--worker", "paired-engine", "--dataset", "mnist-sample", "--data-path",
         ".", "--work-dir", str(tmp_path), "--sizes", "5000,1000"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    blocks = result["paired_engine_overheads"]
    assert result["paired_engine_block_steps"] == 10 and len(blocks) == 5000 // 64 // 10  # 79 iterations: 7 pairs
    # both sides of every pair timed (neither empty nor hung); wide bounds, as a loaded machine may stall a block
    assert all(-0.99 < b < 99 for b in blocks), blocks
    low, high = result["paired_engine_overhead_ci95"]
    assert low <= result["paired_engine_overhead"] <= high
    assert "release of epoch 1 written" in out.stderr  # the whole run, handlers and all, went through
    assert not any((tmp_path / "experiments").iterdir())  # its experiment removed


def test_the_engine_host_bench_times_train_s_own_run_against_a_plain_loop():
    out = subprocess.run([sys.executable, "scripts/bench_engine_host.py", "--epochs", "2", "--rounds", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["us_per_iteration"]["engine"] > result["us_per_iteration"]["bare"] > 0
    assert result["engine_added_us"] == result["us_per_iteration"]["engine"] - result["us_per_iteration"]["bare"]
    assert "release of epoch 2 written: " in out.stderr  # train's own run, every handler attached, to its end


def test_the_progress_bar_bench_times_the_bar_train_attaches():
    out = subprocess.run([sys.executable, "scripts/bench_progress_bar.py", "--iterations", "300", "--epochs", "1",
                          "--rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bar as `train` attaches it (every 3)" in out.stdout
    result = json.loads(out.stdout.splitlines()[-1])
    assert set(result["us_per_iteration"]) == {"none", "each", "train"}
    assert all(us > 0 for us in result["us_per_iteration"].values())
    assert out.stderr == ""  # the bars drew to /dev/null, not over the report


def test_the_step_profile_times_the_real_step_s_operators_by_part():
    """profile_training.py step: every operator of the real step timed and charged to its part, inside the steps
    that contain them, and the parts adding up to the step's wall clock."""
    out = subprocess.run([sys.executable, "scripts/profile_training.py", "step", "--dataset", "mnist-sample",
                          "--steps", "10", "--top", "200", "--peak-blocks", "1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    parts = result["parts_ms"]
    for part in ("forward (and the batch, loss, zero_grad)", "backward", "optimizer step", "dropout masks"):
        assert parts[part] > 0, parts
    if kernels.library() is None:  # (the pooling kernel writes the plain layout itself)
        assert parts["layout copies (flatten, model.PlainLayout)"] > 0, parts
    if result["precision"] == "bf16":  # (auto: fp32 on a CPU without native bf16)
        assert parts["casts (bf16: autocast's)"] > 0, parts
    # the operators run inside the timed steps, and take most of a step (the rest is Python between them)
    assert 0.3 * result["step_ms"] < result["operators_ms"] < result["timed_step_ms"]
    table = out.stdout.split("operators timed one by one", 1)[1]
    assert "aten.convolution_backward.default" in table  # conv2
    if kernels.library() is not None:  # the fused kernels are timed too, each in its part
        for name, part in (("kernels.pool_", "forward"), ("kernels.pool_", "backward"), ("kernels.adadelta", "optimizer")):
            assert any(line.startswith(name) and part in line for line in table.splitlines()), (name, part, table)
    else:
        assert "aten.addcmul_.default" in table  # Adadelta's own
    # and the step's share of the GEMM peak, as bench.py measures it (one block here)
    assert len(result["paired_peak_fractions"]) == 1 and 0 < result["paired_peak_fraction"] < 1


def test_the_step_a_b_compares_two_checkouts_models_and_their_weights(tmp_path):
    """ab_step.py: this checkout's model against another's, step by step; a model that trains differently is
    named as such (here: the other checkout's dropout is torch's own, another random stream)."""
    args = [sys.executable, "scripts/ab_step.py", "--dataset", "mnist-sample", "--data-path", ".", "--blocks", "2",
            "--steps", "3"]
    out = subprocess.run(args + [str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["same_weights_after_20_steps"] is True and result["this_ms"] > 0 and result["other_ms"] > 0
    assert result["ratio_min"] <= result["ratio"] <= result["ratio_max"]

    other = tmp_path / "other"
    shutil.copytree(ROOT / "ignite_mnist", other / "ignite_mnist")
    source = (ROOT / "ignite_mnist" / "model.py").read_text()
    assert "self.p != 0 and" in source  # the byte dropout's condition, turned off below
    (other / "ignite_mnist" / "model.py").write_text(source.replace("self.p != 0 and", "False and"))
    out = subprocess.run(args + [str(other)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1])["same_weights_after_20_steps"] is False

    # a lever in the kernels alone: the other checkout's model calls its own kernels.py (here without kernels, so
    # its dropout bytes come from torch's generator, not Philox)
    (other / "ignite_mnist" / "model.py").write_text(source)
    kernels_source = (ROOT / "ignite_mnist" / "kernels.py").read_text()
    assert "_library = _load()" in kernels_source
    (other / "ignite_mnist" / "kernels.py").write_text(kernels_source.replace("_library = _load()", "_library = False"))
    out = subprocess.run(args + [str(other)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    same = json.loads(out.stdout.splitlines()[-1])["same_weights_after_20_steps"]
    assert same is (kernels.library() is None)  # (where this CPU builds no kernels, both sides run without)


def test_the_gpu_step_probe_runs_its_eager_way_on_the_cpu():
    """scripts/gpu_step_graph.py, for the next GPU: its dry run on the CPU goes through the product's own step, data
    and Engine, so that a change to them shows here, not in a GPU session's few minutes."""
    out = subprocess.run([sys.executable, "scripts/gpu_step_graph.py", "--device", "cpu", "--dataset", "mnist-sample",
                          "--steps", "100"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["train_images"] == 5000 and "graph" not in result
    eager = result["eager"]
    assert eager["ms_per_step"] > 0 and eager["engine_ms_per_step"] > 0 and 0 < eager["last_100_loss"] < 2.3  # learns
