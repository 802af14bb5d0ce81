"""Checkpoint files: what they hold besides model, optimizer, scheduler and trainer, and how they are read.

A checkpoint is loaded with torch.load(weights_only=True) only, so everything in it is tensors and plain
data: a crafted pickle is refused without being run.
"""

import os
import random
import zipfile
from pathlib import Path

from ignite_mnist import lazy_imports  # noqa: F401, I001  (before Ignite: see there)
import numpy as np
import torch
from ignite.handlers import Checkpoint

from ignite_mnist.errors import CheckpointGone, UserError, error_text, exists, is_file

FILENAME_PATTERN = "{name}_{global_step}.{ext}"  # checkpoint_<epoch>.pt: Experiment.checkpoints() reads these


class RNGStates:
    """The random generators (Python, NumPy, torch, CUDA): dropout masks go on as in an uninterrupted run.

    The batch order needs no state here: ShuffledBatches draws it from (seed, epoch).
    """

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "cached_gaussian": cached},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state["numpy"]  # its keys are a tensor that torch.load mapped onto the training device
        np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class Owner:
    """The experiment a checkpoint belongs to ({"name", "created"}, as its experiment.json says), saved in each
    checkpoint: one copied in from another experiment is refused (check_checkpoint), not read as this one's.
    Never restored: there is nothing to restore."""

    def __init__(self, owner: dict):
        self.owner = dict(owner)

    def state_dict(self) -> dict:
        return dict(self.owner)

    def load_state_dict(self, state: dict) -> None:
        pass


class History:
    """What every epoch measured (losses, accuracies in percent, learning rate, times), and whether early
    stopping ended the run: saved whole in each checkpoint, so a resumed run knows every epoch before it
    (even those whose checkpoint retention removed), and mirrored in the experiment's metrics.json.

    Not a dict: Checkpoint would walk into a dict instead of calling its state_dict().
    """

    def __init__(self):
        self.epochs, self.stopped_early, self.stopped_by = [], None, None  # stopped_by: the rule that stopped it

    @property
    def current(self) -> dict:
        return self.epochs[-1]

    def state_dict(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs], "stopped_early": self.stopped_early,
                **({"stopped_by": dict(self.stopped_by)} if self.stopped_by else {})}

    def load_state_dict(self, state: dict) -> None:
        self.epochs, self.stopped_early = [dict(e) for e in state["epochs"]], state["stopped_early"]
        self.stopped_by = state.get("stopped_by")  # (checkpoints of earlier versions have none)


def _corrupt_checkpoint_advice(path) -> str:
    """What to do with a damaged checkpoint: the last one moved away, `train` resumes from the one before (or starts
    again); an earlier one is lost to `test` and `export-release` (its release, if written, is whole)."""
    from ignite_mnist.experiment import CHECKPOINT_NAME  # (light: no cycle at import)

    path = Path(path)
    try:
        epochs = sorted(int(m.group(1)) for m in map(CHECKPOINT_NAME.fullmatch, os.listdir(path.parent)) if m)
    except OSError:
        epochs = []
    mine = CHECKPOINT_NAME.fullmatch(path.name)
    if not mine or not epochs or int(mine.group(1)) != epochs[-1]:
        return ": restore it from a copy, or use another epoch"
    return ": move it away to go back to the one before" if len(epochs) > 1 else \
        ": move it away to train again from epoch 1 (it is the only checkpoint)"


def read_checkpoint(path, device, what: str = "checkpoint", mmap: bool = False) -> dict:
    """torch.load with weights_only=True; any failure is one line that names the file.

    mmap=True maps the tensors instead of reading them: for callers that only look at the plain data.
    """
    try:
        if exists(path):  # (a missing one: torch.load's own error)
            if not is_file(path):  # a pipe would never open, a device never end
                raise ValueError("not a regular file")
            try:
                open(path, "rb").close()  # (is_zipfile takes a file it may not open for one that is not a zip)
            except PermissionError as e:
                raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
            if not zipfile.is_zipfile(path):  # else torch's message: rerun with weights_only=False
                raise ValueError("not a zip archive, as torch.save writes")
            if is_pt2_archive(path):  # else torch's: "PytorchStreamReader failed locating file data.pkl"
                raise ValueError("a torch.export archive, not torch.save's: a pt2 release is read from a .pt2 file")
        check_crcs(path, tensors=not mmap)
        loaded = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except UserError:
        raise
    except Exception as e:
        if not os.path.lexists(path):  # removed while being read (a running training's retention)
            raise CheckpointGone(f"{what} {path} no longer exists (removed while it was being read)") from None
        raise UserError(f"{what} {path} is corrupt or not an ignite-mnist {what} ({error_text(e)})"
                        + (_corrupt_checkpoint_advice(path) if what == "checkpoint" else "")) from None
    if not isinstance(loaded, dict):
        raise UserError(f"{what} {path} is not an ignite-mnist {what} (it holds a {type(loaded).__name__})")
    return loaded


def is_pt2_archive(path) -> bool:
    """Is this zip archive torch.export.save's (a pt2 release), which torch.load cannot read?"""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return not any(n.endswith("/data.pkl") for n in names) and any(n.endswith("/archive_format") for n in names)


def check_crcs(path, tensors: bool = True) -> None:
    """Read each member of a zip archive (torch.save's, torch.export.save's) so that zipfile checks its CRC-32:
    torch's reader never does, and flipped bytes would load as other weights. Raises zipfile.BadZipFile naming
    the member. tensors=False skips the tensor data (*/data/N), for mmap. A file that is not a zip is left to
    its loader to refuse."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if tensors or "/data/" not in info.filename:
                with archive.open(info) as member:
                    while member.read(1 << 22):
                        pass


def saved_epoch(checkpoint: dict):
    """The epoch a checkpoint was saved at, as its trainer state says (None where it says none)."""
    trainer = checkpoint.get("trainer")
    try:
        if "iteration" in trainer:  # what Engine.state_dict() saves, with epoch_length
            return trainer["iteration"] // trainer["epoch_length"]
        return int(trainer["epoch"])
    except (TypeError, KeyError, ValueError, ZeroDivisionError):
        return None


def check_checkpoint(path, checkpoint: dict, epoch: int, owner: dict) -> None:
    """The checkpoint read from `path` is what its name and folder say: epoch `epoch` of the experiment `owner`
    (Owner's state). Else a one-line error: a checkpoint renamed, or copied from another experiment, would be
    tested, exported or resumed as another epoch's. Checkpoints saved before Owner was are checked by epoch only."""
    held = saved_epoch(checkpoint)
    if held is None:
        raise UserError(f"checkpoint {path} lacks the trainer's state (its epoch): it is not an ignite-mnist "
                        "checkpoint of this experiment")
    if held != epoch:
        raise UserError(f"checkpoint {path} holds epoch {held}, not {epoch}: move it away")
    saved = checkpoint.get("owner")
    if saved is not None and saved != owner:
        other = saved.get("name") if isinstance(saved, dict) else None
        raise UserError(f"checkpoint {path} belongs to another experiment ({other!r}, created "
                        f"{saved.get('created') if isinstance(saved, dict) else None}), not to this one "
                        f"({owner['name']!r}, created {owner['created']}): move it away")


def history_of(checkpoints: dict, owner: dict) -> dict:
    """History's state as the last of `checkpoints` ({epoch: path}) of the experiment `owner` saved it.

    Checkpoints of ignite-mnist 0.1 hold only their own epoch's "metrics": the history is gathered from all.
    """
    if not checkpoints:
        return History().state_dict()
    last = read_checkpoint(checkpoints[max(checkpoints)], "cpu", mmap=True)
    check_checkpoint(checkpoints[max(checkpoints)], last, max(checkpoints), owner)
    if isinstance(last.get("history"), dict):
        return last["history"]
    epochs = [read_checkpoint(path, "cpu", mmap=True).get("metrics") for path in checkpoints.values()]
    return {"epochs": [e for e in epochs if isinstance(e, dict)], "stopped_early": None}


def load_checkpoint(path, to_load: dict, device, epoch: int, owner: dict) -> None:
    """Restore the objects of `to_load` from the checkpoint file of `epoch` of the experiment `owner`, or name the
    file in a one-line error."""
    checkpoint = read_checkpoint(path, device)
    check_checkpoint(path, checkpoint, epoch, owner)
    restore(path, checkpoint, to_load)


def restore(path, checkpoint: dict, to_load: dict) -> None:
    """Restore the objects of `to_load` from `checkpoint`, read from `path` (named in the one-line errors)."""
    missing = [key for key in to_load if key not in checkpoint]
    if missing == ["early_stopping"] and "trainer" in checkpoint:  # ours, from before the config said so
        raise UserError(f"checkpoint {path} holds no early-stopping state: it was trained without early stopping, "
                        "and training.early_stopping was set in experiment.json since; set it back to null, or init "
                        "another experiment with it")
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}: it is not an ignite-mnist checkpoint "
                        "of this experiment")
    try:
        Checkpoint.load_objects(to_load, {key: checkpoint[key] for key in to_load})
    except Exception as e:
        raise UserError(f"checkpoint {path} does not fit this experiment ({error_text(e, 300, whole=True)})") from None


def epoch_metrics(checkpoint: dict) -> dict:
    """What the checkpoint's own epoch measured (ignite-mnist 0.1 kept it as "metrics")."""
    history = checkpoint.get("history")
    return history["epochs"][-1] if isinstance(history, dict) and history.get("epochs") else checkpoint.get("metrics", {})
