"""``llm=manual``: the relay server over real HTTP, its files, and replay from the answer cache.

A client request blocks until a test thread writes the answer file; the pending/done
bookkeeping, the request ids (round tag, sample index, prompt hash), the guard against
half-written answers, a bad relay folder, the wait timeout, the command line, and a whole
ICPL loop answered through the relay and then replayed from its cache with nobody answering.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from pbrl.icpl.llm import ChatClient, LLMError, make_client
from pbrl.icpl.relay import RelayServer, main, pending, store_answer

MSGS = [
    {"role": "system", "content": "You write reward functions."},
    {"role": "user", "content": "Make the cheetah run forward."},
]


def _wait_pending(root: Path, n: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reqs = pending(root)
        if len(reqs) >= n:
            return reqs
        time.sleep(0.05)
    raise AssertionError(f"{len(pending(root))} pending requests in {root}, expected {n}")


def _client(srv: RelayServer, cache: Path | None, **kw) -> ChatClient:  # noqa: ANN003
    return ChatClient(
        srv.base_url, "manual", api_key_env=None, cache_dir=cache, retries=0, timeout=60, **kw
    )


def test_a_request_blocks_until_its_answer_file_appears(tmp_path: Path) -> None:
    relay = tmp_path / "relay"
    with RelayServer(relay, label="s0", poll=0.05, settle=0.2) as srv:
        client = _client(srv, tmp_path / "cache", concurrency=3)
        out: list = []
        th = threading.Thread(target=lambda: out.extend(client.chat(MSGS, k=3, tag="r0")))
        th.start()
        reqs = _wait_pending(relay, 3)
        ids = [r["id"] for r in reqs]
        assert sorted(r["sample"] for r in reqs) == [0, 1, 2]
        assert {r["round"] for r in reqs} == {0} and {r["label"] for r in reqs} == {"s0"}
        # one prompt, three samples: the ids differ only in -s<i>, the hash is shared
        assert len({r["same_prompt"] for r in reqs}) == 1
        for r in reqs:
            assert r["id"] == f"s0-r0-s{r['sample']}-{r['same_prompt']}"
            assert r["messages"] == MSGS and r["model"] == "manual"
            prompt = (relay / "pending" / f"{r['id']}.prompt.md").read_text()
            assert "Make the cheetah run forward." in prompt and "## message 0: system" in prompt
            assert r["answer_file"] == str(relay / "answers" / f"{r['id']}.md")
        time.sleep(0.5)
        assert th.is_alive() and not out  # still waiting: nobody answered

        # a file that is not yet renamed into place is not read
        first = next(r for r in reqs if r["sample"] == 0)["id"]
        tmp = relay / "answers" / f"{first}.md.tmp"
        tmp.write_text("answer zero")
        time.sleep(0.6)
        assert th.is_alive() and len(pending(relay)) == 3
        tmp.rename(relay / "answers" / f"{first}.md")
        for r in reqs:
            if r["sample"]:
                store_answer(relay, r["id"], f"answer {r['sample']}")
        th.join(20)
        assert not th.is_alive()
        assert [c.text for c in out] == ["answer zero", "answer 1", "answer 2"]
        assert not any(c.cached for c in out)
        assert pending(relay) == [] and not list((relay / "pending").iterdir())
        done = {p.stem: json.loads(p.read_text()) for p in (relay / "done").glob("*.json")}
        assert set(done) == set(ids)
        assert done[first]["answer"] == "answer zero" and done[first]["messages"] == MSGS

        # recorded answers: the same cache replays them with no server at all ...
        dead = ChatClient("http://127.0.0.1:9/v1", "manual", api_key_env=None, retries=0,
                          cache_dir=tmp_path / "cache")  # fmt: skip
        again = dead.chat(MSGS, k=3, tag="r0")
        assert [c.text for c in again] == [c.text for c in out] and all(c.cached for c in again)
        assert dead.stats["requests"] == 0
        # ... and the answer files serve a client without that cache at once (a restarted run)
        t0 = time.monotonic()
        fresh = _client(srv, None).chat(MSGS, k=1, tag="r0", first_sample=1)
        assert fresh[0].text == "answer 1" and time.monotonic() - t0 < 5
        assert pending(relay) == []


def test_other_rounds_and_labels_get_other_ids(tmp_path: Path) -> None:
    relay = tmp_path / "relay"
    with RelayServer(relay, label="s1", poll=0.05, settle=0.1) as srv:
        client = _client(srv, None, concurrency=1)
        th = threading.Thread(target=lambda: client.chat(MSGS, k=1, tag="r3-summary"))
        th.start()
        (req,) = _wait_pending(relay, 1)
        assert req["id"].startswith("s1-r3-summary-s0-") and req["round"] == 3
        store_answer(relay, req["id"], "summary")
        th.join(20)
        assert not th.is_alive()


def test_two_runs_of_one_label_share_an_answer(tmp_path: Path) -> None:
    # e.g. the proxy and random arms of one seed: the same round-0 prompt and sample index
    relay = tmp_path / "relay"
    with (
        RelayServer(relay, label="s0", poll=0.05, settle=0.1) as a,
        RelayServer(relay, label="s0", poll=0.05, settle=0.1) as b,
    ):
        out: list = []
        ths = [
            threading.Thread(target=lambda c=c: out.extend(c.chat(MSGS, tag="r0")))
            for c in (_client(a, None), _client(b, None))
        ]
        for th in ths:
            th.start()
        (req,) = _wait_pending(relay, 1)
        time.sleep(0.3)  # both are waiting on the one id
        store_answer(relay, req["id"], "shared")
        for th in ths:
            th.join(20)
        assert [c.text for c in out] == ["shared", "shared"]
        done = json.loads((relay / "done" / f"{req['id']}.json").read_text())
        assert done["messages"] == MSGS and done["answer"] == "shared"


def test_a_wait_times_out_with_a_clear_error(tmp_path: Path) -> None:
    with RelayServer(tmp_path / "relay", answer_timeout=0.5, poll=0.05) as srv:
        with pytest.raises(LLMError, match=r"HTTP 504 .*no answer to r0-s0-.* within 0.5 s"):
            _client(srv, None).chat(MSGS, k=1, tag="r0")


def test_a_bad_relay_dir_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(LLMError, match=r"llm.relay_dir .*file exists and is not a folder"):
        RelayServer(not_a_dir).start()
    with pytest.raises(LLMError, match=r"is not a writable folder .* llm.relay_dir=<a folder"):
        RelayServer(not_a_dir / "sub").start()
    with pytest.raises(ValueError, match="llm=manual needs llm.relay_dir"):
        make_client({"name": "manual", "model": "m"}, None)
    client, srv = make_client(
        {"name": "manual", "model": "m", "relay_dir": str(tmp_path / "ok"), "answer_timeout": 7200},
        None,
    )
    try:
        assert client.timeout >= 7260  # the client outwaits the relay
        assert client.base_url == srv.base_url and (tmp_path / "ok" / "answers").is_dir()
    finally:
        srv.stop()


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    relay = tmp_path / "relay"
    with RelayServer(relay, poll=0.05, settle=0.1) as srv:
        out: list = []
        th = threading.Thread(target=lambda: out.extend(_client(srv, None).chat(MSGS, tag="r0")))
        th.start()
        (req,) = _wait_pending(relay, 1)
        assert main(["list", str(relay)]) == 0
        assert req["id"] in capsys.readouterr().out
        assert main(["show", str(relay)]) == 0
        assert "Make the cheetah run forward." in capsys.readouterr().out
        answer = tmp_path / "a.md"
        answer.write_text("by hand")
        assert main(["answer", str(relay), req["id"], str(answer)]) == 0
        th.join(20)
        assert out[0].text == "by hand"
        assert main(["show", str(relay)]) == 1  # nothing pending
    assert main(["list", str(tmp_path)]) == 2
    assert "is not a relay folder" in capsys.readouterr().err


FORWARD = """```python
import torch

def compute_reward(obs, action, next_obs):
    forward = next_obs[:, 8]
    ctrl = -0.1 * torch.sum(action ** 2, dim=-1)
    return forward + ctrl, {"forward": forward, "ctrl": ctrl}
```"""


def _compose(*extra: str):  # noqa: ANN202
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "pbrl" / "configs" / "icpl"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="icpl", overrides=["experiment=fast", "llm=manual", *extra])


def test_the_loop_answered_by_hand_then_replayed(tmp_path: Path) -> None:
    from pbrl.icpl.loop import run

    relay, cache = tmp_path / "relay", tmp_path / "cache"
    stop = threading.Event()
    seen: list[str] = []

    def answerer() -> None:
        while not stop.is_set():
            for r in pending(relay):
                if r["id"] in seen:
                    continue
                seen.append(r["id"])
                text = "They differ." if "summary" in r["tag"] else FORWARD
                store_answer(relay, r["id"], text)
            time.sleep(0.05)

    common = [f"llm.relay_dir={relay}", f"llm.cache_dir={cache}", "llm.settle=0.1", "llm.poll=0.05"]
    th = threading.Thread(target=answerer, daemon=True)
    th.start()
    try:
        first = run(_compose(*common, "llm.label=s0"), tmp_path / "a")
    finally:
        stop.set()
        th.join(5)
    # 2 rounds x 2 samples (the last round asks for no summary), named by round and sample
    assert len(seen) == 4
    assert sorted(s.rsplit("-", 1)[0] for s in seen) == [
        "s0-r0-s0",
        "s0-r0-s1",
        "s0-r1-s0",
        "s0-r1-s1",
    ]
    assert [r["trained"] for r in first["rounds"]] == [2, 2]
    assert first["llm"]["requests"] == 4 and first["llm"]["cache_hits"] == 0
    # another run directory, the same cache, nobody answering (a short wait would fail it)
    again = run(_compose(*common, "llm.label=s0", "llm.answer_timeout=2"), tmp_path / "b")
    assert again["llm"]["requests"] == 0 and again["llm"]["cache_hits"] == 4
    assert pending(relay) == []
    assert again["best_program"] == first["best_program"]
