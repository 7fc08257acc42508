"""pbrl-qd's pyribs archive backend (archive_backend=ribs) against the built-in archive."""

import importlib.util

import numpy as np
import pytest

from pbrl.qd.archive import GridArchive, make_archive

needs_ribs = pytest.mark.skipif(
    importlib.util.find_spec("ribs") is None,
    reason="pyribs not installed: pip install 'pbrl[qd]'",
)


def _batches(seed=0, n_batches=12, batch=64, sol_dim=3, extra_dim=2):
    """Batches with distinct objectives; measures spill over [-1, 2] x [0, 1]'s bounds."""
    rng = np.random.default_rng(seed)
    objs = rng.permutation(n_batches * batch).astype(np.float64) / 7.0  # all distinct
    for b in range(n_batches):
        sols = rng.standard_normal((batch, sol_dim))
        meas = np.column_stack([rng.uniform(-2.0, 3.0, batch), rng.uniform(-0.5, 1.5, batch)])
        meas[:4] = [[-1.0, 0.0], [2.0, 1.0], [-5.0, 9.0], [0.5, 0.5]]  # on / past the bounds
        extras = rng.standard_normal((batch, extra_dim))
        yield sols, objs[b * batch : (b + 1) * batch], meas, extras


@needs_ribs
def test_ribs_backend_matches_builtin_archive():
    a = make_archive("pbrl", (10, 7), [-1.0, 0.0], [2.0, 1.0], 3, extra_dim=2)
    b = make_archive("ribs", (10, 7), [-1.0, 0.0], [2.0, 1.0], 3, extra_dim=2)
    assert type(a) is GridArchive and type(b) is not GridArchive
    for sols, obj, meas, ex in _batches():
        np.testing.assert_array_equal(a.index_of(meas), b.index_of(meas))
        sa, sb = a.add(sols, obj, meas, ex), b.add(sols, obj, meas, ex)
        # pyribs' status marks every solution that beat its cell's previous elite, ours only
        # the one kept per cell (the archives stay identical)
        assert np.all(sb[sa > 0] == sa[sa > 0]) and np.all(sb >= (sa > 0))
    assert 0 < len(a) == len(b) < a.cells
    np.testing.assert_array_equal(a.occupied, b.occupied)
    for x, y in zip(a.elites(), b.elites(), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.elite_extras(), b.elite_extras())
    assert a.qd_score() == b.qd_score() and a.coverage() == b.coverage()
    np.testing.assert_array_equal(a.heatmap(0.0, 100.0), b.heatmap(0.0, 100.0))
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(a.sample_elites(20, r1), b.sample_elites(20, r2))


def test_unknown_backend_and_missing_ribs_message(monkeypatch):
    import sys

    from pbrl.qd.qdhf import QDConfig

    with pytest.raises(ValueError, match="archive_backend"):
        QDConfig(archive_backend="nope")
    monkeypatch.setitem(sys.modules, "ribs", None)
    monkeypatch.setitem(sys.modules, "ribs.archives", None)
    with pytest.raises(ImportError, match=r"pip install 'pbrl\[qd\]'"):
        make_archive("ribs", (5, 5), [0, 0], [1, 1], 2)


@needs_ribs
def test_pbrl_qd_fast_same_metrics_with_ribs_backend(tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    import pbrl
    from pbrl.qd.cli import run

    conf = str(Path(pbrl.__file__).parent / "configs" / "qd")

    finals = {}
    for backend in ("pbrl", "ribs"):
        with initialize_config_dir(conf, version_base="1.3"):
            cfg = compose("qd", ["experiment=fast", "method=qdhf", f"archive_backend={backend}"])
        finals[backend] = run(cfg, tmp_path / backend)
        finals[backend].pop("seconds")
    assert finals["ribs"] == pytest.approx(finals["pbrl"], rel=0, abs=0, nan_ok=True)
    assert finals["ribs"]["coverage_all"] > 0
