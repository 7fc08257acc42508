"""Who labels what: assigning stored queries to labellers and recording their answers.

:class:`LabelSession` knows nothing of HTTP. It reads the queries from a
:class:`~pbrl.store.FeedbackStore`, hands each labeller the next queries they may answer, and
writes every answer to the store (committed before :meth:`LabelSession.submit` returns).

Rules:

- A labeller never gets a query they have answered (a skip is an answer).
- A query needs ``overlap`` human answers; while it has fewer, it is handed out, and at most
  ``overlap`` people hold it at once (a hold, or *lease*, lasts ``lease_s`` seconds and is
  renewed while the labeller keeps asking). ``overlap > 1`` measures agreement.
- Queries the run is waiting for (:meth:`LabelSession.set_priority`) come first, then the
  rest in the order they were stored.
- Answers are idempotent: the store's feedback id is a hash of (query, labeller), so a
  double-click or a retried request with the same answer is acknowledged without a second
  label, and a different answer to an answered query is refused.
- With ``shuffle`` each labeller sees each query's clips in a fixed random order (no
  position bias); answers are given by position (left / right) and mapped back here.

When a labeller has nothing to answer, :meth:`LabelSession.offer` says why: ``done`` (every
query has its answers or theirs) or ``wait`` (queries they have not answered are still held by
other people's leases; one comes to them if its lease lapses). A labeller told ``wait`` asks again.

Which queries each labeller was handed is kept in ``served_path`` (one JSON line per hand-out,
flushed at once) when given, so that after a server restart an answer to a query the labeller
saw before is still accepted even if others have completed the query in the meantime (the page
re-sends answers the old server never acknowledged).

Labels written to the store by another process (a second server, an import) are picked up
within ``refresh_s`` seconds; one server per store is the supported setup.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from pbrl.data import Feedback, Label
from pbrl.human.summary import Answer, summarize
from pbrl.store import FeedbackConflictError, FeedbackStore, UnknownQueryError, feedback_id

HUMAN_PREFIX = "human:"
"""``teacher_id`` prefix of every label given through the web page."""

CHOICES = ("left", "right", "equal", "skip", "rank")
"""Answers the page sends: by display position, or a ranking for ranking queries."""


class SessionError(Exception):
    """Base of the errors a request can cause; ``status`` is the HTTP status to answer."""

    status = 400


class UnknownQuery(SessionError):
    """The query id is not in the store."""

    status = 404


class InvalidAnswer(SessionError):
    """The answer does not fit the query (wrong choice for its kind, bad ranking)."""

    status = 422


class AlreadyLabelled(SessionError):
    """The labeller answered differently before, or the query has all the answers it needs."""

    status = 409


@dataclass(frozen=True)
class QueryInfo:
    """What the page needs to know of a stored query (never its rewards).

    Attributes:
        query_id: the id.
        kind: ``pair``, ``triplet`` or ``ranking``.
        k: segments in the query.
        horizon: steps per segment.
        env_name: environment the segments came from.
        renderable: whether the segments carry sim state (so clips can be rendered).
    """

    query_id: str
    kind: str
    k: int
    horizon: int
    env_name: str
    renderable: bool


WAIT_RETRY_S = 5.0
"""Longest ``retry_s`` an :class:`Offer` in state ``wait`` asks a labeller to wait."""


@dataclass(frozen=True)
class Offer:
    """What :meth:`LabelSession.offer` hands a labeller, and why it is nothing when it is.

    Attributes:
        queries: the current query and the next ones (empty: nothing to answer now).
        held_by_others: open queries this labeller has not answered that other people hold
            now (counted only when ``queries`` is empty, else 0).
        retry_s: with ``held_by_others``, seconds after which to ask again: when the first of
            those leases lapses, at most :data:`WAIT_RETRY_S` (leases are renewed while their
            holders keep asking); ``None`` otherwise.
    """

    queries: list[str]
    held_by_others: int = 0
    retry_s: float | None = None

    @property
    def state(self) -> str:
        """``ready`` (queries to answer), ``wait`` (ask again) or ``done`` (nothing left)."""
        if self.queries:
            return "ready"
        return "wait" if self.held_by_others else "done"


@dataclass(frozen=True)
class Recorded:
    """The outcome of :meth:`LabelSession.submit`.

    Attributes:
        feedback: the label as stored.
        feedback_id: its id in the store.
        duplicate: True when this exact answer was already stored (nothing new written).
    """

    feedback: Feedback
    feedback_id: str
    duplicate: bool


def display_order(query_id: str, labeller: str, kind: str, k: int, seed: int) -> list[int]:
    """Member indices in the order ``labeller`` sees them (deterministic, no state).

    Pairs and rankings are permuted; a triplet keeps its anchor (member 0) first and
    permutes the two candidates.
    """
    digest = hashlib.sha256(f"{query_id}\x1f{labeller}".encode()).digest()
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest[:8], "little")])
    if kind == "triplet":
        return [0, *(1 + rng.permutation(k - 1)).tolist()]
    return rng.permutation(k).tolist()


def answer_of(
    kind: str, order: Sequence[int], choice: str, ranking: Sequence[int] | None
) -> tuple[Label, tuple[int, ...] | None]:
    """Map a page answer (by display position) to a stored label and member ranking.

    Raises:
        InvalidAnswer: the choice does not fit the query kind, or the ranking is malformed.
    """
    k = len(order)
    if choice not in CHOICES:
        raise InvalidAnswer(f"choice must be one of {', '.join(CHOICES)}; got {choice!r}")
    if choice == "skip":
        return Label.SKIP, None
    if choice == "equal":
        return Label.EQUAL, None
    if kind == "ranking":
        if choice != "rank":
            raise InvalidAnswer(
                f"a ranking query is answered with choice='rank' and a ranking of its {k} "
                "clips (or 'equal' / 'skip'), not 'left' / 'right'"
            )
        if ranking is None or sorted(ranking) != list(range(k)):
            raise InvalidAnswer(
                f"ranking must list the {k} clip positions 0..{k - 1} once each, best first; "
                f"got {None if ranking is None else list(ranking)}"
            )
        return Label.FIRST, tuple(int(order[p]) for p in ranking)
    if choice == "rank":
        raise InvalidAnswer(f"choice='rank' is for ranking queries; this is a {kind} query")
    if ranking is not None:
        raise InvalidAnswer(f"a {kind} query takes no ranking")
    # Pair: positions 0/1 show members order[0]/order[1]. Triplet: position 0 is the anchor,
    # left/right are positions 1/2.
    shown = order if kind == "pair" else order[1:]
    member = shown[0] if choice == "left" else shown[1]
    first = 0 if kind == "pair" else 1
    return (Label.FIRST if member == first else Label.SECOND), None


class LabelSession:
    """Hands queries to labellers and stores their answers.

    Args:
        store: the feedback store holding the queries; answers go into it.
        overlap: human answers wanted per query (>= 1).
        lease_s: how long a handed-out query stays reserved for its labeller.
        lookahead: queries handed out beyond the current one (their clips render ahead).
        shuffle: show each labeller the clips in a per-(query, labeller) random order.
        seed: seed of that order.
        refresh_s: how often to look for queries and labels added by others.
        served_path: file that remembers which queries each labeller was handed, across
            restarts (``None``: in memory only). See the module docstring.
    """

    def __init__(
        self,
        store: FeedbackStore,
        *,
        overlap: int = 1,
        lease_s: float = 600.0,
        lookahead: int = 2,
        shuffle: bool = True,
        seed: int = 0,
        refresh_s: float = 0.5,
        served_path: str | Path | None = None,
    ) -> None:
        if overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {overlap}")
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.store = store
        self.overlap = int(overlap)
        self.lease_s = float(lease_s)
        self.lookahead = int(lookahead)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.refresh_s = float(refresh_s)
        self.started = time.time()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._order: list[str] = []  # every stored query id, store order
        self._pos: dict[str, int] = {}
        self._open: dict[str, None] = {}  # queries with < overlap answers, store order
        self._answers: dict[str, dict[str, Answer]] = {}  # query -> labeller -> answer
        self._open_answered: collections.Counter[str] = collections.Counter()
        self._done: collections.Counter[str] = collections.Counter()
        self._leases: dict[str, dict[str, float]] = {}  # query -> labeller -> expiry
        self._assigned: dict[str, list[str]] = {}
        self._served: dict[str, set[str]] = collections.defaultdict(set)
        self._priority: list[str] = []
        self._arrivals: collections.deque[float] = collections.deque(maxlen=100_000)
        self._n_labels = -1  # store-wide label count the index reflects
        self._last_refresh = -math.inf
        self._info: collections.OrderedDict[str, QueryInfo] = collections.OrderedDict()
        self._segs: collections.OrderedDict[str, tuple[list, str]] = collections.OrderedDict()
        self.run_progress: dict[str, float | int | None] = {}
        self.served_path = None if served_path is None else Path(served_path)
        self._served_log: IO[str] | None = None
        if self.served_path is not None:
            self._load_served(self.served_path)
            self.served_path.parent.mkdir(parents=True, exist_ok=True)
            self._served_log = open(self.served_path, "a", encoding="utf-8")
            if self._served_log.tell() and not self.served_path.read_bytes().endswith(b"\n"):
                self._served_log.write("\n")  # end a line torn by a crash before appending
        with self._lock:
            self._refresh(force=True)

    def _load_served(self, path: Path) -> None:
        """Read the hand-out log of earlier servers (a torn last line is ignored)."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                who, qid = json.loads(line)
            except (ValueError, TypeError):
                continue  # a line cut short by a crash
            self._served[str(who)].add(str(qid))

    def close(self) -> None:
        """Close the hand-out log (answers are in the store already). Idempotent."""
        with self._lock:
            if self._served_log is not None:
                self._served_log.close()
                self._served_log = None

    # --- the index ------------------------------------------------------------------------
    def _refresh(self, force: bool = False) -> None:
        """Pick up queries and labels that reached the store another way (lock held)."""
        now = time.monotonic()
        if not force and now - self._last_refresh < self.refresh_s:
            return
        self._last_refresh = now
        if self.store.num_queries() != len(self._order):
            for qid in self.store.query_ids():
                if qid not in self._pos:
                    self._pos[qid] = len(self._order)
                    self._order.append(qid)
                    if len(self._answers.get(qid, ())) < self.overlap:
                        self._open[qid] = None
            self._changed.notify_all()  # wakes labellers waiting for work
        n_labels = self.store.num_labels()
        if n_labels != self._n_labels:
            self._reload_answers()
            self._n_labels = n_labels
            self._changed.notify_all()

    def _reload_answers(self) -> None:
        answers: dict[str, dict[str, Answer]] = {}
        for fb in self.store.feedback():
            if fb.teacher_id.startswith(HUMAN_PREFIX):
                who = fb.teacher_id[len(HUMAN_PREFIX) :]
                answers.setdefault(fb.query_id, {})[who] = (
                    int(fb.label),
                    fb.ranking,
                    float(fb.response_time),
                )
        self._answers = answers
        self._open = {q: None for q in self._order if len(answers.get(q, ())) < self.overlap}
        self._done = collections.Counter(w for a in answers.values() for w in a)
        self._open_answered = collections.Counter(w for q in self._open for w in answers.get(q, ()))

    def _note_answer(self, qid: str, labeller: str, answer: Answer) -> None:
        """Add one answer of ours to the index (lock held; idempotent)."""
        per_query = self._answers.setdefault(qid, {})
        if labeller in per_query:
            return
        per_query[labeller] = answer
        self._n_labels += 1
        self._done[labeller] += 1
        if qid in self._open:
            if len(per_query) >= self.overlap:
                del self._open[qid]
                for who in per_query:
                    if who != labeller:
                        self._open_answered[who] -= 1
            else:
                self._open_answered[labeller] += 1
        self._changed.notify_all()

    # --- queries ----------------------------------------------------------------------------
    def info(self, query_id: str) -> QueryInfo:
        """What the page shows of a query.

        Raises:
            UnknownQuery: the id is not stored.
        """
        with self._lock:
            if query_id in self._info:
                self._info.move_to_end(query_id)
                return self._info[query_id]
        states, env_name, qb = self._load(query_id)
        info = QueryInfo(
            query_id=query_id,
            kind=qb.kind,
            k=qb.k,
            horizon=qb.segments.horizon,
            env_name=env_name,
            renderable=all(s is not None for s in states),
        )
        with self._lock:
            self._info[query_id] = info
            while len(self._info) > 4096:
                self._info.popitem(last=False)
        return info

    def _load(self, query_id: str) -> tuple[list, str, object]:
        try:
            qb = self.store.get_query(query_id)
        except UnknownQueryError as err:
            raise UnknownQuery(f"unknown query id {query_id!r}") from err
        seg = qb.segments
        states = [None if seg.sim_state is None else seg.sim_state[j] for j in range(qb.k)]
        with self._lock:
            self._segs[query_id] = (states, seg.env_name)
            while len(self._segs) > 8:
                self._segs.popitem(last=False)
        return states, seg.env_name, qb

    def segment_states(self, query_id: str, member: int) -> tuple[np.ndarray | None, str]:
        """``(sim_state (H, D_s) or None, env_name)`` of one member (for the clip renderer).

        Raises:
            KeyError: unknown query or member.
        """
        with self._lock:
            cached = self._segs.get(query_id)
        if cached is None:
            try:
                states, env_name, _ = self._load(query_id)
            except UnknownQuery as err:
                raise KeyError(str(err)) from err
        else:
            states, env_name = cached
        if not 0 <= member < len(states):
            raise KeyError(f"query {query_id!r} has no clip {member}")
        return states[member], env_name

    def order(self, query_id: str, labeller: str) -> list[int]:
        """Member indices of ``query_id`` in the order ``labeller`` sees them."""
        info = self.info(query_id)
        if not self.shuffle:
            return list(range(info.k))
        return display_order(query_id, labeller, info.kind, info.k, self.seed)

    def known(self, query_id: str) -> bool:
        """Whether ``query_id`` is a stored query."""
        with self._lock:
            if query_id in self._pos:
                return True
            self._refresh(force=True)
            return query_id in self._pos

    # --- handing out ------------------------------------------------------------------------
    def set_priority(self, query_ids: Iterable[str]) -> None:
        """Hand these queries out before all others (the run is waiting for them)."""
        with self._lock:
            self._priority = list(dict.fromkeys(query_ids))
            self._refresh(force=True)

    def assign(self, labeller: str, wait: float = 0.0) -> list[str]:
        """The labeller's current query and the next ``lookahead`` ones (maybe fewer, or none).

        Repeated calls return the same queries until they are answered or their lease lapses;
        each call renews the leases. With ``wait > 0`` and nothing to hand out, blocks up to
        ``wait`` seconds for new queries (a long poll: the page shows them as they come).
        An empty list does not mean the work is done: see :meth:`offer`.
        """
        return self.offer(labeller, wait).queries

    def offer(self, labeller: str, wait: float = 0.0) -> Offer:
        """:meth:`assign`, saying whether an empty hand-out means ``done`` or ``wait``.

        With ``wait > 0`` it returns early when there are queries to hand out or the state
        changes (``wait`` becomes ``done`` when the holders answer).
        """
        deadline = time.monotonic() + max(0.0, wait)
        with self._lock:
            first: str | None = None
            while True:
                got = self._assign(labeller)
                first = first or got.state
                left = deadline - time.monotonic()
                if got.queries or got.state != first or left <= 0:
                    return got
                self._changed.wait(min(left, max(self.refresh_s, 0.05)))
                self._refresh(force=True)

    def _assign(self, labeller: str) -> Offer:
        """One pass of :meth:`offer` (lock held)."""
        with self._lock:
            self._refresh()
            now = time.monotonic()
            self._expire(now)
            held = [
                q
                for q in self._assigned.get(labeller, [])
                if labeller not in self._answers.get(q, ()) and labeller in self._leases.get(q, {})
            ]
            want = 1 + self.lookahead
            if len(held) < want:
                self._priority = [q for q in self._priority if q in self._open]
                taken = set(held)
                for q in (*self._priority, *self._open):
                    if len(held) >= want:
                        break
                    if q in taken or q not in self._pos or labeller in self._answers.get(q, ()):
                        continue
                    if self._holders(q, labeller) >= self.overlap:
                        continue
                    held.append(q)
                    taken.add(q)
            for q in held:
                self._leases.setdefault(q, {})[labeller] = now + self.lease_s
            self._assigned[labeller] = held
            self._remember_served(labeller, held)
            if held:
                return Offer(list(held))
            return self._blocked(labeller, now)

    def _blocked(self, labeller: str, now: float) -> Offer:
        """The empty :class:`Offer`: open queries ``labeller`` may answer once a lease lapses.

        Lock held, leases expired, nothing assignable (so every open query ``labeller`` has
        not answered is full of answers and other people's leases).
        """
        n, lapse = 0, math.inf
        for q in self._open:
            answered = self._answers.get(q, {})
            if labeller in answered or q not in self._pos or len(answered) >= self.overlap:
                continue
            leases = self._leases.get(q, {}).items()
            others = [t for who, t in leases if who != labeller and who not in answered]
            if others:
                n += 1
                lapse = min(lapse, min(others))
        if not n:
            return Offer([])
        return Offer([], held_by_others=n, retry_s=min(WAIT_RETRY_S, max(0.0, lapse - now)))

    def _remember_served(self, labeller: str, held: Sequence[str]) -> None:
        """Note (and log, before the page can see them) the queries handed to ``labeller``."""
        served = self._served[labeller]
        new = [q for q in held if q not in served]
        if not new:
            return
        served.update(new)
        if self._served_log is not None:
            self._served_log.write("".join(json.dumps([labeller, q]) + "\n" for q in new))
            self._served_log.flush()  # in the OS's hands: survives a kill -9 of this process

    def _holders(self, qid: str, labeller: str) -> int:
        """Answers plus other people's live leases on ``qid`` (lock held, leases expired)."""
        answered = self._answers.get(qid, {})
        leased = sum(
            1 for who in self._leases.get(qid, {}) if who != labeller and who not in answered
        )
        return len(answered) + leased

    def _expire(self, now: float) -> None:
        for qid in list(self._leases):
            live = {w: t for w, t in self._leases[qid].items() if t > now}
            if live:
                self._leases[qid] = live
            else:
                del self._leases[qid]

    def release(self, labeller: str) -> None:
        """Give back everything ``labeller`` holds (e.g. their token was revoked)."""
        with self._lock:
            for q in self._assigned.pop(labeller, []):
                self._leases.get(q, {}).pop(labeller, None)

    # --- answering --------------------------------------------------------------------------
    def submit(
        self,
        labeller: str,
        query_id: str,
        choice: str,
        ranking: Sequence[int] | None = None,
        client_time: float | None = None,
        response_time: float | None = None,
    ) -> Recorded:
        """Store one answer; returns once it is committed to disk.

        Args:
            labeller: who answers (stored as ``teacher_id="human:<labeller>"``).
            query_id: the query answered.
            choice: ``left`` / ``right`` (by display position), ``equal``, ``skip``, or
                ``rank`` with ``ranking`` (display positions, best first) for rankings.
            ranking: see ``choice``.
            client_time: when the labeller answered, by the browser's clock (seconds since
                the epoch); the server's clock when not given.
            response_time: seconds from clips playable to answer, as the page measured.

        Raises:
            UnknownQuery: no such query.
            InvalidAnswer: the answer does not fit the query.
            AlreadyLabelled: this labeller answered the query differently before, or it has
                all its answers and was never handed to this labeller.
        """
        if not self.known(query_id):
            raise UnknownQuery(f"unknown query id {query_id!r}")
        info = self.info(query_id)
        order = self.order(query_id, labeller)
        label, member_ranking = answer_of(info.kind, order, choice, ranking)
        teacher_id = HUMAN_PREFIX + labeller
        with self._lock:
            self._refresh()
            per_query = self._answers.get(query_id, {})
            mine = per_query.get(labeller)
            if mine is not None and (mine[0], mine[1]) != (int(label), member_ranking):
                raise AlreadyLabelled(
                    f"you already answered query {query_id} differently; an answer cannot be "
                    "changed"
                )
            if (
                mine is None
                and len(per_query) >= self.overlap
                and query_id not in self._served[labeller]
            ):
                raise AlreadyLabelled(
                    f"query {query_id} already has the {self.overlap} answer(s) it needs"
                )
        fb = Feedback(
            query_id=query_id,
            label=label,
            teacher_id=teacher_id,
            ranking=member_ranking,
            timestamp=float(client_time) if client_time is not None else time.time(),
            response_time=float(response_time or 0.0),
        )
        fid = feedback_id(query_id, teacher_id)
        try:
            new = self.store.add(fb)  # committed (fsynced) when this returns
        except FeedbackConflictError as err:
            raise AlreadyLabelled(
                f"you already answered query {query_id} differently; an answer cannot be changed"
            ) from err
        except UnknownQueryError as err:
            raise UnknownQuery(f"unknown query id {query_id!r}") from err
        with self._lock:
            if new:
                self._arrivals.append(time.time())
            self._note_answer(query_id, labeller, (int(label), member_ranking, fb.response_time))
            leases = self._leases.get(query_id)
            if leases is not None:
                leases.pop(labeller, None)
            if query_id in self._assigned.get(labeller, []):
                self._assigned[labeller].remove(query_id)
        return Recorded(feedback=fb, feedback_id=fid, duplicate=not new)

    # --- progress ---------------------------------------------------------------------------
    def progress(self, labeller: str | None = None) -> dict[str, object]:
        """Counts for the page: ``done`` and ``left`` for ``labeller``, totals, run progress."""
        with self._lock:
            self._refresh()
            out: dict[str, object] = {
                "queries": len(self._order),
                "labels": sum(self._done.values()),
                "open": len(self._open),
                "overlap": self.overlap,
                "run": dict(self.run_progress),
            }
            if labeller is not None:
                out["done"] = self._done[labeller]
                out["left"] = len(self._open) - self._open_answered[labeller]
            return out

    def wait_for(self, query_ids: Sequence[str], need: int, timeout: float | None) -> bool:
        """Block until every query has ``need`` human answers; False on timeout."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._refresh(force=True)
                if all(len(self._answers.get(q, ())) >= need for q in query_ids):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, max(self.refresh_s, 0.05)))

    def answered(self, query_ids: Sequence[str]) -> list[Feedback]:
        """The human labels of ``query_ids`` in the store, grouped in query order."""
        wanted = {q: i for i, q in enumerate(query_ids)}
        out = [
            fb
            for fb in self.store.feedback()
            if fb.query_id in wanted and fb.teacher_id.startswith(HUMAN_PREFIX)
        ]
        return sorted(out, key=lambda fb: wanted[fb.query_id])

    def summary(self) -> dict[str, float]:
        """The ``human/*`` scalars of :func:`pbrl.human.summary.summarize`."""
        with self._lock:
            self._refresh()
            answers = {q: dict(a) for q, a in self._answers.items()}
            arrivals = list(self._arrivals)
        return summarize(answers, arrivals, now=time.time(), started=self.started)
