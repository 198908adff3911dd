# SPDX-License-Identifier: MIT
"""One Client shared by many threads: every request gets its own events."""
import threading

import lorad
from conftest import heldout


def test_many_threads_one_client(demo):
    prompts = heldout(3)
    with lorad.Client(demo.sock) as c:
        want = {p: c.complete(s, p, max_tokens=48) for s, p in prompts}
        errors, got = [], {}

        def work(k):
            try:
                for i in range(6):
                    s, p = prompts[(k + i) % len(prompts)]
                    if (k + i) % 2:
                        r = c.complete(s, p, max_tokens=48)
                        text, tokens = r.text, r.tokens
                    else:
                        st = c.stream(s, p, max_tokens=48)
                        text = "".join(st)
                        tokens = st.result.tokens
                    got[(k, i)] = (p, text, tokens)
            except Exception as e:     # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a thread hung"
        assert not errors, errors
        assert len(got) == 48
        for p, text, tokens in got.values():
            assert (text, tokens) == (want[p].text, want[p].tokens), p
        assert c.pending() == 0
