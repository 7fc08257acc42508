"""``pbrl-label``: serve a labelling session over a stored set of queries, no training attached.

Usage::

    pbrl-label --store labels.sqlite --queries dataset.npz [--labellers alice,bob] [--overlap 2]
    pbrl-label tokens list|add NAME|revoke NAME --store labels.sqlite
    pbrl-label export --store labels.sqlite --out labelled.npz [--kind pair]

``--queries`` imports a dataset file (the format of ``docs/dataset_format.md``; importing is
idempotent, so the same command restarts a session). Every answer is committed to the store
before the page hears back; ``--export`` (or the ``export`` command) writes the labels to a
dataset file again. The same runs as ``python -m pbrl.human``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pbrl.human.clips import ClipSpec
from pbrl.human.server import DEFAULT_PORT, LabelServer, ServerError, default_state_dir
from pbrl.human.tokens import TokenError, TokenRegistry


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pbrl-label",
        description="Serve a web page where people label stored queries by watching clips.",
        epilog="Other commands: 'pbrl-label tokens --help', 'pbrl-label export --help'.",
    )
    p.add_argument("--store", required=True, help="feedback store (SQLite); created if missing")
    p.add_argument(
        "--queries",
        action="append",
        default=[],
        metavar="DATASET",
        help="dataset file (.npz, pbrl format) whose queries to label; repeatable",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface (0.0.0.0: every one)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free)")
    p.add_argument(
        "--labellers", default="", help="comma-separated names that get a token (e.g. alice,bob)"
    )
    p.add_argument("--overlap", type=int, default=1, help="answers wanted per query")
    p.add_argument("--lookahead", type=int, default=2, help="queries rendered ahead per person")
    p.add_argument("--no-shuffle", action="store_true", help="show clips in stored order")
    p.add_argument("--seed", type=int, default=0, help="seed of the clip order")
    p.add_argument("--clip-size", type=int, default=256, help="clip width and height (pixels)")
    p.add_argument("--max-frames", type=int, default=100, help="frames per clip at most")
    p.add_argument("--quality", choices=("fast", "full"), default="fast", help="render quality")
    p.add_argument("--render-workers", type=int, default=2, help="clip render threads")
    p.add_argument("--no-render", action="store_true", help="serve without video")
    p.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments for the render env")
    p.add_argument(
        "--state-dir", default=None, help="tokens and clip cache (default: beside the store)"
    )
    p.add_argument("--title", default="", help="shown in the page header")
    p.add_argument("--question", default=None, help="question asked for pairs")
    p.add_argument("--export", default=None, metavar="OUT", help="write a dataset file on exit")
    p.add_argument("--kind", default=None, help="with --export: only this query kind")
    p.add_argument("--logdir", default=None, help="write human/* TensorBoard scalars here")
    return p


def _tokens_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pbrl-label tokens", description="Manage labeller tokens.")
    p.add_argument("action", choices=("list", "add", "revoke"))
    p.add_argument("name", nargs="?", help="labeller name (add, revoke)")
    p.add_argument("--store", required=True, help="the session's feedback store")
    p.add_argument("--state-dir", default=None, help="as given to the server")
    p.add_argument("--host", default="127.0.0.1", help="for the printed links")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="for the printed links")
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pbrl-label export", description="Write a store's queries and labels to a dataset."
    )
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="dataset file to write (.npz)")
    p.add_argument("--kind", default=None, help="only queries of this kind (pair, triplet, ...)")
    return p


def _fail(msg: str, code: int = 1) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _open_store(path: str):  # type: ignore[no-untyped-def]
    from pbrl.store import FeedbackStore

    return FeedbackStore(path)


def _tokens(argv: Sequence[str]) -> int:
    a = _tokens_parser().parse_args(argv)
    state = Path(a.state_dir) if a.state_dir else default_state_dir(a.store)
    reg = TokenRegistry(state / "tokens.json")
    base = f"http://{a.host}:{a.port}"
    try:
        if a.action == "add":
            if not a.name:
                return _fail("tokens add needs a NAME", 2)
            e = reg.issue(a.name)
            print(f"{e.name}: {base}/?token={e.token}")
        elif a.action == "revoke":
            if not a.name:
                return _fail("tokens revoke needs a NAME", 2)
            e = reg.revoke(a.name)
            print(f"revoked {e.name} (their labels stay in the store)")
        else:
            for e in reg.labellers(include_revoked=True):
                state_txt = "revoked" if e.revoked else f"{base}/?token={e.token}"
                print(f"{e.name}: {state_txt}")
    except TokenError as err:
        return _fail(str(err))
    return 0


def _export(argv: Sequence[str]) -> int:
    a = _export_parser().parse_args(argv)
    if not Path(a.store).exists():
        return _fail(f"no store at {a.store}")
    try:
        with _open_store(a.store) as store:
            rows = store.export(a.out, kind=a.kind)
    except (ValueError, RuntimeError) as err:
        return _fail(str(err))
    print(f"wrote {rows} rows to {a.out}")
    return 0


class SummaryLogger:
    """Writes the session's ``human/*`` scalars to TensorBoard every ``every`` seconds.

    The step is whole seconds since the server started.
    """

    def __init__(self, server: LabelServer, logdir: str | Path, every: float = 30.0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.server = server
        self.writer = SummaryWriter(str(logdir))
        self.every = float(every)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pbrl-label-tb", daemon=True)
        self._thread.start()

    def write(self) -> None:
        """Write one point of every finite scalar."""
        step = int(time.time() - self.server.session.started)
        for k, v in self.server.session.summary().items():
            if math.isfinite(v):
                self.writer.add_scalar(f"human/{k}", v, step)
        self.writer.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.write()

    def close(self) -> None:
        """Write a last point and stop."""
        self._stop.set()
        self._thread.join(5)
        self.write()
        self.writer.close()


def serve(argv: Sequence[str]) -> int:
    """``pbrl-label [options]``: import, serve until interrupted, export."""
    a = _serve_parser().parse_args(argv)
    from pbrl.store import NotAFeedbackStoreError, SchemaVersionError

    try:
        env_kwargs = json.loads(a.env_kwargs)
        if not isinstance(env_kwargs, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        return _fail(f"--env-kwargs must be a JSON object ({err})", 2)
    labellers = [n.strip() for n in a.labellers.split(",") if n.strip()]
    try:
        spec = ClipSpec(
            width=a.clip_size, height=a.clip_size, max_frames=a.max_frames, quality=a.quality
        )
    except ValueError as err:
        return _fail(str(err), 2)
    try:
        store = _open_store(a.store)
    except (SchemaVersionError, NotAFeedbackStoreError) as err:
        return _fail(str(err))
    logger = None
    server = None
    try:
        for path in a.queries:
            if not Path(path).exists():
                return _fail(f"no dataset file at {path}")
            try:
                nq, nl = store.import_(path)
            except (ValueError, RuntimeError) as err:
                return _fail(f"cannot import {path}: {err}")
            print(f"imported {nq} new queries and {nl} new labels from {path}", flush=True)
        try:
            server = LabelServer(
                store,
                a.state_dir,
                host=a.host,
                port=a.port,
                labellers=labellers,
                overlap=a.overlap,
                lookahead=a.lookahead,
                shuffle=not a.no_shuffle,
                seed=a.seed,
                clip=spec,
                env_kwargs=env_kwargs,
                render=not a.no_render,
                render_workers=a.render_workers,
                title=a.title or Path(a.store).stem,
                question=a.question,
            )
        except (TokenError, ValueError) as err:
            return _fail(str(err))
        server.warm(server.env_names())
        n = store.num_queries()
        print(
            f"{n} queries in {a.store}; {len(store.unlabelled_query_ids())} have no label yet"
            + ("" if n else " (the page waits until some are added)"),
            flush=True,
        )
        if a.logdir:
            logger = SummaryLogger(server, a.logdir)
        try:
            server.bind()  # take the port first: the printed links carry the real one
        except ServerError as err:
            return _fail(str(err))
        print(server.banner(), flush=True)
        print("press Ctrl-C to stop", flush=True)
        try:
            server.serve()
        except ServerError as err:
            return _fail(str(err))
        except KeyboardInterrupt:
            pass
    finally:
        if logger is not None:
            logger.close()
        if server is not None:
            server.stop()
        if a.export:
            try:
                rows = store.export(a.export, kind=a.kind)
                print(f"wrote {rows} rows to {a.export}", flush=True)
            except ValueError as err:
                print(f"error: export failed: {err}", file=sys.stderr)
        store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pbrl-label`` and ``python -m pbrl.human``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "tokens":
        return _tokens(args[1:])
    if args and args[0] == "export":
        return _export(args[1:])
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        return _fail(
            f"pbrl-label needs the web extra ({err.name} is missing): pip install 'pbrl[human]'"
        )
    return serve(args)
