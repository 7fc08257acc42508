"""Scripted B-Pref teachers against hand-computed labels and probabilities."""

import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.special import expit

from pbrl.data import Feedback, Label, QueryBatch, SegmentBatch
from pbrl.teachers import (
    PRESETS,
    ScriptedTeacher,
    Teacher,
    UnknownTeacherError,
    discount_weights,
    make_teacher,
)

CONFIGS = Path(__file__).resolve().parents[1] / "pbrl" / "configs" / "teacher"
F, S, E, K = Label.FIRST, Label.SECOND, Label.EQUAL, Label.SKIP


def segs(rewards) -> SegmentBatch:
    r = np.asarray(rewards, np.float32)
    if r.ndim == 1:  # one-step segments given by their returns
        r = r[:, None]
    n, h = r.shape
    return SegmentBatch(np.zeros((n, h, 2), np.float32), np.zeros((n, h, 1), np.float32), r)


def pairs(r0, r1) -> QueryBatch:
    """Pair queries whose first/second segments have per-step rewards r0/r1 (or returns)."""
    return QueryBatch.from_members([segs(r0), segs(r1)])


def labels(fbs: list[Feedback]) -> list[Label]:
    return [fb.label for fb in fbs]


def test_oracle_prefers_higher_return_and_fills_feedback():
    q = pairs([1.0, 3.0, -2.0], [2.0, 0.5, -1.0])
    t = ScriptedTeacher()
    t0 = time.time()
    fbs = t.label(q)
    assert labels(fbs) == [S, F, S]
    assert [fb.query_id for fb in fbs] == list(q.ids)
    assert all(fb.teacher_id == "oracle" and fb.soft is None for fb in fbs)
    assert all(fb.response_time == 0.0 and t0 - 1 <= fb.timestamp <= time.time() + 1 for fb in fbs)
    assert isinstance(t, Teacher)


def test_rational_exact_tie_is_equal_not_first():
    # B-Pref's 1[R0 < R1] would answer FIRST; we answer EQUAL (target 0.5).
    fbs = ScriptedTeacher().label(pairs([[0.0, 0.0], [1.0, 2.0]], [[0.0, 0.0], [2.0, 1.0]]))
    assert labels(fbs) == [E, E]
    assert [fb.target for fb in fbs] == [0.5, 0.5]


def test_myopic_weights_on_three_step_segment():
    np.testing.assert_allclose(discount_weights(3, 0.5), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(discount_weights(3, 0.9), [0.81, 0.9, 1.0])
    # first: [4, 0, 0] -> R=4, R^g=1; second: [0, 0, 1.5] -> R=1.5, R^g=1.5.
    q = pairs([[4.0, 0.0, 0.0]], [[0.0, 0.0, 1.5]])
    assert labels(ScriptedTeacher().label(q)) == [F]
    assert labels(ScriptedTeacher(gamma=0.5).label(q)) == [S]
    soft = ScriptedTeacher(gamma=0.5, beta=2.0, soft=True).label(q)[0].soft
    assert soft == pytest.approx(expit(2.0 * (1.5 - 1.0)))


def test_skip_threshold_max_seen():
    # The largest return in the batch is 10 -> d_skip = 0.1 * 10 = 1; skip iff max(R0, R1) <= 1.
    q = pairs([0.5, 1.0, 1.1, -30.0, 0.0, 10.0], [0.9, 0.2, 0.0, -3.0, 1.0, 2.0])
    t = ScriptedTeacher(eps_skip=0.1)
    fbs = t.label(q)
    assert labels(fbs) == [K, K, F, K, K, F]
    assert t.best_seen == 10.0 and t.max_seen == 30.0  # signed (skip) and |R| (equal) scales
    assert all(fb.soft is None for fb in fbs if fb.label == K)
    # The scale persists: a later batch of small returns is judged against 10, ...
    assert labels(t.label(pairs([0.8, 2.0], [0.3, 1.5]))) == [K, F]
    # ... and grows when larger returns appear (updated before labelling: max 30 -> d = 3).
    assert labels(t.label(pairs([2.5, 30.0], [2.0, 0.0]))) == [K, F]
    assert t.best_seen == 30.0


def test_skip_rule_is_off_while_no_return_shown_is_positive():
    """B-Pref's threshold is eps * m_bar, negative on a negative-return task: nothing is
    skipped. A |R| scale would skip every pair of Pendulum and leave the reward untrained."""
    t = ScriptedTeacher(eps_skip=0.3)
    rng = np.random.default_rng(0)
    r0, r1 = rng.uniform(-500, -100, 100), rng.uniform(-500, -100, 100)
    assert K not in labels(t.label(pairs(r0, r1)))
    # Once a positive return appears, pairs entirely below eps * that return are skipped.
    assert labels(t.label(pairs([-400.0, 50.0], [-300.0, 10.0]))) == [K, F]


def test_no_skip_without_eps_skip_even_for_negative_returns():
    assert labels(ScriptedTeacher().label(pairs([-5.0, 0.0], [-4.0, 0.0]))) == [S, E]


def test_equal_threshold_on_undiscounted_returns():
    # max |R| = 10 -> d_equal = 1; equal iff |R0 - R1| < 1 (strict).
    q = pairs([10.0, 5.0, 5.0, 2.0], [9.5, 4.0, 6.2, 2.9])
    assert labels(ScriptedTeacher(eps_equal=0.1).label(q)) == [E, F, S, E]
    # Myopic discounting does not enter the equal mask (gamma 0.5, d_equal = 1 from max 10):
    # R 4 vs 4 (R^g 1 vs 4) is EQUAL; R 3 vs 0.5 (R^g 0.75 vs 0.5) is FIRST, not EQUAL.
    q = pairs(
        [[4.0, 0.0, 0.0], [3.0, 0.0, 0.0], [10.0, 0.0, 0.0]],
        [[0.0, 0.0, 4.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]],
    )
    assert labels(ScriptedTeacher(gamma=0.5, eps_equal=0.1).label(q)) == [E, F, F]


def test_equal_mask_overrides_mistake_flips_and_skip_wins():
    # eps_mistake=1 flips every label deterministically; equal-masked pairs stay EQUAL.
    q = pairs([10.0, 5.0, 5.0, 0.5], [9.5, 4.0, 6.2, 0.6])
    t = ScriptedTeacher(eps_mistake=1.0, eps_equal=0.1)
    assert labels(t.label(q)) == [E, S, F, E]
    t = ScriptedTeacher(eps_mistake=1.0, eps_equal=0.1, eps_skip=0.1)
    assert labels(t.label(q)) == [E, S, F, K]


def test_mistake_flip_rate():
    n = 10_000
    t = ScriptedTeacher(eps_mistake=0.1, seed=1)
    fbs = t.label(pairs(np.zeros(n), np.ones(n)))
    flip = np.mean([fb.label == F for fb in fbs])
    assert set(labels(fbs)) == {F, S}
    assert abs(flip - 0.1) < 4 * math.sqrt(0.1 * 0.9 / n)


@pytest.mark.parametrize("diff", [0.5, -1.5, 0.0])
def test_stochastic_beta1_matches_sigmoid(diff):
    n = 10_000
    t = ScriptedTeacher(beta=1.0, seed=2)
    fbs = t.label(pairs(np.zeros(n), np.full(n, diff)))
    p = 1.0 / (1.0 + math.exp(-diff))
    emp = np.mean([fb.label == S for fb in fbs])
    assert set(labels(fbs)) <= {F, S}  # stochastic teachers never answer EQUAL for a tie
    assert abs(emp - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_stochastic_uses_discounted_returns_and_beta():
    # beta=2, gamma=0.5 on 2-step segments: R^g = 0.5 r_1 + r_2; diff = (0.5*0 + 1) - (0.5*2) = 0
    n = 10_000
    t = ScriptedTeacher(beta=2.0, gamma=0.5, seed=3)
    emp = np.mean(
        [
            fb.label == S
            for fb in t.label(pairs(np.tile([2.0, 0.0], (n, 1)), np.tile([0.0, 1.0], (n, 1))))
        ]
    )
    assert abs(emp - 0.5) < 4 * math.sqrt(0.25 / n)


def test_soft_labels():
    q = pairs([0.0, 1.0, 2.0, 0.0], [0.5, 0.0, 2.0, 3.0])
    fbs = ScriptedTeacher(beta=2.0, soft=True).label(q)
    np.testing.assert_allclose([fb.soft for fb in fbs], expit(2.0 * np.array([0.5, -1, 0, 3])))
    assert [fb.target for fb in fbs] == [fb.soft for fb in fbs]
    fbs = ScriptedTeacher(soft=True).label(q)  # beta = inf
    assert [fb.soft for fb in fbs] == [1.0, 0.0, 0.5, 1.0]
    assert labels(fbs) == [S, F, E, S]
    # With mistakes the soft label is the teacher's answer probability p + eps (1 - 2p).
    fbs = ScriptedTeacher(soft=True, eps_mistake=0.1).label(q)
    np.testing.assert_allclose([fb.soft for fb in fbs], [0.9, 0.1, 0.5, 0.9])
    # Equal-masked pairs get 0.5: d_equal = 0.2 * max|R| = 0.6 masks |0 - 0.5| and |2 - 2|.
    fbs = ScriptedTeacher(soft=True, eps_equal=0.2, beta=2.0).label(q)
    assert labels(fbs)[0] == E and fbs[0].soft == 0.5 and fbs[2].soft == 0.5


def test_episode_threshold_uses_eps_times_m_bar_not_eps_squared():
    # m_bar = 200 * H / 1000 = 10 for H = 50 -> d_skip = 0.1 * 10 = 1 (B-Pref's bug: 0.1).
    h = 50
    r0 = np.zeros((3, h))
    r0[:, -1] = [0.5, 0.9, 2.0]
    r1 = np.zeros((3, h))
    r1[:, 0] = [0.2, 0.05, 0.0]
    t = ScriptedTeacher(eps_skip=0.1, threshold="episode")
    with pytest.raises(RuntimeError, match="set_episode_return"):
        t.label(pairs(r0, r1))
    t.set_episode_return(200.0, 1000)
    assert t.scale(h) == pytest.approx(10.0)
    assert labels(t.label(pairs(r0, r1))) == [K, K, F]
    # A negative m_bar disables skipping (B-Pref applies the rule only for d_skip > 0).
    t.set_episode_return(-200.0, 1000)
    assert labels(t.label(pairs(r0, r1))) == [F, F, F]
    # Without eps the episode scale is not needed.
    assert labels(ScriptedTeacher(threshold="episode").label(pairs([1.0], [2.0]))) == [S]


def test_state_dict_round_trip_repeats_labels():
    n = 64
    q = pairs(np.full(n, 10.0), np.full(n, 10.3))  # above d_skip = 1.03, P(second) = 0.57
    a = ScriptedTeacher(beta=1.0, eps_mistake=0.2, eps_skip=0.1, seed=7)
    a.label(pairs([-50.0], [1.0]))
    state = pickle.loads(pickle.dumps(a.state_dict()))
    expected = labels(a.label(q))
    b = ScriptedTeacher(beta=1.0, eps_mistake=0.2, eps_skip=0.1, seed=123)
    b.load_state_dict(state)
    assert b.max_seen == 50.0 and b.best_seen == 1.0
    assert labels(b.label(q)) == expected
    assert len(set(expected)) == 2  # both answers occur, so a wrong RNG state would show
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict({"rng": state["rng"]})


def test_same_seed_same_labels_different_seed_differs():
    q = pairs(np.zeros(200), np.zeros(200))
    a, b, c = (ScriptedTeacher(beta=1.0, seed=s) for s in (0, 0, 1))
    assert labels(a.label(q)) == labels(b.label(q)) != labels(c.label(q))


def test_rejects_non_pairs_and_withheld_reward():
    s = segs([1.0, 2.0])
    trip = QueryBatch.from_members([s, s, s], kind="triplet")
    with pytest.raises(ValueError, match="pair queries only"):
        ScriptedTeacher().label(trip)
    q = QueryBatch.from_members([s.without_reward(), s.without_reward()])
    with pytest.raises(ValueError, match="true reward"):
        ScriptedTeacher().label(q)
    with pytest.raises(ValueError, match="NaN"):
        ScriptedTeacher().label(pairs([np.nan], [1.0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": -1}, "beta=inf"),
        ({"beta": 0}, "beta"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"eps_mistake": -0.1}, "eps_mistake"),
        ({"eps_skip": 2}, "eps_skip"),
        ({"threshold": "mean"}, "max_seen"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScriptedTeacher(**kwargs)


def test_presets_match_bpref():
    assert set(PRESETS) == {"oracle", "noisy", "mistake", "skip", "myopic", "equal"}
    expected = {  # (beta, gamma, eps_mistake, eps_skip, eps_equal)
        "oracle": (math.inf, 1.0, 0.0, 0.0, 0.0),
        "noisy": (1.0, 1.0, 0.0, 0.0, 0.0),
        "mistake": (math.inf, 1.0, 0.1, 0.0, 0.0),
        "skip": (math.inf, 1.0, 0.0, 0.1, 0.0),
        "myopic": (math.inf, 0.9, 0.0, 0.0, 0.0),
        "equal": (math.inf, 1.0, 0.0, 0.0, 0.1),
    }
    for name, want in expected.items():
        t = make_teacher(name)
        assert (t.beta, t.gamma, t.eps_mistake, t.eps_skip, t.eps_equal) == want
        assert t.teacher_id == name and not t.soft and t.threshold == "max_seen"


def test_make_teacher_overrides_configs_and_errors():
    t = make_teacher("noisy", seed=5, soft=True, teacher_id="noisy-5")
    assert (t.beta, t.seed, t.soft, t.teacher_id) == (1.0, 5, True, "noisy-5")
    assert make_teacher({"name": "myopic", "gamma": 0.8}).gamma == 0.8
    with pytest.raises(UnknownTeacherError, match="valid: .*'equal'.*'oracle'"):
        make_teacher("perfect")
    with pytest.raises(KeyError):
        make_teacher("perfect")
    with pytest.raises(TypeError, match="eps_mistakes"):
        make_teacher("oracle", eps_mistakes=0.1)
    with pytest.raises(ValueError, match="'name'"):
        make_teacher({"beta": 1.0})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_teacher_config_files_agree_with_presets(name):
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"), resolve=True)
    t, ref = make_teacher(cfg), make_teacher(name)
    for attr in (
        "beta",
        "gamma",
        "eps_mistake",
        "eps_skip",
        "eps_equal",
        "soft",
        "threshold",
        "teacher_id",
    ):
        assert getattr(t, attr) == getattr(ref, attr), attr


def test_storing_teacher_stores_queries_before_asking_and_the_answers_after(
    tmp_path: Path,
) -> None:
    from pbrl.store import FeedbackStore
    from pbrl.teachers.storing import StoringTeacher

    seen: list[tuple[int, int, int]] = []

    class Watching(ScriptedTeacher):
        """Records what the store held when asked, and the page's progress."""

        def set_progress(self, queries_used: int, max_feedback: int) -> None:
            self.progress = (queries_used, max_feedback)

        def label(self, queries: QueryBatch) -> list[Feedback]:
            seen.append((store.num_queries(), store.num_labels(), self.progress[0]))
            return super().label(queries)

    with FeedbackStore(tmp_path / "s.sqlite") as store:
        inner = Watching()
        t = StoringTeacher(inner, store, step=7, total=5)
        assert t.teacher_id == "oracle" and isinstance(t, Teacher)
        first = t.label(pairs([1.0, 3.0], [2.0, 0.5]))
        assert inner.progress == (2, 5)
        t.label(pairs([0.0, 1.0, 2.0], [1.0, 0.0, 3.0]))
        assert inner.progress == (5, 5)
        # asked only once its queries were stored; answers stored after
        assert seen == [(2, 0, 2), (5, 2, 5)]
        assert store.num_labels("oracle") == 5
        assert [fb.label for fb in store.feedback("oracle")[:2]] == labels(first)
        assert store.get_query(first[0].query_id) is not None
        assert t.state_dict() == inner.state_dict()
