"""``foundation.data.tars``: the tar cache's memory budget (its reads are tested with the streams, test_loader.py)."""

from __future__ import annotations

import sys

import pytest


def test_the_tar_cache_budget_stays_under_half_the_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``train.shard_cache_mib`` larger than the machine is lowered (with a warning naming the key), so a
    training process does not read tars into memory until it is killed; without a reading it is taken as set."""
    from foundation.data import tars

    monkeypatch.setattr(tars, "available_memory", lambda: 1 << 30)  # 1 GiB available
    assert tars.cache_budget(256, processes=2) == (256 << 20, None)  # 2 x 256 MiB fit in half of it
    budget, why = tars.cache_budget(256, processes=4)
    assert budget == 128 << 20 and "train.shard_cache_mib=256" in why and "128 MiB" in why
    assert tars.cache_budget(0, processes=4) == (0, None)
    monkeypatch.setattr(tars, "available_memory", lambda: None)
    assert tars.cache_budget(100_000) == (100_000 << 20, None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MemAvailable is read from /proc/meminfo")
def test_available_memory_is_read_on_linux() -> None:
    from foundation.data.tars import available_memory

    with open("/proc/meminfo") as f:
        total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert 0 < available_memory() <= total_kib * 1024
