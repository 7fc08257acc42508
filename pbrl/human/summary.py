"""What a labelling session looks like in numbers: the ``human/*`` TensorBoard scalars.

:func:`summarize` is a pure function of the human answers and the server-side times at which
they arrived, so the training loop (through :class:`~pbrl.teachers.human.HumanTeacher`) and
``pbrl-label --logdir`` report the same numbers.

Scalars (all under ``human/`` when logged):

- ``labels``: human answers stored (skips included);
- ``labellers``: people who answered at least once;
- ``labels_per_minute``: answers that arrived in the last ``window`` seconds, per minute (over
  the time since the server started when that is shorter, and at least one minute);
- ``agreement``: over queries with at least two non-skip answers, the mean fraction of pairs
  of labellers that gave the same answer (NaN when no query has two);
- ``agreement_queries``: how many queries that mean is over;
- ``skip_rate``, ``equal_rate``: fraction of answers that were skip / equal;
- ``response_time_mean``: mean seconds from clips playable to answer (as the page measured).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

from pbrl.data import Label

Answer = tuple[int, tuple[int, ...] | None, float]
"""One stored answer: ``(label value, ranking or None, response time s)``."""


def agreement(answers: Iterable[Mapping[str, Answer]]) -> tuple[float, int]:
    """Mean pairwise agreement over queries with >= 2 non-skip answers, and their count.

    Args:
        answers: one mapping per query, labeller -> answer.

    Returns:
        ``(agreement in [0, 1] or NaN, number of queries it averages over)``.
    """
    rates: list[float] = []
    for per_query in answers:
        given = [(a[0], a[1]) for a in per_query.values() if a[0] != int(Label.SKIP)]
        if len(given) < 2:
            continue
        pairs = list(combinations(given, 2))
        rates.append(sum(x == y for x, y in pairs) / len(pairs))
    if not rates:
        return float("nan"), 0
    return float(sum(rates) / len(rates)), len(rates)


def summarize(
    answers: Mapping[str, Mapping[str, Answer]],
    arrivals: Sequence[float],
    now: float,
    started: float,
    window: float = 300.0,
) -> dict[str, float]:
    """The session's scalars (see the module docstring).

    Args:
        answers: query id -> labeller -> answer, every human answer in the store.
        arrivals: server times (seconds since the epoch) at which answers arrived at this
            server, in any order.
        now: the current time.
        started: when this server started.
        window: seconds over which ``labels_per_minute`` is measured.
    """
    flat = [a for per_query in answers.values() for a in per_query.values()]
    n = len(flat)
    labellers = {who for per_query in answers.values() for who in per_query}
    span = max(60.0, min(window, now - started))
    recent = sum(1 for t in arrivals if now - t <= span)
    agree, n_agree = agreement(answers.values())
    out = {
        "labels": float(n),
        "labellers": float(len(labellers)),
        "labels_per_minute": recent / (span / 60.0),
        "agreement": agree,
        "agreement_queries": float(n_agree),
        "skip_rate": sum(a[0] == int(Label.SKIP) for a in flat) / n if n else math.nan,
        "equal_rate": sum(a[0] == int(Label.EQUAL) for a in flat) / n if n else math.nan,
        "response_time_mean": sum(a[2] for a in flat) / n if n else math.nan,
    }
    return out
