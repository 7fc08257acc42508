"""Every route of the labelling API over a live server, bad inputs included."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pbrl.data import Label
from pbrl.human.server import LabelServer, ServerError
from pbrl.store import FeedbackStore

from .helpers import SMALL, client, pair_queries, require_web_stack, token_of

require_web_stack()
av = pytest.importorskip("av")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, segments):
    """One server for the read-only bad-input tests (they must store nothing)."""
    d = tmp_path_factory.mktemp("shared")
    st = FeedbackStore(d / "store.sqlite")
    st.add_queries(pair_queries(segments, 4))
    from pbrl.data import QueryBatch

    st.add_queries(
        QueryBatch.from_members(
            [segments[0:2], segments[2:4], segments[4:6]], kind="ranking", ids=["r000", "r001"]
        )
    )
    srv = LabelServer(st, d / "human", port=0, labellers=["alice"], clip=SMALL).start()
    yield srv
    srv.stop()
    st.close()


def test_page_static_files_and_health(server: LabelServer) -> None:
    with client(server, None) as c:
        page = c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "/static/app.js" in page.text and "Left is better" in page.text
        assert "<kbd>←</kbd>" in page.text and "<kbd>S</kbd>" in page.text  # keys on the page
        for name in ("app.js", "style.css"):
            assert c.get(f"/static/{name}").status_code == 200
        for bad in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/nope.js"):
            assert c.get(bad).status_code == 404
        assert c.get("/api/health").json()["ok"] is True
        headers = page.headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"  # the token is in the URL
        assert "default-src 'self'" in headers["content-security-policy"]
        schema = c.get("/openapi.json").json()
        assert {"/api/me", "/api/next", "/api/label", "/api/stats"} <= set(schema["paths"])


@pytest.mark.parametrize("route", ["/api/me", "/api/next", "/api/stats", "/api/clip/q000/0"])
def test_every_api_route_needs_a_valid_token(server: LabelServer, route: str) -> None:
    with client(server, None) as c:
        r = c.get(route)
        assert r.status_code == 401 and "token" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.get(route, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get(route, params={"token": "wrong"}).status_code == 401
        ok = c.get(route, params={"token": token_of(server, "alice")})
        assert ok.status_code == 200  # ?token= works too (a <video src> cannot send headers)
    server.tokens.revoke("alice")
    with client(server, None) as c:
        r = c.get(route, params={"token": token_of_any(server, "alice")})
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


def token_of_any(srv: LabelServer, name: str) -> str:
    return {e.name: e.token for e in srv.tokens.labellers(include_revoked=True)}[name]


def test_me_next_label_stats_round_trip(server: LabelServer, store: FeedbackStore) -> None:
    with client(server, "alice") as c:
        me = c.get("/api/me").json()
        assert me["labeller"] == "alice" and me["progress"]["left"] == 12
        nxt = c.get("/api/next").json()
        q = nxt["query"]
        assert q["id"] == "q000" and q["kind"] == "pair" and q["renderable"]
        assert [x["id"] for x in nxt["upcoming"]] == ["q001", "q002"]
        assert [cl["role"] for cl in q["clips"]] == ["left", "right"]
        assert q["plan"] == {
            "horizon": 10,
            "stride": 1,
            "frames": 10,
            "fps": 20,
            "env_fps": 20.0,
            "speed": 1.0,
        }
        assert "true_reward" not in json.dumps(nxt)  # the page never sees rewards
        r = c.post(
            "/api/label",
            json={
                "query_id": "q000",
                "choice": "right",
                "client_time": 1.7e9,
                "response_time": 3.2,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["recorded"] and not body["duplicate"] and body["label"] == int(Label.SECOND)
        assert body["progress"]["done"] == 1 and body["progress"]["left"] == 11
        [fb] = store.feedback()  # committed before the 200
        assert (fb.query_id, fb.label, fb.teacher_id) == ("q000", Label.SECOND, "human:alice")
        assert (fb.timestamp, fb.response_time) == (1.7e9, 3.2)
        assert c.get("/api/next").json()["query"]["id"] == "q001"
        stats = c.get("/api/stats").json()
        assert stats["summary"]["labels"] == 1 and stats["summary"]["agreement"] is None
        assert stats["summary"]["response_time_mean"] == pytest.approx(3.2)


def test_a_retried_answer_is_stored_once_and_a_changed_one_refused(
    server: LabelServer, store: FeedbackStore
) -> None:
    with client(server, "alice") as c:
        answer = {"query_id": "q004", "choice": "left"}
        first, again = c.post("/api/label", json=answer), c.post("/api/label", json=answer)
        assert first.status_code == again.status_code == 200
        assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
        r = c.post("/api/label", json={"query_id": "q004", "choice": "right"})
        assert r.status_code == 409 and "already answered" in r.json()["detail"]
    with client(server, "bob") as c:  # bob was never handed q004, and it has its answer
        r = c.post("/api/label", json={"query_id": "q004", "choice": "right"})
        assert r.status_code == 409 and "already has" in r.json()["detail"]
    assert store.num_labels() == 1


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"query_id": "nope", "choice": "left"}, 404, "unknown query id"),
        ({"query_id": "q000", "choice": "up"}, 422, "choice"),
        ({"query_id": "q000", "choice": "LEFT"}, 422, "choice"),
        ({"query_id": "q000"}, 422, "choice"),
        ({"choice": "left"}, 422, "query_id"),
        ({"query_id": "", "choice": "left"}, 422, "query_id"),
        ({"query_id": "q000", "choice": "left", "extra": 1}, 422, "extra"),
        ({"query_id": "q000", "choice": "left", "response_time": -1}, 422, "response_time"),
        ({"query_id": "q000", "choice": "left", "client_time": "soon"}, 422, "client_time"),
        ({"query_id": "q000", "choice": "rank", "ranking": [0, 1]}, 422, "ranking queries"),
        ({"query_id": "r000", "choice": "left"}, 422, "choice='rank'"),
        ({"query_id": "r000", "choice": "rank", "ranking": [0, 0, 1]}, 422, "ranking must"),
        ({"query_id": "r000", "choice": "rank", "ranking": [0, 1, 99]}, 422, "ranking"),
        ({"query_id": 5, "choice": "left"}, 422, "query_id"),
        ([1, 2], 422, "invalid request"),
    ],
)
def test_bad_answers_are_4xx_with_a_reason(
    shared: LabelServer, body: object, status: int, says: str
) -> None:
    with client(shared, "alice") as c:
        r = c.post("/api/label", json=body)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]
    assert shared.store.num_labels() == 0


def test_malformed_bodies(shared: LabelServer) -> None:
    with client(shared, "alice") as c:
        r = c.post("/api/label", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = c.post(
            "/api/label",
            content=b'{"query_id": "q000", "choice": "left", "response_time": NaN}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422
        big = b'{"query_id": "' + b"x" * 100_000 + b'", "choice": "left"}'
        r = c.post("/api/label", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "request body over" in r.json()["detail"]
        assert c.get("/api/label").status_code == 405


def test_answers_for_triplets_and_rankings(server: LabelServer, store: FeedbackStore) -> None:
    with client(server, "alice") as c:
        r = c.post("/api/label", json={"query_id": "t000", "choice": "right"})
        assert r.status_code == 200 and r.json()["label"] == int(Label.SECOND)
        r = c.post("/api/label", json={"query_id": "r000", "choice": "rank", "ranking": [2, 0, 1]})
        assert r.status_code == 200
    by_id = {fb.query_id: fb for fb in store.feedback()}
    assert by_id["t000"].label == Label.SECOND
    assert by_id["r000"].ranking == (2, 0, 1)  # no shuffle here: positions are members
    with client(server, "bob") as c:
        nxt = c.get("/api/next").json()
    assert all(q["id"] not in ("t000", "r000") for q in [nxt["query"], *nxt["upcoming"]])


def test_clips_are_served_as_mp4_with_ranges(server: LabelServer) -> None:
    with client(server, "alice") as c:
        q = c.get("/api/next").json()["query"]
        r = c.get(q["clips"][1]["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        assert r.content[4:8] == b"ftyp"
        part = c.get(q["clips"][1]["url"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100  # seeking works
        assert c.get("/api/next").json()["query"]["clips"][1]["ready"] is True
    path = server.renderer.path(q["id"], 1)
    with av.open(str(path)) as f:
        assert f.streams.video[0].codec_context.name == "h264"


@pytest.mark.parametrize(
    ("route", "status"),
    [
        ("/api/clip/..%2F..%2Fetc%2Fpasswd/0", 404),
        ("/api/clip/../../etc/passwd/0", 404),
        ("/api/clip/%2Fetc%2Fpasswd/0", 404),
        ("/api/clip/q000/..%2F..%2Fstore.sqlite", 422),
        ("/api/clip/q000/2", 404),
        ("/api/clip/q000/-1", 422),
        ("/api/clip/q000/99", 422),
        ("/api/clip/nope/0", 404),
        ("/api/clip/q000", 404),
    ],
)
def test_a_path_in_a_clip_request_never_reaches_a_file(
    shared: LabelServer, route: str, status: int
) -> None:
    with client(shared, "alice") as c:
        r = c.get(route)
    assert r.status_code == status, (route, r.status_code, r.text)
    assert "detail" in r.json()


def test_queries_without_sim_state_are_shown_without_video(
    server: LabelServer, store: FeedbackStore, segments
) -> None:
    qb = pair_queries(segments, 2, prefix="bare")
    bare = type(qb)(
        segments=type(qb.segments)(
            qb.segments.obs, qb.segments.actions, None, env_name=qb.segments.env_name
        ),
        ids=qb.ids,
    )
    store.add_queries(bare)
    server.session.set_priority(["bare000"])
    with client(server, "alice") as c:
        q = c.get("/api/next").json()["query"]
        assert q["id"] == "bare000" and not q["renderable"] and "no simulator state" in q["reason"]
        r = c.get(q["clips"][0]["url"])
        assert r.status_code == 422 and "no simulator state" in r.json()["detail"]
        r = c.post("/api/label", json={"query_id": "bare000", "choice": "skip"})
        assert r.status_code == 200


def answer_to(q: dict) -> dict:
    """A valid answer to the page's query ``q`` (skip, or a ranking for ranking queries)."""
    if q["kind"] == "ranking":
        return {"query_id": q["id"], "choice": "rank", "ranking": list(range(q["k"]))}
    return {"query_id": q["id"], "choice": "skip"}


def test_concurrent_labellers_lose_and_duplicate_nothing(
    server: LabelServer, store: FeedbackStore
) -> None:
    """Two people answer everything at once, each answer sent three times in parallel.

    Each asks for the next query until the server says ``done``, and asks again on ``wait``
    (the rest is held by the other person), as the page does. A worker that fails in any way
    fails the test: it would leave the queries it holds unanswered.
    """
    acked: dict[str, list[str]] = {"alice": [], "bob": []}
    last: dict[str, dict] = {}
    errors: list[str] = []
    deadline = time.monotonic() + 120

    def work(name: str) -> None:
        with client(server, name) as c:
            while time.monotonic() < deadline:
                r = c.get("/api/next", params={"wait": 1})
                if r.status_code != 200:
                    errors.append(f"{name}: /api/next {r.status_code} {r.text}")
                    return
                nxt = last[name] = r.json()
                if nxt["state"] != "ready":
                    if nxt["query"] is not None or nxt["upcoming"]:
                        errors.append(f"{name}: queries with state {nxt['state']}: {nxt}")
                        return
                    if nxt["state"] == "done":
                        return
                    if not (nxt["held_by_others"] > 0 and 0 < nxt["retry_after"] <= 5):
                        errors.append(f"{name}: a 'wait' that says nothing to wait for: {nxt}")
                        return
                    continue  # the long poll waited already
                q = nxt["query"]
                body = answer_to(q)
                out: list[httpx.Response] = []

                def send(out: list = out, body: dict = body) -> None:
                    out.append(c.post("/api/label", json=body))

                threads = [threading.Thread(target=send) for _ in range(3)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if sorted(r.status_code for r in out) != [200, 200, 200]:
                    errors.append(str([(r.status_code, r.text) for r in out]))
                    return
                if sum(not r.json()["duplicate"] for r in out) != 1:
                    errors.append(f"{q['id']}: not exactly one new label")
                acked[name].append(q["id"])
            errors.append(f"{name}: not done after 120 s")

    def guarded(name: str) -> None:
        try:
            work(name)
        except Exception as err:  # a dead worker must fail the test, not just warn
            errors.append(f"{name}: {err!r}")

    workers = [threading.Thread(target=guarded, args=(n,)) for n in acked]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    assert {n: last[n]["state"] for n in acked} == {"alice": "done", "bob": "done"}
    stored = [(fb.teacher_id, fb.query_id) for fb in store.feedback()]
    expected = [(f"human:{n}", q) for n, qs in acked.items() for q in qs]
    assert sorted(stored) == sorted(expected) and len(stored) == 12
    assert not set(acked["alice"]) & set(acked["bob"])


def test_next_says_wait_while_others_hold_the_rest_and_done_after(
    server: LabelServer, store: FeedbackStore
) -> None:
    """An empty ``/api/next`` is ``wait`` while queries remain with others, then ``done``."""
    with client(server, "alice") as a, client(server, "bob") as b:
        first = a.get("/api/next").json()
        assert first["state"] == "ready" and first["retry_after"] is None
        held = [first["query"], *first["upcoming"]]
        assert len(held) == 3  # alice holds her current query and two ahead
        n = 0
        while (nxt := b.get("/api/next").json())["state"] == "ready":
            assert nxt["query"]["id"] not in {q["id"] for q in held}
            assert b.post("/api/label", json=answer_to(nxt["query"])).status_code == 200
            n += 1
        assert n == 9 and nxt["query"] is None and nxt["upcoming"] == []
        assert nxt["state"] == "wait" and nxt["held_by_others"] == 3
        assert 0 < nxt["retry_after"] <= 5  # alice's leases are 10 min: ask again in 5 s
        assert nxt["progress"]["left"] == 3  # not done: three are unanswered

        got: dict[str, object] = {}

        def long_poll() -> None:
            t0 = time.monotonic()
            got["next"] = b.get("/api/next", params={"wait": 20}).json()
            got["s"] = time.monotonic() - t0

        poller = threading.Thread(target=long_poll)
        poller.start()
        for q in held:  # bob's long poll goes on while alice answers
            assert a.post("/api/label", json=answer_to(q)).status_code == 200
        poller.join()
        assert got["next"]["state"] == "done" and got["next"]["held_by_others"] == 0
        assert got["s"] < 15  # it answered when the state changed, not at the 20 s deadline
        assert a.get("/api/next").json()["state"] == "done"
    assert store.num_labels() == 12


def test_a_taken_port_is_a_clear_error(store: FeedbackStore, tmp_path) -> None:
    first = LabelServer(store, tmp_path / "a", port=0, render=False).start()
    try:
        with pytest.raises(ServerError, match="pick another port"):
            LabelServer(store, tmp_path / "b", port=first.port, render=False).start()
    finally:
        first.stop()


def test_the_default_host_is_loopback_only(store: FeedbackStore, tmp_path) -> None:
    srv = LabelServer(store, tmp_path / "a", port=0, render=False, clip=SMALL).start()
    try:
        assert srv.host == "127.0.0.1" and srv.url.startswith("http://127.0.0.1:")
        assert "every network interface" not in srv.banner()
        assert "labeller: http://127.0.0.1:" in srv.banner()  # a default labeller exists
    finally:
        srv.stop()
    wide = LabelServer(store, tmp_path / "a", host="0.0.0.0", port=0, render=False)
    assert "every network interface" in wide.banner()  # an explicit opt-in, said out loud
    wide.stop()


def test_next_long_polls_for_new_queries(
    server: LabelServer, store: FeedbackStore, segments
) -> None:
    with client(server, "alice") as c:
        while (q := c.get("/api/next").json()["query"]) is not None:  # answer everything
            body = {"query_id": q["id"], "choice": "skip"}
            assert c.post("/api/label", json=body).status_code == 200
        t0 = time.monotonic()
        assert c.get("/api/next", params={"wait": 0.5}).json()["query"] is None
        assert time.monotonic() - t0 >= 0.45  # it waited for work

        def add_later() -> None:
            time.sleep(0.5)
            with FeedbackStore(store.path) as other:  # the run's own connection
                other.add_queries(pair_queries(segments, 1, prefix="late"))

        t = threading.Thread(target=add_later)
        t.start()
        t0 = time.monotonic()
        q = c.get("/api/next", params={"wait": 20}).json()["query"]
        t.join()
        assert q["id"] == "late000" and time.monotonic() - t0 < 5  # shown as soon as it exists
        assert c.get("/api/next", params={"wait": 31}).status_code == 422


def test_a_request_takes_milliseconds_not_a_delayed_ack(shared: LabelServer) -> None:
    """Small responses go out at once (TCP_NODELAY), not 40 ms later with the client's ACK."""
    times = []
    with client(shared, "alice") as c:
        c.get("/api/me")
        for _ in range(15):
            t0 = time.perf_counter()
            assert c.get("/api/me").status_code == 200
            times.append(time.perf_counter() - t0)
    times.sort()
    assert times[len(times) // 2] < 0.025, times  # Nagle + delayed ACK: >= 40 ms each
