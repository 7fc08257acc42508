"""Tests of pbrl.store: round trips, idempotency, versioning, durability and threads."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from pbrl.data import Feedback, Label, QueryBatch, SegmentBatch
from pbrl.store import (
    SCHEMA_VERSION,
    FeedbackConflictError,
    FeedbackStore,
    NotAFeedbackStoreError,
    SchemaVersionError,
    UnknownQueryError,
    feedback_id,
)

H, D_O, D_A, D_S = 5, 3, 2, 4
REPO = Path(__file__).resolve().parents[1]


def make_queries(
    rng: np.random.Generator,
    m: int,
    k: int = 2,
    kind: str = "pair",
    *,
    reward: bool = True,
    start_id: int = 0,
) -> QueryBatch:
    n = m * k
    seg = SegmentBatch(
        obs=rng.standard_normal((n, H, D_O)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, H, D_A)).astype(np.float32),
        true_reward=rng.standard_normal((n, H)).astype(np.float32) if reward else None,
        reward_factors={
            "ctrl": rng.standard_normal((n, H)).astype(np.float32),
            "forward": rng.standard_normal((n, H)).astype(np.float32),
        }
        if reward
        else {},
        sim_state=rng.standard_normal((n, H, D_S)) if reward else None,
        env_id=rng.integers(0, 4, n),
        start=rng.integers(0, 1000, n),
        env_name="halfcheetah",
    )
    scores = rng.standard_normal(m)
    scores[0] = np.nan  # a query without a selector score must survive storage
    return QueryBatch(
        segments=seg,
        k=k,
        kind=kind,  # type: ignore[arg-type]
        ids=tuple(f"q{start_id + i:04d}" for i in range(m)),
        selector="disagreement",
        scores=scores,
    )


def assert_segments_equal(a: SegmentBatch, b: SegmentBatch) -> None:
    assert set(a.arrays()) == set(b.arrays())
    for key, va in a.arrays().items():
        vb = b.arrays()[key]
        assert va.dtype == vb.dtype, key
        np.testing.assert_array_equal(va, vb, err_msg=key)
    assert a.env_name == b.env_name


@pytest.fixture
def store(tmp_path: Path):
    with FeedbackStore(tmp_path / "fb.sqlite") as s:
        yield s


# --- round trips -------------------------------------------------------------------------
def test_queries_and_segments_round_trip(store: FeedbackStore, rng) -> None:
    qb = make_queries(rng, 4)
    assert store.add_queries(qb, step=1234) == 4
    assert store.num_queries() == 4
    assert store.query_ids() == list(qb.ids)
    for i, qid in enumerate(qb.ids):
        got = store.get_query(qid)
        assert got.ids == (qid,) and got.k == 2 and got.kind == "pair"
        assert got.selector == "disagreement"
        np.testing.assert_array_equal(got.scores, qb.scores[i : i + 1])
        for j in range(2):
            assert_segments_equal(got.member(j), qb.member(j)[i])
    # Several at once keep the requested order.
    both = store.get_queries([qb.ids[3], qb.ids[1]])
    assert_segments_equal(both.member(1), qb.member(1)[[3, 1]])


def test_segments_without_reward_round_trip(store: FeedbackStore, rng) -> None:
    qb = make_queries(rng, 2, k=3, kind="triplet", reward=False)
    store.add_queries(qb)
    got = store.get_query(qb.ids[1])
    assert got.segments.true_reward is None and got.segments.sim_state is None
    assert dict(got.segments.reward_factors) == {}
    assert_segments_equal(got.member(2), qb.member(2)[1])


def test_labels_round_trip_and_counts(store: FeedbackStore, rng) -> None:
    qb = make_queries(rng, 5)
    store.add_queries(qb)
    fbs = [
        Feedback("q0000", Label.FIRST, "human:alice", timestamp=1.7e9, response_time=2.5),
        Feedback("q0001", Label.SECOND, "human:alice", timestamp=1.7e9 + 1, response_time=0.25),
        Feedback("q0002", Label.EQUAL, "oracle"),
        Feedback("q0003", Label.SKIP, "oracle"),
        Feedback("q0001", Label.FIRST, "oracle", soft=0.25),
    ]
    assert store.add(fbs) == 5
    assert store.num_labels() == 5
    assert store.num_labels("oracle") == 3
    assert store.feedback() == fbs
    assert store.feedback("human:alice") == fbs[:2]
    assert store.counts() == {"first": 2, "second": 1, "equal": 1, "skip": 1}
    assert store.counts("human:alice") == {"first": 1, "second": 1, "equal": 0, "skip": 0}
    assert store.teacher_ids() == ["human:alice", "oracle"]
    # A skip is an answer; q0004 has none at all.
    assert store.unlabelled_query_ids() == ["q0004"]
    assert store.unlabelled_query_ids("human:alice") == ["q0002", "q0003", "q0004"]


def test_ranking_label_round_trip_and_k_check(store: FeedbackStore, rng) -> None:
    qb = make_queries(rng, 1, k=4, kind="ranking")
    store.add_queries(qb)
    fb = Feedback("q0000", Label.FIRST, "llm", ranking=(2, 0, 3, 1))
    store.add(fb)
    assert store.feedback() == [fb]
    with pytest.raises(ValueError, match="ranks 3 segments but the query has k=4"):
        store.add(Feedback("q0000", Label.FIRST, "other", ranking=(0, 1, 2)))


def test_training_arrays(store: FeedbackStore, rng) -> None:
    qb = make_queries(rng, 4)
    store.add_queries(qb)
    store.add_queries(make_queries(rng, 1, k=3, kind="triplet", start_id=100))
    store.add(
        [
            Feedback("q0002", Label.SECOND, "a"),
            Feedback("q0000", Label.SKIP, "a"),  # excluded
            Feedback("q0100", Label.FIRST, "a"),  # triplet: excluded
            Feedback("q0001", Label.EQUAL, "a"),
            Feedback("q0002", Label.FIRST, "b", soft=0.2),  # second teacher, same query
        ]
    )
    obs, act, target = store.training_arrays()
    assert obs.shape == (3, 2, H, D_O) and obs.dtype == np.float32
    assert act.shape == (3, 2, H, D_A) and act.dtype == np.float32
    assert target.dtype == np.float32
    np.testing.assert_array_equal(target, np.float32([1.0, 0.5, 0.2]))
    # Rows in label order: q0002, q0001, q0002; member 0 is first, member 1 second.
    for r, i in enumerate([2, 1, 2]):
        np.testing.assert_array_equal(obs[r, 0], qb.member(0).obs[i])
        np.testing.assert_array_equal(obs[r, 1], qb.member(1).obs[i])
        np.testing.assert_array_equal(act[r, 1], qb.member(1).actions[i])
    # Incremental fetch: rows already consumed are not returned again.
    obs2, _, t2 = store.training_arrays(since=2)
    np.testing.assert_array_equal(t2, np.float32([0.2]))
    np.testing.assert_array_equal(obs2[0], obs[2])
    store.add(Feedback("q0003", Label.FIRST, "a"))
    _, _, t3 = store.training_arrays(since=3)
    np.testing.assert_array_equal(t3, np.float32([0.0]))
    _, _, tb = store.training_arrays(teacher_id="b")
    np.testing.assert_array_equal(tb, np.float32([0.2]))
    # Nothing new: empty arrays that still concatenate with the old ones.
    o4, a4, t4 = store.training_arrays(since=4)
    assert o4.shape == (0, 2, H, D_O) and a4.shape == (0, 2, H, D_A) and t4.shape == (0,)


def test_training_arrays_of_empty_store(store: FeedbackStore) -> None:
    obs, act, target = store.training_arrays()
    assert obs.shape[:2] == (0, 2) and act.shape[:2] == (0, 2) and target.shape == (0,)


# --- idempotency and errors --------------------------------------------------------------
def test_same_feedback_twice_is_one_row(store: FeedbackStore, rng) -> None:
    store.add_queries(make_queries(rng, 2))
    fb = Feedback("q0000", Label.SECOND, "human:bob", timestamp=5.0)
    assert store.add(fb) == 1
    assert store.add(fb) == 0
    # A retried request re-created with a new timestamp is still the same answer.
    assert store.add(Feedback("q0000", Label.SECOND, "human:bob", timestamp=9.0)) == 0
    assert store.add([fb, Feedback("q0001", Label.FIRST, "human:bob")]) == 1
    assert store.num_labels() == 2
    assert store.feedback()[0] == fb
    # Explicit ids: the same teacher may keep two answers to one query.
    assert store.add(Feedback("q0000", Label.FIRST, "human:bob"), feedback_ids=["retry-2"]) == 1
    assert store.num_labels() == 3


def test_queries_twice_is_a_no_op(store: FeedbackStore, rng) -> None:
    qb = make_queries(rng, 3)
    assert store.add_queries(qb) == 3
    assert store.add_queries(qb) == 0
    assert store.num_queries() == 3
    with pytest.raises(ValueError, match="already stored as a pair query"):
        store.add_queries(make_queries(rng, 1, k=3, kind="triplet"))


def test_rewind_removes_what_was_stored_after_the_mark(store: FeedbackStore, rng) -> None:
    assert store.high_water() == {"queries": 0, "feedback": 0}
    store.add_queries(make_queries(rng, 2))  # q0000, q0001
    store.add(Feedback("q0000", Label.SECOND, "oracle"))
    mark = store.high_water()
    assert mark == {"queries": 2, "feedback": 1}
    # After the mark: a label on an earlier query, new queries and their labels.
    store.add(Feedback("q0001", Label.FIRST, "oracle"))
    store.add_queries(make_queries(rng, 2, start_id=2))  # q0002, q0003
    store.add(Feedback("q0002", Label.EQUAL, "oracle"))
    assert store.rewind(mark) == (2, 2)
    assert store.query_ids() == ["q0000", "q0001"] and store.num_labels() == 1
    assert store.feedback()[0].query_id == "q0000"
    assert store.unlabelled_query_ids() == ["q0001"]
    assert store.rewind(mark) == (0, 0)
    # The removed ids can be stored again, with other segments and answers.
    again = make_queries(rng, 1, start_id=2)
    assert store.add_queries(again) == 1
    store.add(Feedback("q0002", Label.FIRST, "oracle"))
    assert_segments_equal(store.get_query("q0002").segments, again.segments)
    assert store.training_arrays()[2].tolist() == [1.0, 0.0]


def test_conflicting_answer_under_same_id_raises_and_rolls_back(store: FeedbackStore, rng) -> None:
    store.add_queries(make_queries(rng, 2))
    store.add(Feedback("q0000", Label.SECOND, "human:bob"))
    with pytest.raises(FeedbackConflictError, match="different answer"):
        store.add(
            [
                Feedback("q0001", Label.FIRST, "human:bob"),
                Feedback("q0000", Label.FIRST, "human:bob"),
            ]
        )
    # All or nothing: q0001's label of the failed call was not kept.
    assert store.num_labels() == 1
    assert store.feedback()[0].label == Label.SECOND


def test_unknown_query_id_raises_and_stores_nothing(store: FeedbackStore, rng) -> None:
    store.add_queries(make_queries(rng, 1))
    with pytest.raises(UnknownQueryError, match=r"unknown query ids \['nope'\].*add_queries"):
        store.add([Feedback("q0000", Label.FIRST, "t"), Feedback("nope", Label.FIRST, "t")])
    assert store.num_labels() == 0
    with pytest.raises(KeyError):  # a KeyError subclass, as the contract says
        store.get_query("nope")


def test_default_feedback_id_is_per_query_and_teacher() -> None:
    assert feedback_id("q", "a") == feedback_id("q", "a")
    assert len({feedback_id("q", "a"), feedback_id("q", "b"), feedback_id("r", "a")}) == 3


def test_schema_version_mismatch(tmp_path: Path, rng) -> None:
    path = tmp_path / "fb.sqlite"
    with FeedbackStore(path) as s:
        s.add_queries(make_queries(rng, 1))
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(SchemaVersionError) as e:
        FeedbackStore(path)
    msg = str(e.value)
    assert "schema version 99" in msg
    assert f"reads schema version {SCHEMA_VERSION}" in msg
    assert "export()" in msg and "migrate" in msg


def test_meta_records_creation(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite"
    FeedbackStore(path).close()
    con = sqlite3.connect(path)
    meta = dict(con.execute("SELECT key, value FROM meta"))
    mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    con.close()
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert {"created", "pbrl_version", "sqlite_version"} <= set(meta)
    assert mode == "wal"


def test_foreign_files_are_rejected(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(NotAFeedbackStoreError, match="not a pbrl feedback store"):
        FeedbackStore(junk)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    with pytest.raises(NotAFeedbackStoreError, match="without a pbrl 'meta' table"):
        FeedbackStore(other)


# --- dataset files -----------------------------------------------------------------------
def _filled_store(path: Path, rng: np.random.Generator) -> FeedbackStore:
    s = FeedbackStore(path)
    s.add_queries(make_queries(rng, 5), step=100)
    s.add_queries(make_queries(rng, 2, start_id=10), step=200)
    s.add(
        [
            Feedback("q0003", Label.SECOND, "human:alice", timestamp=1.7e9, response_time=3.0),
            Feedback("q0000", Label.SKIP, "human:alice", timestamp=1.7e9 + 5),
            Feedback("q0003", Label.EQUAL, "oracle"),
            Feedback("q0010", Label.FIRST, "oracle", soft=0.125),
        ]
    )
    return s


def test_export_keys_and_values(tmp_path: Path, rng) -> None:
    with _filled_store(tmp_path / "a.sqlite", rng) as s:
        assert s.export(tmp_path / "d.npz") == 4 + 4  # 4 labels + 4 unlabelled queries
        q3 = s.get_query("q0003")
    z = np.load(tmp_path / "d.npz")  # numpy alone, no pickle
    assert int(z["schema_version"]) == SCHEMA_VERSION and int(z["k"]) == 2
    assert z["obs"].shape == (8, 2, H, D_O) and z["obs"].dtype == np.float32
    assert z["sim_state"].shape == (8, 2, H, D_S) and z["sim_state"].dtype == np.float64
    assert z["factor/ctrl"].shape == (8, 2, H)
    np.testing.assert_array_equal(z["label"], [1, 3, 2, 0, -1, -1, -1, -1])
    assert z["query_id"].tolist()[:4] == ["q0003", "q0000", "q0003", "q0010"]
    assert z["teacher_id"].tolist()[:4] == ["human:alice", "human:alice", "oracle", "oracle"]
    np.testing.assert_array_equal(z["soft"][:4], [np.nan, np.nan, np.nan, 0.125])
    np.testing.assert_array_equal(z["target"], [1.0, np.nan, 0.5, 0.125] + [np.nan] * 4)
    np.testing.assert_array_equal(z["response_time"][:2], [3.0, 0.0])
    np.testing.assert_array_equal(z["step"][:4], [100, 100, 100, 200])
    np.testing.assert_array_equal(z["true_reward"][0], q3.segments.true_reward)
    np.testing.assert_array_equal(z["sim_state"][0, 1], q3.member(1).sim_state[0])
    assert (z["ranking"] == -1).all()
    assert z["feedback_id"][0] == feedback_id("q0003", "human:alice")


def test_export_import_round_trip_is_exact(tmp_path: Path, rng) -> None:
    with _filled_store(tmp_path / "a.sqlite", rng) as a:
        a.export(tmp_path / "a.npz")
        fa = a.feedback_with_ids()
        ta = a.training_arrays()
        qa = {q: a.get_query(q) for q in a.query_ids()}
        ua = a.unlabelled_query_ids()
    with FeedbackStore(tmp_path / "b.sqlite") as b:
        assert b.import_(tmp_path / "a.npz") == (7, 4)
        assert b.import_(tmp_path / "a.npz") == (0, 0)  # idempotent
        b.export(tmp_path / "b.npz")
        assert b.feedback_with_ids() == fa
        assert b.unlabelled_query_ids() == ua
        for x, y in zip(ta, b.training_arrays(), strict=True):
            np.testing.assert_array_equal(x, y)
        assert b.query_ids() == list(qa)
        for qid, q in qa.items():
            got = b.get_query(qid)
            np.testing.assert_array_equal(got.scores, q.scores)
            assert_segments_equal(got.segments, q.segments)
    za, zb = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert set(za.files) == set(zb.files)
    for key in za.files:
        assert za[key].dtype == zb[key].dtype, key
        np.testing.assert_array_equal(za[key], zb[key], err_msg=key)
    # Importing into the store that wrote the file changes nothing.
    with FeedbackStore(tmp_path / "a.sqlite") as a:
        assert a.import_(tmp_path / "a.npz") == (0, 0)


def test_import_rejects_other_format_version(tmp_path: Path, rng) -> None:
    with _filled_store(tmp_path / "a.sqlite", rng) as a:
        a.export(tmp_path / "a.npz")
    data = dict(np.load(tmp_path / "a.npz"))
    data["schema_version"] = np.array(SCHEMA_VERSION + 1)
    np.savez(tmp_path / "future.npz", **data)
    with FeedbackStore(tmp_path / "b.sqlite") as b:
        with pytest.raises(SchemaVersionError, match=f"format version {SCHEMA_VERSION + 1}"):
            b.import_(tmp_path / "future.npz")
        np.savez(tmp_path / "plain.npz", obs=np.zeros(3))
        with pytest.raises(ValueError, match="not a pbrl dataset file"):
            b.import_(tmp_path / "plain.npz")
        assert b.num_queries() == 0


def test_export_mixed_optional_fields_round_trip(tmp_path: Path, rng) -> None:
    # Queries with and without true reward in one store: NaN rows mean "absent".
    with FeedbackStore(tmp_path / "a.sqlite") as a:
        a.add_queries(make_queries(rng, 1))
        a.add_queries(make_queries(rng, 1, reward=False, start_id=1))
        a.export(tmp_path / "a.npz")
        with FeedbackStore(tmp_path / "b.sqlite") as b:
            b.import_(tmp_path / "a.npz")
            for qid in ("q0000", "q0001"):
                assert_segments_equal(b.get_query(qid).segments, a.get_query(qid).segments)


def test_export_of_mixed_k_asks_for_a_kind(store: FeedbackStore, rng, tmp_path: Path) -> None:
    store.add_queries(make_queries(rng, 1))
    store.add_queries(make_queries(rng, 1, k=3, kind="triplet", start_id=1))
    with pytest.raises(ValueError, match="export one kind at a time"):
        store.export(tmp_path / "x.npz")
    assert store.export(tmp_path / "x.npz", kind="triplet") == 1
    assert np.load(tmp_path / "x.npz")["obs"].shape == (1, 3, H, D_O)


def test_export_of_empty_store(store: FeedbackStore, tmp_path: Path) -> None:
    assert store.export(tmp_path / "e.npz") == 0
    with FeedbackStore(tmp_path / "b.sqlite") as b:
        assert b.import_(tmp_path / "e.npz") == (0, 0)


# --- durability and threads --------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys, time
    from pbrl.data import Feedback, Label
    from pbrl.store import FeedbackStore
    store = FeedbackStore(sys.argv[1])
    store.add(Feedback("q0001", Label.SECOND, "human:alice", timestamp=123.0))
    print("ACK", flush=True)
    while True:
        time.sleep(1000)
    """
)


def test_acknowledged_label_survives_sigkill(tmp_path: Path, rng) -> None:
    path = tmp_path / "fb.sqlite"
    with FeedbackStore(path) as s:
        s.add_queries(make_queries(rng, 2))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "ACK"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    with FeedbackStore(path) as s:
        assert s.feedback() == [Feedback("q0001", Label.SECOND, "human:alice", timestamp=123.0)]


def test_concurrent_adds_from_8_threads(store: FeedbackStore, rng) -> None:
    n_threads, per_thread = 8, 12
    store.add_queries(make_queries(rng, per_thread))
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                fb = Feedback(f"q{i:04d}", Label(i % 4), f"teacher{t}")
                store.add(fb)
                store.add(fb)  # a retry: must stay one row
                # Every thread also sends the one shared label: one row in total.
                store.add(Feedback("q0000", Label.FIRST, "shared"))
                store.num_labels()  # reads interleaved with writes
        except BaseException as e:  # reported to the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert store.num_labels() == n_threads * per_thread + 1
    got = {(f.query_id, f.teacher_id): f.label for f in store.feedback()}
    assert len(got) == n_threads * per_thread + 1
    for t in range(n_threads):
        for i in range(per_thread):
            assert got[(f"q{i:04d}", f"teacher{t}")] == Label(i % 4)
    assert store.counts()["first"] == n_threads * 3 + 1


def test_documented_reading_example_runs(tmp_path: Path, rng, monkeypatch) -> None:
    doc = (REPO / "docs" / "dataset_format.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) == 5
    with _filled_store(tmp_path / "a.sqlite", rng) as s:
        s.export(tmp_path / "dataset.npz")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(example, scope)
    # Rows 0 (q0003 second, alice) and 3 (q0010 first, oracle): equal and skip are dropped.
    np.testing.assert_array_equal(scope["y"], [1, 0])
    assert scope["obs"].shape == (2, 2, H, D_O)  # type: ignore[attr-defined]
    assert scope["act"].shape == (2, 2, H, D_A)  # type: ignore[attr-defined]
