"""The one exception the CLI turns into a one-line message and a non-zero exit; how to word an error; file tests
that do not take an error for "no file"."""

import errno
import os
import stat


class UserError(Exception):
    """A bad input or an impossible request: the message says what is wrong and what to do.

    exit_code 2 is for usage and input errors (as click uses it); other codes are for states such as a
    running training that holds the experiment.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class CheckpointGone(UserError):
    """The checkpoint of an epoch is not there (any more): for --epoch last or best, a running training's retention
    may have removed the one chosen a moment before, and the choice is made again."""


def error_text(error: BaseException, limit: int = 200, whole: bool = False) -> str:
    """An exception's message for a one-line UserError: its first line (libraries put their details, often a
    traceback of their own, on the next ones), or with whole=True all its lines joined (torch's load_state_dict
    says "Error(s) in loading state_dict for Net:" on the first and what does not fit on the next); its type's
    name where it has no message."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    if lines[0].startswith("Weights only load failed"):  # torch.load(weights_only=True) refused a pickled object:
        # its advice to load it with weights_only=False is not for a file to be trusted no more than this one
        reasons = [line for line in lines[1:] if not line.startswith("Check the documentation")]
        lines = ["it holds objects that are not plain data, refused unloaded" + (f": {reasons[0]}" if reasons else "")]
    text = " ".join(lines) if whole else lines[0]
    return text if len(text) <= limit else text[:limit - 4].rstrip() + " ..."


# what Path.is_file/is_dir/exists took for "nothing there" before Python 3.14; 3.14's take any error for it, so a
# folder on the way that this user may not look in would read as "does not exist" instead of "Permission denied"
_NOTHING_THERE = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _mode(path):
    try:
        return os.stat(path).st_mode
    except OSError as e:
        if e.errno in _NOTHING_THERE:
            return None
        raise


def is_file(path) -> bool:
    """Path(path).is_file() as before Python 3.14, on every version: an error other than "nothing there" is raised."""
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def is_dir(path) -> bool:
    """Path(path).is_dir() as before Python 3.14 (see is_file)."""
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def exists(path) -> bool:
    """Path(path).exists() as before Python 3.14 (see is_file)."""
    return _mode(path) is not None
