# SPDX-License-Identifier: MIT
"""lorad.aio.Client: concurrent requests on one event loop, driven by the doorbell fd."""
import asyncio

import pytest

import lorad
import lorad.aio
from conftest import heldout


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_concurrent_requests(demo):
    prompts = heldout(3)
    with lorad.Client(demo.sock) as c:
        want = [c.complete(s, p, max_tokens=48) for s, p in prompts]

    async def main():
        async with lorad.aio.Client(demo.sock) as a:
            return await asyncio.gather(*[a.complete(s, p, max_tokens=48) for s, p in prompts])

    got = run(main())
    assert [(g.text, g.tokens, g.version_id) for g in got] == \
           [(w.text, w.tokens, w.version_id) for w in want]


def test_stream_and_the_loop_keeps_running(demo):
    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async with lorad.aio.Client(demo.sock) as a:
            whole = await a.complete(None, "Once", max_tokens=120, ignore_eos=True)
            t = asyncio.create_task(ticker())
            s = a.stream(None, "Once", max_tokens=120, ignore_eos=True)
            pieces = [p async for p in s]
            stop.set()
            await t
        return whole, s.result, pieces, ticks

    whole, result, pieces, ticks = run(main())
    assert len(pieces) > 1 and "".join(pieces) == whole.text == result.text
    assert ticks > len(pieces), "the loop did not run while the request did"


def test_errors(demo):
    async def main():
        async with lorad.aio.Client(demo.sock) as a:
            with pytest.raises(lorad.SkillNotFound):
                await a.complete("no-such-skill", "hi", max_tokens=4)
            with pytest.raises(lorad.TooBig):
                await a.complete(None, "hi", max_tokens=5000)
            with pytest.raises(lorad.Timeout):
                await a.complete(None, "hi", max_tokens=200, ignore_eos=True, timeout=0.001)
            return await a.complete(None, [1, 2], max_tokens=3)

    assert run(main()).finish == "length"


def test_daemon_killed(fresh_tiny):
    async def main():
        async with lorad.aio.Client(fresh_tiny.sock) as a:
            streams = [a.stream(None, [i + 1], max_tokens=4000, ignore_eos=True) for i in range(3)]
            await streams[0].__anext__()
            fresh_tiny.kill()

            async def drain(s):
                async for _ in s:
                    pass

            res = await asyncio.wait_for(
                asyncio.gather(*[drain(s) for s in streams], return_exceptions=True), 10)
            with pytest.raises(lorad.DaemonGone):
                await a.complete(None, [1], max_tokens=1)
            return res

    res = run(main())
    assert all(isinstance(r, lorad.DaemonGone) for r in res), res
