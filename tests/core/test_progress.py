"""Progress output: a bar on a terminal, a plain line every interval in a log, nothing when disabled."""

from __future__ import annotations

import io

from foundation.core.progress import LogProgress, progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_progress_writes_one_line_per_interval_not_per_update():
    out, clock = io.StringIO(), _Clock()
    bar = LogProgress(total=1500, desc="train synthetic", unit="step", interval=30, file=out, clock=clock)
    for _ in range(1500):
        clock.now += 0.1  # 10 steps/s: 150 s in all -> a line every 30 s
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5, lines  # 30, 60, 90, 120, 150 s; close adds nothing new
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("train synthetic: 300/1500 step (20%), 10 step/s, 2m00s left")
    assert lines[-1].startswith("train synthetic: 1500/1500 step (100%)")


def test_log_progress_close_reports_the_final_count_once():
    out, clock = io.StringIO(), _Clock()
    bar = LogProgress(total=10, desc="x", unit="step", initial=4, interval=30, file=out, clock=clock)
    clock.now = 1.0
    bar.update(2)
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == ["x: 6/10 step (60%), 2 step/s, 2s left, 1s elapsed"]


def test_progress_picks_a_bar_on_a_terminal_and_lines_elsewhere():
    from tqdm.auto import tqdm

    bar = progress(total=3, desc="t", file=_Tty())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress(total=3, desc="t", file=io.StringIO()), LogProgress)


def test_disabled_and_inner_log_progress_write_nothing_but_still_iterate():
    out = io.StringIO()
    assert list(progress(range(3), enabled=False, file=out)) == [0, 1, 2]
    assert list(progress(range(3), leave=False, file=out, interval=0)) == [0, 1, 2]
    assert out.getvalue() == ""
    assert list(progress(range(3), file=out, interval=0)) == [0, 1, 2]
    assert len(out.getvalue().splitlines()) == 3
