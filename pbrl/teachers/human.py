"""A person (or several) behind the Teacher protocol, labelling in a browser.

:class:`HumanTeacher` runs a :class:`~pbrl.human.server.LabelServer` over the run's feedback
store for as long as the run lives. :meth:`HumanTeacher.label` hands the round's queries to
the page (first in line, clips rendering ahead) and then, by ``mode``:

- ``wait``: blocks until every query has its answers (``overlap`` of them, or as many as
  there are labellers) or ``timeout`` seconds pass, and returns the answers given;
- ``continue``: returns at once with whatever answers exist already. Answers that arrive later
  are committed to the store by the server; the loop reads
  ``store.training_arrays(since=...)`` each round, so they are folded in then.

Either way the returned list may be shorter than the batch (unanswered queries stay open on
the page) or longer (several people answered one query); every feedback returned is already
in the store, so storing it again is a no-op. Labels carry ``teacher_id="human:<name>"``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pbrl.data import Feedback, QueryBatch

MODES = ("wait", "continue")

WEB_PACKAGES: tuple[str, ...] = ("fastapi", "uvicorn", "av")
"""What the labelling page needs (the ``human`` extra)."""


def require_web_extra(what: str = "teacher=human") -> None:
    """Raise ``ImportError`` naming the extra when the labelling page's packages are missing.

    Cheap (no import of the packages themselves), so a command can refuse before it starts
    work; ``what`` names the setting that asked for a person.
    """
    import importlib.util

    missing = [m for m in WEB_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"{what} needs the labelling page's packages ({', '.join(missing)} missing): "
            "pip install 'pbrl[human]'"
        )


class HumanTeacher:
    """Teacher whose answers come from people on the labelling page.

    Args:
        store: the run's feedback store file (the server opens its own connection).
        state_dir: tokens and clip cache (default: beside the store).
        mode: ``"wait"`` or ``"continue"`` (see the module docstring).
        timeout: seconds a round waits in ``wait`` mode (``None``: as long as it takes).
        host: interface to serve on (``127.0.0.1``; ``0.0.0.0`` is an explicit opt-in).
        port: TCP port (0: any free one).
        labellers: names that get a token.
        overlap: answers wanted per query (> 1 measures agreement between people).
        lookahead: queries handed to a person beyond the current one.
        shuffle: fixed random clip order per (query, person).
        clip_size: clip width and height in pixels.
        max_frames: frames per clip at most (longer segments become time-lapses).
        quality: ``"fast"`` or ``"full"`` rendering (see :class:`~pbrl.human.clips.ClipSpec`).
        env_name: environment whose renderer is built at start.
        env_kwargs: keyword arguments of the render environment.
        title: shown on the page.
        question: the question asked for pairs.
        render_workers: clip render threads.
        report_every: seconds between "waiting for labels" lines in ``wait`` mode.
        seed: seed of the clip order.
        teacher_id: this teacher's name (labels carry ``human:<labeller>``).
    """

    # People's answers cannot be asked again: a resumed run keeps the labels given after its
    # last checkpoint (pbrl.loops.feedback), where a synthetic teacher's are asked again.
    labels_irreplaceable = True

    def __init__(
        self,
        store: str | Path,
        state_dir: str | Path | None = None,
        *,
        mode: str = "wait",
        timeout: float | None = None,
        host: str = "127.0.0.1",
        port: int = 8765,
        labellers: Sequence[str] = ("labeller",),
        overlap: int = 1,
        lookahead: int = 2,
        shuffle: bool = True,
        clip_size: int = 256,
        max_frames: int = 100,
        quality: str = "fast",
        env_name: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        title: str | None = None,
        question: str | None = None,
        render_workers: int = 2,
        report_every: float = 30.0,
        seed: int = 0,
        teacher_id: str = "human",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
        try:
            from pbrl.human.clips import ClipSpec
            from pbrl.human.server import LabelServer
        except ImportError as err:  # fastapi / uvicorn / av missing
            raise ImportError(
                f"teacher=human needs the web extra ({err.name} is missing): "
                "pip install 'pbrl[human]'"
            ) from err
        self.teacher_id = teacher_id
        self.mode = mode
        self.timeout = None if timeout is None else float(timeout)
        self.report_every = float(report_every)
        self.server = LabelServer(
            store,
            state_dir,
            host=host,
            port=port,
            labellers=list(labellers),
            overlap=overlap,
            lookahead=lookahead,
            shuffle=shuffle,
            seed=seed,
            clip=ClipSpec(
                width=clip_size, height=clip_size, max_frames=max_frames, quality=quality
            ),
            env_kwargs=env_kwargs,
            render_workers=render_workers,
            warm=[env_name] if env_name else [],
            title=title or (Path(store).parent.name if env_name is None else env_name),
            question=question,
        )
        try:
            self.server.start()
        except BaseException:
            self.server.stop()
            raise

    # --- Teacher protocol -----------------------------------------------------------------
    def label(self, queries: QueryBatch) -> list[Feedback]:
        """Put the queries on the page; return the answers given (see the module docstring).

        The queries must already be in the store (the loop stores them before asking).
        """
        ids = list(queries.ids)
        session = self.server.session
        session.set_priority(ids)
        self.server.prefetch(ids)  # render ahead of the labellers
        if self.mode == "wait" and ids:
            need = min(session.overlap, max(1, len(self.server.tokens.labellers())))
            deadline = math.inf if self.timeout is None else time.monotonic() + self.timeout
            print(
                f"waiting for {len(ids)} human labels at {self.server.url}/ "
                f"(links printed at start; mode=wait"
                + ("" if self.timeout is None else f", timeout {self.timeout:g}s")
                + ")",
                file=sys.stderr,
                flush=True,
            )
            while True:
                step = min(self.report_every, deadline - time.monotonic())
                if step <= 0 or session.wait_for(ids, need, step):
                    break
                done = len({fb.query_id for fb in session.answered(ids)})
                print(
                    f"  {done}/{len(ids)} answered; open {self.server.url}/ to label",
                    file=sys.stderr,
                    flush=True,
                )
        return session.answered(ids)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to keep: the labels are in the store, the tokens in ``state_dir``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""

    # --- what the run tells the page, and what the page tells the run ----------------------
    def set_progress(self, **progress: float | int | None) -> None:
        """Set the run progress the page shows.

        Keys the page knows: ``step``, ``total_steps``, ``queries_used``, ``max_feedback``,
        ``accuracy``; ``None`` (or NaN) shows as unknown.
        """
        clean = {
            k: (None if v is None or not math.isfinite(float(v)) else v)
            for k, v in progress.items()
        }
        self.server.session.run_progress.update(clean)

    def summary(self) -> dict[str, float]:
        """The finite ``human/*`` scalars (labels per minute, agreement, rates, ...)."""
        return {k: v for k, v in self.server.session.summary().items() if math.isfinite(v)}

    @property
    def url(self) -> str:
        """Base URL of the page."""
        return self.server.url

    def banner(self) -> str:
        """Where to label: the URL and one link (with its token) per labeller."""
        return self.server.banner()

    def close(self) -> None:
        """Stop the server (the labels are already in the store)."""
        self.server.stop()
