"""Reads of a user's removals ledger are shared by the requests that asked before each was
sent (a change that wakes thousands of live feeds of one user's devices costs two reads,
not thousands), and never hand a request a read sent before it asked. Real gateway, real
backend; the store's client is wrapped only to count and hold its reads."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.keys import REMOVALS
from proxy.offline.ledger import Ledger, LedgerStore

from support import Gateway


def counted(
    store: LedgerStore, hold: asyncio.Event | None = None, answered: asyncio.Event | None = None
) -> list[str]:
    """Count the store's upstream reads of ledgers; with `hold`, the first read's answer
    (already read: `answered` is set) is held back until `hold` is set."""
    reads: list[str] = []
    real = store.couch.json

    async def json(method: str, path: str, **kwargs: Any) -> Any:
        result = await real(method, path, **kwargs)
        if method == "GET" and "/_local/couchgate-ledger" in path:
            reads.append(path)
            if hold is not None and answered is not None and len(reads) == 1:
                answered.set()
                await hold.wait()
        return result

    store.couch.json = json  # type: ignore[method-assign]
    return reads


async def test_concurrent_loads_of_one_users_ledger_share_reads(gw: Gateway) -> None:
    store: LedgerStore = gw.server.app[REMOVALS].store
    mine = Ledger("chw1")
    mine.grow("house1", "1-abc", 2)
    await store.save(mine, 0.0)
    reads = counted(store)
    ledgers = await asyncio.gather(*(store.load("chw1") for _ in range(200)))
    assert len(reads) <= 2, reads
    assert all(led.chains("house1") == {"1-abc": 2} for led in ledgers)
    assert len({id(led) for led in ledgers}) == len(ledgers)  # each request its own to change
    ledgers[0].grow("house1", "1-abc", 4)
    assert ledgers[1].chains("house1") == {"1-abc": 2}
    other = await store.load("chw2")  # another user's is read apart
    assert other.docs == {} and len(reads) <= 3


async def test_a_load_never_gets_a_read_sent_before_it_asked(gw: Gateway) -> None:
    """A load asked while a read is in flight waits for it and shares the next: it sees a
    change made upstream after the earlier read was sent."""
    store: LedgerStore = gw.server.app[REMOVALS].store
    hold, answered = asyncio.Event(), asyncio.Event()
    reads = counted(store, hold, answered)
    early = asyncio.create_task(store.load("chw1"))
    await answered.wait()  # the early read was answered (and is held)
    written = Ledger("chw1")
    written.grow("house2", "1-def", 2)
    await store.save(written, 0.0)
    later = [asyncio.create_task(store.load("chw1")) for _ in range(20)]
    await asyncio.sleep(0)
    hold.set()
    assert (await early).chains("house2") == {}
    assert all(led.chains("house2") == {"1-def": 2} for led in await asyncio.gather(*later))
    assert len(reads) == 2, reads


async def test_a_shared_read_cancelled_before_it_was_sent_is_not_shared_again(gw: Gateway) -> None:
    """A queued read ended before it was sent (cancelled at shutdown) leaves no dead read
    behind for later loads to join."""
    store: LedgerStore = gw.server.app[REMOVALS].store
    hold, answered = asyncio.Event(), asyncio.Event()
    counted(store, hold, answered)
    early = asyncio.create_task(store.load("chw1"))
    await answered.wait()
    queued = asyncio.create_task(store.load("chw1"))
    await asyncio.sleep(0)
    store._next["chw1"].cancel()  # the read queued behind the held one
    hold.set()
    await early
    await asyncio.wait([queued])
    assert queued.cancelled()  # its askers see the end of the read they shared
    assert (await store.load("chw1")).user == "chw1"
