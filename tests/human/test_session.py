"""Who labels what: assignment, overlap, leases, idempotent answers (no HTTP here)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pbrl.data import Label, SegmentBatch
from pbrl.human.session import (
    AlreadyLabelled,
    InvalidAnswer,
    LabelSession,
    UnknownQuery,
    answer_of,
    display_order,
)
from pbrl.store import FeedbackStore

from .helpers import pair_queries


def test_display_order_is_fixed_per_labeller_and_keeps_the_anchor() -> None:
    orders = {tuple(display_order(f"q{i}", "alice", "pair", 2, seed=0)) for i in range(40)}
    assert orders == {(0, 1), (1, 0)}  # both sides occur
    assert display_order("q1", "alice", "pair", 2, 0) == display_order("q1", "alice", "pair", 2, 0)
    for i in range(20):
        o = display_order(f"t{i}", "bob", "triplet", 3, seed=1)
        assert o[0] == 0 and sorted(o) == [0, 1, 2]
        r = display_order(f"r{i}", "bob", "ranking", 4, seed=1)
        assert sorted(r) == [0, 1, 2, 3]


def test_answers_map_from_display_positions_to_members() -> None:
    assert answer_of("pair", [0, 1], "left", None) == (Label.FIRST, None)
    assert answer_of("pair", [1, 0], "left", None) == (Label.SECOND, None)  # swapped on screen
    assert answer_of("pair", [1, 0], "right", None) == (Label.FIRST, None)
    assert answer_of("pair", [1, 0], "equal", None) == (Label.EQUAL, None)
    assert answer_of("pair", [1, 0], "skip", None) == (Label.SKIP, None)
    # triplet (anchor, a, b): left/right are display positions 1 and 2
    assert answer_of("triplet", [0, 2, 1], "left", None) == (Label.SECOND, None)
    assert answer_of("triplet", [0, 2, 1], "right", None) == (Label.FIRST, None)
    # ranking: display positions best first -> member indices best first
    assert answer_of("ranking", [2, 0, 1], "rank", [1, 2, 0]) == (Label.FIRST, (0, 1, 2))


@pytest.mark.parametrize(
    ("kind", "choice", "ranking", "match"),
    [
        ("pair", "rank", None, "for ranking queries"),
        ("pair", "left", [0, 1], "takes no ranking"),
        ("ranking", "left", None, "choice='rank'"),
        ("ranking", "rank", None, "ranking must list"),
        ("ranking", "rank", [0, 0, 1], "ranking must list"),
        ("ranking", "rank", [0, 1], "ranking must list"),
        ("pair", "up", None, "choice must be one of"),
    ],
)
def test_answers_that_do_not_fit_are_refused(kind, choice, ranking, match) -> None:
    order = [0, 1] if kind == "pair" else [0, 1, 2]
    with pytest.raises(InvalidAnswer, match=match):
        answer_of(kind, order, choice, ranking)


def test_nobody_sees_a_query_twice_and_overlap_one_splits_the_work(store: FeedbackStore) -> None:
    s = LabelSession(store, lookahead=2, shuffle=False)
    a, b = s.assign("alice"), s.assign("bob")
    assert len(a) == len(b) == 3 and not set(a) & set(b)  # held queries are not shared
    assert s.assign("alice") == a  # asking again renews, does not move on
    seen: dict[str, list[str]] = {"alice": [], "bob": []}
    for _ in range(12):
        for who in ("alice", "bob"):
            got = s.assign(who)
            if got:
                seen[who].append(got[0])
                choice = "rank" if got[0].startswith("r") else "skip"
                ranking = [0, 1, 2] if choice == "rank" else None
                s.submit(who, got[0], choice, ranking)
    assert len(seen["alice"]) == len(set(seen["alice"]))
    assert not set(seen["alice"]) & set(seen["bob"])
    assert len(seen["alice"]) + len(seen["bob"]) == store.num_queries() == 12
    assert s.assign("alice") == [] and s.progress("alice")["left"] == 0


def test_an_empty_offer_says_wait_while_others_hold_queries(store: FeedbackStore) -> None:
    s = LabelSession(store, lookahead=2, lease_s=1.0, shuffle=False)
    held = s.offer("alice").queries
    assert len(held) == 3
    while (got := s.offer("bob")).queries:
        q = got.queries[0]
        if q.startswith("r"):
            s.submit("bob", q, "rank", [0, 1, 2])
        else:
            s.submit("bob", q, "skip")
        assert s.offer("alice").queries == held  # alice keeps her page open: leases renewed
    assert s.assign("bob") == []  # empty, and yet not done:
    assert got.state == "wait" and got.held_by_others == 3
    assert got.retry_s is not None and 0 < got.retry_s <= 1.0  # when alice's leases lapse
    assert s.progress("bob")["left"] == 3
    time.sleep(1.1)  # alice closed the lid: her leases lapse, and bob gets her queries
    back = s.offer("bob")
    assert back.state == "ready" and sorted(back.queries) == sorted(held)
    now_alice = s.offer("alice")  # now bob holds them
    assert now_alice.state == "wait" and now_alice.held_by_others == 3
    for q in back.queries:
        s.submit("bob", q, "skip")
    assert s.offer("alice").state == s.offer("bob").state == "done"
    assert s.offer("alice").retry_s is None and store.num_labels() == 12


def test_overlap_gives_each_query_to_that_many_people(store: FeedbackStore) -> None:
    s = LabelSession(store, overlap=2, lookahead=0, shuffle=False)
    for who in ("alice", "bob", "carol"):
        while q := s.assign(who):
            s.submit(who, q[0], "skip")
    per_query: dict[str, set[str]] = {}
    for fb in store.feedback():
        per_query.setdefault(fb.query_id, set()).add(fb.teacher_id)
    assert len(per_query) == 12 and all(len(v) == 2 for v in per_query.values())
    assert store.num_labels() == 24


def test_leases_lapse_so_an_absent_labeller_does_not_block(store: FeedbackStore) -> None:
    s = LabelSession(store, lookahead=0, lease_s=0.2, shuffle=False)
    first = s.assign("alice")[0]
    assert s.assign("bob")[0] != first
    time.sleep(0.25)  # alice closed the lid
    assert first in (s.assign("bob")[0], s.assign("carol")[0])
    # alice comes back and answers the query she was shown: her answer is kept
    rec = s.submit("alice", first, "left")
    assert not rec.duplicate and store.num_labels() == 1


def test_priority_queries_come_first(store: FeedbackStore) -> None:
    s = LabelSession(store, lookahead=1, shuffle=False)
    s.set_priority(["q005", "q002"])
    assert s.assign("alice") == ["q005", "q002"]


def test_answers_are_idempotent_and_final(store: FeedbackStore) -> None:
    s = LabelSession(store, shuffle=False)
    q = s.assign("alice")[0]
    rec = s.submit("alice", q, "left", client_time=1234.5, response_time=2.5)
    assert not rec.duplicate and rec.feedback.label == Label.FIRST
    again = s.submit("alice", q, "left", client_time=1240.0, response_time=9.0)  # a retry
    assert again.duplicate and again.feedback_id == rec.feedback_id
    with pytest.raises(AlreadyLabelled, match="already answered"):
        s.submit("alice", q, "right")
    fbs = store.feedback()
    assert len(fbs) == 1
    assert fbs[0].teacher_id == "human:alice"
    assert fbs[0].timestamp == 1234.5 and fbs[0].response_time == 2.5  # client's, first kept
    with pytest.raises(UnknownQuery):
        s.submit("alice", "nope", "left")


def test_a_full_query_is_refused_to_someone_never_shown_it(store: FeedbackStore) -> None:
    s = LabelSession(store, lookahead=0, shuffle=False)
    q = s.assign("alice")[0]
    s.submit("alice", q, "left")
    with pytest.raises(AlreadyLabelled, match="already has"):
        s.submit("bob", q, "left")


def test_after_a_restart_an_answer_to_a_query_seen_before_is_kept(
    store: FeedbackStore, tmp_path: Path
) -> None:
    """alice saw q000, the server restarted, bob completed q000, then alice's page re-sent."""
    log = tmp_path / "served.jsonl"
    before = LabelSession(store, lookahead=0, shuffle=False, served_path=log)
    assert before.assign("alice") == ["q000"]
    before.close()  # killed: leases are gone, the hand-out log is not
    with log.open("a") as f:
        f.write('["alice", "q0')  # a line torn by the crash
    after = LabelSession(store, lookahead=0, shuffle=False, served_path=log)
    assert after.assign("bob") == ["q000"]  # no lease survives, so bob may get it
    after.submit("bob", "q000", "left")
    rec = after.submit("alice", "q000", "right")  # the answer she gave before the restart
    assert not rec.duplicate and store.num_labels() == 2
    with pytest.raises(AlreadyLabelled, match="already has"):
        after.submit("carol", "q000", "left")  # never shown to carol: refused
    assert after.assign("carol") == ["q001"]
    after.close()
    again = LabelSession(store, shuffle=False, served_path=log)  # the torn line did no harm
    assert again._served["carol"] == {"q001"} and again._served["bob"] == {"q000"}
    again.close()


def test_queries_and_labels_from_another_connection_are_picked_up(
    store: FeedbackStore, segments: SegmentBatch, tmp_path: Path
) -> None:
    s = LabelSession(store, lookahead=0, refresh_s=0.0, shuffle=False)
    other = FeedbackStore(tmp_path / "store.sqlite")  # e.g. the training loop's connection
    other.add_queries(pair_queries(segments, 2, prefix="new"))
    s.set_priority(["new000"])
    assert s.assign("alice") == ["new000"]
    other.close()
    assert s.progress()["queries"] == 14


def test_wait_for_returns_when_answered_or_on_timeout(store: FeedbackStore) -> None:
    s = LabelSession(store, shuffle=False)
    assert s.wait_for(["q000"], 1, timeout=0.1) is False

    def answer_later() -> None:
        time.sleep(0.2)
        s.submit("alice", "q000", "right")

    t = threading.Thread(target=answer_later)
    t.start()
    t0 = time.monotonic()
    assert s.wait_for(["q000"], 1, timeout=10) is True
    assert time.monotonic() - t0 < 5
    t.join()
    [fb] = s.answered(["q001", "q000"])
    assert fb.query_id == "q000" and fb.label == Label.SECOND


def test_concurrent_submissions_of_one_answer_store_one_label(store: FeedbackStore) -> None:
    s = LabelSession(store, shuffle=False)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        results.append(s.submit("alice", "q003", "equal").duplicate)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] + [True] * 7
    assert store.num_labels() == 1 and s.progress("alice")["done"] == 1
