"""PrioritySlots: at most N holders; a freed slot goes to the best waiter; cancelled waiters
neither take nor leak a slot."""

from __future__ import annotations

import trio

from chainmail.remote.slots import PrioritySlots


async def _hold(slots, priority, name, order, release: trio.Event, task_status=trio.TASK_STATUS_IGNORED):
    task_status.started()
    async with slots.slot(priority):
        order.append(name)
        await release.wait()


async def test_a_freed_slot_goes_to_the_highest_priority_then_the_first():
    slots = PrioritySlots(1)
    order: list[str] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(_hold, slots, 5, "holder", order, release)
        await trio.testing.wait_all_tasks_blocked()
        for name, priority in (("low", 1), ("high-1", 9), ("normal", 5), ("high-2", 9)):
            await nursery.start(_hold, slots, priority, name, order, release)
            await trio.testing.wait_all_tasks_blocked()
        assert order == ["holder"] and slots.busy == 1 and slots.waiting == 4
        release.set()
    assert order == ["holder", "high-1", "high-2", "normal", "low"]
    assert slots.busy == 0 and slots.waiting == 0


async def test_never_more_than_total_at_once():
    slots = PrioritySlots(3)
    peak = current = 0

    async def attempt(priority):
        nonlocal peak, current
        async with slots.slot(priority):
            current += 1
            peak = max(peak, current)
            await trio.sleep(0.001)
            current -= 1

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(attempt, i % 4)
    assert peak == 3 and slots.busy == 0


async def test_a_cancelled_waiter_takes_no_slot_and_leaks_none():
    slots = PrioritySlots(1)
    order: list[str] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(_hold, slots, 0, "holder", order, release)
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time() + 0.05
            async with slots.slot(9):
                order.append("never")
        assert scope.cancelled_caught
        await nursery.start(_hold, slots, 1, "next", order, release)
        release.set()
    assert order == ["holder", "next"] and slots.busy == 0


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on():
    slots = PrioritySlots(1)
    order: list[str] = []
    release = trio.Event()
    doomed = trio.CancelScope()

    async def waiter():
        with doomed:
            async with slots.slot(9):
                order.append("doomed")

    async with trio.open_nursery() as nursery:
        async with slots.slot(0):
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await nursery.start(_hold, slots, 1, "next", order, release)
            await trio.testing.wait_all_tasks_blocked()
            # cancelled, but it has not run yet: leaving the slot (same tick) hands it the slot,
            # which it must pass on to "next"
            doomed.cancel()
        release.set()
        with trio.fail_after(5):          # a leaked slot would leave "next" waiting forever
            while order != ["next"]:
                await trio.sleep(0.01)
    assert order == ["next"] and slots.busy == 0
