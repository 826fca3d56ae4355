"""A background loop's pause (runtime/wake.py): woken at once, else at its period; a wake-up
during the loop's work kept for its next pause; a stop's cancellation never swallowed."""

import asyncio

import pytest

from services.common.runtime.wake import woken


async def test_a_wake_up_ends_the_pause_at_once_and_is_spent() -> None:
    wake = asyncio.Event()
    wake.set()
    async with asyncio.timeout(1):  # the period is an hour
        await woken(wake, 3600)
    assert not wake.is_set()


async def test_without_a_wake_up_the_pause_lasts_its_period() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await woken(asyncio.Event(), 0.05)
    assert loop.time() - started >= 0.045  # the loop may run a timer up to its clock's resolution early


async def test_a_wake_up_that_comes_while_the_loop_works_ends_its_next_pause() -> None:
    wake = asyncio.Event()
    pause = asyncio.create_task(woken(wake, 3600))
    await asyncio.sleep(0)
    wake.set()  # ends this pause
    async with asyncio.timeout(1):  # a pause the wake-up does not end fails here, not at the session's end
        await pause
    wake.set()  # during the work that follows it
    async with asyncio.timeout(1):
        await woken(wake, 3600)


@pytest.mark.parametrize("woken_too", [False, True])
async def test_a_stop_cancels_the_pause_even_as_it_is_woken(woken_too: bool) -> None:
    """Woken and cancelled in one turn of the loop: Python 3.11's `asyncio.wait_for` returns
    then, the cancellation lost (the case this helper is written against)."""
    wake = asyncio.Event()
    pause = asyncio.create_task(woken(wake, 3600))
    await asyncio.sleep(0)
    if woken_too:
        wake.set()
    pause.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pause
