"""Durable storage of every query and label: :class:`FeedbackStore` on SQLite.

A human label is committed to disk before it is acknowledged: :meth:`FeedbackStore.add`
returns only after the transaction holding it has committed with ``synchronous=FULL`` in WAL
mode, so a crash, a ``kill -9`` or a restart after ``add`` returns cannot lose it.

Layout of the database (schema :data:`SCHEMA_VERSION`):

- ``meta(key, value)``: ``schema_version``, ``created`` (ISO time), ``pbrl_version`` and
  ``sqlite_version`` of the writer that created the file.
- ``queries``: one row per query (id, kind, k, selector, score, step, created time).
- ``segments``: one row per (query id, member index) with the arrays (``obs``, ``actions``,
  ``true_reward``, ``reward_factors``, ``sim_state``) as compressed NPZ blobs, plus
  ``env_id``, ``start`` and ``env_name``.
- ``feedback``: one row per label; ``id`` is unique so that re-sending a label is a no-op.

The dataset file written by :meth:`FeedbackStore.export` is described key by key in
``docs/dataset_format.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import math
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from pbrl import __version__ as PBRL_VERSION
from pbrl.data import QUERY_SIZES, Feedback, Label, QueryBatch, SegmentBatch

SCHEMA_VERSION = 1
"""Version of both the SQLite schema and the exported dataset format."""

LABEL_NAMES: dict[int, str] = {int(lab): lab.name.lower() for lab in Label}
"""Label value -> name used by :meth:`FeedbackStore.counts` (``first``, ``second``, ...)."""

UNLABELLED = -1
"""``label`` value of an exported row for a query that has no feedback."""

# SQLite allows at least 999 bound parameters per statement on every build.
_MAX_PARAMS = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queries (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order, never reused
    id       TEXT NOT NULL UNIQUE,
    kind     TEXT NOT NULL CHECK (kind IN ('pair', 'triplet', 'ranking')),
    k        INTEGER NOT NULL CHECK (k >= 2),
    selector TEXT NOT NULL,
    score    REAL,                               -- NULL where the selector gave none (NaN)
    step     INTEGER NOT NULL,
    created  REAL NOT NULL                       -- seconds since the epoch
);
CREATE TABLE IF NOT EXISTS segments (
    query_id       TEXT NOT NULL REFERENCES queries(id),
    member         INTEGER NOT NULL,
    env_name       TEXT NOT NULL,
    env_id         INTEGER NOT NULL,
    start          INTEGER NOT NULL,
    obs            BLOB NOT NULL,                -- NPZ, key "a": (H, D_o)
    actions        BLOB NOT NULL,                -- NPZ, key "a": (H, D_a)
    true_reward    BLOB,                         -- NPZ, key "a": (H,), or NULL
    reward_factors BLOB,                         -- NPZ, one (H,) array per factor, or NULL
    sim_state      BLOB,                         -- NPZ, key "a": (H, D_s), or NULL
    PRIMARY KEY (query_id, member)
);
CREATE TABLE IF NOT EXISTS feedback (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order, never reused
    id            TEXT NOT NULL UNIQUE,
    query_id      TEXT NOT NULL REFERENCES queries(id),
    label         INTEGER NOT NULL CHECK (label BETWEEN 0 AND 3),
    soft          REAL,
    ranking       TEXT,                               -- JSON list of member indices, or NULL
    teacher_id    TEXT NOT NULL,
    timestamp     REAL NOT NULL,
    response_time REAL NOT NULL,
    recorded      REAL NOT NULL                       -- when this store committed it
);
CREATE INDEX IF NOT EXISTS feedback_query ON feedback(query_id);
CREATE INDEX IF NOT EXISTS feedback_teacher ON feedback(teacher_id);
"""


class SchemaVersionError(RuntimeError):
    """A store or dataset file was written with a schema version this pbrl does not read."""


class NotAFeedbackStoreError(ValueError):
    """The file exists but is not a pbrl feedback store."""


class UnknownQueryError(KeyError):
    """A label or lookup names a query id that the store does not hold."""

    def __str__(self) -> str:
        # KeyError.__str__ shows the repr of its argument; a sentence reads better.
        return str(self.args[0]) if self.args else ""


class FeedbackConflictError(ValueError):
    """A feedback id already holds a different answer (label, soft, ranking, teacher)."""


def feedback_id(query_id: str, teacher_id: str) -> str:
    """Default feedback id: a hash of ``(query_id, teacher_id)``.

    One answer per teacher per query is therefore the default; re-sending it is a no-op.
    A caller that wants to keep several answers of one teacher to one query passes its own
    ids to :meth:`FeedbackStore.add`.
    """
    return hashlib.sha256(f"{query_id}\x1f{teacher_id}".encode()).hexdigest()[:32]


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _unpack1(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else _unpack(blob)["a"]


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


class FeedbackStore:
    """Every query and label of a run, durable on disk (SQLite, WAL, ``synchronous=FULL``).

    One connection per store object, guarded by a lock so that several threads (a training
    loop and a web server) can share the object. Several processes may open the same file;
    SQLite serialises their writes.

    Args:
        path: the database file; created (with parent directories) when missing.
        timeout: seconds to wait for another process's write lock before failing.

    Raises:
        SchemaVersionError: the file was written with another :data:`SCHEMA_VERSION`.
        NotAFeedbackStoreError: the file is not a pbrl feedback store.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    # --- opening ------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self._conn
        try:
            mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise NotAFeedbackStoreError(
                f"{self.path} is not a pbrl feedback store (SQLite says: {e}); pass the path "
                "of a store file, or a new path to create one"
            ) from e
        if mode.lower() != "wal":
            warnings.warn(
                f"{self.path}: SQLite refused WAL mode (journal_mode={mode}); labels are "
                "still committed before add() returns, but concurrent readers will block",
                stacklevel=3,
            )
        # FULL: the WAL is fsynced at every commit, so an acknowledged label survives power
        # loss too, not only a process crash.
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA foreign_keys=ON")
        with self._tx():
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables - {"sqlite_sequence"} and "meta" not in tables:
                raise NotAFeedbackStoreError(
                    f"{self.path} is an SQLite database without a pbrl 'meta' table "
                    f"(tables: {sorted(tables)}); it is not a pbrl feedback store"
                )
            if "meta" in tables:
                self._check_version()
            # executescript() would COMMIT our transaction first, so run statement by statement
            # (the schema text has no ';' inside its comments).
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            c.executemany(
                "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("created", now),
                    ("pbrl_version", PBRL_VERSION),
                    ("sqlite_version", sqlite3.sqlite_version),
                ],
            )

    def _check_version(self) -> None:
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        found = meta.get("schema_version")
        if found is None or found != str(SCHEMA_VERSION):
            writer = meta.get("pbrl_version", "unknown")
            raise SchemaVersionError(
                f"feedback store {self.path} has schema version {found} (written by pbrl "
                f"{writer}); this pbrl ({PBRL_VERSION}) reads schema version {SCHEMA_VERSION}. "
                f"Open it with pbrl {writer} and export() it to a dataset file, then import_() "
                "that file here, or migrate the database to schema version "
                f"{SCHEMA_VERSION}"
            )

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; committed on exit, rolled back on error."""
        with self._lock:
            # IMMEDIATE takes the write lock up front, so a check-then-insert cannot race
            # with another process.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full, I/O error): leave no transaction
                # open, or every later call would fail with "transaction within a transaction".
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    # --- writing ------------------------------------------------------------------------
    def add_queries(self, qb: QueryBatch, step: int = 0) -> int:
        """Store the ``M`` queries of ``qb`` and their ``M * k`` segments in one transaction.

        A query id that is already stored (with the same kind and k) is skipped, so adding
        a batch twice is a no-op.

        Args:
            qb: the queries; their segments should carry the true reward and sim state when
                known (the dataset keeps them for evaluation and re-rendering).
            step: environment step at which they were chosen.

        Returns:
            The number of queries newly stored.
        """
        with self._tx() as c:
            return self._insert_queries(c, qb, int(step), time.time())

    def _insert_queries(
        self, c: sqlite3.Connection, qb: QueryBatch, step: int, created: float
    ) -> int:
        """Body of :meth:`add_queries` inside an open transaction."""
        m, k = len(qb), qb.k
        seg = qb.segments
        factor_names = sorted(seg.reward_factors)
        known = self._existing_queries(qb.ids)
        for qid in qb.ids:
            if qid in known and known[qid] != (qb.kind, k):
                raise ValueError(
                    f"query {qid} is already stored as a {known[qid][0]} query of k="
                    f"{known[qid][1]}, not {qb.kind} with k={k}; query ids must be unique"
                )
        new = 0
        for i, qid in enumerate(qb.ids):
            if qid in known:
                continue
            c.execute(
                "INSERT INTO queries(id, kind, k, selector, score, step, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (qid, qb.kind, k, qb.selector, _nan_to_none(float(qb.scores[i])), step, created),
            )
            for j in range(k):
                n = j * m + i  # member-major layout, see QueryBatch
                c.execute(
                    "INSERT INTO segments(query_id, member, env_name, env_id, start, obs, "
                    "actions, true_reward, reward_factors, sim_state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        qid,
                        j,
                        seg.env_name,
                        int(seg.env_id[n]),
                        int(seg.start[n]),
                        _pack({"a": seg.obs[n]}),
                        _pack({"a": seg.actions[n]}),
                        None if seg.true_reward is None else _pack({"a": seg.true_reward[n]}),
                        _pack({f: seg.reward_factors[f][n] for f in factor_names})
                        if factor_names
                        else None,
                        None if seg.sim_state is None else _pack({"a": seg.sim_state[n]}),
                    ),
                )
            new += 1
        return new

    def add(
        self,
        fb: Feedback | Sequence[Feedback],
        feedback_ids: Sequence[str] | None = None,
    ) -> int:
        """Store labels; returns once they are committed to disk.

        All labels of one call commit together or not at all. A feedback id that is already
        stored with the same answer (query, teacher, label, soft, ranking) is skipped, so
        re-sending a label is a no-op. Several teachers may label the same query.

        Args:
            fb: one label or a sequence of labels.
            feedback_ids: one id per label; default :func:`feedback_id` of
                ``(query_id, teacher_id)``.

        Returns:
            The number of labels newly stored.

        Raises:
            UnknownQueryError: a label names a query id that is not stored (add the query
                with :meth:`add_queries` first).
            FeedbackConflictError: a feedback id is stored with a different answer.
            ValueError: a ranking does not match its query's k.
        """
        fbs = [fb] if isinstance(fb, Feedback) else list(fb)
        ids = (
            [feedback_id(f.query_id, f.teacher_id) for f in fbs]
            if feedback_ids is None
            else [str(i) for i in feedback_ids]
        )
        if len(ids) != len(fbs):
            raise ValueError(f"got {len(fbs)} labels but {len(ids)} feedback_ids")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"feedback ids repeat within one add() call: {dup[:5]}")
        if not fbs:
            return 0
        with self._tx() as c:
            return self._insert_feedback(c, fbs, ids, [time.time()] * len(fbs))

    def _insert_feedback(
        self,
        c: sqlite3.Connection,
        fbs: Sequence[Feedback],
        ids: Sequence[str],
        recorded: Sequence[float],
    ) -> int:
        """Body of :meth:`add` inside an open transaction."""
        queries = self._existing_queries([f.query_id for f in fbs])
        missing = sorted({f.query_id for f in fbs} - set(queries))
        if missing:
            raise UnknownQueryError(
                f"{len(missing)} label(s) name unknown query ids {missing[:5]}; store the "
                "queries with add_queries() before their labels"
            )
        stored = self._existing_feedback(ids)
        new = 0
        for f, fid, rec in zip(fbs, ids, recorded, strict=True):
            k = queries[f.query_id][1]
            if f.ranking is not None and len(f.ranking) != k:
                raise ValueError(
                    f"label for query {f.query_id} ranks {len(f.ranking)} segments but the "
                    f"query has k={k}"
                )
            answer = (
                f.query_id,
                f.teacher_id,
                int(f.label),
                None if f.soft is None else float(f.soft),
                None if f.ranking is None else json.dumps(list(f.ranking)),
            )
            if fid in stored:
                if stored[fid] != answer:
                    raise FeedbackConflictError(
                        f"feedback id {fid} is stored with answer {stored[fid]} and is being "
                        f"re-sent with a different answer {answer}; pass a new feedback id to "
                        "keep both answers"
                    )
                continue
            c.execute(
                "INSERT INTO feedback(id, query_id, teacher_id, label, soft, ranking, "
                "timestamp, response_time, recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (fid, *answer, float(f.timestamp), float(f.response_time), float(rec)),
            )
            new += 1
        return new

    def _existing_queries(self, ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Stored query id -> (kind, k) for those of ``ids`` that exist (lock held)."""
        out: dict[str, tuple[str, int]] = {}
        uniq = list(dict.fromkeys(ids))
        for s in range(0, len(uniq), _MAX_PARAMS):
            chunk = uniq[s : s + _MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            for qid, kind, k in self._conn.execute(
                f"SELECT id, kind, k FROM queries WHERE id IN ({marks})", chunk
            ):
                out[qid] = (kind, k)
        return out

    def _existing_feedback(self, ids: Sequence[str]) -> dict[str, tuple]:
        """Stored feedback id -> answer tuple for those of ``ids`` that exist (lock held)."""
        out: dict[str, tuple] = {}
        for s in range(0, len(ids), _MAX_PARAMS):
            chunk = list(ids[s : s + _MAX_PARAMS])
            marks = ",".join("?" * len(chunk))
            for fid, *answer in self._conn.execute(
                f"SELECT id, query_id, teacher_id, label, soft, ranking FROM feedback "
                f"WHERE id IN ({marks})",
                chunk,
            ):
                out[fid] = tuple(answer)
        return out

    # --- counting -----------------------------------------------------------------------
    def num_queries(self) -> int:
        """Number of stored queries."""
        return self._read("SELECT COUNT(*) FROM queries")[0][0]

    def num_labels(self, teacher_id: str | None = None) -> int:
        """Number of stored labels (skips included), optionally of one teacher."""
        if teacher_id is None:
            return self._read("SELECT COUNT(*) FROM feedback")[0][0]
        return self._read("SELECT COUNT(*) FROM feedback WHERE teacher_id = ?", [teacher_id])[0][0]

    def counts(self, teacher_id: str | None = None) -> dict[str, int]:
        """Labels per answer: ``{"first": n, "second": n, "equal": n, "skip": n}``."""
        sql = "SELECT label, COUNT(*) FROM feedback"
        params: list[object] = []
        if teacher_id is not None:
            sql += " WHERE teacher_id = ?"
            params.append(teacher_id)
        out = dict.fromkeys(LABEL_NAMES.values(), 0)
        for label, n in self._read(sql + " GROUP BY label", params):
            out[LABEL_NAMES[label]] = n
        return out

    def high_water(self) -> dict[str, int]:
        """The ``seq`` of the last query and of the last label stored (0 when none).

        A run's checkpoint records it, so that a resumed run can :meth:`rewind` to it.
        """
        q, f = self._read(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM queries), "
            "(SELECT COALESCE(MAX(seq), 0) FROM feedback)"
        )[0]
        return {"queries": int(q), "feedback": int(f)}

    def rewind(self, mark: Mapping[str, int]) -> tuple[int, int]:
        """Delete what was stored after ``mark`` (a :meth:`high_water`), in one transaction.

        The queries stored after it go with their segments and every label on them, and so
        do the labels stored after it (on any query). For a run resumed from a checkpoint whose
        labels come from a synthetic teacher: it asks those queries again, so the store ends
        as an uninterrupted run's would. Never used for people's labels (they cannot be asked
        again; see :class:`~pbrl.teachers.human.HumanTeacher`).

        Returns:
            ``(queries removed, labels removed)``.
        """
        q_mark, f_mark = int(mark["queries"]), int(mark["feedback"])
        with self._tx() as c:
            stale = "SELECT id FROM queries WHERE seq > ?"
            labels = c.execute(
                f"DELETE FROM feedback WHERE seq > ? OR query_id IN ({stale})", (f_mark, q_mark)
            ).rowcount
            c.execute(f"DELETE FROM segments WHERE query_id IN ({stale})", (q_mark,))
            queries = c.execute("DELETE FROM queries WHERE seq > ?", (q_mark,)).rowcount
        return int(queries), int(labels)

    def teacher_ids(self) -> list[str]:
        """Distinct teacher ids, in order of their first label."""
        rows = self._read("SELECT teacher_id FROM feedback GROUP BY teacher_id ORDER BY MIN(seq)")
        return [r[0] for r in rows]

    def unlabelled_query_ids(self, teacher_id: str | None = None) -> list[str]:
        """Ids of queries nobody (or, given ``teacher_id``, that teacher) has labelled yet.

        In the order the queries were stored. A skip counts as an answer.
        """
        sql = (
            "SELECT id FROM queries q WHERE NOT EXISTS (SELECT 1 FROM feedback f "
            "WHERE f.query_id = q.id"
        )
        params: list[object] = []
        if teacher_id is not None:
            sql += " AND f.teacher_id = ?"
            params.append(teacher_id)
        return [r[0] for r in self._read(sql + ") ORDER BY q.seq", params)]

    def query_ids(self) -> list[str]:
        """All query ids, in the order they were stored."""
        return [r[0] for r in self._read("SELECT id FROM queries ORDER BY seq")]

    # --- reading ------------------------------------------------------------------------
    def _load_segments(
        self, qids: Sequence[str], columns: Sequence[str]
    ) -> dict[tuple[str, int], dict[str, object]]:
        """(query id, member) -> column -> decoded value, for the given segment columns."""
        cols = ", ".join(columns)
        raw: list[tuple] = []
        uniq = list(dict.fromkeys(qids))
        with self._lock:
            for s in range(0, len(uniq), _MAX_PARAMS):
                chunk = uniq[s : s + _MAX_PARAMS]
                marks = ",".join("?" * len(chunk))
                raw += self._conn.execute(
                    f"SELECT query_id, member, {cols} FROM segments WHERE query_id IN ({marks})",
                    chunk,
                ).fetchall()
        out: dict[tuple[str, int], dict[str, object]] = {}
        # Decompress outside the lock: it is the slow part and needs no connection.
        for qid, member, *vals in raw:
            d: dict[str, object] = {}
            for col, v in zip(columns, vals, strict=True):
                if col == "reward_factors":
                    d[col] = {} if v is None else _unpack(v)
                elif col in ("obs", "actions", "true_reward", "sim_state"):
                    d[col] = _unpack1(v)
                else:
                    d[col] = v
            out[(qid, member)] = d
        return out

    _ALL_SEG_COLS = (
        "env_name",
        "env_id",
        "start",
        "obs",
        "actions",
        "true_reward",
        "reward_factors",
        "sim_state",
    )

    def get_query(self, query_id: str) -> QueryBatch:
        """The stored query ``query_id`` as a :class:`QueryBatch` of one query (``k`` segments).

        The segments carry the true reward, reward factors and sim state when they were
        stored; pass ``.segments.without_reward()`` on to learners.
        """
        return self.get_queries([query_id])

    def get_queries(self, query_ids: Sequence[str]) -> QueryBatch:
        """Several stored queries as one :class:`QueryBatch` (same kind, k and shapes).

        ``selector`` is the common selector name, or ``"mixed"`` when they differ.
        """
        ids = list(query_ids)
        if not ids:
            raise ValueError("get_queries needs at least one query id")
        with self._lock:
            rows = {}
            for s in range(0, len(ids), _MAX_PARAMS):
                chunk = ids[s : s + _MAX_PARAMS]
                marks = ",".join("?" * len(chunk))
                for r in self._conn.execute(
                    f"SELECT id, kind, k, selector, score FROM queries WHERE id IN ({marks})",
                    chunk,
                ):
                    rows[r[0]] = r[1:]
        missing = [i for i in ids if i not in rows]
        if missing:
            raise UnknownQueryError(
                f"query ids not in the store {self.path}: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} ({self.num_queries()} queries stored; "
                "see query_ids())"
            )
        shapes = {(rows[i][0], rows[i][1]) for i in ids}
        if len(shapes) != 1:
            raise ValueError(f"get_queries needs queries of one kind and k, got {sorted(shapes)}")
        kind, k = shapes.pop()
        segs = self._load_segments(ids, self._ALL_SEG_COLS)
        members = [_segments_from_rows([segs[(qid, j)] for qid in ids]) for j in range(k)]
        selectors = {rows[i][2] for i in ids}
        return QueryBatch.from_members(
            members,
            kind=kind,
            selector=selectors.pop() if len(selectors) == 1 else "mixed",
            scores=np.array([np.nan if rows[i][3] is None else rows[i][3] for i in ids]),
            ids=ids,
        )

    def feedback(self, teacher_id: str | None = None) -> list[Feedback]:
        """All labels (optionally of one teacher) in the order they were stored."""
        return [f for _, f in self._feedback_rows(teacher_id)]

    def feedback_with_ids(self, teacher_id: str | None = None) -> list[tuple[str, Feedback]]:
        """``(feedback id, Feedback)`` pairs in the order they were stored."""
        return self._feedback_rows(teacher_id)

    def _feedback_rows(self, teacher_id: str | None) -> list[tuple[str, Feedback]]:
        sql = (
            "SELECT id, query_id, label, teacher_id, soft, ranking, timestamp, response_time "
            "FROM feedback"
        )
        params: list[object] = []
        if teacher_id is not None:
            sql += " WHERE teacher_id = ?"
            params.append(teacher_id)
        out = []
        rows = self._read(sql + " ORDER BY seq", params)
        for fid, qid, label, tid, soft, ranking, ts, rt in rows:
            out.append(
                (
                    fid,
                    Feedback(
                        query_id=qid,
                        label=Label(label),
                        teacher_id=tid,
                        soft=soft,
                        ranking=None if ranking is None else tuple(json.loads(ranking)),
                        timestamp=ts,
                        response_time=rt,
                    ),
                )
            )
        return out

    def training_arrays(
        self, since: int = 0, teacher_id: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labelled pair queries as training arrays for a Bradley-Terry reward learner.

        Rows are the non-skip labels of ``kind="pair"`` queries in the order the labels were
        stored; a query labelled by several teachers gives one row per label. ``since``
        drops the first ``since`` such rows, so a loop that remembers how many it has
        consumed can fetch only new ones. The true reward is never returned.

        Args:
            since: number of rows already consumed.
            teacher_id: only this teacher's labels.

        Returns:
            ``obs (Q, 2, H, D_o)`` float32, ``act (Q, 2, H, D_a)`` float32 and
            ``target (Q,)`` float32 = P(second segment preferred) (:attr:`Feedback.target`).
        """
        if since < 0:
            raise ValueError(f"since must be >= 0, got {since}")
        sql = (
            "SELECT f.query_id, f.label, f.soft FROM feedback f JOIN queries q "
            "ON q.id = f.query_id WHERE q.kind = 'pair' AND f.label != ?"
        )
        params: list[object] = [int(Label.SKIP)]
        if teacher_id is not None:
            sql += " AND f.teacher_id = ?"
            params.append(teacher_id)
        rows = self._read(sql + " ORDER BY f.seq LIMIT -1 OFFSET ?", [*params, since])
        if not rows:
            h, d_o, d_a = self._pair_shape()
            z = np.zeros((0, 2, h, d_o), np.float32)
            return z, np.zeros((0, 2, h, d_a), np.float32), np.zeros(0, np.float32)
        segs = self._load_segments([r[0] for r in rows], ("obs", "actions"))
        try:
            obs = np.stack([[segs[(q, 0)]["obs"], segs[(q, 1)]["obs"]] for q, _, _ in rows])
            act = np.stack([[segs[(q, 0)]["actions"], segs[(q, 1)]["actions"]] for q, _, _ in rows])
        except ValueError as e:
            raise ValueError(
                f"stored pair queries have segments of different shapes ({e}); pass "
                "teacher_id or use separate stores per environment / segment length"
            ) from e
        target = np.array(
            [
                soft if soft is not None else Feedback(q, Label(lab), "").target
                for q, lab, soft in rows
            ],
            np.float32,
        )
        return obs.astype(np.float32, copy=False), act.astype(np.float32, copy=False), target

    def _pair_shape(self) -> tuple[int, int, int]:
        """(H, D_o, D_a) of some stored pair segment, or zeros when there is none."""
        r = self._read(
            "SELECT s.obs, s.actions FROM segments s JOIN queries q ON q.id = s.query_id "
            "WHERE q.kind = 'pair' LIMIT 1"
        )
        if not r:
            return 0, 0, 0
        obs, act = _unpack1(r[0][0]), _unpack1(r[0][1])
        return obs.shape[0], obs.shape[1], act.shape[1]

    # --- dataset files ------------------------------------------------------------------
    def export(
        self, path: str | Path, *, kind: str | None = None, env_name: str | None = None
    ) -> int:
        """Write the store (or the queries of one kind / env) to one ``.npz`` dataset file.

        One row per (query, label); a query without labels gives one row with ``label=-1``.
        Rows come in label insertion order, then the unlabelled queries in query order. The
        file reads with numpy alone (``np.load(path)``, no pickle); every key is documented in
        ``docs/dataset_format.md``.

        Args:
            path: the file to write (``.npz`` is appended by numpy when missing).
            kind: only queries of this kind.
            env_name: only queries from this environment.

        Returns:
            The number of rows written.

        Raises:
            ValueError: the selected queries do not share k and array shapes (export one
                kind / env at a time).
        """
        if kind is not None and kind not in QUERY_SIZES:
            raise ValueError(f"unknown query kind {kind!r}; valid: {sorted(QUERY_SIZES)}")
        where, params = ["1"], []
        if kind is not None:
            where.append("q.kind = ?")
            params.append(kind)
        if env_name is not None:
            where.append(
                "q.id IN (SELECT query_id FROM segments WHERE member = 0 AND env_name = ?)"
            )
            params.append(env_name)
        cond = " AND ".join(where)
        with self._lock:
            # One read transaction: a concurrent add() cannot slip in between the two reads.
            self._conn.execute("BEGIN")
            try:
                queries = self._conn.execute(
                    f"SELECT id, kind, k, selector, score, step, created, seq FROM queries q "
                    f"WHERE {cond} ORDER BY seq",
                    params,
                ).fetchall()
                labels = self._conn.execute(
                    "SELECT f.id, f.query_id, f.label, f.soft, f.ranking, f.teacher_id, "
                    "f.timestamp, f.response_time, f.recorded FROM feedback f JOIN queries q "
                    f"ON q.id = f.query_id WHERE {cond} ORDER BY f.seq",
                    params,
                ).fetchall()
            finally:
                self._conn.execute("COMMIT")
        q_of = {q[0]: q for q in queries}
        labelled = {lab[1] for lab in labels}
        rows: list[tuple[tuple, tuple | None]] = [(q_of[lab[1]], lab) for lab in labels]
        rows += [(q, None) for q in queries if q[0] not in labelled]
        ks = {q[2] for q in queries}
        if len(ks) > 1:
            raise ValueError(
                f"the store holds queries with different k {sorted(ks)}; export one kind at a "
                "time: export(path, kind='pair'|'triplet'|'ranking')"
            )
        k = ks.pop() if ks else 2
        segs = self._load_segments([q[0] for q in queries], self._ALL_SEG_COLS)
        out = _export_arrays(rows, k, segs)
        np.savez_compressed(path, **out)
        return len(rows)

    def import_(self, path: str | Path) -> tuple[int, int]:
        """Load a dataset file written by :meth:`export` into this store, idempotently.

        Queries already stored (same id) and labels already stored (same feedback id and
        answer) are skipped; everything commits in one transaction. Label insertion order
        and the queries' stored times are kept.

        Returns:
            ``(new queries, new labels)``.

        Raises:
            SchemaVersionError: the file has another ``schema_version``.
            ValueError: the file is not a pbrl dataset file.
        """
        with np.load(path, allow_pickle=False) as z:
            data = {key: z[key] for key in z.files}
        if "schema_version" not in data:
            raise ValueError(
                f"{path} has no 'schema_version' key; it is not a pbrl dataset file "
                f"(keys: {sorted(data)[:10]})"
            )
        version = int(data["schema_version"])
        if version != SCHEMA_VERSION:
            writer = str(data["pbrl_version"]) if "pbrl_version" in data else "unknown"
            raise SchemaVersionError(
                f"dataset file {path} has format version {version} (written by pbrl {writer}); "
                f"this pbrl ({PBRL_VERSION}) reads format version {SCHEMA_VERSION}. Load it "
                f"with pbrl {writer}, or convert it to format version {SCHEMA_VERSION}"
            )
        n = len(data["query_id"])
        if n == 0:
            return 0, 0
        # Queries in their original insertion order, each from its first row.
        first_row: dict[str, int] = {}
        for r, qid in enumerate(data["query_id"].tolist()):
            first_row.setdefault(qid, r)
        q_order = sorted(first_row, key=lambda q: int(data["query_seq"][first_row[q]]))
        batches = [_query_from_row(data, first_row[q]) for q in q_order]
        lab_rows = [r for r in range(n) if int(data["label"][r]) != UNLABELLED]
        fbs = [_feedback_from_row(data, r) for r in lab_rows]
        ids = [str(data["feedback_id"][r]) for r in lab_rows]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path} repeats feedback ids; the file is damaged")
        with self._tx() as c:
            new_q = sum(self._insert_queries(c, qb, step, created) for qb, step, created in batches)
            new_f = self._insert_feedback(
                c, fbs, ids, [float(data["recorded"][r]) for r in lab_rows]
            )
        return new_q, new_f

    # --- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (idempotent). Everything added is already on disk."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedbackStore({str(self.path)!r})"


# --- helpers for segments and dataset rows ----------------------------------------------
def _segments_from_rows(rows: Sequence[dict[str, object]]) -> SegmentBatch:
    """Stack decoded segment rows into one SegmentBatch."""

    def opt(col: str) -> np.ndarray | None:
        vals = [r[col] for r in rows]
        if any(v is None for v in vals):
            return None
        return np.stack(vals)  # type: ignore[arg-type]

    names = sorted(rows[0]["reward_factors"])  # type: ignore[arg-type]
    return SegmentBatch(
        obs=np.stack([r["obs"] for r in rows]),  # type: ignore[misc]
        actions=np.stack([r["actions"] for r in rows]),  # type: ignore[misc]
        true_reward=opt("true_reward"),
        reward_factors={
            f: np.stack([r["reward_factors"][f] for r in rows])  # type: ignore[index]
            for f in names
        },
        sim_state=opt("sim_state"),
        env_id=np.array([r["env_id"] for r in rows], np.int64),
        start=np.array([r["start"] for r in rows], np.int64),
        env_name=str(rows[0]["env_name"]),
    )


def _stack_optional(vals: list[np.ndarray | None], what: str) -> np.ndarray | None:
    """Stack per-segment arrays; missing ones become NaN (the documented convention)."""
    present = [v for v in vals if v is not None]
    if not present:
        return None
    ref = present[0]
    if any(v.shape != ref.shape for v in present):
        raise ValueError(
            f"segments have different {what} shapes {sorted({v.shape for v in present})}; "
            "export one environment at a time: export(path, env_name=...)"
        )
    if len(present) == len(vals):
        return np.stack(present)
    dtype = np.result_type(ref.dtype, np.float32)
    return np.stack([np.full(ref.shape, np.nan, dtype) if v is None else v for v in vals])


def _export_arrays(
    rows: list[tuple[tuple, tuple | None]],
    k: int,
    segs: dict[tuple[str, int], dict[str, object]],
) -> dict[str, np.ndarray]:
    """Build the dataset-file arrays (keys in docs/dataset_format.md)."""
    n = len(rows)
    # Segment-level arrays, (R, k, ...): gathered per member then stacked along axis 1.
    flat = [segs[(q[0], j)] for q, _ in rows for j in range(k)]

    def seg_array(col: str) -> np.ndarray | None:
        vals = [s[col] for s in flat]
        a = _stack_optional(vals, col)  # type: ignore[arg-type]
        return None if a is None else a.reshape(n, k, *a.shape[1:])

    out: dict[str, np.ndarray] = {
        "schema_version": np.array(SCHEMA_VERSION, np.int64),
        "pbrl_version": np.array(PBRL_VERSION),
        "k": np.array(k, np.int64),
    }
    if n == 0:
        out["obs"] = np.zeros((0, k, 0, 0), np.float32)
        out["actions"] = np.zeros((0, k, 0, 0), np.float32)
    else:
        for col in ("obs", "actions"):
            a = seg_array(col)
            assert a is not None  # obs and actions are NOT NULL in the schema
            out[col] = a
        for col in ("true_reward", "sim_state"):
            a = seg_array(col)
            if a is not None:
                out[col] = a
        names = sorted({f for s in flat for f in s["reward_factors"]})  # type: ignore[union-attr]
        for f in names:
            vals = [s["reward_factors"].get(f) for s in flat]  # type: ignore[union-attr]
            a = _stack_optional(vals, f"factor/{f}")
            assert a is not None
            out[f"factor/{f}"] = a.reshape(n, k, *a.shape[1:])
    out["env_id"] = np.array([s["env_id"] for s in flat], np.int64).reshape(n, k)
    out["start"] = np.array([s["start"] for s in flat], np.int64).reshape(n, k)
    out["env_name"] = np.array([str(segs[(q[0], 0)]["env_name"]) for q, _ in rows], dtype=str)

    # Query-level arrays, (R,).
    out["query_id"] = np.array([q[0] for q, _ in rows], dtype=str)
    out["kind"] = np.array([q[1] for q, _ in rows], dtype=str)
    out["selector"] = np.array([q[3] for q, _ in rows], dtype=str)
    out["score"] = np.array([np.nan if q[4] is None else q[4] for q, _ in rows], np.float64)
    out["step"] = np.array([q[5] for q, _ in rows], np.int64)
    out["query_created"] = np.array([q[6] for q, _ in rows], np.float64)
    out["query_seq"] = np.array([q[7] for q, _ in rows], np.int64)

    # Label-level arrays, (R,); unlabelled rows hold the documented fill values.
    def lab(i: int, fill: object) -> list[object]:
        return [fill if f is None else f[i] for _, f in rows]

    out["feedback_id"] = np.array(lab(0, ""), dtype=str)
    out["label"] = np.array(lab(2, UNLABELLED), np.int64)
    out["soft"] = np.array([np.nan if v is None else v for v in lab(3, None)], np.float64)
    rankings = np.full((n, k), -1, np.int64)
    for r, v in enumerate(lab(4, None)):
        if v is not None:
            rankings[r] = json.loads(v)  # type: ignore[arg-type]
    out["ranking"] = rankings
    out["teacher_id"] = np.array(lab(5, ""), dtype=str)
    out["timestamp"] = np.array(lab(6, np.nan), np.float64)
    out["response_time"] = np.array(lab(7, np.nan), np.float64)
    out["recorded"] = np.array(lab(8, np.nan), np.float64)
    # Convenience for numpy-only readers: P(second preferred); NaN for skips, unlabelled rows
    # and non-pair queries.
    target = np.where(out["label"] == 0, 0.0, np.where(out["label"] == 1, 1.0, np.nan))
    target = np.where(out["label"] == 2, 0.5, target)
    target = np.where(np.isnan(out["soft"]), target, out["soft"])
    target = np.where((out["kind"] == "pair") & (out["label"] != int(Label.SKIP)), target, np.nan)
    out["target"] = target.astype(np.float64)
    # numpy writes '<U0' for an empty list of strings; keep a valid unicode dtype.
    for key in ("env_name", "query_id", "kind", "selector", "feedback_id", "teacher_id"):
        if out[key].dtype.itemsize == 0:
            out[key] = out[key].astype("<U1")
    return out


def _query_from_row(data: dict[str, np.ndarray], r: int) -> tuple[QueryBatch, int, float]:
    """The query of dataset row ``r`` as a one-query batch, with its step and created time."""

    def opt(key: str) -> np.ndarray | None:
        if key not in data:
            return None
        a = data[key][r]
        # NaN-filled rows stand for "absent in the source store" (documented convention).
        return None if np.issubdtype(a.dtype, np.floating) and np.isnan(a).all() else a

    factors: dict[str, np.ndarray] = {}
    for key in data:
        if key.startswith("factor/"):
            v = opt(key)
            if v is not None:
                factors[key.split("/", 1)[1]] = v
    segments = SegmentBatch(
        obs=data["obs"][r],
        actions=data["actions"][r],
        true_reward=opt("true_reward"),
        reward_factors=factors,
        sim_state=opt("sim_state"),
        env_id=data["env_id"][r],
        start=data["start"][r],
        env_name=str(data["env_name"][r]),
    )
    qb = QueryBatch(
        segments=segments,
        k=int(data["k"]),
        kind=str(data["kind"][r]),  # type: ignore[arg-type]
        ids=(str(data["query_id"][r]),),
        selector=str(data["selector"][r]),
        scores=data["score"][r : r + 1],
    )
    return qb, int(data["step"][r]), float(data["query_created"][r])


def _feedback_from_row(data: dict[str, np.ndarray], r: int) -> Feedback:
    soft = float(data["soft"][r])
    ranking = data["ranking"][r]
    return Feedback(
        query_id=str(data["query_id"][r]),
        label=Label(int(data["label"][r])),
        teacher_id=str(data["teacher_id"][r]),
        soft=None if math.isnan(soft) else soft,
        ranking=None if (ranking < 0).all() else tuple(int(i) for i in ranking),
        timestamp=float(data["timestamp"][r]),
        response_time=float(data["response_time"][r]),
    )
