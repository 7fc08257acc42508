"""The human/* numbers against hand-computed values."""

from __future__ import annotations

import math

from pbrl.data import Label
from pbrl.human.summary import agreement, summarize

F, S, E, K = int(Label.FIRST), int(Label.SECOND), int(Label.EQUAL), int(Label.SKIP)


def test_agreement_is_the_mean_fraction_of_agreeing_pairs() -> None:
    answers = [
        {"a": (F, None, 1.0), "b": (F, None, 1.0)},  # 1 pair, agrees -> 1
        {"a": (F, None, 1.0), "b": (S, None, 1.0), "c": (F, None, 1.0)},  # 3 pairs, 1 agrees
        {"a": (F, None, 1.0), "b": (K, None, 1.0)},  # one non-skip answer: not counted
        {"a": (E, None, 1.0)},  # one answer: not counted
    ]
    value, n = agreement(answers)
    assert n == 2
    assert math.isclose(value, (1.0 + 1 / 3) / 2)
    assert math.isnan(agreement([{"a": (F, None, 0.0)}])[0])


def test_rankings_agree_only_when_identical() -> None:
    value, n = agreement([{"a": (F, (0, 1, 2), 0.0), "b": (F, (0, 2, 1), 0.0)}])
    assert (value, n) == (0.0, 1)


def test_summary_rates_and_labels_per_minute() -> None:
    answers = {
        "q1": {"a": (F, None, 2.0), "b": (F, None, 4.0)},
        "q2": {"a": (K, None, 1.0)},
        "q3": {"b": (E, None, 5.0)},
    }
    now = 10_000.0
    # started 10 minutes ago; 3 answers in the last 5 minutes, one older
    out = summarize(answers, [now - 30, now - 100, now - 200, now - 400], now, started=now - 600)
    assert out["labels"] == 4 and out["labellers"] == 2
    assert math.isclose(out["labels_per_minute"], 3 / 5)
    assert out["skip_rate"] == 0.25 and out["equal_rate"] == 0.25
    assert math.isclose(out["response_time_mean"], 3.0)
    assert out["agreement"] == 1.0 and out["agreement_queries"] == 1
    # a server started 30 s ago divides by one minute, not by 30 s
    young = summarize(answers, [now - 10], now, started=now - 30)
    assert young["labels_per_minute"] == 1.0


def test_empty_summary_has_no_rates() -> None:
    out = summarize({}, [], 100.0, started=0.0)
    assert out["labels"] == 0 and out["labels_per_minute"] == 0
    assert math.isnan(out["skip_rate"]) and math.isnan(out["agreement"])
