import math

import numpy as np
import pytest

from pbrl.morl.metrics import (
    EvalProtocol,
    cardinality,
    crowding_distance,
    expected_utility,
    hypervolume,
    non_dominated,
    pareto_mask,
    score_front,
    simplex_grid,
    sparsity,
)


def test_hypervolume_2d_staircase_by_hand() -> None:
    pts = [[1, 3], [2, 2], [3, 1]]
    assert hypervolume(pts, [0, 0]) == pytest.approx(6.0)
    # a dominated point, a point not beyond the reference and a shifted reference
    assert hypervolume(pts + [[1, 1], [5, -1]], [0, 0]) == pytest.approx(6.0)
    assert hypervolume(pts, [1, 0]) == pytest.approx(3.0)  # (2-1)*2 + (3-2)*1
    assert hypervolume(np.zeros((0, 2)), [0, 0]) == 0.0


def test_hypervolume_3d_by_inclusion_exclusion() -> None:
    # three boxes of volume 2, pairwise overlaps 1, triple overlap 1: 6 - 3 + 1
    pts = [[2, 1, 1], [1, 2, 1], [1, 1, 2]]
    assert hypervolume(pts, [0, 0, 0]) == pytest.approx(4.0)
    assert hypervolume([[2, 2, 2]], [1, 0, -1]) == pytest.approx(1 * 2 * 3)
    with pytest.raises(ValueError, match="objectives"):
        hypervolume(pts, [0, 0])


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_pymoo(m: int, rng: np.random.Generator) -> None:
    hv_mod = pytest.importorskip("pymoo.indicators.hv")
    for _ in range(3):
        pts = rng.normal(size=(25, m))
        if m == 2:  # a concave front plus noise points
            a = rng.uniform(0, np.pi / 2, 25)
            pts = np.vstack([np.c_[np.cos(a), np.sin(a)], pts])
        ref = np.full(m, -2.0)
        ours = hypervolume(pts, ref)
        theirs = hv_mod.HV(ref_point=-ref)(-pts)  # pymoo minimises
        assert ours == pytest.approx(theirs, rel=1e-9)


def test_pareto_filter_and_cardinality() -> None:
    pts = np.array([[1, 2], [2, 1], [1, 2], [0, 0], [1, 1]])
    assert pareto_mask(pts).tolist() == [True, True, True, False, False]
    nd, idx = non_dominated(pts, return_index=True)
    assert idx.tolist() == [0, 1] and nd.tolist() == [[1, 2], [2, 1]]
    assert cardinality(pts) == 2


def test_simplex_grid_keeps_every_point() -> None:
    g2 = simplex_grid(2, 0.01)
    g3 = simplex_grid(3, 0.1)
    assert g2.shape == (101, 2) and g3.shape == (66, 3)  # C(n+m-1, m-1)
    assert math.comb(10 + 2, 2) == 66
    for g in (g2, g3, simplex_grid(4, 0.25)):
        assert np.allclose(g.sum(1), 1.0) and (g >= 0).all()
        assert len(np.unique(g.round(12), axis=0)) == len(g)
    assert simplex_grid(2, 0.2).tolist()[0] == [0.0, 1.0]
    with pytest.raises(ValueError, match="integer"):
        simplex_grid(2, 0.3)


def test_expected_utility_and_sparsity_by_hand() -> None:
    w = simplex_grid(2, 0.5)  # (0,1), (.5,.5), (1,0)
    assert expected_utility([[1, 0], [0, 1]], w) == pytest.approx((1 + 0.5 + 1) / 3)
    # sorted objective 0: 0,1,3 -> 1 + 4; objective 1: 0,1,3 -> 1 + 4; / (3 - 1)
    assert sparsity([[0, 3], [1, 1], [3, 0]]) == pytest.approx(5.0)
    assert sparsity([[1, 1]]) == 0.0


def test_crowding_distance_guard_and_values() -> None:
    cd = crowding_distance([[0, 1], [1, 1], [3, 1]])  # objective 1: max == min
    assert np.isinf(cd[0]) and np.isinf(cd[2]) and cd[1] == pytest.approx(1.0)
    same = crowding_distance(np.ones((4, 2)))
    assert not np.isnan(same).any()
    cd = crowding_distance([[0, 4], [1, 3], [3, 1], [4, 0]])
    assert cd[1] == pytest.approx(3 / 4 + 3 / 4) and cd[2] == pytest.approx(3 / 4 + 3 / 4)
    assert np.isinf(crowding_distance([[0, 1], [1, 0]])).all()


def test_score_front_uses_the_protocol() -> None:
    prot = EvalProtocol(ref_point=(0.0, 0.0), eu_step=0.5)
    s = score_front([[1, 3], [2, 2], [3, 1], [1, 1]], prot)
    assert s["hv"] == pytest.approx(6.0) and s["cardinality"] == 3
    assert s["eu"] == pytest.approx((3 + 2 + 3) / 3)
    with pytest.raises(ValueError, match="objectives"):
        score_front([[1, 2, 3]], prot)
