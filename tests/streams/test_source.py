"""The source topics' messages into batches without a Faust event each (streams.worker.source):
the batching, the references and tracking Faust's rebalance and shutdown wait on, flow control,
stale generations and back-pressure. Faust's own Message and FlowControlEvent; the consumer is a
stand-in holding what they touch."""

from __future__ import annotations

import asyncio
import types
from weakref import WeakSet

from faust.types.tuples import ConsumerMessage
from mode.utils.queues import FlowControlEvent

from streams.worker.source import SourceBuffer


class _Consumer:
    def __init__(self) -> None:
        self._unacked_messages: WeakSet = WeakSet()
        self.acked: list[int] = []

    def ack(self, message) -> bool:
        self._unacked_messages.discard(message)
        self.acked.append(message.offset)
        return True


def _app(generation: int = 1):
    flow = FlowControlEvent(initially_suspended=False)
    return types.SimpleNamespace(flow_control=flow, consumer=_Consumer(),
                                 consumer_generation_id=generation)


def _msg(offset: int, generation: int = 1) -> ConsumerMessage:
    return ConsumerMessage("vitals.raw", 0, offset, 0.0, 0, None, b"P1", b"{}", None,
                           generation_id=generation)


def test_batches_of_at_most_max_and_whatever_came_within_the_wait():
    async def main():
        app = _app()
        src = SourceBuffer(app, max_batch=3, within_s=0.05)
        for off in range(5):
            await src.on_message(_msg(off))
        it = src.batches()
        first = await it.__anext__()
        assert [ev.message.offset for ev in first] == [0, 1, 2]
        assert first[0].key == b"P1" and first[0].value == b"{}"
        # taken: tracked, one reference each, until the next batch is asked for
        assert {m.offset for m in app.consumer._unacked_messages} == {0, 1, 2}
        assert all(ev.message.refcount == 1 for ev in first)
        first[1].message.incref()  # e.g. the record cache holds this one
        second = await it.__anext__()  # the rest, after the wait
        assert [ev.message.offset for ev in second] == [3, 4]
        assert app.consumer.acked == [0, 2]
        assert first[1].message.refcount == 1 and not first[1].message.acked
        first[1].ack()
        assert app.consumer.acked == [0, 2, 1]
        await it.aclose()
        assert app.consumer.acked == [0, 2, 1, 3, 4]

    asyncio.run(main())


def test_messages_of_an_older_generation_are_dropped_untracked():
    async def main():
        app = _app(generation=2)
        src = SourceBuffer(app, max_batch=10, within_s=0.01)
        await src.on_message(_msg(0, generation=1))  # prefetched before the rebalance
        await src.on_message(_msg(1, generation=2))
        batch = await src.batches().__anext__()
        assert [ev.message.offset for ev in batch] == [1]
        assert src.dropped_stale == 1
        assert {m.offset for m in app.consumer._unacked_messages} == {1}

    asyncio.run(main())


def test_a_rebalance_suspends_the_fetch_and_clears_what_is_buffered():
    async def main():
        app = _app()
        src = SourceBuffer(app, max_batch=10, within_s=0.01)
        await src.on_message(_msg(0))
        app.flow_control.suspend()
        app.flow_control.clear()  # what Faust does when partitions are revoked
        assert src.events == [] and src.dropped_cleared == 1
        late = asyncio.ensure_future(src.on_message(_msg(1)))
        await asyncio.sleep(0.02)
        assert not late.done() and src.events == []  # waits for the flow to resume
        app.flow_control.resume()
        await asyncio.wait_for(late, 1)
        assert [ev.message.offset for ev in src.events] == [1]
        assert len(app.consumer._unacked_messages) == 0  # nothing buffered is tracked

    asyncio.run(main())


def test_the_fetch_waits_while_the_buffer_is_full():
    async def main():
        app = _app()
        src = SourceBuffer(app, max_batch=2, within_s=0.01, max_buffered=4)
        for off in range(3):
            await src.on_message(_msg(off))
        blocked = asyncio.ensure_future(src.on_message(_msg(3)))
        await asyncio.sleep(0.02)
        assert not blocked.done()  # the fourth filled the buffer: the fetch waits
        it = src.batches()
        await it.__anext__()
        await asyncio.wait_for(blocked, 1)
        assert [ev.message.offset for ev in src.events] == [2, 3]

    asyncio.run(main())
