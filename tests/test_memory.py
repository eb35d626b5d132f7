"""app/memory.py: freed heap memory goes back to the OS after activity, never while idle."""

from __future__ import annotations

import asyncio
import platform

import pytest

from app.memory import find_malloc_trim, trim_after_activity


def test_trims_once_after_each_busy_period_never_during_one_nor_while_idle():
    calls, work = [], [0]

    async def main():
        task = asyncio.create_task(trim_after_activity(0.1, lambda: work[0], trim=lambda pad: calls.append(pad) or 1))
        await asyncio.sleep(0.35)  # idle from the start: no trim
        seen = [len(calls)]
        for _ in range(80):  # sustained load for 0.4 s: new work at every look, no trim
            work[0] += 1
            await asyncio.sleep(0.005)
        seen.append(len(calls))
        await asyncio.sleep(0.35)  # the load is over: one trim
        seen.append(len(calls))
        await asyncio.sleep(0.35)  # still idle: no more
        seen.append(len(calls))
        task.cancel()
        return seen

    assert asyncio.run(main()) == [0, 0, 1, 1]
    assert calls == [0]


def test_zero_interval_turns_it_off():
    calls = []
    asyncio.run(asyncio.wait_for(trim_after_activity(0, lambda: 1, trim=calls.append), 1))
    assert calls == []


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_malloc_trim_is_found_and_runs():
    trim = find_malloc_trim()
    assert trim is not None and trim(0) in (0, 1)
