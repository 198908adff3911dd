# SPDX-License-Identifier: MIT
"""liblorad's errors as Python exceptions, and a daemon that dies mid-stream."""
import errno
import os
import threading
import time

import pytest

import lorad
from conftest import ROOT


@pytest.fixture(scope="module")
def client(demo):
    with lorad.Client(demo.sock) as c:
        yield c


def test_unknown_skill(client):
    with pytest.raises(lorad.SkillNotFound) as e:
        client.complete("no-such-skill", "hello", max_tokens=4)
    assert isinstance(e.value, lorad.LoradError)
    assert e.value.errno == errno.ENOENT and e.value.code == -errno.ENOENT
    assert e.value.field == "skill"
    assert "skill" in str(e.value)


def test_max_tokens_over_the_daemons_limit(client):
    with pytest.raises(lorad.TooBig) as e:
        client.complete(None, "hello", max_tokens=5000)   # --max-tokens defaults to 4096
    assert e.value.errno == errno.E2BIG and e.value.field == "max_tokens"


def test_refusals_say_what_and_which_limit(client):
    """The daemon's own words ride on the exception (LORAD_SQE_F_WHY): the
    limit and its value, not only the field."""
    with pytest.raises(lorad.TooBig) as e:
        client.complete(None, "hello", max_tokens=5000)
    assert e.value.why == "max_tokens 5000: the limit is 4096 (max_tokens)"
    assert e.value.why in str(e.value)
    with pytest.raises(lorad.TooBig) as e:
        client.complete(None, "hello", max_tokens=300)    # the demo model's context is 256
    assert "exceed the model's context of 256 tokens" in e.value.why, e.value.why
    with pytest.raises(lorad.SkillNotFound) as e:
        client.complete("no-such-skill", "hello", max_tokens=4)
    assert e.value.why == "skill 'no-such-skill' has no route (loradctl route show lists them)"
    with pytest.raises(lorad.SkillNotFound) as e:
        client.complete("sql@v999", "hello", max_tokens=4)
    assert e.value.why == "no adapter version sql@v999"
    # a text prompt that is not UTF-8, tokenized on the engine thread and,
    # past 4 KiB, on the tokenizer's: the encoder's words, not a grammar's
    for prompt, at in ((b"abc\xffdef", 3), (b"a" * 5000 + b"\xff", 5000)):
        with pytest.raises(lorad.InvalidRequest) as e:
            client.complete(None, prompt, max_tokens=4)
        assert e.value.errno == errno.EILSEQ and e.value.field == "prompt"
        assert e.value.why and "not valid UTF-8" in e.value.why and f"offset {at}" in e.value.why, \
            e.value.why
    # words quoting a client's text are cut at a character, never inside one
    name = "a" + "\u00e9" * 95
    with pytest.raises(lorad.LoradError) as e:
        client.complete(None, "hello", max_tokens=4,
                        response_format={"json_schema": {"type": "object",
                                                         "properties": {name: {"type": "bogus"}}}})
    assert e.value.why and "\ufffd" not in e.value.why and "bogus" in e.value.why, e.value.why
    # a name quoted in part is cut between characters
    with pytest.raises(lorad.LoradError) as e:
        client.complete(None, "hello", max_tokens=4,
                        response_format={"json_schema": {"type": "object", "\u20ac" * 30: 1}})
    assert e.value.why and "?" not in e.value.why and "\u20ac" * 21 + "'" in e.value.why, e.value.why
    # a request that is not refused leaves no words behind
    assert client.complete(None, "hello", max_tokens=2).tokens


def test_request_larger_than_the_arena(client):
    with pytest.raises(lorad.TooBig) as e:
        client.complete(None, [1, 2], max_tokens=10_000_000)  # 40 MB of ids, a 4 MiB arena
    assert e.value.field is None


def test_invalid_sampling(client):
    with pytest.raises(lorad.InvalidRequest) as e:
        client.complete(None, "hello", max_tokens=4, temperature=float("nan"))
    assert e.value.errno == errno.EINVAL and e.value.field == "sampling"


def test_timeout_cancels(client):
    with pytest.raises(lorad.Timeout):
        client.complete(None, "hello", max_tokens=200, ignore_eos=True, timeout=0.001)
    assert client.complete(None, [3], max_tokens=2).finish == "length"


def test_no_daemon(tmp_path):
    with pytest.raises(lorad.ConnectionRefused) as e:
        lorad.Client(str(tmp_path / "nobody.sock"))
    assert e.value.errno in (errno.ENOENT, errno.ECONNREFUSED)


def test_closed_client(demo):
    c = lorad.Client(demo.sock)
    c.close()
    with pytest.raises(ValueError):
        c.complete(None, [1], max_tokens=1)


def test_daemon_killed_mid_stream(fresh_tiny):
    c = lorad.Client(fresh_tiny.sock)
    s = c.stream(None, [1, 2, 3], max_tokens=4000, ignore_eos=True)
    other = c.stream(None, [4, 5], max_tokens=4000, ignore_eos=True)
    next(s)
    fresh_tiny.kill()
    caught = {}

    def drain(name, stream):
        try:
            for _ in stream:
                pass
            caught[name] = "finished"
        except lorad.LoradError as e:
            caught[name] = e

    threads = [threading.Thread(target=drain, args=(n, st), daemon=True)
               for n, st in (("s", s), ("other", other))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "hung after the daemon died"
    assert time.monotonic() - t0 < 5
    assert isinstance(caught["s"], lorad.DaemonGone), caught
    assert isinstance(caught["other"], lorad.DaemonGone), caught
    assert caught["s"].partial is not None and caught["s"].partial.tokens, "no partial tokens"
    with pytest.raises(lorad.DaemonGone):
        c.complete(None, [1], max_tokens=1)
    c.close()


def test_full_arena_is_busy_then_recovers(tiny):
    with lorad.Client(tiny.sock, arena_size=64 << 10) as c:
        streams = []
        with pytest.raises(lorad.Busy) as e:
            for _ in range(1000):      # nobody reaps: the arena's output spans stay taken
                streams.append(c.stream(None, [1, 2], max_tokens=1000))
        assert e.value.errno == errno.EAGAIN and lorad.TryAgain is lorad.Busy
        assert 0 < len(streams) < 1000
        for s in streams:
            s.close()                  # cancelled ...
        for s in streams:
            for _ in s:                # ... and reaped: their spans are free again
                pass
            assert s.result.finish in ("cancelled", "length", "stop")
        assert c.pending() == 0
        assert c.complete(None, [1, 2], max_tokens=1000).tokens


def test_missing_library_is_an_import_error():
    import subprocess
    import sys
    env = dict(os.environ, LORAD_LIBRARY="/nonexistent/liblorad.so.2",
               PYTHONPATH=os.path.join(ROOT, "python"))
    p = subprocess.run([sys.executable, "-c", "import lorad"], env=env,
                       capture_output=True, text=True)
    assert p.returncode != 0
    assert "ImportError" in p.stderr and "LORAD_LIBRARY" in p.stderr


# ctypes stores ints modulo the C field's width and char * up to a NUL: each
# of these reached the daemon as another, valid request (bias 2**32 + 77 on
# token 77, priority 300 as 44) or allocated 16 GiB of ids before liblorad
# refused them. Each must be refused here, naming the argument.
@pytest.mark.parametrize("kw, name", [
    (dict(logit_bias={2**32 + 77: 1000.0}), "logit_bias"),
    (dict(logit_bias={-1: 1.0}), "logit_bias"),
    (dict(prompt=[1, 2**32 + 5]), "prompt token id"),
    (dict(prompt=[-1]), "prompt token id"),
    (dict(stop_ids=[2**32 + 9]), "stop_ids"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2**32), "top_k"),
    (dict(priority=256), "priority"),
    (dict(priority=-1), "priority"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**64), "seed"),
    (dict(routing_key=-5), "routing_key"),
    (dict(routing_key=2**64), "routing_key"),
    (dict(min_tokens=-1), "min_tokens"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=-3), "max_tokens"),
    (dict(max_tokens=2**32 + 1), "max_tokens"),
    (dict(deadline=-1e12), "deadline"),
    (dict(deadline=1e12), "deadline"),
])
def test_out_of_range_ints_are_refused_not_wrapped(tiny, kw, name):
    with lorad.Client(tiny.sock) as c:
        prompt = kw.pop("prompt", [1, 2, 3])
        with pytest.raises(ValueError, match=name):
            c.complete(None, prompt, **{"max_tokens": 4, **kw})
        # the connection still serves, and nothing was left in flight
        assert c.complete(None, [1, 2, 3], max_tokens=2).finish == "length"
        assert c.pending() == 0


def test_ranges_edges_still_accepted(tiny):
    with lorad.Client(tiny.sock) as c:
        a = c.complete(None, [1, 2, 3], max_tokens=4, ignore_eos=True)
        b = c.complete(None, [1, 2, 3], max_tokens=4, ignore_eos=True, priority=255,
                       seed=2**64 - 1, routing_key=2**64 - 1)
        assert a.tokens == b.tokens     # greedy: the seed, key and priority change nothing
        with pytest.raises(lorad.InvalidRequest) as e:   # in range: the daemon's to judge
            c.complete(None, [1], max_tokens=2, top_k=2**32 - 1)
        assert e.value.field == "sampling"
        r = c.complete(None, [1, 2, 3], max_tokens=3, logit_bias={255: 1000.0}, ignore_eos=True)
        assert r.tokens == [255] * 3
        with pytest.raises(TypeError, match="top_k"):
            c.complete(None, [1], max_tokens=2, top_k=1.5)


def test_nul_in_c_strings_is_refused(demo):
    with lorad.Client(demo.sock) as c:
        with pytest.raises(ValueError, match="skill"):
            c.complete("sql\0anything", "hello", max_tokens=2)
        with pytest.raises(ValueError, match="stop string"):
            c.complete(None, "hello", max_tokens=2, stop=["a\0b"])
        assert c.complete("sql", "hello", max_tokens=2).tokens


def test_max_tokens_past_the_arena_allocates_nothing(tiny):
    import resource
    with lorad.Client(tiny.sock, arena_size=1 << 20) as c:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(lorad.TooBig) as e:
            c.complete(None, [1], max_tokens=2**32 - 1)
        assert "arena" in str(e.value) and e.value.errno == errno.E2BIG
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10   # KiB
        with pytest.raises(lorad.TooBig):
            c.complete(None, [1], max_tokens=(1 << 18) + 1)    # 4 bytes past 1 MiB
        with pytest.raises(lorad.TooBig, match="text_cap"):
            c.complete(None, [1], max_tokens=2, text=True, text_cap=2**32 - 1)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10
        for bad in (0, -1, 2**32):
            with pytest.raises(ValueError, match="text_cap"):
                c.complete(None, [1], max_tokens=2, text=True, text_cap=bad)


def test_connect_options_are_checked(tiny):
    for opts, name in ((dict(sq_entries=-1), "sq_entries"), (dict(arena_size=2**32), "arena_size"),
                       (dict(timeout_ms=2**31), "timeout_ms")):
        with pytest.raises(ValueError, match=name):
            lorad.Client(tiny.sock, **opts)
    with pytest.raises(TypeError, match="no_such"):
        lorad.Client(tiny.sock, no_such=1)
