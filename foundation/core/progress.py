"""Progress that suits where it is written: a tqdm bar on a terminal, a plain line now and then in a log.

A tqdm bar written into a file that is not a terminal (a batch job's log, ``nohup``, CI) leaves one
carriage-return-separated update per refresh: a 1500-step run fills the log with ~1500 bar states.
:func:`progress` returns a tqdm bar when the stream is a terminal and otherwise a :class:`LogProgress`
that writes one self-contained line every ``interval`` seconds (and one when it closes)::

    train synthetic: 250/1500 step (17%), 3.1 step/s, 6m43s left

Both objects offer the part of tqdm's interface the framework uses: ``update(n)``, ``write(msg)``,
iteration over the wrapped iterable, ``close()``, and use as a context manager.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, TextIO

__all__ = ["LogProgress", "progress", "DEFAULT_INTERVAL"]

#: seconds between two plain progress lines when the output is not a terminal
#: (``FOUNDATION_PROGRESS_INTERVAL`` overrides it)
DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    raw = os.environ.get("FOUNDATION_PROGRESS_INTERVAL")
    if raw is None:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LogProgress:
    """tqdm's interface, written as one plain line every ``interval`` seconds.

    Args:
        iterable: what to iterate over (optional: use :meth:`update` without one).
        total: the expected count (``len(iterable)`` when it has one).
        desc: what is progressing, e.g. ``"train synthetic"``.
        unit: the name of one count, e.g. ``"step"``.
        initial: the count already done (a resumed run).
        interval: seconds between lines; ``0`` writes a line on every update.
        file: where the lines go (``sys.stderr``).
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, interval: float | None = None,
                 file: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start = initial
        self.interval = _interval() if interval is None else interval
        self.file = file if file is not None else sys.stderr
        self._clock = clock
        self._t0 = self._last = clock()
        self._closed = False
        self._last_n: int | None = None

    def _line(self) -> str:
        elapsed = self._clock() - self._t0
        done = self.n - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
            if self.total and self.n < self.total:
                parts.append(f"{_duration((self.total - self.n) / rate)} left")
        parts.append(f"{_duration(elapsed)} elapsed")
        prefix = f"{self.desc}: " if self.desc else ""
        return prefix + ", ".join(parts)

    def _write(self) -> None:
        print(self._line(), file=self.file, flush=True)
        self._last, self._last_n = self._clock(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.interval:
            self._write()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for tqdm compatibility; a log line carries no postfix."""

    @staticmethod
    def write(message: str, file: TextIO | None = None) -> None:
        """Print a message line (to stdout, as ``tqdm.write`` does)."""
        print(message, file=file if file is not None else sys.stdout, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._last_n != self.n:
            self._write()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LogProgress made without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Off:
    """A disabled progress object: iterates and counts, writes nothing."""

    def __init__(self, iterable: Iterable[Any] | None, initial: int) -> None:
        self.iterable, self.n = iterable, initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    write = staticmethod(LogProgress.write)

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("a progress object made without an iterable cannot be iterated")
        for item in self.iterable:
            yield item
            self.n += 1

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress(iterable: Iterable[Any] | None = None, *, desc: str = "", unit: str = "it", total: int | None = None,
             initial: int = 0, enabled: bool = True, leave: bool = True, file: TextIO | None = None,
             interval: float | None = None) -> Any:
    """A progress bar on a terminal, periodic plain lines elsewhere, nothing when not ``enabled``.

    Args:
        iterable: optional iterable to wrap.
        desc, unit, total, initial: as in tqdm.
        enabled: ``False`` returns a silent object (``--no-progress``, non-main processes).
        leave: keep the terminal bar after it closes (tqdm's ``leave``); inner loops pass ``False``.
        file: the stream (``sys.stderr``); whether it is a terminal picks the form.
        interval: seconds between plain lines (default :data:`DEFAULT_INTERVAL`).
    """
    if not enabled:
        return _Off(iterable, initial)
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, unit=unit, total=total, initial=initial, leave=leave, file=stream,
                    dynamic_ncols=True)
    if not leave:  # an inner loop: its outer loop already reports, a log needs no second voice
        return _Off(iterable, initial)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, interval=interval, file=stream)
