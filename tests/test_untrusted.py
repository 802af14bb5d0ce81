"""Checkpoints and releases are untrusted input: a crafted pickle is refused without running its payload."""

import os
import pickle
import shutil

import pytest
import torch

from conftest import g, invoke


class Payload:
    """Unpickling this runs a command: it would create the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path, marker, kind):
    if kind == "torch.save":  # a zip checkpoint whose data.pkl carries the payload next to real weights
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["metrics"] = Payload(marker)
        torch.save(checkpoint, path)
    else:  # a bare pickle, as older tools wrote
        path.write_bytes(pickle.dumps({"model": Payload(marker)}))


def test_the_payload_does_run_when_loaded_without_weights_only(tmp_path):
    """The test's payload is real: the unsafe way of loading executes it."""
    marker = tmp_path / "ran"
    torch.save({"x": Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
@pytest.mark.parametrize("command", [["train", "--max-epochs", "3", "--device", "cpu"], ["test", "--epoch", "2"],
                                     ["export-release", "--epoch", "2"], ["info"]])
def test_a_crafted_checkpoint_is_refused_unrun(copy, capsys, tiny_data, kind, command):
    path = copy / "experiments" / "exp" / "checkpoints" / "checkpoint_2.pt"
    marker = copy / "payload-ran"
    plant(path, marker, kind)
    code, out, err = invoke(capsys, *g(copy, data=tiny_data), *command)
    assert not marker.exists(), "the payload ran"
    if command == ["info"]:  # info never unpickles a checkpoint; a file that is not torch's zip it reports
        assert code == 0
        problem = f"{path} (checkpoint {path} is corrupt or not an ignite-mnist checkpoint"
        assert (problem in out) == (kind == "pickle"), out
    else:
        assert code == 2 and f"error: checkpoint {path} is corrupt or not an ignite-mnist checkpoint" in err
        assert "Traceback" not in err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_a_crafted_release_is_refused_unrun(copy, capsys, kind):
    release = copy / "experiments" / "exp" / "releases" / "release_epoch_2.pt"
    shutil.copy(copy / "experiments" / "exp" / "checkpoints" / "checkpoint_2.pt", copy / "evil.pt")
    plant(copy / "evil.pt", copy / "payload-ran", kind)
    code, _, err = invoke(capsys, "predict", "--release", copy / "evil.pt", copy / "digit.png")
    assert not (copy / "payload-ran").exists(), "the payload ran"
    assert code == 2 and "is corrupt or not an ignite-mnist release" in err
    assert "weights_only" not in err  # torch's advice to load it unchecked: not for an untrusted file
    if kind == "torch.save":
        assert "(it holds objects that are not plain data, refused unloaded: " in err and "GLOBAL" in err, err
    assert invoke(capsys, "predict", "--release", release, copy / "digit.png")[0] == 0  # the genuine one works
