"""The experiment folder: what it holds, how it is created, read and locked.

    experiments/NAME/
        experiment.json                  config (validated, defaults filled), seed, split sizes, versions
        split.json                       train/validation indexes into the training set, drawn once at init
        verbose.log                      everything every command logged
        metrics.json                     every epoch's metrics and how the run ended (the last checkpoint's history)
        checkpoints/checkpoint_<E>.pt    model, optimizer, lr_scheduler, trainer, rng, history up to epoch E
        releases/release_epoch_<E>.pt    the model alone, for inference
        tensorboard/                     TensorBoard event files
        train.lock                       locked by the running `train` (flock), holds its pid

Every file is written whole or not at all (a temporary file, then os.replace), and `init` builds the
folder under a temporary name and renames it into place, so a failure leaves nothing half-made.
"""

import codecs
import copy
import datetime
import difflib
import functools
import fcntl
import hashlib
import json
import logging
import os
import platform
import random
import re
import shlex
import shutil
import socket
import stat
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ignite_mnist.errors import CheckpointGone, UserError, error_text, exists, is_dir, is_file

CONFIG_DIR = Path(__file__).resolve().parent / "config"
DEFAULT_CONFIG = CONFIG_DIR / "config.default.json"
DEFAULT_SCHEMA = CONFIG_DIR / "config.schema.json"
DEFAULT_DATA_PATH = Path("data")  # where the datasets are when neither --data-path nor the experiment says

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
CHECKPOINT_NAME = re.compile(r"checkpoint_([0-9]+)\.pt")
_RELEASE = re.compile(r"release_epoch_([0-9]+)\.(pt|pt2|onnx)")
MAX_CONFIG_BYTES = 1 << 20  # a config or schema is a few KB: more is the wrong file (or /dev/zero)
MAX_JSON_BYTES = 64 << 20  # an experiment's own files: split.json of 60,000 images is about 400 KB
MAX_SEED = 2**32 - 1  # NumPy's generator (seeded by Ignite's manual_seed) takes no more

log = logging.getLogger("ignite_mnist")
report_log = log.getChild("report")  # what a command prints on stdout, for verbose.log alone


# ---- config -------------------------------------------------------------------------------------


def read_json(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES, allow_nan: bool = False):
    """Parse a JSON file, or raise a UserError that names the file and the problem.

    Refuses a file larger than max_bytes, or not a regular file (a device or a pipe may never end, or
    never open), before reading it all; and NaN or Infinity unless allow_nan."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UserError(f"{what} {path} is not a regular file")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise UserError(f"{what} {path} is larger than {max_bytes >> 20} MiB: is it the right file?")
        text = raw.decode("utf-8-sig")  # (a byte-order mark, which some editors write, is no part of the JSON)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return json.loads(text, parse_constant=None if allow_nan else _not_json, object_pairs_hook=_no_key_twice)
    except _KeyTwice as e:
        raise UserError(f"{what} {path} gives the key {json.dumps(e.args[0])} twice in one object: which one is "
                        "meant? Keep one") from None
    except json.JSONDecodeError as e:
        message = e.msg.removesuffix(" at")  # ("Invalid control character at": json's own "at" before the place)
        raise UserError(f"{what} {path} is not valid JSON: {message} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # NaN, Infinity
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is not JSON that ignite-mnist reads: it is nested too deeply") from None


class _KeyTwice(ValueError):
    pass


def _no_key_twice(pairs: list) -> dict:
    """A JSON object of distinct keys: Python's json keeps the last of two, silently (a config or space edited by
    hand with a key pasted twice would run with one of them, unsaid)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        raise _KeyTwice(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return obj


def _not_json(constant: str):
    """NaN and Infinity are not JSON (Python's json reads them): a config or space must not hold them."""
    raise ValueError(f"{constant} is not a JSON number")


def schema_violations(config, schema, schema_path: Path) -> list:
    import jsonschema
    try:
        from referencing.exceptions import Unresolvable
    except ImportError:  # jsonschema < 4.18 resolves $ref itself
        from jsonschema.exceptions import RefResolutionError as Unresolvable

    validator_class = jsonschema.Draft202012Validator
    if isinstance(schema, dict):  # validator_for fails on a number or null: check_schema then says what is wrong
        validator_class = jsonschema.validators.validator_for(schema, default=validator_class)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise UserError(f"config schema {schema_path} is not a valid JSON schema: {e.message}") from None
    try:  # check_schema does not follow $ref: one that leads nowhere, or only to itself, fails here
        errors = sorted(validator_class(schema).iter_errors(config), key=lambda e: (e.json_path, e.message))
    except (Unresolvable, RecursionError) as e:
        reason = "a $ref leads back to itself" if isinstance(e, RecursionError) else error_text(e)
        raise UserError(f"config schema {schema_path} is not a usable JSON schema ({reason})") from None
    return [line for e in errors for line in _violation_lines(e)]


def _violation_lines(error) -> list:
    """jsonschema's error as lines "$.path: message"; where no alternative of a oneOf or anyOf fits, the errors
    of the one the value meant (the one whose required keys it has), not "... is not valid under any of the
    given schemas" with the value in Python's notation."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        branches = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        meant = [subs for subs in branches.values() if not any(sub.validator == "required" for sub in subs)]
        if len(meant) == 1:
            return [line for sub in meant[0] for line in _violation_lines(sub)]
        return [f"{error.json_path}: {json.dumps(error.instance)} has none of the allowed forms"]
    return [f"{error.json_path}: {_json_message(error)}"]


def _string_hint(text) -> str:
    """Why a string given where a number or a constant is wanted may be one: written in quotes ("0.5"), or not as JSON
    writes it (.5, +1, True, None: `--set` takes what is not JSON as a string)."""
    if not isinstance(text, str):
        return ""
    try:
        if not isinstance(json.loads(text, parse_constant=_not_json), (str, list, dict)):  # (not NaN: no JSON)
            return " (a string: without its quotes it is one)"
    except ValueError:
        pass
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text.strip()) or \
            text.strip().lower() in ("true", "false", "none", "null"):
        return " (a string: JSON writes 0.5, not .5 or +1, and true, false, null in lower case)"
    return ""


def _json_message(error) -> str:
    """jsonschema's message in JSON's notation, the config's own (true, "fp32", {"patience": 1}), not Python's
    (True, 'fp32', {'patience': 1})."""
    value = json.dumps(error.instance)
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        hint = _string_hint(error.instance) if set(types) & {"number", "integer", "boolean", "null"} else ""
        return f"{value} is not of type {' or '.join(types)}{hint}"
    if error.validator == "enum":
        return f"{value} is not one of {json.dumps(error.validator_value)}"
    if error.validator == "const":
        return f"{value} is not {json.dumps(error.validator_value)}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        extra = [key for key in error.instance if key not in error.schema.get("properties", {})]
        return f"unknown key{'s' * (len(extra) > 1)} {', '.join(map(json.dumps, extra))}"
    if error.message.startswith(repr(error.instance)):  # minimum, maximum, ...: the value first, then the rule
        return value + error.message[len(repr(error.instance)):]
    return error.message


def _with_defaults(config: dict, schema: dict) -> dict:
    """Fill the schema's defaults for missing optional fields; turn integral numbers into ints."""
    filled = dict(config)
    for key, sub in schema.get("properties", {}).items():
        types = sub.get("type") if isinstance(sub.get("type"), list) else [sub.get("type")]
        if key not in filled and "default" in sub:
            filled[key] = sub["default"]
        elif isinstance(filled.get(key), dict):
            filled[key] = _with_defaults(filled[key], sub)
        elif "integer" in types and isinstance(filled.get(key), float):
            filled[key] = int(filled[key])
    return filled


def _semantic_violations(config: dict) -> list:
    """What the schema cannot say: rules that tie fields together (config already valid and filled)."""
    if config["training"]["early_stopping"] and config["data"]["val_split"] == 0:
        return ["$.training.early_stopping: early stopping watches validation accuracy, but data.val_split is 0 "
                "(no validation set): set data.val_split above 0 or early_stopping to null"]
    return []


@functools.lru_cache(maxsize=1)
def builtin_schema() -> dict:
    """The packaged config schema (read once: list opens every experiment); not to be modified."""
    return read_json(DEFAULT_SCHEMA, "config schema")


def load_config(path: Path, schema_path: Path = DEFAULT_SCHEMA, overrides=()) -> dict:
    """Read a config, apply `overrides` ("training.lr=0.5", as `init --set` takes them) and validate the
    result: every violation is reported, each with its JSON path."""
    unknown = [unknown_key(o.partition("=")[0].strip(), "--set ") if o.partition("=")[0].strip() and "=" in o
               else None for o in overrides]  # (a malformed one: apply_overrides says how to write it)
    known = [o for o, problem in zip(overrides, unknown) if not problem]  # the others' problems are said with the rest
    config, violations = validate_config(apply_overrides(read_json(path, "config", MAX_CONFIG_BYTES), known),
                                         schema_path)
    violations = [problem for problem in unknown if problem] + violations
    if violations:
        n = len(violations)
        given = f" with --set {' '.join(overrides)}" if overrides else ""
        raise UserError(f"invalid config {path}{given} ({n} problem{'s' * (n > 1)}): " + "; ".join(violations))
    return config


def validate_config(config, schema_path: Path = DEFAULT_SCHEMA):
    """(config with the defaults filled, [violations]): it must satisfy the given schema and also the
    packaged one, which describes what this program understands (a custom schema cannot let through a
    field the code would not know)."""
    builtin = builtin_schema()
    custom = Path(schema_path) != DEFAULT_SCHEMA
    schema = read_json(schema_path, "config schema", MAX_CONFIG_BYTES) if custom else builtin
    violations = schema_violations(config, schema, schema_path)
    if not violations and builtin != schema:
        violations = schema_violations(config, builtin, DEFAULT_SCHEMA)
    if violations:
        return config, violations
    config = _with_defaults(config, builtin)
    return config, _semantic_violations(config)


def config_keys(schema: dict, prefix: str = "") -> list:
    """Every dotted key that the schema describes: data.dataset, training.early_stopping.patience, ..."""
    keys = []
    for key, sub in schema.get("properties", {}).items():
        keys.append(prefix + key)
        keys += config_keys(sub, f"{prefix}{key}.")
    return keys


def unknown_key(key: str, where: str):
    """What is wrong with a dotted key that the config does not have (naming the nearest one it has); None if it
    has it."""
    keys = config_keys(builtin_schema())
    if key not in keys:
        nearest = difflib.get_close_matches(key, [k for k in keys if "." in k], n=1, cutoff=0)  # not a section
        return f"{where}{key}: the config has no such key" + (f"; the nearest is {nearest[0]}" if nearest else "")
    return None


def check_config_key(key: str, where: str) -> None:
    """A dotted key that the config does not have: a UserError that names the nearest one it has."""
    problem = unknown_key(key, where)
    if problem:
        raise UserError(problem)


def apply_overrides(config, overrides):
    """Set each "dotted.key=value" of `overrides` in a copy of config; the value is read as JSON if it
    parses (0.5, true, null, {"patience": 3}), else taken as a string (mnist-sample)."""
    config = copy.deepcopy(config)
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE with a dotted key into the config (training.lr=0.5), not {override!r}")
        check_config_key(key, "--set ")
        try:
            value = json.loads(text, parse_constant=_not_json, object_pairs_hook=_no_key_twice)
        except _KeyTwice as e:
            raise UserError(f"--set {key}: the value gives the key {json.dumps(e.args[0])} twice in one object: "
                            "which one is meant? Keep one") from None
        except ValueError:
            value = text
        except RecursionError:
            raise UserError(f"--set {key}: the value is nested too deeply") from None
        *parents, leaf = key.split(".")
        node = config if isinstance(config, dict) else {}
        for parent in parents:  # a section that is absent or null (early_stopping) becomes an object
            if not isinstance(node.get(parent), dict):
                node[parent] = {}
            node = node[parent]
        node[leaf] = value
    return config


# ---- files --------------------------------------------------------------------------------------


def partial_prefix(target: Path) -> str:
    """The start of the name of a temporary file that becomes `target` once whole (mkstemp's prefix, beside it): its
    writer's host and pid, so that remove_partial_files removes a dead writer's alone, never a running export's, and
    a name no file of the user's has."""
    return f".{target.name}.partial-{socket.gethostname()}-{os.getpid()}-"


_PARTIAL = re.compile(r"\..+\.partial-(.+)-(\d+)-[a-z0-9_]{8}(\.[a-z0-9]+)?")  # partial_prefix's, mkstemp's 8


def pid_alive(pid: int) -> bool:
    """Whether a process of that pid runs on this host (another user's too)."""
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process, alive
        return True
    except (OSError, OverflowError, ValueError):  # none of that pid
        return False
    return True


def _flock_held(st: os.stat_result) -> bool:
    """Whether a process holds an flock on the file of `st` (Linux's /proc/locks; where it cannot be read: whether
    nothing says otherwise, so False)."""
    here = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            return any(fields[1] == "FLOCK" and fields[-3] == here
                       for fields in (line.split() for line in locks) if len(fields) >= 8)
    except OSError:
        return False


def _dead_writer(name: str) -> bool:
    """Whether `name` is a temporary file of partial_prefix whose writer, on this host, is gone."""
    match = _PARTIAL.fullmatch(name)
    return bool(match) and match.group(1) == socket.gethostname() and not pid_alive(int(match.group(2)))


def _stale_partial(path: Path, in_releases: bool) -> bool:
    """A temporary file whose writer cannot be asked: another host's (a container's name changes with each run) a day
    old, or, in releases/, one that an earlier ignite-mnist named tmp and 8 characters, an hour old. No export runs so
    long."""
    match = _PARTIAL.fullmatch(path.name)
    old_style = in_releases and re.fullmatch(r"tmp[a-z0-9_]{8}\.(pt|pt2|onnx)", path.name)
    if not (match or old_style):
        return False
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    return age > (86400 if match else 3600)


def write_json(path: Path, obj) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=partial_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it private
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate_name(name) -> str:
    if name is None:
        raise UserError("this command needs an experiment: pass --experiment-name NAME (before the command)")
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(
            f"invalid experiment name {name!r}: use up to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for dist in ("ignite-mnist", "torch", "torchvision", "pytorch-ignite", "tensorboardX", "jsonschema"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


# ---- the experiment -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    root: Path
    meta: dict  # the content of experiment.json

    name = property(lambda self: self.root.name)
    config = property(lambda self: self.meta["config"])
    seed = property(lambda self: self.meta["seed"])
    # in each checkpoint: the name init gave it (which travels with a renamed folder) and its creation time
    owner = property(lambda self: {"name": self.meta.get("name", self.name), "created": self.meta.get("created")})
    meta_file = property(lambda self: self.root / "experiment.json")
    split_file = property(lambda self: self.root / "split.json")
    log_file = property(lambda self: self.root / "verbose.log")
    metrics_file = property(lambda self: self.root / "metrics.json")
    checkpoints_dir = property(lambda self: self.root / "checkpoints")
    releases_dir = property(lambda self: self.root / "releases")
    tensorboard_dir = property(lambda self: self.root / "tensorboard")
    lock_file = property(lambda self: self.root / "train.lock")

    # the folder `init` read the dataset from (recorded in experiment.json), else ./data (experiments made before
    # that was recorded): where commands read it without --data-path
    own_data_path = property(lambda self: Path(self.meta.get("data_path") or DEFAULT_DATA_PATH))
    # the SHA-256 of each split `init` read ({"train": ..., "test": ...}; None for experiments made before): the
    # data every later command must read (data.tensor_sets)
    data_digests = property(lambda self: self.meta.get("data_digests"))

    def data_path(self, given=None) -> Path:
        """Where the experiment's dataset is read: --data-path where one is given, else its own_data_path. A recorded
        folder that is gone (the data moved, the experiments copied to another machine) is named as such, rather
        than downloaded into anew."""
        if given is not None:
            return Path(given)
        recorded = self.meta.get("data_path")
        if recorded and self.config["data"]["dataset"] != "mnist-sample" and not is_dir(recorded):
            raise UserError(f"the data folder {recorded}, where `init` found {self.config['data']['dataset']} "
                            f"(recorded in {self.meta_file}), is not there now: give its new place with --data-path"
                            + (" (`train` records it)" if self.data_digests else ""))
        return self.own_data_path

    def check_folders(self, *folders: Path, writable: bool = False) -> None:
        """The folders the experiment writes in (default: all) are folders where they exist: a file in the way is
        named before a training starts, not after its first epoch; so is, with `writable`, a folder that cannot be
        written in (read-only, immutable), tried with a file made and removed at once."""
        for folder in folders or (self.checkpoints_dir, self.releases_dir, self.tensorboard_dir):
            if (exists(folder) or folder.is_symlink()) and not is_dir(folder):
                raise UserError(f"{folder} is not a folder: the experiment keeps its {folder.name} there; move it away")
            if writable and is_dir(folder):
                try:
                    tempfile.TemporaryFile(dir=folder).close()
                except OSError as e:
                    raise UserError(f"cannot write in {folder}: {e.strerror}") from None

    def load_split(self) -> dict:
        """{"train": [...], "validation": [...]}: indexes into the dataset's training set, as init drew them."""
        split = read_json(self.split_file, "split file")
        if not (isinstance(split, dict) and all(isinstance(split.get(k), list) for k in ("train", "validation"))):
            raise UserError(f"split file {self.split_file} is malformed: it needs 'train' and 'validation' lists")
        sizes = self.meta.get("split")
        if not (isinstance(sizes, dict)
                and all(type(sizes.get(k)) is int and sizes[k] >= 0 for k in ("train", "validation"))):
            raise UserError(f"experiment file {self.meta_file} is malformed: its 'split' needs the 'train' and "
                            "'validation' sizes")
        problem = _split_problem(split["train"], split["validation"], sizes)
        if not problem and "digest" in sizes and split_digest(split) != sizes["digest"]:
            problem = "its indexes are not those `init` drew (their SHA-256 differs from experiment.json's)"
        if problem:  # redrawing it would not give back the images the checkpoints were trained and chosen on
            raise UserError(f"split file {self.split_file} is damaged: {problem}; the experiment's split cannot be "
                            "redrawn safely (its checkpoints and scores depend on it): restore split.json from a "
                            "backup or create a new experiment")
        return {"train": split["train"], "validation": split["validation"]}

    def checkpoints(self) -> dict:
        """{epoch: path} of the complete checkpoints, by epoch (temporary files of a killed save are not)."""
        self.check_folders(self.checkpoints_dir)  # a file in its place is named, not taken for "none yet"
        if not is_dir(self.checkpoints_dir):
            return {}
        found = ((CHECKPOINT_NAME.fullmatch(p.name), p) for p in self.checkpoints_dir.iterdir())
        return dict(sorted((int(m.group(1)), p) for m, p in found if m))

    def checkpoint(self, epoch) -> Path:
        """The checkpoint of `epoch` (None: the last one), or a UserError listing those that exist."""
        checkpoints = self.checkpoints()
        if not checkpoints:
            raise UserError(f"experiment {self.name} has no checkpoints yet: run `train` first")
        if epoch is None:
            epoch = max(checkpoints)
        if epoch not in checkpoints:
            history = self.history()
            trained = {e["epoch"] for e in history["epochs"]}
            keep_last = self.config["training"]["keep_checkpoints"]
            why = "" if epoch not in trained else "it was deleted or moved away" if epoch in self.retained(history) \
                else f"it was removed by retention (training.keep_checkpoints {keep_last})"
            raise CheckpointGone(
                f"experiment {self.name} has no checkpoint of epoch {epoch}" + (f": {why}" if why else "")
                + f"; epochs with a checkpoint: {_ranges(list(checkpoints))}"
            )
        return checkpoints[epoch]

    @staticmethod
    def checkpoint_problem(path: Path):
        """What is wrong with a checkpoint file, as far as its zip directory tells (torch.save writes a zip);
        None if nothing. Cheap, and without torch: for info. Loading checks the rest."""
        try:
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("/data.pkl") for name in archive.namelist()):
                    return None
                reason = "no data.pkl inside"
        except (zipfile.BadZipFile, OSError) as e:
            reason = str(e)
        return f"checkpoint {path} is corrupt or not an ignite-mnist checkpoint ({reason})"

    def history(self) -> dict:
        """{"epochs": [metrics of each epoch trained], "stopped_early": epoch or None}, as of the last checkpoint.

        Read from metrics.json, small and plain; from the last checkpoint itself when metrics.json is
        missing or does not end at that checkpoint (a kill came between the two writes).
        """
        checkpoints = self.checkpoints()
        if not checkpoints:
            return {"epochs": [], "stopped_early": None}
        try:  # NaN allowed: a diverged loss is NaN, and the mirror writes it so
            history = read_json(self.metrics_file, "metrics file", allow_nan=True)
            if self._is_history(history, max(checkpoints)):
                return {"epochs": history["epochs"], "stopped_early": history["stopped_early"],
                        **({"stopped_by": history["stopped_by"]} if "stopped_by" in history else {})}
        except UserError:  # missing, not a regular file, unreadable, not JSON, nested beyond reason
            pass
        from ignite_mnist.checkpoints import history_of

        return history_of(checkpoints, self.owner)

    def _is_history(self, history, last: int) -> bool:
        """Whether metrics.json's content has the shape History.state_dict() gives it, up to epoch `last`
        (anything else was edited by hand or damaged: the checkpoint is the truth). The epochs are 1..last,
        each with the same keys (the product writes the same metrics every epoch), plain numbers (NaN and
        Infinity too: a diverged loss); validation accuracy is there iff the experiment has a validation set."""
        if not (isinstance(history, dict) and "stopped_early" in history and isinstance(history.get("epochs"), list)
                and len(history["epochs"]) == last):
            return False
        epochs, stopped = history["epochs"], history["stopped_early"]
        if not (stopped is None or type(stopped) is int and 1 <= stopped <= last):
            return False
        rule = history.get("stopped_by", {"patience": 1, "min_delta": 0})
        if not (isinstance(rule, dict) and type(rule.get("patience")) is int and type(rule.get("min_delta")) in
                (int, float) and (stopped is not None or "stopped_by" not in history)):
            return False
        keys = set(epochs[0]) if isinstance(epochs[0], dict) else set()
        validation = self.config["data"]["val_split"] > 0
        if not {"epoch", "test_accuracy", *["validation_accuracy"] * validation} <= keys or \
                not validation and any(k.startswith("validation_") for k in keys):
            return False
        return all(isinstance(e, dict) and set(e) == keys and type(e["epoch"]) is int and e["epoch"] == i
                   and all(type(v) in (int, float) for v in e.values()) for i, e in enumerate(epochs, start=1))

    def write_history(self, history: dict) -> None:
        write_json(self.metrics_file, history)

    def moved_data_path(self, given) -> bool:
        """Whether `given` (--data-path) may be the new place of the data `init` recorded: the recorded folder is gone,
        and digests were recorded to tell whether the data there is the same (launch checks them before recording)."""
        recorded = self.meta.get("data_path")
        return bool(given is not None and recorded and self.data_digests and not is_dir(recorded)
                    and os.path.abspath(given) != recorded and self.config["data"]["dataset"] != "mnist-sample")

    def record_data_path(self, data_path) -> None:
        """experiment.json's data_path set to the folder's new place (atomically; the rest as it is)."""
        meta = read_json(self.meta_file, "experiment file")
        meta["data_path"] = self.meta["data_path"] = os.path.abspath(data_path)
        write_json(self.meta_file, meta)

    def publish_history(self, history: dict) -> None:
        """After a checkpoint is whole on disk: mirror its history in metrics.json, then apply retention."""
        self.write_history(history)
        self.remove_unretained_checkpoints()

    def retained(self, history: dict) -> set:
        """The epochs whose checkpoints retention keeps: the last training.keep_checkpoints and the best (all
        without it)."""
        trained = [e["epoch"] for e in history["epochs"]]
        keep_last = self.config["training"]["keep_checkpoints"]
        return set(trained[-keep_last:]) | {self.best_epoch(history)} if keep_last else set(trained)

    def best_epoch(self, history: dict = None):
        """The epoch of highest validation accuracy (ties: the earlier); None without a validation set."""
        scored = [e for e in (history or self.history())["epochs"] if "validation_accuracy" in e]
        return max(scored, key=lambda e: (e["validation_accuracy"], -e["epoch"]))["epoch"] if scored else None

    def resolve_epoch(self, spec) -> int:
        """--epoch N, best or last, as an epoch number (or a UserError that says why not)."""
        if spec in (None, "last"):
            self.checkpoint(None)  # none yet: says so
            return max(self.checkpoints())
        if spec == "best":
            if self.config["data"]["val_split"] == 0:
                raise UserError(f"experiment {self.name} has no validation set (data.val_split 0), so it has no best "
                                "epoch: choosing on the test set would overfit it; use --epoch last or a number")
            history = self.history()
            best = self.best_epoch(history)
            if best is None:
                self.checkpoint(None)  # no checkpoints yet: says so
                raise UserError(f"experiment {self.name} has no validation metrics in its checkpoints")
            checkpoints = self.checkpoints()
            if best not in checkpoints:  # deleted by hand (retention keeps it): the best of those left, named
                left = [e for e in history["epochs"] if e["epoch"] in checkpoints]
                other = self.best_epoch({"epochs": left})
                accuracy = next((e["validation_accuracy"] for e in left if e["epoch"] == other), None)
                raise CheckpointGone(  # (or a running training's new best made this one go: chosen again)
                    f"the best epoch of experiment {self.name}, {best}, has no checkpoint: it was deleted or moved "
                    "away" + (f"; the best of the epochs with one is {other} (validation accuracy {accuracy:.2f}%): "
                              f"use --epoch {other}" if other is not None else ""))
            return best
        if not re.fullmatch(r"-?[0-9]+", str(spec)):  # int() would also take "2_0" (20) and other scripts' digits
            raise UserError(f"--epoch takes an epoch number, best or last, not {spec!r}")
        if int(spec) < 1:
            raise UserError(f"--epoch takes an epoch number from 1 (epochs count from 1), best or last, not {spec}")
        return int(spec)

    def remove_unretained_checkpoints(self) -> None:
        """With training.keep_checkpoints K: delete all checkpoints but the last K and the best epoch's.

        Called after each new checkpoint is whole on disk (a kill at any moment leaves a resumable experiment).
        """
        keep_last = self.config["training"]["keep_checkpoints"]
        if not keep_last:
            return
        checkpoints = self.checkpoints()
        epochs = list(checkpoints)
        keep = set(epochs[-keep_last:]) | {self.best_epoch()}
        if set(epochs) <= keep:
            return
        for path in (checkpoints[epochs[-1]], self.checkpoints_dir):  # the new one durable before the old go
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for epoch in epochs:
            if epoch not in keep:
                checkpoints[epoch].unlink(missing_ok=True)

    def early_stopping_rule(self, history: dict = None) -> str:
        """The rule that stopped the training: as its history recorded it, else (experiments of earlier versions)
        as the config says it now."""
        rule = (history or {}).get("stopped_by") or self.config["training"]["early_stopping"]
        if not rule:  # set to null by hand after the stop: the stop stands (its checkpoints end there)
            return "by the rule it was trained with (training.early_stopping is null in experiment.json now)"
        return (f"validation accuracy did not improve by more than {rule['min_delta']:g} points "
                f"for {rule['patience']} epoch{'s' * (rule['patience'] > 1)}")

    def remove_partial_files(self) -> None:
        """Delete what a killed save left, never read: DiskSaver's temporary files (tmp and 8 characters, as
        NamedTemporaryFile names them: only `train` writes checkpoints, under its lock), and the temporary files of
        write_json and export_release whose writer is dead (partial_prefix). Nothing else: a user's own files stay."""
        for folder in (self.checkpoints_dir, self.releases_dir, self.root):
            for path in folder.iterdir() if is_dir(folder) else ():
                if (folder == self.checkpoints_dir and re.fullmatch(r"tmp[a-z0-9_]{8}", path.name)) or \
                        _dead_writer(path.name) or _stale_partial(path, folder == self.releases_dir):
                    path.unlink(missing_ok=True)

    def release_path(self, epoch: int) -> Path:
        return self.releases_dir / f"release_epoch_{epoch}.pt"

    def release_of(self, epoch, fmt: str = "pt"):
        """The path (a str) of the release of `epoch` in format `fmt`, or None where there is none."""
        return next((r["path"] for r in self.releases() if (r["epoch"], r["format"]) == (epoch, fmt)), None)

    def releases(self) -> list:
        """[{"epoch", "format", "path"}] of the release files (pt, pt2, onnx), by epoch."""
        self.check_folders(self.releases_dir)  # a file in its place is named, not taken for "none yet"
        if not is_dir(self.releases_dir):
            return []
        found = ((_RELEASE.fullmatch(p.name), p) for p in self.releases_dir.iterdir() if is_file(p))
        return [{"epoch": int(m.group(1)), "format": m.group(2), "path": str(p)}
                for m, p in sorted(((m, p) for m, p in found if m), key=lambda mp: (int(mp[0].group(1)), mp[1].name))]

    def trainer_pid(self):
        """The pid of the `train` that holds this experiment now, from its lock file, where the kernel says the file
        is locked (/proc/locks: the pid a SIGKILLed train left may be another process's since); None if none is."""
        try:
            with open(self.lock_file, "rb") as f:
                pid = int(f.read(32).decode().strip() or 0)
                return pid if pid > 0 and _flock_held(os.fstat(f.fileno())) else None  # (empty: none, no /proc read)
        except (OSError, ValueError):
            return None

    @contextmanager
    def training_lock(self):
        """Hold the experiment for one `train` at a time.

        flock is released by the kernel when its holder dies, even by SIGKILL, so a lock left by a dead
        process is simply taken over; the pid inside, there while the lock is held, is for the message of
        whoever is refused.
        """
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write in experiment folder {self.root}: {e.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise UserError(
                    f"experiment {self.name} is already being trained by process {owner}: "
                    "wait for it to finish or stop it, then run `train` again"
                ) from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as e:  # (a full disk)
                raise UserError(f"cannot write {self.lock_file}: {e.strerror}") from None
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # released: empty again (only a dead owner leaves its pid behind)
        finally:
            os.close(fd)


def _ranges(numbers: list) -> str:
    """[1, 2, 3, 5] -> '1-3, 5': a long list of epochs stays one short line."""
    parts, start = [], None
    for i, n in enumerate(numbers):
        start = n if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def command_line(experiments_path: Path, name: str, command: str, data_path: Path = None) -> str:
    """The ignite-mnist command that runs `command` on experiment `name`, with the global options that find it
    (the folders where they are not the defaults): for the hints of messages, to be pasted as they are."""
    where = "" if Path(experiments_path) == Path("experiments") else \
        f" --experiments-path {shlex.quote(str(experiments_path))}"
    if data_path is not None:  # (None where the experiment's own folder will do: Experiment.data_path)
        where += f" --data-path {shlex.quote(str(data_path))}"
    return f"ignite-mnist{where} -e {shlex.quote(name)} {command}"


def check_experiments_folder(experiments_path: Path, must_exist: bool = False) -> None:
    """--experiments-path is a folder, where there is something; must_exist: for the commands that read them all."""
    path = Path(experiments_path)
    if (exists(path) or path.is_symlink()) and not is_dir(path):
        raise UserError(f"--experiments-path {path} is not a folder: name the folder that holds the experiments")
    if must_exist and not is_dir(path):
        raise UserError(f"no experiments folder {path}: create an experiment with `init` first")


def check_name_free(experiments_path: Path, name: str) -> None:
    """Before `init` makes experiment `name`: the experiments folder is one, and nothing has that name yet."""
    check_experiments_folder(experiments_path)
    root = Path(experiments_path) / name
    if exists(root) or root.is_symlink():
        raise _name_taken(experiments_path, name)


def _name_taken(experiments_path: Path, name: str) -> UserError:
    """init's answer for a name in use: by an experiment, or by something else (a file, a folder of no experiment)."""
    root = Path(experiments_path) / name
    if is_file(root / "experiment.json"):
        return UserError(f"experiment {name!r} already exists in {experiments_path}: pick another name or delete it")
    if os.path.lexists(root / "experiment.json"):  # a pipe, a device, a folder, a link to nothing
        return UserError(f"experiment file {root / 'experiment.json'} is not a regular file: move it away")
    what = ("a folder that holds no experiment.json" if is_dir(root) else "a file" if exists(root)
            else "a link to nothing")
    return UserError(f"{root} is {what}, not an experiment: pick another name, or move it away")


def open_experiment(experiments_path: Path, name: str) -> Experiment:
    check_experiments_folder(experiments_path)
    root = Path(experiments_path) / validate_name(name)
    if (exists(root) or root.is_symlink()) and not is_file(root / "experiment.json"):
        raise _name_taken(experiments_path, name)  # a file, or a folder `init` did not make
    if not is_file(root / "experiment.json"):
        known = sorted(p.parent.name for p in Path(experiments_path).glob("*/experiment.json"))
        hint = f"; experiments there: {', '.join(known[:10])}{', ...' * (len(known) > 10)}" if known else ""
        raise UserError(f"no experiment {name!r} in {experiments_path}: create it with `init`{hint}")
    meta = read_json(root / "experiment.json", "experiment file")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or not isinstance(meta.get("seed"), int):
        raise UserError(f"experiment file {root / 'experiment.json'} is malformed: it needs 'config' and 'seed'")
    if type(meta["seed"]) is not int or not 0 <= meta["seed"] <= MAX_SEED:  # true is an int to isinstance
        raise UserError(f"experiment file {root / 'experiment.json'} is malformed: its seed must be between 0 and "
                        f"2**32 - 1, not {json.dumps(meta['seed'])}")
    if "data_path" in meta and not (isinstance(meta["data_path"], str) and meta["data_path"]):
        raise UserError(f"experiment file {root / 'experiment.json'} is malformed: its data_path must be a folder's "
                        f"path, not {json.dumps(meta['data_path'])}")
    digests = meta.get("data_digests")
    if "data_digests" in meta and not (isinstance(digests, dict) and all(
            isinstance(digests.get(split), str) for split in ("train", "test"))):
        raise UserError(f"experiment file {root / 'experiment.json'} is malformed: its data_digests must map 'train' "
                        f"and 'test' to SHA-256 digests, not {json.dumps(digests)[:100]}")
    config, violations = validate_config(meta["config"])
    if violations:
        raise UserError(f"the config stored in {root / 'experiment.json'} is invalid: " + "; ".join(violations))
    return Experiment(root, {**meta, "config": config})


def flatten(config: dict, prefix: str = "") -> dict:
    """{"training": {"lr": 1.0}} -> {"training.lr": 1.0}: the dotted keys that --set takes."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def summarize_experiments(experiments_path: Path) -> list:
    """One summary per experiment folder under experiments_path, best validation accuracy first:
    {name, dataset, epochs, best_epoch, best_val_accuracy, test_accuracy (at the best epoch; without validation
    at the last, the epoch train releases),
    stopped_early, sweep (a sweep's trial: its study, number, state...), training (a `train` holds it now), config,
    releases}; a folder that cannot be read is {name, broken: why}, last. Without validation accuracy: the trained
    ones first.

    Reads experiment.json and metrics.json only (the checkpoints only if metrics.json lags behind them)."""
    folder = Path(experiments_path)
    check_experiments_folder(folder, must_exist=True)
    rows = []
    for root in sorted(p for p in folder.iterdir() if is_dir(p) and not p.name.startswith(".")):
        try:
            if not is_file(root / "experiment.json"):  # (a folder this user may not read: a broken row, below)
                rows.append({"name": root.name, "broken": f"{root} holds no experiment.json"})
                continue
            experiment = open_experiment(folder, root.name)
            history = experiment.history()
            best = experiment.best_epoch(history)
            last = history["epochs"][-1]["epoch"] if history["epochs"] else 0
            released = last if best is None else best  # without validation, train releases the last epoch
            at_best = next((e for e in history["epochs"] if e["epoch"] == released), {})
            rows.append({
                "name": experiment.name, "dataset": experiment.config["data"]["dataset"], "epochs": last,
                "best_epoch": best, "best_val_accuracy": at_best.get("validation_accuracy"),
                "test_accuracy": at_best.get("test_accuracy"), "stopped_early": history["stopped_early"],
                "sweep": experiment.meta.get("sweep"), "training": experiment.trainer_pid() is not None,
                "config": experiment.config,
                "releases": [{"epoch": r["epoch"], "format": r["format"]} for r in experiment.releases()],
            })
        except UserError as e:
            rows.append({"name": root.name, "broken": str(e)})
        except (OSError, ValueError, TypeError, KeyError) as e:  # unreadable, or metrics.json edited by hand
            rows.append({"name": root.name, "broken": f"{type(e).__name__}: {e}"})
    return sorted(rows, key=lambda row: ("broken" in row, *best_first(row.get("best_val_accuracy")),
                                         not row.get("epochs"), row["name"]))  # trained ones before the others


def best_first(accuracy) -> tuple:
    """A sort key: the highest accuracy first, None (no validation) after every number, 0 included."""
    return (accuracy is None, -(accuracy or 0))


def tensorboard_runs(experiments_path: Path, experiments: list, view: str) -> Path:
    """A folder of links, one per experiment, named after it, to its TensorBoard logs: given as --logdir, it
    makes TensorBoard name each run after its experiment (its own logs would make a run named "."). Kept in
    EXPERIMENTS/.tensorboard/VIEW/ (a hidden folder, which list ignores), refreshed at each call; VIEW is the
    experiment's name, or _all (which no experiment can be named)."""
    folder = Path(experiments_path) / ".tensorboard" / view
    try:
        return _linked_runs(folder, experiments)
    except OSError as e:  # experiments this user may only read (a shared or read-only folder): the links in a
        try:              # folder of this process's own (mkdtemp: private, a name no one could have planted)
            return _linked_runs(Path(tempfile.mkdtemp(prefix=f"ignite-mnist-tensorboard-{view}-")), experiments)
        except OSError:
            raise UserError(f"cannot write {folder}: {e.strerror}") from None


def _linked_runs(folder: Path, experiments: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for link in folder.iterdir():
        link.unlink()
    for experiment in experiments:
        (folder / experiment.name).symlink_to(os.path.relpath(experiment.tensorboard_dir.resolve(), folder.resolve()))
    return folder


def _split_problem(train: list, validation: list, sizes: dict):
    """What is wrong with a split read from split.json, against the sizes experiment.json recorded (the
    training set, n images, is the two together); None if nothing."""
    n = sizes["train"] + sizes["validation"]
    for name, indexes in (("train", train), ("validation", validation)):
        for i in indexes:
            if type(i) is not int or not 0 <= i < n:  # bool is not int here; -1 would wrap around
                return f"its {name} list holds {json.dumps(i)[:40]}, not an index into the {n} training images"
        if len(set(indexes)) != len(indexes):
            return f"its {name} list holds an index twice"
        if len(indexes) != sizes[name]:
            return f"its {name} list holds {len(indexes)} indexes, but experiment.json records {sizes[name]}"
    if not set(train).isdisjoint(validation):
        return "an index is in both its train and validation lists"
    return None


def split_digest(split: dict) -> str:
    """SHA-256 of a split's two lists of indexes, in order: experiment.json keeps it, so that split.json edited by hand
    (two indexes swapped between training and validation) is told from the split the checkpoints were trained on."""
    text = json.dumps([split["train"], split["validation"]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def draw_split(train_size: int, val_split: float, seed: int) -> dict:
    """Hold out round(val_split * n) training images for validation, chosen at random from the seed."""
    indexes = list(range(train_size))
    random.Random(seed).shuffle(indexes)
    n_val = round(val_split * train_size)
    if n_val >= train_size:
        raise UserError(f"data.val_split {val_split} leaves no training images out of {train_size}")
    if val_split > 0 and train_size < 2:
        raise UserError(f"data.val_split {val_split}: a validation set and a training set need at least 2 training "
                        f"images, and the dataset has {train_size}: use data.val_split 0")
    if val_split > 0 and n_val == 0:  # training would look for a validation set that is not there
        raise UserError(f"data.val_split {val_split} of {train_size} training images gives 0 validation images: "
                        f"use 0 for none or at least 1/{train_size} ({1 / train_size:.2g})")
    return {"train": sorted(indexes[n_val:]), "validation": sorted(indexes[:n_val])}


def check_seed(seed) -> None:
    if not (type(seed) is int and 0 <= seed <= MAX_SEED):
        raise UserError(f"--seed must be between 0 and 2**32 - 1 ({MAX_SEED}), not {seed}")


def create_experiment(experiments_path: Path, name: str, config: dict, seed: int, sizes: dict,
                      overrides=(), extra: dict = None) -> Experiment:
    """Create the experiment folder whole, or not at all.

    sizes: {"train": n, "test": n} of the dataset; the validation split is drawn from the training set.
    overrides: the --set values the config was made with (recorded); extra: more to record in experiment.json.
    """
    root = Path(experiments_path) / validate_name(name)
    check_name_free(experiments_path, name)
    check_seed(seed)
    split = draw_split(sizes["train"], config["data"]["val_split"], seed)
    meta = {
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "config": config,
        "overrides": list(overrides),
        **(extra or {}),
        "split": {"train": len(split["train"]), "validation": len(split["validation"]), "test": sizes["test"],
                  "digest": split_digest(split)},
        "versions": package_versions(),
    }
    try:
        Path(experiments_path).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.init-", dir=experiments_path))
    except OSError as e:
        raise UserError(f"cannot create the experiment in {experiments_path}: {e.strerror}") from None
    try:
        write_json(tmp / "experiment.json", meta)
        write_json(tmp / "split.json", split)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        os.rename(tmp, root)  # atomic; refuses a non-empty folder that appeared meanwhile
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot create experiment {name!r} in {experiments_path}: {e.strerror}") from None
    return Experiment(root, meta)


def init_experiment(experiments_path: Path, name: str, config_path: Path = DEFAULT_CONFIG,
                    schema_path: Path = DEFAULT_SCHEMA, overrides=(), seed: int = 0, data_path: Path = None,
                    extra: dict = None) -> Experiment:
    """What `init` does: the config with its overrides, validated; the dataset's sizes; the folder, which records
    the data folder (absolute: later commands find the data from any folder without --data-path)."""
    data_path = Path(DEFAULT_DATA_PATH if data_path is None else data_path)
    name = validate_name(name)
    config = load_config(config_path, schema_path, overrides)
    check_name_free(experiments_path, name)
    check_seed(seed)  # before the dataset, which may have to be downloaded
    from ignite_mnist import data

    dataset = config["data"]["dataset"]
    try:
        loaded = data.load(dataset, data_path)
    except data.DatasetMissing as e:  # a new experiment may take the bundled sample instead
        raise UserError(f"{e}; or `init` an experiment of the dataset 'mnist-sample' (data.dataset in the config), "
                        "which is bundled and works offline") from None
    unlike = data.unlike(dataset, loaded["train"][0])
    if unlike:  # (a dataset of one's own in MNIST's files may differ as much: said, not refused)
        log.warning(f"the data in {data_path} may not be {dataset}: {unlike}; if it is another dataset, "
                    "set data.dataset to it")
    extra = {"data_path": os.path.abspath(data_path),
             "data_digests": {split: data.digest(*tensors) for split, tensors in loaded.items()}, **(extra or {})}
    sizes = {split: len(labels) for split, (_, labels) in loaded.items()}
    return create_experiment(experiments_path, name, config, seed, sizes, overrides, extra)


# ---- logs ---------------------------------------------------------------------------------------

TEXT_AS_GIVEN = "ignite_mnist.text_as_given"  # the encoding errors of our console and verbose.log


def _text_as_given(error: UnicodeEncodeError):
    """A path's bytes that the file system encoding could not decode (surrogate escapes) are written back as
    those bytes; another character the stream cannot encode (any non-ASCII one in a C locale) as an escape,
    never as an exception in the middle of a log line."""
    char = error.object[error.start]
    if 0xDC80 <= ord(char) <= 0xDCFF:
        return bytes([ord(char) - 0xDC00]), error.start + 1
    return char.encode("ascii", "backslashreplace").decode("ascii"), error.start + 1


codecs.register_error(TEXT_AS_GIVEN, _text_as_given)


def console_shows_any_text() -> None:
    """A path is printed as its bytes, and a character the console cannot encode (any non-ASCII one in a C
    locale without UTF-8 mode) escaped, rather than as logging's traceback or a UnicodeEncodeError. In each
    process that prints: the command's, and the ranks it spawns (through setup_logging)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors=TEXT_AS_GIVEN)
        except (AttributeError, ValueError):  # not a text file, or already closed
            pass


class ConsoleHandler(logging.StreamHandler):
    """Messages to the console; while a progress bar is drawn, through tqdm.write, which lifts the bar, prints
    the message on a line of its own and draws the bar again below it."""

    def emit(self, record) -> None:
        tqdm_std = sys.modules.get("tqdm.std")  # no bar without tqdm imported: plain logging
        if tqdm_std is None or not getattr(tqdm_std.tqdm, "_instances", None):
            return super().emit(record)
        try:
            tqdm_std.tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class LogFileHandler(logging.FileHandler):
    """verbose.log. One that cannot be written to (a full disk) is said once, on the console, and written to no more:
    the command goes on (logging's own handling prints a traceback for every message)."""

    failed = False

    def emit(self, record) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a message that could not be formatted: logging's own report
            return super().handleError(record)
        if not self.failed:
            self.failed = True
            _say_log_unwritable(self.baseFilename, error)

    def close(self) -> None:  # what is still buffered would not reach the file either
        try:
            super().close()
        except OSError as e:
            if not self.failed:
                self.failed = True
                _say_log_unwritable(self.baseFilename, e)


_UNWRITABLE_LOGS = set()  # said once a command (train sets the log up twice)


def forget_unwritable_logs() -> None:
    """A new command (cli.main; the tests run several in one process): an unwritable log is said again."""
    _UNWRITABLE_LOGS.clear()


def _say_log_unwritable(path, error) -> None:
    if str(path) in _UNWRITABLE_LOGS:
        return
    _UNWRITABLE_LOGS.add(str(path))
    reason = error.strerror if isinstance(error, OSError) and error.strerror else f"{type(error).__name__}: {error}"
    try:
        print(f"cannot write {path} ({reason}): this command's messages go to the console only", file=sys.stderr)
    except (OSError, ValueError):
        pass


_LIBRARY_LOGS = {}  # name: (handlers, propagate) of each library logger setup_logging took, as it found them


def setup_logging(experiment: Experiment = None, verbose: bool = False, to_console: bool = True) -> None:
    """Log to the console (messages only; debug ones with --verbose) and, with an experiment, everything
    to its verbose.log (with times)."""
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    if to_console:
        console_shows_any_text()
        console = ConsoleHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        console.setLevel(logging.DEBUG if verbose else logging.INFO)
        console.addFilter(lambda record: record.name != report_log.name)  # already printed on stdout
        log.addHandler(console)
    # Ignite's own warnings and errors: to the file, not the console. With an experiment and without --verbose,
    # matplotlib's (a cache folder it could not write) and torch's too (torch.compile's notes when
    # training.compile_optimizer is on): torch gives each of its loggers a console handler when it is imported
    # (those named with "__" are its trace files, left alone); ranks > 0 keep them, having no verbose.log
    file_handler = None
    if experiment is not None:
        try:
            file_handler = LogFileHandler(experiment.log_file, encoding="utf-8", errors=TEXT_AS_GIVEN)
        except OSError as e:  # a read-only experiment: `test` and `info` still work; `train` cannot, and says so
            _say_log_unwritable(experiment.log_file, e)
            experiment = None  # (the libraries' loggers then keep their own handlers)
    for name, (handlers, propagate) in _LIBRARY_LOGS.items():  # as they were before an earlier call took them
        logging.getLogger(name).handlers, logging.getLogger(name).propagate = handlers, propagate
    _LIBRARY_LOGS.clear()
    library_logs = [logging.getLogger("ignite")]
    if experiment is not None and not verbose:
        library_logs += [logging.getLogger("matplotlib")] + [
            logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
            if (name == "torch" or name.startswith("torch.")) and "__" not in name and logging.getLogger(name).handlers]
    for library_log in library_logs:
        _LIBRARY_LOGS[library_log.name] = (list(library_log.handlers), library_log.propagate)
        library_log.handlers, library_log.propagate = [logging.NullHandler()], False
    if file_handler is not None:
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file_handler.setLevel(logging.DEBUG)
        log.addHandler(file_handler)
        for library_log in library_logs:
            library_log.addHandler(file_handler)
