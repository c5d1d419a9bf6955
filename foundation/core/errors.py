"""Exceptions raised by foundation.

Every error names its culprit (file, sample key, recipe key, plugin or subject) in its message,
so a user staring at a traceback from a multi-day run knows what to fix without reading code.
"""

from __future__ import annotations


class FoundationError(Exception):
    """Base class of all errors foundation raises on purpose."""


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


class BusyError(FoundationError):
    """Another process holds the lock of a run or shard directory; the message names the holder."""


class NonFiniteError(FoundationError, FloatingPointError):
    """A loss, prediction or weight became NaN/Inf; names the step, the samples and their shard."""
