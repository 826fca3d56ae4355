"""A background loop's pause (the outbox relay's, the SSE journal's pump): until it is woken or
its period has passed."""

import asyncio


async def woken(wake: asyncio.Event, seconds: float) -> None:
    """Until `wake` is set or `seconds` have passed, then `wake` cleared: a wake-up that comes
    while the loop works after this returns is kept, and its next pause ends at once. Not
    `asyncio.wait_for`: in Python 3.11 it may swallow the cancellation of a stop."""
    try:
        async with asyncio.timeout(seconds):
            await wake.wait()
    except TimeoutError:
        pass
    wake.clear()
