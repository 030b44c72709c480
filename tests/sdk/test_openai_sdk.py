"""End-to-end: the official OpenAI Python SDK against `tollgate dev` (gateway, store and
simulated upstreams as real processes on loopback)."""

import time
import urllib.error

import openai
import pytest

from conftest import control

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say three things"}]
PROMPT_WORDS = 5


def served(upstream, request_id, deadline_s=10):
    """What the simulated upstream served under a request id (waits for a stream to end)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return control(upstream, f"/mock/served/{request_id}")
        except urllib.error.HTTPError as e:
            if e.code != 404 or time.monotonic() > end:
                raise
        time.sleep(0.05)


def test_list_and_retrieve_models(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["demo-chat", "demo-embed"]
    assert client.models.retrieve("demo-chat").id == "demo-chat"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.code == "model_not_found"


def test_chat_completion_counts_match_the_upstream(client, dev):
    raw = client.chat.completions.with_raw_response.create(
        model="demo-chat", messages=MSGS, max_tokens=5)
    resp = raw.parse()
    text = resp.choices[0].message.content
    assert len(text.split()) == 5
    assert resp.usage.prompt_tokens == PROMPT_WORDS
    assert resp.usage.completion_tokens == 5
    assert resp.choices[0].finish_reason == "length"
    request_id = raw.headers["x-request-id"]
    oracle = served(dev["upstreams"][0], request_id)
    assert oracle["completion_tokens"] == 5 and oracle["complete"]


def test_stream_without_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model="demo-chat", messages=MSGS, max_tokens=7, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 7
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "no empty usage-only chunk"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stream_with_usage_ends_with_one_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model="demo-chat", messages=MSGS, max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == PROMPT_WORDS


def test_stream_chunks_arrive_before_the_upstream_finishes_and_close_cancels_it(client, dev):
    upstream = dev["upstreams"][0]
    # the upstream sends 3 tokens and then holds the stream open without finishing it
    control(upstream, "/mock/behavior", {"stall_after_tokens": 3})
    raw = client.chat.completions.with_raw_response.create(
        model="demo-chat", messages=MSGS, max_tokens=50, stream=True)
    stream = raw.parse()
    got = []
    for chunk in stream:
        got.append(chunk.choices[0].delta.content)
        if len(got) == 3:
            break
    assert all(got), "three content chunks relayed while the upstream is still generating"
    stream.close()
    oracle = served(upstream, raw.headers["x-request-id"])
    assert oracle["completion_tokens"] == 3
    assert not oracle["complete"], "closing the client stream cancelled the upstream request"


def test_mid_stream_upstream_drop_raises_instead_of_ending_cleanly(client, dev):
    control(dev["upstreams"][0], "/mock/behavior", {"drop_after_tokens": 2})
    stream = client.chat.completions.create(
        model="demo-chat", messages=MSGS, max_tokens=10, stream=True)
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 2
    assert "stream" in str(e.value.message)


def test_embeddings(client):
    resp = client.embeddings.create(model="demo-embed", input=["one two", "three"])
    assert [d.index for d in resp.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in resp.data)
    assert resp.usage.prompt_tokens == 3
    floats = client.embeddings.create(model="demo-embed", input="x y", encoding_format="float")
    assert len(floats.data[0].embedding) == 8


def test_wrong_key_is_an_authentication_error(dev):
    bad = openai.OpenAI(base_url=dev["gateway_url"], api_key="tg_test_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="demo-chat", messages=MSGS)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-nope", messages=MSGS)
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    assert e.value.param == "model"


def test_malformed_body_names_the_param(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo-chat", messages=[{"role": "robot", "content": "x"}])
    assert e.value.status_code == 400 and e.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo-chat", messages=MSGS, max_tokens=10**9)
    assert e.value.param == "max_tokens"


def test_body_too_large(client):
    big = "word " * (1 << 20)  # 5 MiB, over the 4 MiB default
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="demo-chat",
                                       messages=[{"role": "user", "content": big}])
    assert e.value.status_code == 413 and e.value.code == "request_too_large"


def test_upstream_failure_is_a_server_error(client, dev):
    for u in dev["upstreams"]:
        control(u, "/mock/behavior", {"fail_rate": 1.0, "fail_status": 500})
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="demo-chat", messages=MSGS)
    assert e.value.status_code == 502 and e.value.code == "upstream_error"


def test_fallback_tier_serves_when_the_primary_fails(client, dev):
    control(dev["upstreams"][0], "/mock/behavior", {"fail_rate": 1.0, "fail_status": 503})
    raw = client.chat.completions.with_raw_response.create(
        model="demo-chat", messages=MSGS, max_tokens=3)
    assert raw.parse().usage.completion_tokens == 3
    oracle = served(dev["upstreams"][1], raw.headers["x-request-id"])
    assert oracle["complete"], "the fallback upstream served it"


def test_idempotency_key_replays_the_completed_response(client):
    h = {"Idempotency-Key": "sdk-test-replay-1"}
    first = client.chat.completions.with_raw_response.create(
        model="demo-chat", messages=MSGS, max_tokens=3, extra_headers=h)
    second = client.chat.completions.with_raw_response.create(
        model="demo-chat", messages=MSGS, max_tokens=3, extra_headers=h)
    assert second.headers.get("idempotent-replayed") == "true"
    assert second.parse().id == first.parse().id
    with pytest.raises(openai.ConflictError) as e:
        client.chat.completions.create(model="demo-chat", messages=MSGS, max_tokens=4,
                                       extra_headers=h)
    assert e.value.code == "idempotency_conflict"
