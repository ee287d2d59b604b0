"""forensics._export's loop-to-thread hand-offs: a bounded queue the event loop waits on
without a thread of its own, and the end of a worker awaited without a join."""

from __future__ import annotations

import asyncio
import random
import threading
import time

from forensics._export import _Finished, _LoopQueue


def test_loop_queue_keeps_order_and_bounds() -> None:
    q = _LoopQueue(maxsize=3)
    got: list[int] = []
    peak = [0]

    def worker() -> None:
        rng = random.Random(1)
        while True:
            peak[0] = max(peak[0], q.qsize())
            item = q.get()
            if item is None:
                return
            got.append(item)
            if rng.random() < 0.1:
                time.sleep(0.001)  # a slow item now and then: the loop must wait for room

    async def main() -> None:
        t = threading.Thread(target=worker)
        t.start()
        for i in range(5000):
            await q.aput(i)
        await q.aput(None)
        await asyncio.to_thread(t.join)

    asyncio.run(main())
    assert got == list(range(5000)) and peak[0] <= 3


def test_loop_queue_wait_is_cancellable() -> None:
    q = _LoopQueue(maxsize=1)

    async def main() -> None:
        await q.aput(1)
        task = asyncio.ensure_future(q.aput(2))
        await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and q.qsize() == 1

    asyncio.run(main())
    assert q.get() == 1  # a waiter left over from the cancelled put does no harm
    assert q.qsize() == 0


def test_finished_before_and_after_wait() -> None:
    async def main() -> None:
        done = _Finished()
        done.set()
        await asyncio.wait_for(done.wait(), 1)  # set already: at once
        later = _Finished()

        def finish() -> None:
            time.sleep(0.05)
            later.set()

        t = threading.Thread(target=finish)
        t.start()
        await asyncio.wait_for(later.wait(), 5)
        t.join()

    asyncio.run(main())


def test_finished_after_the_loop_closed() -> None:
    done = _Finished()

    async def main() -> None:
        waiting = asyncio.ensure_future(done.wait())
        await asyncio.sleep(0)
        waiting.cancel()

    asyncio.run(main())
    done.set()  # the loop it would wake is closed: nothing raises
