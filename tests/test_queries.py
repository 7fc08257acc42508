"""Query selectors pick what they should on constructed pools (hand-computed scores)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import expit

from pbrl.data import QueryBatch, SegmentBatch
from pbrl.queries import (
    PreferenceModel,
    UnknownSelectorError,
    disagreement_scores,
    entropy_scores,
    kcenter_greedy,
    make_selector,
    names,
    register_selector,
)

ALL = ["uniform", "disagreement", "entropy", "kcenter", "kcenter_disagreement", "kcenter_entropy"]


class LinearEnsemble:
    """A real (tiny) reward ensemble: member e's reward is r_e(s, a) = w_e . s."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = np.asarray(w, np.float64)  # (E, D_o)
        self.calls: list[int] = []

    def member_probs(self, first: SegmentBatch, second: SegmentBatch) -> np.ndarray:
        assert first.true_reward is None and second.true_reward is None  # withheld
        self.calls.append(len(first))
        ret0 = np.einsum("nhd,ed->en", first.obs, self.w)
        ret1 = np.einsum("nhd,ed->en", second.obs, self.w)
        return expit(ret1 - ret0)  # Bradley-Terry P_e[second > first]


def pool(second_obs, first_obs=None, actions=None) -> QueryBatch:
    """One-step pairs: first segment obs (default 0), second segment obs ``second_obs``."""
    s = np.asarray(second_obs, np.float32)
    s = s.reshape(len(s), 1, -1) if s.ndim < 3 else s
    f = (
        np.zeros_like(s)
        if first_obs is None
        else np.asarray(first_obs, np.float32).reshape(s.shape)
    )
    n, h = s.shape[:2]
    a = np.zeros((n, h, 1), np.float32) if actions is None else np.asarray(actions, np.float32)
    r = np.arange(n * h, dtype=np.float32).reshape(n, h)
    members = [SegmentBatch(f, a, r), SegmentBatch(s, a, -r)]
    return QueryBatch.from_members(members, ids=[f"c{i}" for i in range(n)])


def chosen(q: QueryBatch) -> list[int]:
    return [int(i[1:]) for i in q.ids]


# --- scores --------------------------------------------------------------------------------
def test_scores_by_hand():
    p = np.array([[0.75, 0.5, 0.0], [0.25, 0.75, 1.0]])
    np.testing.assert_allclose(disagreement_scores(p), [0.25, 0.125, 0.5])
    h75 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623
    # Mean member entropy, not entropy of the mean: members 0 and 1 are both certain (score 0)
    # though their mean 0.5 has entropy ln 2.
    np.testing.assert_allclose(entropy_scores(p), [h75, (math.log(2) + h75) / 2, 0.0])


X = np.array([0.0, math.log(3.0), -2.0, 0.5, 4.0])  # second-segment obs; first is 0


def test_disagreement_and_entropy_pick_top_m():
    # Members w = +1 and -1 give P = sigmoid(x) and sigmoid(-x): disagreement grows with |x|,
    # (mean member) entropy shrinks with |x|.
    model = LinearEnsemble([[1.0], [-1.0]])
    cand = pool(X)
    q = make_selector("disagreement").select(cand, 2, model=model, rng=np.random.default_rng(0))
    assert chosen(q) == [4, 2] and q.selector == "disagreement"
    np.testing.assert_allclose(q.scores, np.abs(expit(X[[4, 2]]) - 0.5))
    assert model.calls == [5]  # the whole pool in one call
    q = make_selector("entropy").select(cand, 3, model=model, rng=np.random.default_rng(0))
    assert chosen(q) == [0, 3, 1] and q.selector == "entropy"
    assert q.scores[0] == pytest.approx(math.log(2))
    assert q.scores[2] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    # The chosen queries keep their segments, true reward included (the teacher needs it).
    np.testing.assert_array_equal(q.member(1).obs[:, 0, 0], X[[0, 3, 1]].astype(np.float32))
    np.testing.assert_array_equal(q.member(0).true_reward[:, 0], [0.0, 3.0, 1.0])


def test_uniform_distinct_reproducible():
    cand = pool(np.arange(20.0))
    a = make_selector("uniform").select(cand, 8, rng=np.random.default_rng(3))
    b = make_selector("uniform").select(cand, 8, rng=np.random.default_rng(3))
    c = make_selector("uniform").select(cand, 8, rng=np.random.default_rng(4))
    assert len(set(chosen(a))) == 8 and chosen(a) == chosen(b) != chosen(c)
    assert a.selector == "uniform" and np.isnan(a.scores).all()
    assert sorted(
        chosen(make_selector("uniform").select(cand, 20, rng=np.random.default_rng(0)))
    ) == list(range(20))


# --- k-center ------------------------------------------------------------------------------
def clusters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """12 pairs in three clusters of 4 (features (first, second) around A, B and C)."""
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    which = np.repeat(np.arange(3), 4)
    return centres[which] + rng.uniform(-0.1, 0.1, (12, 2)), which


@pytest.mark.parametrize("seed", range(5))
def test_kcenter_without_labelled_covers_every_cluster(seed):
    feats, which = clusters(np.random.default_rng(seed))
    cand = pool(feats[:, 1], first_obs=feats[:, 0])
    q = make_selector("kcenter").select(cand, 3, rng=np.random.default_rng(seed))
    assert sorted(which[chosen(q)]) == [0, 1, 2]
    assert np.isinf(q.scores[0]) and (q.scores[1:] > 90).all()  # random first pick


def test_kcenter_picks_far_from_labelled():
    feats, which = clusters(np.random.default_rng(0))
    cand = pool(feats[:, 1], first_obs=feats[:, 0])
    labelled = pool([0.0, 0.0], first_obs=[0.0, 100.0])  # covers clusters A and B
    q = make_selector("kcenter").select(cand, 1, labelled=labelled, rng=np.random.default_rng(0))
    i = chosen(q)[0]
    assert which[i] == 2
    assert q.scores[0] == pytest.approx(np.hypot(*(feats[i] - [0.0, 0.0])), rel=1e-5)
    # Empty labelled behaves like None.
    empty = labelled.subset([])
    q = make_selector("kcenter").select(cand, 3, labelled=empty, rng=np.random.default_rng(1))
    assert sorted(which[chosen(q)]) == [0, 1, 2]


def test_kcenter_ignores_actions():
    # Candidate 0 sits on the labelled pair in observation space but has huge actions;
    # candidate 1 is 1.0 away in observations. Observations decide.
    cand = pool([0.0, 1.0], actions=[[[1e3]], [[0.0]]])
    labelled = pool([0.0])
    q = make_selector("kcenter").select(cand, 1, labelled=labelled, rng=np.random.default_rng(0))
    assert chosen(q) == [1]


def test_kcenter_matches_bruteforce_reference():
    rng = np.random.default_rng(0)
    x, centers, m = rng.normal(size=(60, 7)), rng.normal(size=(15, 7)), 12
    ref, pts = [], list(centers)
    for _ in range(m):  # textbook greedy k-center, one pair at a time
        d = np.array([min(np.linalg.norm(xi - c) for c in pts) for xi in x])
        d[ref] = -1
        ref.append(int(d.argmax()))
        pts.append(x[ref[-1]])
    idx, radius = kcenter_greedy(
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(centers, dtype=torch.float32),
        m,
        rng,
        chunk=4,
    )
    assert idx.tolist() == ref
    assert (np.diff(radius) <= 1e-6).all()  # coverage radius never grows


def test_kcenter_uses_both_segments_and_all_steps():
    # Two 3-step pairs: candidate 0 differs from the labelled pair only in the first segment's
    # last step (distance 5), candidate 1 only in the second segment's first step (distance 2).
    lab_f, lab_s = np.zeros((1, 3, 2)), np.zeros((1, 3, 2))
    f, s = np.zeros((2, 3, 2)), np.zeros((2, 3, 2))
    f[0, 2, 1], s[1, 0, 0] = 5.0, 2.0
    cand = pool(s, first_obs=f)
    q = make_selector("kcenter").select(
        cand, 2, labelled=pool(lab_s, first_obs=lab_f), rng=np.random.default_rng(0)
    )
    assert chosen(q) == [0, 1]
    np.testing.assert_allclose(q.scores, [5.0, 2.0])


# --- combined rules ------------------------------------------------------------------------
# Second-segment obs (x, y); first segment is (0, 0). The model looks only at x (members
# +x and -x): disagreement grows with |x|, entropy shrinks. k-center sees (x, y).
XY = np.array([[3.0, 0.0], [3.0, 100.0], [0.0, 10.0], [0.2, 30.0], [0.1, 300.0], [3.0, 50.0]])
W = [[1.0, 0.0], [-1.0, 0.0]]


@pytest.mark.parametrize(
    ("name", "m", "expected"),
    [
        ("disagreement", 3, [0, 1, 5]),  # x = 3 (ties keep pool order)
        ("entropy", 3, [2, 4, 3]),  # x = 0, 0.1, 0.2
        # distances to the labelled pair (3, 0): 0, 100, 10.4, 30.1, 300.0, 50
        ("kcenter", 2, [4, 1]),  # farthest, then farthest from labelled + 4
        ("kcenter_disagreement", 2, [1, 5]),  # top 3 by disagreement {0, 1, 5}, then k-center
        ("kcenter_entropy", 2, [4, 3]),  # top 3 by entropy {2, 4, 3}, then k-center
    ],
)
def test_combined_rules(name, m, expected):
    model = LinearEnsemble(W)
    labelled = pool([[3.0, 0.0]])
    q = make_selector(name).select(
        pool(XY), m, model=model, labelled=labelled, rng=np.random.default_rng(0)
    )
    assert chosen(q) == expected and q.selector == name and len(q) == m
    assert len(model.calls) <= 1
    if name in ("kcenter_disagreement", "disagreement"):
        np.testing.assert_allclose(q.scores, np.abs(expit(XY[expected, 0]) - 0.5))
    elif name in ("kcenter_entropy", "entropy"):
        np.testing.assert_allclose(
            q.scores, entropy_scores(expit(np.outer([1, -1], XY[expected, 0])))
        )
    else:
        np.testing.assert_allclose(q.scores, [np.hypot(2.9, 300.0), 100.0], rtol=1e-5)


def test_combined_keeps_at_least_m():
    # Pool of 4 with m = 3: the top-50% filter would keep 2; we keep m.
    q = make_selector("kcenter_entropy").select(
        pool(XY[:4]), 3, model=LinearEnsemble(W), rng=np.random.default_rng(0)
    )
    # The 3 highest-entropy: x = 0 (2), 0.2 (3), then the tie at x = 3 goes to pool order (0).
    assert sorted(chosen(q)) == [0, 2, 3]


# --- errors and registry -------------------------------------------------------------------
def test_all_names_registered():
    assert names() == sorted(ALL)
    model = LinearEnsemble([[1.0], [-1.0], [0.5]])
    assert isinstance(model, PreferenceModel)
    cand = pool(X)
    for name in ALL:
        q = make_selector(name).select(cand, 2, model=model, rng=np.random.default_rng(0))
        assert q.selector == name and len(q) == 2 and q.scores.shape == (2,)
        assert set(q.ids) <= set(cand.ids)


def test_errors():
    cand = pool(X)
    rng = np.random.default_rng(0)
    with pytest.raises(UnknownSelectorError, match="valid: .*'kcenter_entropy'.*'uniform'"):
        make_selector("bald")
    for name in ("disagreement", "entropy", "kcenter_disagreement", "kcenter_entropy"):
        with pytest.raises(ValueError, match="model=None"):
            make_selector(name).select(cand, 2, rng=rng)
    for m in (0, 6):
        with pytest.raises(ValueError, match="pool of 5"):
            make_selector("uniform").select(cand, m, rng=rng)
    with pytest.raises(ValueError, match=r"\(E, 5\)"):
        make_selector("disagreement").select(
            cand, 2, model=type("M", (), {"member_probs": lambda s, a, b: np.zeros(5)})(), rng=rng
        )
    with pytest.raises(ValueError, match="outside"):
        make_selector("entropy").select(
            cand,
            2,
            model=type("M", (), {"member_probs": lambda s, a, b: np.full((2, 5), 2.0)})(),
            rng=rng,
        )
    with pytest.raises(ValueError, match="features"):
        make_selector("kcenter").select(cand, 2, labelled=pool([[1.0, 2.0]]), rng=rng)
    s = cand.member(0)
    with pytest.raises(ValueError, match="pair"):
        make_selector("uniform").select(
            QueryBatch.from_members([s, s, s], kind="triplet"), 1, rng=rng
        )
    with pytest.raises(ValueError, match="already registered"):
        register_selector("uniform", lambda: make_selector("uniform"))
