# SPDX-License-Identifier: MIT
"""lorad.Client against the C client (lorad-cli) and the daemon's own answers."""
import json
import os
import subprocess

import pytest

import lorad
from conftest import CLI, heldout


def cli(sock, *args):
    if not os.access(CLI, os.X_OK):
        pytest.skip(f"lorad-cli not built: {CLI}")
    out = subprocess.run([CLI, "--socket", sock, "--json", *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def client(demo):
    with lorad.Client(demo.sock) as c:
        yield c


@pytest.mark.parametrize("skill,prompt", heldout(2))
def test_complete_matches_c_client(demo, client, skill, prompt):
    want = cli(demo.sock, "--skill", skill, "--max-tokens", "64", "--prompt", prompt)
    got = client.complete(skill, prompt, max_tokens=64)
    assert got.text == want["text"]
    assert got.tokens == want["tokens"]
    assert got.finish == want["finish"]
    assert got.skill == want["skill"] == skill
    assert got.version_id == want["version"]
    assert got.version_id.startswith(skill + "@") and got.version > 0


def test_base_model_and_token_prompt(demo, client):
    want = cli(demo.sock, "--max-tokens", "12", "--prompt-tokens", "5,6,7,8")
    got = client.complete(None, [5, 6, 7, 8], max_tokens=12)
    assert got.text is None
    assert got.tokens == want["tokens"] and got.tokens
    assert got.finish == want["finish"]
    assert (got.skill, got.version, got.version_id) == ("base", 0, "base")
    assert got.times["seen_ns"] <= got.times["first_token_ns"] <= got.times["final_ns"]


def test_token_prompt_on_mkmodel(tiny):
    want = cli(tiny.sock, "--max-tokens", "20", "--prompt-tokens", "1,2,3")
    with lorad.Client(tiny.sock) as c:
        assert c.complete(None, [1, 2, 3], max_tokens=20).tokens == want["tokens"]


def test_greedy_is_deterministic(client):
    a = client.complete("sql", "Which customers bought a 'saw'?", max_tokens=48)
    b = client.complete("sql", "Which customers bought a 'saw'?", max_tokens=48)
    assert a.tokens == b.tokens and a.text == b.text


def test_stream_pieces_make_the_text(client):
    skill, prompt = heldout(1)[0]
    whole = client.complete(skill, prompt, max_tokens=64)
    s = client.stream(skill, prompt, max_tokens=64)
    pieces = list(s)
    assert len(pieces) > 1, "one piece: nothing streamed"
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == whole.text
    assert s.result.text == whole.text and s.result.tokens == whole.tokens


def test_stream_token_prompt_yields_ids(client):
    whole = client.complete(None, [9, 10, 11], max_tokens=16)
    pieces = list(client.stream(None, [9, 10, 11], max_tokens=16))
    assert all(isinstance(p, list) for p in pieces)
    assert sum(pieces, []) == whole.tokens


def test_stream_close_cancels(client):
    s = client.stream(None, "The", max_tokens=200, ignore_eos=True)
    next(s)
    s.close()
    # the connection goes on; the cancelled request ends as cancelled (or
    # length, had it finished first) and leaves nothing pending
    assert client.complete(None, [5, 6], max_tokens=4).finish == "length"
    for _ in range(100):
        if client.pending() == 0:
            break
        client.complete(None, [5], max_tokens=1)
    assert client.pending() == 0


def test_stop_string_and_temperature(client):
    r = client.complete("json", "age=36 product=camera name=Mino", max_tokens=64, stop=['"product"'])
    assert r.finish == "stop" and '"product"' not in r.text
    a = client.complete(None, "Hello", max_tokens=24, temperature=1.0, seed=7, ignore_eos=True)
    b = client.complete(None, "Hello", max_tokens=24, temperature=1.0, seed=7, ignore_eos=True)
    assert a.tokens == b.tokens, "same seed, same sample"


def test_routing_key():
    # FNV-1a 64 of the bytes, 0 mapped to 1 (lorad.h)
    assert lorad.routing_key(b"") == 0xcbf29ce484222325
    assert lorad.routing_key("a") == 0xaf63dc4c8601ec8c


def test_routing_key_request(client):
    a = client.complete("json", "age=3 name=Ada", max_tokens=32, routing_key="user-17")
    b = client.complete("json", "age=3 name=Ada", max_tokens=32, routing_key=12345)
    assert a.version_id == b.version_id and a.tokens == b.tokens


def test_result_rows(tiny):
    with lorad.Client(tiny.sock) as c:
        info = c.results_info()
        assert info["vocab"] == 256 and info["hidden"] == 256
        r = c.complete(None, [1, 2, 3], max_tokens=8, result="logits", ignore_eos=True)
        assert len(r.rows) == len(r.tokens) == 8
        assert all(len(row) == 256 for row in r.rows)
        # greedy: token i is the argmax of row i
        assert [max(range(256), key=row.__getitem__) for row in r.rows] == r.tokens
        h = c.complete(None, [1, 2, 3], max_tokens=8, result="hidden", ignore_eos=True)
        assert h.tokens == r.tokens and len(h.rows) == 8 and len(h.rows[0]) == 256
        assert h.rows[0] != r.rows[0]
        assert c.complete(None, [1, 2, 3], max_tokens=8).rows is None
        # released on the final event: many more than the arena holds at once
        for _ in range(80):   # 64 KiB of rows each, 5 MiB in all: more than the 4 MiB arena
            assert len(c.complete(None, [4], max_tokens=64, result="logits",
                                  ignore_eos=True).rows) == 64


def test_logit_bias_and_deadline(tiny):
    with lorad.Client(tiny.sock) as c:
        r = c.complete(None, [1, 2, 3], max_tokens=6, logit_bias={77: 1000.0}, ignore_eos=True)
        assert r.tokens == [77] * 6
        with pytest.raises(lorad.Timeout) as e:
            c.complete(None, [1, 2, 3], max_tokens=4000, ignore_eos=True, deadline=0.05)
        assert e.value.partial.finish == "deadline"
        assert len(e.value.partial.tokens) < 4000


def test_response_format(client):
    """The base model, which writes no JSON of its own, answers in the format asked."""
    import re
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"], "additionalProperties": False}
    for seed in (1, 2, 3):
        got = client.complete(None, "Which customers live in Lind?", max_tokens=60, temperature=1.0,
                              seed=seed, response_format={"json_schema": schema})
        assert got.finish == "stop", got
        v = json.loads(got.text)
        assert set(v) == {"ok", "n"} and isinstance(v["ok"], bool) and isinstance(v["n"], int)
        got = client.complete(None, "x", max_tokens=20, temperature=1.0, seed=seed,
                              response_format={"regex": "(yes|no), [a-z]{2,5}"})
        assert re.fullmatch("(yes|no), [a-z]{2,5}", got.text), got.text
    with pytest.raises(lorad.InvalidRequest):
        client.complete(None, "x", response_format={"regex": "ab(c"})
