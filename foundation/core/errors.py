"""Exceptions raised by foundation.

Every error names its culprit (file, sample key, recipe key, plugin or subject) in its message,
so a user staring at a traceback from a multi-day run knows what to fix without reading code.
"""

from __future__ import annotations

import re
import sys
import traceback
from pathlib import Path
from typing import Any


class FoundationError(Exception):
    """Base class of all errors foundation raises on purpose.

    ``exit_status``: what the command line exits with when this error stops a command (2, a usage or data
    error; subclasses whose cause is temporary say so with another)."""

    exit_status: int = 2


class RecipeError(FoundationError, ValueError):
    """A recipe (YAML or command-line override) is invalid; the message names the key path."""


class PluginError(FoundationError):
    """A plugin failed to import, register or run; the message names the plugin and its origin."""


class DataError(FoundationError, ValueError):
    """Input data is malformed (NaN voxels, wrong shapes, corrupt shard); names the file or sample."""


class ShardError(DataError):
    """A shard directory, tar or index.json is missing, corrupt or inconsistent."""


class UnknownSubjectError(FoundationError, KeyError):
    """A subject id is not in the model's token vocabulary."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CheckpointError(FoundationError):
    """A checkpoint is missing, corrupt, or from a different model shape."""


class WriteError(FoundationError, OSError):
    """A file could not be written (disk full, no permission): names the file; the previous complete
    version (if any) is intact and no temporary file is left behind.  ``errno`` is the cause's."""

    def __str__(self) -> str:  # OSError would prefix "[Errno N]" and append the filename again
        return str(self.args[0]) if self.args else ""


def write_error(path, exc: BaseException) -> WriteError:
    """A :class:`WriteError` naming ``path`` for the OS error ``exc`` (its errno is kept)."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    err = WriteError(f"cannot write {path}: {reason}; nothing half-written was left behind "
                     f"(free some space or fix the permissions and rerun the same command)")
    err.errno = getattr(exc, "errno", None)
    err.filename = str(path)
    return err


class WeightsMissingError(FoundationError, FileNotFoundError):
    """A guidance network's weight file is absent; says which file, where it was looked for and how to get it."""


# --------------------------------------------------------------------------- message helpers

_NUMPY_REPR = re.compile(
    r"np\.(?:str_|bytes_|bool_?|u?int(?:8|16|32|64)|float(?:16|32|64)|longlong|intp)"
    r"\(('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^()]*)\)"
)


def plain_text(text: str) -> str:
    """``text`` with numpy 2's scalar reprs shown as plain Python ones: ``np.str_('a')`` → ``'a'``,
    ``np.int64(3)`` → ``3``.  Ids read from arrays are numpy scalars; messages should not say so."""
    return _NUMPY_REPR.sub(r"\1", text)


def report(exc: FoundationError, *, full_traceback: bool = False, flag: str = "-v") -> int:
    """Print ``exc`` as a command line does and return its exit status: ``error: <message>`` on stderr with
    plain ids, preceded by the whole chained traceback (a plugin's own frames) when ``full_traceback``, else
    followed by a hint to rerun with ``flag`` when the error has a cause that traceback would show."""
    hint = ""
    if full_traceback:
        traceback.print_exception(exc, file=sys.stderr)
    elif exc.__cause__ is not None:
        hint = f" (rerun with {flag} for the full traceback)"
    print(f"error: {plain_text(str(exc))}{hint}", file=sys.stderr)
    return exc.exit_status


def plain(value: Any) -> Any:
    """``value`` with numpy scalars (also inside tuples, lists and dict values) turned into Python ones."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value


def raised_at(exc: BaseException, *, within: str | Path | None = None) -> str | None:
    """``"file.py:57 in samples"``: where ``exc`` was raised — the innermost frame inside ``within`` (a
    plugin's file or package folder) if any frame is, else the innermost frame; ``None`` without a traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    if not frames:
        return None
    frame = frames[-1]
    if within is not None:
        root = str(Path(within).resolve())
        inside = [f for f in frames if str(Path(f.filename).resolve()).startswith(root)]
        if inside:
            frame = inside[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def exception_text(exc: BaseException, *, within: str | Path | None = None) -> str:
    """``"KeyError: 'img0046' (at plugin.py:57 in samples)"``: the exception's type and message with
    plain ids, and where it was raised (see :func:`raised_at`) — enough to find the line without ``-v``."""
    message = plain_text(str(exc)) if not isinstance(exc, KeyError) or len(exc.args) != 1 \
        else repr(plain(exc.args[0]))
    where = raised_at(exc, within=within)
    return f"{type(exc).__name__}: {message}" + (f" (at {where})" if where else "")


def source_folder(obj: Any) -> Path | None:
    """The folder of the package (or the file of the module) that defines class ``obj``: where its
    frames are looked for by :func:`exception_text`."""
    import inspect
    import sys

    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    try:
        path = Path(inspect.getfile(module if module is not None else obj))
    except (TypeError, OSError):
        return None
    top = sys.modules.get(obj.__module__.partition(".")[0])
    top_file = getattr(top, "__file__", None)
    if top_file and Path(top_file).name == "__init__.py":
        return Path(top_file).parent
    return path


class BusyError(FoundationError):
    """Another process holds the lock of a run or shard directory; the message names the holder.

    Exit status 75 (``EX_TEMPFAIL`` of BSD's sysexits): the same command can succeed once the holder
    ends, so a wrapper (``foundation bench``'s runs) retries on the status instead of parsing the message."""

    exit_status: int = 75


class NonFiniteError(FoundationError, FloatingPointError):
    """A loss, prediction or weight became NaN/Inf; names the step, the samples and their shard."""
