"""A fuzz pass over the API: schemathesis drives every operation in the app's OpenAPI schema.

Whatever it sends (valid answers, unknown ids, huge numbers, odd unicode, wrong types, with and
without a token), the server answers without a 5xx and without crashing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pbrl.data import QueryBatch
from pbrl.human.server import LabelServer
from pbrl.store import FeedbackStore

from .helpers import SMALL, pair_queries, require_web_stack, rollout_segments, token_of

require_web_stack("hypothesis", "schemathesis")
httpx = pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory):
    d: Path = tmp_path_factory.mktemp("fuzz")
    segs = rollout_segments(6, horizon=4)
    st = FeedbackStore(d / "store.sqlite")
    st.add_queries(pair_queries(segs, 2))
    st.add_queries(
        QueryBatch.from_members([segs[0:2], segs[2:4], segs[4:6]], kind="ranking", ids=["r0", "r1"])
    )
    # Rendering off: the fuzzer is after the API's input handling, not the video encoder.
    srv = LabelServer(st, d / "human", port=0, labellers=["fuzz"], clip=SMALL, render=False)
    srv.start()  # hypothesis talks to it over HTTP; schemathesis calls the app in-process
    yield srv
    srv.stop()
    st.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LabelServer):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_server.app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_no_input_makes_a_server_error(case, fuzz_server: LabelServer) -> None:
    for headers in ({"Authorization": f"Bearer {token_of(fuzz_server, 'fuzz')}"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.text)
        if response.status_code >= 400:
            assert "detail" in response.json()  # every error says what went wrong


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def answers(ids: list[str]):
    """Answers that are right, nearly right, or wrong in every field."""
    return st.fixed_dictionaries(
        {
            "query_id": st.sampled_from(ids) | st.text(max_size=300),
            "choice": st.sampled_from(["left", "right", "equal", "skip", "rank"]) | JSON,
        },
        optional={
            "ranking": st.lists(st.integers(-3, 70), max_size=5) | JSON,
            "client_time": st.floats() | st.integers() | JSON,
            "response_time": st.floats() | st.integers() | JSON,
            "extra": JSON,
        },
    )


def test_arbitrary_answers_never_make_a_server_error(fuzz_server: LabelServer) -> None:
    ids = fuzz_server.store.query_ids()
    http = httpx.Client(base_url=fuzz_server.url, timeout=30)
    auth = {"Authorization": f"Bearer {token_of(fuzz_server, 'fuzz')}"}

    @given(body=answers(ids) | JSON, raw=st.none() | st.binary(max_size=200))
    @settings(max_examples=80, deadline=None, derandomize=True, database=None)
    def run(body: object, raw: bytes | None) -> None:
        # json.dumps writes NaN and Infinity as a browser never would; the server must cope.
        content = json.dumps(body).encode() if raw is None else raw
        r = http.post(
            "/api/label", content=content, headers={**auth, "content-type": "application/json"}
        )
        assert r.status_code < 500, (body, raw, r.text)
        assert isinstance(r.json()["detail" if r.status_code >= 400 else "feedback_id"], str)
        if r.status_code == 200:  # a valid answer is in the store, as acknowledged
            stored = {(f.query_id, f.teacher_id) for f in fuzz_server.store.feedback()}
            assert (body["query_id"], "human:fuzz") in stored  # type: ignore[index]

    with http:
        run()


def test_arbitrary_clip_paths_never_escape_or_fail(fuzz_server: LabelServer) -> None:
    from urllib.parse import quote

    http = httpx.Client(base_url=fuzz_server.url, timeout=30)
    token = token_of(fuzz_server, "fuzz")

    @given(
        qid=st.sampled_from(["q000", "r0", "..", "../..", "/etc/passwd"]) | st.text(max_size=40),
        member=st.integers(-2, 70).map(str) | st.text(max_size=6),
    )
    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    def run(qid: str, member: str) -> None:
        r = http.get(f"/api/clip/{quote(qid, safe='/')}/{quote(member, safe='')}?token={token}")
        assert r.status_code < 500, (qid, member, r.text)
        if r.status_code == 200:  # "/api/clip/../../" is normalised to the page itself
            assert r.headers["content-type"].startswith("text/html") and "pbrl" in r.text
        else:
            assert r.status_code in (404, 405, 422), (qid, member, r.status_code, r.text)

    with http:
        run()
