"""The aggregation stage's changelog queue gives up after ``aggregate.recovery_poll_ms``.

Faust's recovery loop (faust-streaming 0.15) waits on that queue 5 s at a time and takes a changelog
whose last record is a transaction marker as read only after two empty waits in a row: every
rebalance stalled the stage ≥ 10 s with nothing left to read (two aggregate logs of
``tests/integration/test_aggregate_e2e.py``'s kill -9 test: "Restoring state" to "Recovery complete"
took 11.9 s before, 4.8 s with a 1 s poll). Its ``wait_for`` sees the queue's own timeout instead.
"""

from __future__ import annotations

import asyncio

from pipeline.aggregate import app as aggregate_app
from tests.support.jobs import make_config


def _app(monkeypatch, **aggregate):  # noqa: ANN001
    monkeypatch.setattr(aggregate_app, "Producer", lambda conf: None)  # the tick producer, not connected here
    app, _ = aggregate_app.build_app(make_config(aggregate=aggregate))
    return app


def test_an_empty_changelog_queue_gives_up_by_itself(monkeypatch):
    """Before, the queue's ``get`` waited for ever (only Faust's 5 s ``wait_for`` around it ended it)."""
    queue = _app(monkeypatch, recovery_poll_ms=200).tables.changelog_queue

    async def wait() -> asyncio.Task:
        task = asyncio.ensure_future(queue.get())
        await asyncio.wait({task}, timeout=60)  # a bound for a hang, far above the poll
        task.cancel()
        return task

    task = asyncio.run(wait())
    assert task.done() and not task.cancelled() and isinstance(task.exception(), TimeoutError)


def test_an_event_in_the_queue_is_returned_and_the_default_poll_is_one_second(monkeypatch):
    queue = _app(monkeypatch).tables.changelog_queue
    assert queue.poll_s == 1.0

    async def put_then_get() -> object:
        queue.put_nowait("event")
        return await queue.get()

    assert asyncio.run(put_then_get()) == "event"
