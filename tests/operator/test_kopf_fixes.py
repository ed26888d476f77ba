"""kopf_fixes: the quiet toggle set keeps kopf's semantics, and it is what kopf builds."""

from __future__ import annotations

import asyncio

import kopf
from finetune_operator import kopf_fixes
from kopf._cogs.aiokits import aiotoggles


def test_waiters_return_once_the_set_reaches_their_state() -> None:
    async def go() -> None:
        ts = kopf_fixes.QuietToggleSet(all)
        toggles = [await ts.make_toggle(name=str(i)) for i in range(50)]
        waiters = [asyncio.create_task(ts.wait_for(True)) for _ in range(200)]
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waiters)
        for t in toggles[:-1]:
            await ts.drop_toggle(t)
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waiters), "woke before the last toggle went"
        await toggles[-1].turn_to(True)  # a toggle turned on counts as well as one dropped
        await asyncio.wait_for(asyncio.gather(*waiters), 2)
        # and back: waiting for off
        off = await ts.make_toggle(False, name="again")
        await asyncio.wait_for(ts.wait_for(False), 1)
        later = asyncio.create_task(ts.wait_for(True))
        await asyncio.sleep(0.01)
        assert not later.done()
        await ts.drop_toggle(off)
        await asyncio.wait_for(later, 1)

    asyncio.run(go())


def test_any_sets_keep_their_meaning() -> None:
    async def go() -> None:
        ts = kopf_fixes.QuietToggleSet(any)
        t = await ts.make_toggle(False)
        waiter = asyncio.create_task(ts.wait_for(True))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await t.turn_to(True)
        await asyncio.wait_for(waiter, 1)

    asyncio.run(go())


def test_the_fix_is_installed_for_the_pinned_kopf() -> None:
    assert kopf.__version__ == kopf_fixes.KOPF_VERSION, "kopf changed: re-check kopf_fixes against its ToggleSet and watcher"
    original = aiotoggles.ToggleSet
    try:
        assert kopf_fixes.apply() is True
        assert aiotoggles.ToggleSet is kopf_fixes.QuietToggleSet
    finally:
        aiotoggles.ToggleSet = original  # type: ignore[misc]
