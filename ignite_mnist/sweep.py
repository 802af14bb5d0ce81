"""Hyper-parameter sweeps on Optuna: every trial an experiment S-<trial number>, scored by its best
validation accuracy, pruned by Optuna's pruner through its Ignite handler.

A study lives in a storage that any number of workers share (SQLite by default; any Optuna storage URL,
or a journal file on a shared folder); each worker takes trials from it until the study has N finished
(complete or pruned) ones. A worker killed mid-trial leaves that trial RUNNING: the next worker on the
same host fails it at once (its pid is gone), RDB storages also by heartbeat; its experiment stays.
"""

import contextlib
import glob
import json
import math
import os
import signal
import socket
import time
import warnings
from pathlib import Path

from ignite_mnist.errors import UserError, error_text, exists, is_dir, is_file
from ignite_mnist.experiment import (CONFIG_DIR, DEFAULT_CONFIG, DEFAULT_DATA_PATH, DEFAULT_SCHEMA, MAX_CONFIG_BYTES,
                                     Experiment, apply_overrides, best_first, check_config_key, check_seed, flatten,
                                     init_experiment, load_config, log, open_experiment, pid_alive, read_json,
                                     schema_violations, setup_logging, validate_config, validate_name, write_json)

SPACE_SCHEMA = CONFIG_DIR / "space.schema.json"
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 60  # RDB storages: a trial without a heartbeat for a minute has died
HOST = socket.gethostname()


class NotNeeded(Exception):
    """The study reached its number of trials while this one was being asked for."""


class TrialRefused(UserError):
    """A trial whose experiment cannot be made: running the sweep again would not help."""


# ---- the search space ---------------------------------------------------------------------------


def load_space(path: Path, config_path: Path) -> dict:
    """The search space, checked: its schema, its keys (config keys), and the extreme values of each
    distribution against the config schema, so that a sweep does not fail at its tenth trial."""
    space = read_json(path, "search space", MAX_CONFIG_BYTES)
    violations = schema_violations(space, read_json(SPACE_SCHEMA, "search space schema"), SPACE_SCHEMA)
    if violations:
        n = len(violations)
        raise UserError(f"invalid search space {path} ({n} problem{'s' * (n > 1)}): " + "; ".join(violations))
    base = load_config(config_path)  # a problem of the base config is named as such, not blamed on the space
    if base["data"]["val_split"] == 0 and "data.val_split" not in space:
        raise UserError(f"config {config_path} has data.val_split 0: a sweep scores trials on validation accuracy, "
                        "so it needs a validation set")
    for key, distribution in space.items():
        check_config_key(key, f"search space {path}: ")
        kind = next(k for k in ("float", "int", "choice") if k in distribution)
        values = distribution[kind]
        if kind != "choice" and values[0] > values[1]:
            raise UserError(f"search space {path}: {key}: the low bound {values[0]} is above the high one {values[1]}")
        if kind != "choice" and distribution.get("log") and values[0] <= 0:
            raise UserError(f"search space {path}: {key}: a log scale needs a low bound above 0, not {values[0]}")
        if kind != "choice" and distribution.get("log") and "step" in distribution:
            raise UserError(f"search space {path}: {key}: log and step do not go together (Optuna samples one or the "
                            "other)")
        if kind != "choice" and "step" in distribution:  # else Optuna moves the high bound, with a warning
            steps = (values[1] - values[0]) / distribution["step"]
            if not math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-9):
                high = values[0] + math.floor(steps) * distribution["step"]
                high = high if isinstance(high, int) else round(high, 12)  # (0.5 + 3 * 0.4: 1.7, not 1.7000000000000002)
                raise UserError(f"search space {path}: {key}: {values[0]} to {values[1]} is not a whole number of "
                                f"steps of {distribution['step']}: end it at {high}, say")
        if kind == "float" and values[0] < values[1] and "step" not in distribution:  # it draws non-integers too
            drawn = values[0] + (values[1] - values[0]) / math.pi
            if validate_config(apply_overrides(base, [f"{key}={drawn}"]))[1] and \
                    not validate_config(apply_overrides(base, [f"{key}={values[0]}"]))[1]:
                raise UserError(f"search space {path}: {key} takes whole numbers, which a float distribution does "
                                f"not draw: write {json.dumps({'int': values})}")
        for value in values:
            config, problems = validate_config(apply_overrides(base, [f"{key}={json.dumps(value)}"]))
            if not problems and config["data"]["val_split"] == 0:
                problems = ["a sweep scores its trials on validation accuracy: it needs data.val_split above 0"]
            if problems:
                raise UserError(f"search space {path}: {key} = {json.dumps(value)} is refused by the config schema: "
                                + "; ".join(problems))
    return space


def optuna_distribution(distribution: dict):
    """The Optuna distribution of a distribution of the space."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if "choice" in distribution:
        return CategoricalDistribution(distribution["choice"])
    kind = "float" if "float" in distribution else "int"
    options = {"log": distribution.get("log", False), "step": distribution.get("step", None if kind == "float" else 1)}
    return (FloatDistribution if kind == "float" else IntDistribution)(*distribution[kind], **options)


def space_distribution(d) -> dict:
    """An Optuna distribution as the space writes it: the inverse of optuna_distribution."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(d, CategoricalDistribution):
        return {"choice": list(d.choices)}
    kind = "float" if isinstance(d, FloatDistribution) else "int"
    written = {kind: [d.low, d.high]}
    if d.log:
        written["log"] = True
    if d.step != (None if kind == "float" else 1):  # (the space's default step: optuna_distribution)
        written["step"] = d.step
    return written


def suggest(trial, key: str, distribution: dict):
    d = optuna_distribution(distribution)
    if "choice" in distribution:
        return trial.suggest_categorical(key, d.choices)
    suggest_value = trial.suggest_float if "float" in distribution else trial.suggest_int
    return suggest_value(key, d.low, d.high, step=d.step, log=d.log)


def check_space_against_study(study, space: dict, space_path: Path, name: str) -> None:
    """A key that the study's latest trial to draw it drew from another distribution (another kind, other bounds,
    choices, step or log scale) is refused now: Optuna would fail the next trial on another kind and record that
    failure, and would silently take other bounds, making the trials' draws a mix of two searches."""
    latest = {}
    for trial in study.get_trials(deepcopy=False):  # (by number: the latest last)
        latest.update({key: (distribution, trial.number) for key, distribution in trial.distributions.items()})
    drawn = {key: distribution for key, (distribution, _) in latest.items()}
    for key, distribution in space.items():
        if key in latest and latest[key][0] != optuna_distribution(distribution):  # (Optuna's ==: 1 and 1.0 alike)
            drew = json.dumps(space_distribution(latest[key][0]))
            raise UserError(f"search space {space_path}: {key} = {json.dumps(distribution)} does not fit the "
                            f"trials of sweep {name}, which drew it from {drew} (trial {latest[key][1]}): use another "
                            "--name for another space") from None
    new, gone = [key for key in space if drawn and key not in drawn], [key for key in drawn if key not in space]
    if new or gone:  # allowed (a space may grow), but the trials then differ in more than their draws: said
        log.info(f"sweep {name}: the space changed since its earlier trials: "
                 + "; ".join(part for part in (f"{', '.join(new)} drawn from now on (they ran with the base config's)"
                                               if new else "", f"{', '.join(gone)} no longer drawn (the base "
                                               "config's from now on)" if gone else "") if part))


def check_setup_against_study(study, setup: dict, space: dict, name: str) -> None:
    """The study's trials are comparable only if they share the base config (the swept keys aside) and
    --max-epochs: the first run records both in the study, a later run that differs is refused."""
    recorded = study.user_attrs.get("setup")
    if recorded is None:  # a new study (or one made before the setup was recorded): this run's
        study.set_user_attr("setup", setup)
        return
    theirs, ours = flatten(recorded.get("config", {})), flatten(setup["config"])
    differences = [f"{key} {json.dumps(theirs.get(key))} (this run: {json.dumps(ours.get(key))})"
                   for key in dict.fromkeys([*theirs, *ours]) if key not in space and theirs.get(key) != ours.get(key)]
    for option in ("max_epochs", "seed"):  # (the seed: the split, so the validation set, and the initial weights)
        if option in recorded and recorded[option] != setup[option]:
            differences.append(f"--{option.replace('_', '-')} {recorded[option]} (this run: {setup[option]})")
    if differences:
        raise UserError(f"sweep {name}'s trials were run with {'; '.join(differences[:4])}"
                        f"{'; ...' * (len(differences) > 4)}: their scores would not compare; use another --name")


# ---- the study ----------------------------------------------------------------------------------


def storage_url(name: str, experiments_path: Path, storage) -> str:
    return storage or f"sqlite:///{(Path(experiments_path) / f'{name}.sweep.db').resolve()}"


def open_storage(url: str, experiments_path: Path, attempts: int = 5):
    """An Optuna storage: an URL (sqlite:///..., postgresql://...) or the path of a journal file.

    Workers that start together race to create a new database's tables (one of them fails on a unique
    constraint): the loser tries again, and finds them made."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat's
    if "://" not in url:
        check_journal(Path(url))
    for attempt in range(attempts):
        try:
            if "://" not in url:
                from optuna.storages.journal import JournalFileBackend

                return optuna.storages.JournalStorage(JournalFileBackend(url))
            if url.startswith("sqlite:///"):
                Path(experiments_path).mkdir(parents=True, exist_ok=True)
            kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=lambda study, trial: record_in_experiment(
                    experiments_path, trial.user_attrs.get("experiment", ""), state="FAIL"))
        except Exception as e:
            if attempt + 1 < attempts and ("IntegrityError" in str(e) or "already exists" in str(e)):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise UserError(f"cannot open the sweep storage {url}: {error_text(e)}") from None


def check_journal(path: Path) -> None:
    """An existing --storage file must be an Optuna journal (JSON lines with an op_code): Optuna would append
    to any file, and then fail on reading it."""
    if is_dir(path):
        raise UserError(f"the sweep storage {path} is a directory: name a journal file")
    if exists(path) and not is_file(path):  # a FIFO or a device: reading it would wait forever
        raise UserError(f"the sweep storage {path} is not a regular file: name a journal file")
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 16)
    except FileNotFoundError:
        return  # a new journal
    except OSError as e:
        raise UserError(f"cannot read the sweep storage {path} ({e.strerror})") from None
    try:
        ok = not first or "op_code" in json.loads(first)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"the sweep storage {path} is not an Optuna journal file; it is left as it is: name a new "
                        "file, or the journal of the sweep")


def check_sqlite(path: Path) -> None:
    """An existing SQLite --storage file must hold Optuna's tables: Optuna would add them to any database."""
    if exists(path) and not is_file(path):  # a FIFO or a device: reading it would wait forever
        raise UserError(f"the sweep storage {path} is not a regular file: move it away, or give the sweep another "
                        "--name (or --storage)")
    tables = sqlite_tables(path) if is_file(path) and path.stat().st_size else "optuna"
    if tables == "optuna" or tables.startswith("busy"):  # (busy: Optuna's read-write open waits or recovers)
        return
    if tables == "other":
        raise UserError(f"the sweep storage {path} is an SQLite file without Optuna's tables; "
                        "it is left as it is: name a new file, or the database of the sweep")
    raise UserError(f"the sweep storage {path} is damaged or not an SQLite database ({tables[:200]}); "
                    "it is left as it is: name a new file, or the database of the sweep")


def sqlite_tables(path: Path) -> str:
    """"optuna" if the SQLite file holds Optuna's tables, "other" if it is an SQLite database without them,
    "busy: <why>" if it cannot be read now (a writer holds it past Optuna's 60 s, or a killed writer's journal waits
    for a read-write open to roll it back, as Optuna's own open does), else why it is not one (damaged, truncated,
    not SQLite). Read-only, so that --status never adds Optuna's tables to a database of something else."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            found = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='studies'").fetchone()
        return "optuna" if found else "other"
    except sqlite3.Error as e:
        name = getattr(e, "sqlite_errorname", None)  # (Python 3.11+; before it, the message says)
        damaged = name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") if name else \
            any(words in str(e) for words in ("malformed", "not a database"))
        return (str(e) or type(e).__name__) if damaged else f"busy: {e}"


def record_in_experiment(experiments_path: Path, name: str, **values) -> None:
    """Update the trial's record ("sweep") in its experiment's experiment.json."""
    path = Path(experiments_path) / name / "experiment.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the experiment was never made (or is gone): the study has the record
    meta.setdefault("sweep", {}).update(values)
    write_json(path, meta)


def fail_dead_trials(study, experiments_path: Path) -> None:
    """RUNNING trials whose worker is gone: FAIL; their experiments stay. On this host at once (its pid is
    gone); elsewhere, with an RDB storage, once its heartbeat is older than GRACE_SECONDS."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)  # RDB storages; their callback marks the experiments
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == HOST and attrs.get("pid") and not pid_alive(attrs["pid"]):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            record_in_experiment(experiments_path, attrs.get("experiment", ""), state="FAIL")
            log.info(f"trial {trial.number} ({attrs.get('experiment')}) lost its worker (pid {attrs['pid']}): "
                     "marked failed; its experiment is kept and can be resumed with `train`")


def run_sweep(name: str, space_path: Path, trials: int, max_epochs: int, experiments_path: Path, data_path: Path,
              storage=None, config_path: Path = DEFAULT_CONFIG, device: str = "auto", seed: int = 0,
              pruner: str = "median", startup_trials: int = 5, warmup_epochs: int = 0, verbose: bool = False) -> dict:
    """Run trials of study `name` until it has `trials` finished ones; returns sweep_status()."""
    import optuna
    from optuna.trial import TrialState

    from ignite_mnist.device import resolve_device
    from ignite_mnist.engines import STOP
    from ignite_mnist.launch import run_training

    try:
        validate_name(name[:94])  # (a name valid but for its length: said below, with the length it may have)
    except UserError as e:  # (its trials' experiments are named after it: the same rules)
        raise UserError(str(e).replace("invalid experiment name", "invalid sweep name", 1)) from None
    try:  # the trials' experiments, NAME-<trial number>: failed trials take numbers too, so room for 99,999 of them
        validate_name(f"{name}-99999")
    except UserError:
        raise UserError(f"sweep name {name!r} is too long: its trials' experiments are named after it, "
                        f"{name}-<trial number>, in at most 100 characters; use at most 94") from None
    if trials < 1 or max_epochs < 1:
        raise UserError(f"--trials and --max-epochs must be at least 1, not {trials} and {max_epochs}")
    space = load_space(space_path, config_path)
    config = load_config(config_path)
    check_seed(seed)
    resolve_device(device)  # an unavailable device is refused before the study is opened or a trial made
    from ignite_mnist import data

    for dataset in space.get("data.dataset", {}).get("choice", [config["data"]["dataset"]]):  # each trial reads its
        data.locate(dataset, data_path or DEFAULT_DATA_PATH)  # own: missing data is refused before any trial
    url = storage_url(name, experiments_path, storage)
    new_file = _storage_file(url)
    if new_file is not None:
        (check_journal if "://" not in url else check_sqlite)(new_file)
    if new_file is not None and not exists(new_file):  # a new study: every NAME-<number> experiment is foreign
        foreign = foreign_experiments(None, name, experiments_path)
        if foreign:
            raise _foreign_error(name, foreign, url)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happens
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                                             n_warmup_steps=warmup_epochs),
               "none": optuna.pruners.NopPruner}
    study = optuna.create_study(study_name=name, storage=open_storage(url, experiments_path), direction="maximize",
                                load_if_exists=True, pruner=pruners[pruner]())

    def objective(trial):
        ahead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE,
                                                                      TrialState.PRUNED))
                 if t.number < trial.number and not t.user_attrs.get("not_needed")]
        if len(ahead) >= trials:  # another worker took the last trial at the same moment
            trial.set_user_attr("not_needed", True)
            raise NotNeeded()
        experiment_name = f"{name}-{trial.number}"
        if exists(Path(experiments_path) / experiment_name):  # made since the check before the first trial
            raise TrialRefused(f"experiment {experiment_name} already exists but is not trial {trial.number} of the "
                               f"study in {url}: use another --name, or move it away")
        # "experiment" names the trial's experiment as the study's own (foreign_experiments): set only now
        for key, value in {"host": HOST, "pid": os.getpid(), "experiment": experiment_name}.items():
            trial.set_user_attr(key, value)
        params = {key: suggest(trial, key, distribution) for key, distribution in space.items()}
        overrides = [f"{key}={json.dumps(value)}" for key, value in params.items()]
        record = {"study": name, "storage": url, "trial": trial.number, "params": params, "state": "RUNNING"}
        try:
            experiment = init_experiment(experiments_path, experiment_name, config_path, DEFAULT_SCHEMA, overrides,
                                         seed, data_path, extra={"sweep": record})
        except UserError as e:
            raise TrialRefused(f"trial {trial.number} ({' '.join(overrides)}): {e}", e.exit_code) from None
        setup_logging(experiment, verbose)
        finished = len([t for t in ahead if t.state != TrialState.RUNNING])  # (trial numbers count failed ones too)
        log.info(f"sweep {name}: trial {trial.number} ({finished} of {trials} finished before it), experiment "
                 f"{experiment_name}: {' '.join(overrides)}")
        try:
            run_training(experiment, experiment.data_path(), max_epochs, device, verbose=verbose, trial=trial)
        except optuna.TrialPruned:
            epoch = len(experiment.history()["epochs"])
            _score(trial, experiment, state="PRUNED", pruned_at_epoch=epoch)
            log.info(f"sweep {name}: trial {trial.number} pruned at epoch {epoch} (median pruner)")
            raise
        except BaseException:
            record_in_experiment(experiments_path, experiment_name, state="FAIL")
            raise
        score = _score(trial, experiment, state="COMPLETE")
        log.info(f"sweep {name}: trial {trial.number} complete: best validation accuracy {score:.2f}%")
        return score

    foreign = foreign_experiments(study, name, experiments_path)
    if foreign:  # found now, not when a trial of that number comes up after hours of others
        raise _foreign_error(name, foreign, url)
    check_space_against_study(study, space, space_path, name)
    check_setup_against_study(study, {"config": config, "max_epochs": max_epochs, "seed": seed}, space, name)
    heartbeat = "://" in url  # RDB storages beat (open_storage); a journal file does not
    waiting, ran = False, False
    while True:
        fail_dead_trials(study, experiments_path)
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if len(done) >= trials:
            if not ran:  # (a space changed since is not run either)
                log.info(f"sweep {name} has {len(done)} finished trial{'s' * (len(done) != 1)} already, for --trials "
                         f"{trials}: nothing to run (a larger --trials runs more)")
            break
        if len(done) + len(running) >= trials:
            if not heartbeat:  # a journal file: no heartbeat tells a dead worker elsewhere from a slow one
                log.info(f"sweep {name}: the remaining {trials - len(done)} trial(s) are running in other workers")
                break
            if not waiting:  # one of them may fail (its worker dies): then this worker takes its place
                log.info(f"sweep {name}: waiting for the {len(running)} trial(s) running in other workers")
            waiting = True
            time.sleep(HEARTBEAT_SECONDS / 2)
            continue
        waiting, ran = False, True
        try:
            study.optimize(objective, n_trials=1)
        except NotNeeded:
            continue
        except TrialRefused as e:
            raise UserError(f"sweep {name}: {e}", e.exit_code) from None
        except UserError as e:
            stopped = e.exit_code in (130, 143)
            raise UserError(f"sweep {name}: " + ("stopped: " if stopped else "")
                            + f"{e}; the trial is marked failed, its experiment kept; run the same `sweep` "
                            "command to go on", exit_code=e.exit_code) from None
        if STOP.signum:  # a signal after the trial's last epoch: the trial is complete, the sweep stops
            raise UserError(f"sweep {name}: stopped by {signal.Signals(STOP.signum).name} once its trial was "
                            "complete: run the same `sweep` command to go on", exit_code=128 + STOP.signum)
    return sweep_status(name, experiments_path, storage)


def _storage_file(url: str):
    """The file of an SQLite URL or a journal path, else None (a database server)."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None if "://" in url else Path(url)


def _foreign_error(name: str, foreign: list, url: str) -> UserError:
    return UserError(f"sweep {name}: experiment(s) {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''} "
                     f"already exist but are not trials of the study in {url}, and trials are named "
                     f"{name}-<number>: use another --name, or move them away")


def foreign_experiments(study, name: str, experiments_path: Path) -> list:
    """Experiments named NAME-<number> that no trial of `study` made (an unrelated experiment, or a trial of an
    earlier study of that name): the trial of that number could not make its own. study None: a new one."""
    ours = {t.user_attrs.get("experiment") for t in study.get_trials(deepcopy=False)} if study is not None else set()
    return sorted((folder.name for folder in Path(experiments_path).glob(f"{glob.escape(name)}-*")
                   if trial_number(folder.name, name) is not None and folder.name not in ours),
                  key=lambda n: trial_number(n, name))


def trial_number(experiment_name: str, name: str):
    """k for an experiment named NAME-k (k in ASCII digits), else None."""
    suffix = experiment_name[len(name) + 1:] if experiment_name.startswith(f"{name}-") else ""
    return int(suffix) if suffix.isascii() and suffix.isdigit() else None


def _best_so_far(experiment: Experiment) -> tuple:
    """(best epoch, its validation accuracy) of a trial's experiment so far; (None, None) before any."""
    history = experiment.history()
    best = experiment.best_epoch(history)
    return best, next((e["validation_accuracy"] for e in history["epochs"] if e["epoch"] == best), None)


def _score(trial, experiment: Experiment, **record) -> float:
    """Best validation accuracy so far (the trial's score): into the study's trial and the experiment."""
    best, score = _best_so_far(experiment)
    trial.set_user_attr("best_epoch", best)
    trial.set_user_attr("best_val_accuracy", score)
    record_in_experiment(experiment.root.parent, experiment.name, best_epoch=best, score=score, **record)
    return score


def sweep_status(name: str, experiments_path: Path, storage=None) -> dict:
    """{"trials": [{number, state, params, experiment, best_epoch, best_val_accuracy}], best first; "best"}."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = storage_url(name, experiments_path, storage)
    database = _storage_file(url) if url.startswith("sqlite:///") else None
    if database is not None and not is_file(database):
        raise UserError(f"no sweep {name!r}: {database} does not exist (run `sweep` first, "
                        "or pass the --storage it used)")
    tables = sqlite_tables(database) if database is not None else "optuna"
    if tables == "other":
        raise UserError(f"no sweep {name!r}: {database} holds no Optuna study (run `sweep` "
                        "first, or pass the --storage it used)")
    if tables.startswith("busy"):  # not opened read-write here: that could add Optuna's tables to another database
        raise UserError(f"the sweep storage {database} cannot be read now ({tables[6:][:200]}): try again later; "
                        "a `sweep` run recovers a database a killed worker left half-written")
    if tables != "optuna":
        raise UserError(f"the sweep storage {database} is damaged or not an SQLite database ({tables[:200]}); it is "
                        "left as it is: restore it from a backup, or start the sweep anew under another --name")
    if "://" not in url and not exists(url):
        raise UserError(f"no sweep {name!r}: the journal file {url} does not exist")
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, experiments_path))
    except KeyError:
        raise UserError(f"no sweep {name!r} in {url}") from None
    rows = [{"number": t.number, "state": t.state.name, "params": t.params, "experiment": t.user_attrs.get("experiment"),
             "best_epoch": t.user_attrs.get("best_epoch"), "best_val_accuracy": t.user_attrs.get("best_val_accuracy")}
            for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("not_needed")]
    for row in rows:  # a failed (stopped) trial's epochs so far, from its experiment: the study scores none
        if row["state"] == "FAIL" and row["best_epoch"] is None and row["experiment"]:
            try:
                row["best_epoch"], row["best_val_accuracy"] = _best_so_far(open_experiment(experiments_path,
                                                                                           row["experiment"]))
            except UserError:  # never made (refused), or gone since
                continue
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
    rows.sort(key=lambda r: (order.get(r["state"], 5), *best_first(r["best_val_accuracy"]), r["number"]))
    best = rows[0]["number"] if rows and rows[0]["state"] == "COMPLETE" else None
    return {"study": name, "storage": url, "trials": rows, "best": best}
