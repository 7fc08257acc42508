"""The labelling service in one object: store, session, tokens, clip renderer, app, uvicorn.

:class:`LabelServer` serves either in the background (:meth:`LabelServer.start`, used by
:class:`~pbrl.teachers.human.HumanTeacher` inside a training run) or in the foreground
(:meth:`LabelServer.serve`, used by ``pbrl-label``). It listens on ``127.0.0.1`` unless told
otherwise; ``host="0.0.0.0"`` is an explicit opt-in that serves every network interface.

Its state lives in ``state_dir``: ``tokens.json`` (the labellers' tokens, so links survive a
restart), ``served.jsonl`` (which queries each labeller was handed, see
:mod:`pbrl.human.session`) and ``clips/`` (the MP4 cache). The labels themselves live only in
the store.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pbrl.human.clips import PRIORITY_BACKGROUND, ClipRenderer, ClipSpec, ClipUnavailable
from pbrl.human.session import LabelSession, UnknownQuery
from pbrl.human.tokens import TokenRegistry
from pbrl.store import FeedbackStore

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


class ServerError(RuntimeError):
    """The server cannot start (port taken, bad host); the message says what to change."""


def default_state_dir(store_path: str | Path) -> Path:
    """``<store dir>/<store stem>-human``: where a store's tokens and clips go by default."""
    p = Path(store_path)
    return p.parent / f"{p.stem}-human"


class LabelServer:
    """A labelling web session over one feedback store.

    Args:
        store: the store (or its path, opened here and closed by :meth:`stop`).
        state_dir: tokens and clip cache (default :func:`default_state_dir`).
        host: interface to listen on; ``127.0.0.1`` by default, ``0.0.0.0`` for all.
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        labellers: names that get a token (issued once, reused after restarts). When none
            are given and none exist, one labeller called ``labeller`` is created.
        overlap: human answers wanted per query.
        lookahead: queries handed out beyond the current one (their clips render ahead).
        lease_s: seconds a handed-out query stays reserved for its labeller.
        shuffle: random but fixed clip order per (query, labeller).
        seed: seed of that order.
        clip: how clips look (:class:`~pbrl.human.clips.ClipSpec`).
        env_kwargs: keyword arguments for the render environments.
        render: whether to render clips at all (off: queries are shown without video).
        render_workers: clip render threads.
        warm: environment names whose renderers are built at start.
        title: shown in the page header.
        question: the question asked for pairs (default: which clip is better).
    """

    def __init__(
        self,
        store: FeedbackStore | str | Path,
        state_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        labellers: Sequence[str] = (),
        overlap: int = 1,
        lookahead: int = 2,
        lease_s: float = 600.0,
        shuffle: bool = True,
        seed: int = 0,
        clip: ClipSpec | None = None,
        env_kwargs: dict[str, Any] | None = None,
        render: bool = True,
        render_workers: int = 2,
        warm: Iterable[str] = (),
        title: str = "",
        question: str | None = None,
    ) -> None:
        from pbrl.human.app import create_app  # the web stack is only needed to serve

        self._own_store = not isinstance(store, FeedbackStore)
        self.store = FeedbackStore(store) if self._own_store else store  # type: ignore[arg-type]
        self.state_dir = Path(state_dir) if state_dir else default_state_dir(self.store.path)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = str(host), int(port)
        self.tokens = TokenRegistry(self.state_dir / "tokens.json")
        for name in labellers:
            self.tokens.issue(name)
        if not self.tokens.labellers():
            self.tokens.issue("labeller")
        self.session = LabelSession(
            self.store,
            overlap=overlap,
            lookahead=lookahead,
            lease_s=lease_s,
            shuffle=shuffle,
            seed=seed,
            served_path=self.state_dir / "served.jsonl",
        )
        self.renderer = (
            ClipRenderer(
                self.state_dir / "clips",
                self.session.segment_states,
                clip or ClipSpec(),
                env_kwargs=env_kwargs,
                workers=render_workers,
            )
            if render
            else None
        )
        if self.renderer is not None:
            self.renderer.warm(warm)
        self.app = create_app(
            self.session, self.tokens, self.renderer, title=title, question=question
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    # --- addresses --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the page (a host name a browser can open)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def links(self) -> dict[str, str]:
        """Labeller name -> the link with their token (what to send each person)."""
        return {e.name: f"{self.url}/?token={e.token}" for e in self.tokens.labellers()}

    def banner(self) -> str:
        """The lines a run or ``pbrl-label`` prints: where to label, one link per labeller."""
        lines = [f"labelling page: {self.url}/  (one link per labeller, keep them private)"]
        lines += [f"  {name}: {link}" for name, link in self.links().items()]
        if self.host in ("0.0.0.0", "::", ""):
            lines.append(
                f"  note: serving on every network interface ({self.host}); anyone who can "
                "reach this machine and holds a link can label"
            )
        return "\n".join(lines)

    # --- rendering ahead --------------------------------------------------------------------
    def prefetch(self, query_ids: Iterable[str]) -> None:
        """Queue the clips of ``query_ids`` for rendering (in the background)."""
        if self.renderer is None:
            return
        for qid in query_ids:
            try:
                info = self.session.info(qid)
            except UnknownQuery:
                continue
            if info.renderable:
                self.renderer.prefetch(
                    [(qid, m) for m in range(info.k)], priority=PRIORITY_BACKGROUND
                )

    def warm(self, env_names: Iterable[str]) -> None:
        """Build render environments ahead of the first clip."""
        if self.renderer is not None:
            self.renderer.warm(env_names)

    def env_names(self) -> list[str]:
        """Environments of the stored queries (looked up on the first few queries)."""
        names: list[str] = []
        for qid in self.store.query_ids()[:50]:
            with contextlib.suppress(UnknownQuery, ClipUnavailable):
                name = self.session.info(qid).env_name
                if name and name not in names:
                    names.append(name)
        return names

    # --- serving ----------------------------------------------------------------------------
    def bind(self) -> LabelServer:
        """Take the port now (so :attr:`port` and :attr:`url` are final); idempotent.

        Raises:
            ServerError: the port is taken or the host is not an address of this machine.
        """
        if self._sock is None:
            self._sock = self._bind()
        return self

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP, and the accepted ones inherit it. Without it Nagle holds each
        # response's body until the client's delayed ACK of its headers: +40 ms per request.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as err:
            sock.close()
            raise ServerError(
                f"cannot listen on {self.host}:{self.port} ({err.strerror or err}); pick another "
                "port (port 0 picks a free one) or stop whatever holds it"
            ) from err
        sock.listen(256)
        self.port = sock.getsockname()[1]
        return sock

    def _uvicorn(self) -> Any:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
        )
        return uvicorn.Server(config)

    def start(self, timeout: float = 15.0) -> LabelServer:
        """Serve on a background thread; returns once the server accepts connections."""
        if self._thread is not None:
            return self
        self.bind()
        self._server = self._uvicorn()
        sock = self._sock
        self._thread = threading.Thread(
            target=lambda: self._server.run(sockets=[sock]), name="pbrl-label-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServerError(f"the labelling server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def serve(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C, SIGTERM)."""
        self.bind()
        self._server = self._uvicorn()
        try:
            self._server.run(sockets=[self._sock])
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def stop(self) -> None:
        """Stop serving and rendering; close the store if this server opened it. Idempotent."""
        self.app.state.closing = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.renderer is not None:
            self.renderer.close()
        self.session.close()
        if self._own_store:
            self.store.close()

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
