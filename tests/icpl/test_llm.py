"""The chat client against a real HTTP server on loopback, and the bundled local model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pbrl.icpl.llm import AnswerCache, ChatClient, LLMError, cache_key

from .chat_server import ChatServer, completion

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def _client(srv: ChatServer, tmp: Path | None, **kw: object) -> ChatClient:
    kw = {"backoff": 0.01, "backoff_max": 0.05, "api_key_env": None, **kw}
    return ChatClient(srv.base_url, "m", cache_dir=tmp, **kw)  # type: ignore[arg-type]


def test_k_separate_requests_and_cache(tmp_path: Path) -> None:
    with ChatServer(lambda body, i: completion(f"answer {i}")) as srv:
        client = _client(srv, tmp_path, concurrency=1)
        out = client.chat(MSGS, k=3)
        assert [c.text for c in out] == ["answer 0", "answer 1", "answer 2"]
        assert len(srv.requests) == 3 and all("n" not in r for r in srv.requests)
        assert srv.requests[0]["messages"] == MSGS and srv.requests[0]["model"] == "m"
        assert srv.requests[0]["temperature"] == 1.0
        # a resumed run (new client, same cache) pays nothing, and gets the same answers
        again = _client(srv, tmp_path, concurrency=1).chat(MSGS, k=3)
        assert [c.text for c in again] == [c.text for c in out] and all(c.cached for c in again)
        assert len(srv.requests) == 3
        # asking for more samples serves the stored ones and requests only the new one
        more = _client(srv, tmp_path, concurrency=1).chat(MSGS, k=4)
        assert [c.cached for c in more] == [True, True, True, False]
        assert len(srv.requests) == 4
        # another prompt or temperature is another key
        client.chat(MSGS, k=1, temperature=0.2)
        assert len(srv.requests) == 5
    assert len(AnswerCache(tmp_path)) == 5


def test_concurrent_requests_each_cached_under_its_sample(tmp_path: Path) -> None:
    with ChatServer(lambda body, i: completion("same text")) as srv:
        out = _client(srv, tmp_path, concurrency=4).chat(MSGS, k=4)
    keys = {c.key for c in out}
    assert len(keys) == 4
    assert keys == {
        cache_key("m", MSGS, {"temperature": 1.0, "max_tokens": 2048}, s) for s in range(4)
    }


def test_retries_with_backoff_then_succeeds(tmp_path: Path) -> None:
    def script(body: dict, i: int):  # noqa: ANN202
        if i == 0:
            return 503, {"error": "overloaded"}, {}
        if i == 1:
            return 429, {"error": "slow down"}, {"Retry-After": "0.2"}
        return completion("finally")

    with ChatServer(script) as srv:
        client = _client(srv, None, retries=3)
        t = time.monotonic()
        assert client.chat(MSGS)[0].text == "finally"
        assert time.monotonic() - t >= 0.2  # Retry-After honoured
        assert client.stats["retries"] == 2 and len(srv.requests) == 3


def test_gives_up_and_does_not_retry_client_errors() -> None:
    with ChatServer(lambda body, i: (500, {"error": "boom"}, {})) as srv:
        with pytest.raises(LLMError, match="HTTP 500.*gave up after 3 attempts"):
            _client(srv, None, retries=2).chat(MSGS)
        assert len(srv.requests) == 3
    with ChatServer(lambda body, i: (400, {"error": "bad model"}, {})) as srv:
        with pytest.raises(LLMError, match="HTTP 400.*not retried"):
            _client(srv, None, retries=2).chat(MSGS)
        assert len(srv.requests) == 1
    with ChatServer(lambda body, i: (200, "not json", {})) as srv:
        with pytest.raises(LLMError, match="malformed answer"):
            _client(srv, None, retries=1).chat(MSGS)


def test_unreachable_server() -> None:
    client = ChatClient("http://127.0.0.1:9/v1", "m", api_key_env=None, retries=1, backoff=0.01)
    with pytest.raises(LLMError, match="cannot reach"):
        client.chat(MSGS)


def test_api_key_from_env_is_sent_but_never_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBRL_TEST_KEY", "sk-very-secret")
    with ChatServer(lambda body, i: completion("ok")) as srv:
        _client(srv, tmp_path, api_key_env="PBRL_TEST_KEY").chat(MSGS)
        assert srv.headers[0]["Authorization"] == "Bearer sk-very-secret"
    for f in tmp_path.rglob("*.json"):
        assert "sk-very-secret" not in f.read_text()
    monkeypatch.delenv("PBRL_TEST_KEY")
    remote = ChatClient("https://example.invalid/v1", "m", api_key_env="PBRL_TEST_KEY")
    with pytest.raises(LLMError, match="PBRL_TEST_KEY is not set"):
        remote.chat(MSGS)


def test_corrupt_cache_entry_is_refetched(tmp_path: Path) -> None:
    with ChatServer(lambda body, i: completion(f"a{i}")) as srv:
        first = _client(srv, tmp_path).chat(MSGS)[0]
        (tmp_path / first.key[:2] / f"{first.key}.json").write_text("{truncated")
        again = _client(srv, tmp_path).chat(MSGS)[0]
        assert not again.cached and again.text == "a1"


@pytest.mark.llm
def test_local_model_answers(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llm=local needs llama-cpp-python (pbrl[icpl])")
    from pbrl.icpl.llm import LocalServer

    with LocalServer(log_path=tmp_path / "server.log", n_ctx=2048) as server:
        client = ChatClient(
            server.base_url,
            server.alias,
            api_key_env=None,
            max_tokens=48,
            cache_dir=tmp_path / "cache",
            concurrency=1,
        )
        out = client.chat(
            [{"role": "user", "content": "Write a Python function that adds two numbers."}], k=2
        )
    assert len(out) == 2 and all(c.text.strip() for c in out)
    assert client.stats["completion_tokens"] > 0
