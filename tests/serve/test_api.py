"""The OpenAI surface: streaming equals non-streaming, exact SSE framing, usage counts, chat
through the template, stop strings, n, seeds, logprobs and the models list."""

from __future__ import annotations

import json
from typing import Any

from . import tiny
from .conftest import MODEL_ID, http

PROMPT = "w3 w1 w4 w1 w5"


def _events(url: str, body: dict) -> list[str]:
    """The raw server-sent events of a streamed request, checking the framing."""
    status, text = http(url, "POST", body)
    assert status == 200, text
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: "):] for e in events]


def test_stream_equals_plain_completion(server: Any, client: Any) -> None:
    for model in ("lora", "prefix", "prompt"):
        kw = dict(model=model, prompt=PROMPT, max_tokens=20, temperature=0, logprobs=1,
                  extra_body={"ignore_eos": True})
        plain = client.completions.create(**kw)
        chunks = list(client.completions.create(**kw, stream=True,
                                                stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == plain.choices[0].text and text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
            plain.choices[0].finish_reason
        tokens = [t for c in chunks if c.choices for t in c.choices[0].logprobs.tokens]
        assert tokens == plain.choices[0].logprobs.tokens
        assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
        assert all(c.usage is None for c in chunks[:-1])


def test_sse_framing_and_usage_chunk(server: Any) -> None:
    body = {"model": "ia3", "prompt": PROMPT, "max_tokens": 6, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    events = _events(server.url + "/v1/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["model"] == "ia3" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1


def test_chat_stream_equals_plain(server: Any, client: Any) -> None:
    messages = [{"role": "system", "content": "w7 w8"}, {"role": "user", "content": "w9 w10"}]
    kw = dict(model="bottleneck", messages=messages, max_completion_tokens=12, temperature=0,
              extra_body={"ignore_eos": True})
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert plain.object == "chat.completion" and chunks[1].object == "chat.completion.chunk"
    assert chunks[-1].usage == plain.usage
    tok = tiny.tokenizer()
    want = len(tok(tok.apply_chat_template(messages, tokenize=False,
                                           add_generation_prompt=True))["input_ids"])
    assert plain.usage.prompt_tokens == want


def test_usage_counts(client: Any) -> None:
    r = client.completions.create(model=MODEL_ID, prompt=[PROMPT, "w2 w2"], max_tokens=7, n=2,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == 5 + 2 and r.usage.completion_tokens == 4 * 7
    assert r.usage.total_tokens == 7 + 28
    assert r.choices[0].text == r.choices[1].text  # greedy: the n copies agree
    ids = client.completions.create(model=MODEL_ID, prompt=[8, 9, 10], max_tokens=3,
                                    extra_body={"ignore_eos": True})
    assert ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens == 3


def test_stop_strings_and_tokens(client: Any) -> None:
    kw = dict(model="lora", prompt=PROMPT, max_tokens=20, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    words = full.split()
    stop = words[3]
    cut = client.completions.create(**kw, stop=[stop])
    assert cut.choices[0].text == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert getattr(cut.choices[0], "stop_reason", None) == stop
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=[stop],
                                                                            stream=True))
    assert streamed == cut.choices[0].text
    token = tiny.tokenizer().convert_tokens_to_ids(words[2])
    by_id = client.completions.create(**{**kw, "extra_body": {"ignore_eos": True,
                                                              "stop_token_ids": [token]}})
    assert by_id.choices[0].text == " ".join(words[:words.index(words[2])])
    assert by_id.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats(client: Any) -> None:
    kw = dict(model="lora", prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9,
              seed=123, extra_body={"top_k": 20, "ignore_eos": True})
    a, b = (client.completions.create(**kw).choices[0].text for _ in range(2))
    other = client.completions.create(**{**kw, "seed": 321}).choices[0].text
    assert a == b and a != other


def test_logprobs_shapes(client: Any) -> None:
    r = client.completions.create(model="lora", prompt=PROMPT, max_tokens=4, logprobs=3,
                                  temperature=0, echo=True, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert r.choices[0].text.startswith(PROMPT)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and value == max(top.values()) and token in top  # greedy: the best
    c = client.chat.completions.create(model="lora", messages=[{"role": "user", "content": "w1"}],
                                       max_tokens=3, temperature=0, logprobs=True, top_logprobs=2,
                                       extra_body={"ignore_eos": True})
    content = c.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 for t in content)


def test_models_list(server: Any) -> None:
    status, text = http(server.url + "/v1/models")
    data = json.loads(text)
    assert status == 200 and data["object"] == "list"
    cards = {c["id"]: c for c in data["data"]}
    assert cards[MODEL_ID]["parent"] is None and cards[MODEL_ID]["root"]
    for name in tiny.ADAPTERS:
        assert cards[name]["parent"] == MODEL_ID and cards[name]["root"].endswith(name)
        assert cards[name]["object"] == "model" and cards[name]["max_model_len"] == tiny.CONTEXT
    assert http(server.url + "/health")[0] == 200
