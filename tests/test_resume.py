"""Resume is exact on the CPU: 1 epoch, then resume to 3, equals 3 epochs straight, bit for bit."""

import pytest
import torch

from conftest import assert_same, make_config
from ignite_mnist import data
from ignite_mnist.checkpoints import read_checkpoint
from ignite_mnist.launch import run_training
from ignite_mnist.experiment import create_experiment, load_config


def new_experiment(workdir, tiny_data, name, **changes):
    config = load_config(make_config(workdir, **changes))
    return create_experiment(workdir / "experiments", name, config, seed=7,
                             sizes=data.dataset_sizes("mnist", tiny_data))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resumed_training_equals_uninterrupted_training(workdir, tiny_data, precision):
    straight = new_experiment(workdir, tiny_data, f"straight-{precision}", **{"training.precision": precision})
    resumed = new_experiment(workdir, tiny_data, f"resumed-{precision}", **{"training.precision": precision})
    run_training(straight, tiny_data, max_epochs=3, device_name="cpu")
    run_training(resumed, tiny_data, max_epochs=1, device_name="cpu")
    assert list(resumed.checkpoints()) == [1]
    run_training(resumed, tiny_data, max_epochs=3, device_name="cpu")
    assert list(resumed.checkpoints()) == list(straight.checkpoints()) == [1, 2, 3]
    for epoch in (1, 2, 3):
        a = read_checkpoint(straight.checkpoints()[epoch], "cpu")
        b = read_checkpoint(resumed.checkpoints()[epoch], "cpu")
        assert_same(a, b, f"epoch {epoch}")
    last = read_checkpoint(straight.checkpoints()[3], "cpu")
    first = read_checkpoint(straight.checkpoints()[1], "cpu")
    assert not torch.equal(last["model"]["fc2.weight"], first["model"]["fc2.weight"]), "training changed the model"
    assert last["history"]["epochs"][-1]["test_accuracy"] > 50  # 320 digits, 3 epochs: it learns


def test_training_is_reproducible_from_the_seed_and_differs_with_another(workdir, tiny_data):
    a = new_experiment(workdir, tiny_data, "a")
    b = new_experiment(workdir, tiny_data, "b")
    other = create_experiment(workdir / "experiments", "other", a.config, seed=8,
                              sizes=data.dataset_sizes("mnist", tiny_data))
    for experiment in (a, b, other):
        run_training(experiment, tiny_data, max_epochs=1, device_name="cpu")
    weights = [read_checkpoint(e.checkpoints()[1], "cpu")["model"]["conv1.weight"] for e in (a, b, other)]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])
