"""pbrl-label's commands in-process: tokens, export, argument errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pbrl.data import Feedback, Label, SegmentBatch
from pbrl.human.cli import main
from pbrl.store import FeedbackStore

from .helpers import pair_queries, require_web_stack

require_web_stack()


def test_tokens_add_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "s.sqlite")
    assert main(["tokens", "add", "carol", "--store", store, "--port", "9000"]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith("carol: http://127.0.0.1:9000/?token=")
    assert main(["tokens", "add", "carol", "--store", store, "--port", "9000"]) == 0
    assert capsys.readouterr().out.strip() == link  # the same link again
    assert (tmp_path / "s-human" / "tokens.json").exists()
    assert main(["tokens", "revoke", "carol", "--store", store]) == 0
    assert "revoked carol" in capsys.readouterr().out
    assert main(["tokens", "list", "--store", store]) == 0
    assert capsys.readouterr().out.strip() == "carol: revoked"
    assert main(["tokens", "revoke", "dave", "--store", store]) == 1
    assert "no labeller named 'dave'" in capsys.readouterr().err
    assert main(["tokens", "add", "../x", "--store", store]) == 1
    assert main(["tokens", "add", "--store", store]) == 2


def test_export_writes_the_dataset_format(
    tmp_path: Path, segments: SegmentBatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.sqlite"
    with FeedbackStore(path) as st:
        st.add_queries(pair_queries(segments, 3))
        st.add(Feedback("q001", Label.SECOND, "human:alice", timestamp=5.0, response_time=1.5))
    out = tmp_path / "labels.npz"
    assert main(["export", "--store", str(path), "--out", str(out)]) == 0
    assert "wrote 3 rows" in capsys.readouterr().out
    z = np.load(out)
    assert list(z["label"]) == [1, -1, -1] and z["teacher_id"][0] == "human:alice"
    assert z["response_time"][0] == 1.5 and z["sim_state"].shape[:3] == (3, 2, 10)
    assert main(["export", "--store", str(tmp_path / "none.sqlite"), "--out", str(out)]) == 1


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--queries", "missing.npz"], 1, "no dataset file"),
        (["--env-kwargs", "[1]"], 2, "--env-kwargs"),
        (["--clip-size", "63"], 2, "even"),
        (["--labellers", "a b"], 1, "invalid labeller name"),
    ],
)
def test_serve_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, says: str
) -> None:
    store = str(tmp_path / "s.sqlite")
    assert main(["--store", store, "--port", "0", "--no-render", *args]) == code
    assert says in capsys.readouterr().err


def test_serve_refuses_a_file_that_is_not_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello " * 200)
    assert main(["--store", str(bad), "--port", "0"]) == 1
    assert "not a pbrl feedback store" in capsys.readouterr().err


def test_help_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "pbrl-label" in capsys.readouterr().out


def test_the_summary_logger_writes_human_scalars(tmp_path: Path, store: FeedbackStore) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pbrl.human.cli import SummaryLogger
    from pbrl.human.server import LabelServer

    srv = LabelServer(store, tmp_path / "h", port=0, render=False, shuffle=False)
    srv.session.submit("labeller", "q000", "equal", response_time=2.0)
    logger = SummaryLogger(srv, tmp_path / "tb", every=3600)
    logger.close()
    srv.stop()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"human/labels", "human/equal_rate", "human/response_time_mean"} <= tags
    assert "human/agreement" not in tags  # NaN (nobody to agree with) is not written
    assert acc.Scalars("human/equal_rate")[-1].value == 1.0
