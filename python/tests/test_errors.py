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
