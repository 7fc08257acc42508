"""The labelling web app: a JSON API and one static page (FastAPI on Starlette).

FastAPI rather than plain Starlette: request bodies and parameters are validated by pydantic
models (a wrong choice or a malformed ranking is a 422 with the field named, never a 500),
and the app publishes an OpenAPI schema that the fuzz tests drive. Both are well kept, pure
Python, and install offline from PyPI; uvicorn serves the app.

Routes (every ``/api`` route but ``/api/health`` needs a labeller token, sent as
``Authorization: Bearer <token>`` or ``?token=<token>``):

=========================================  ==================================================
``GET /``                                  the page (``/static/*`` holds its JS and CSS)
``GET /api/health``                        liveness, no token
``GET /api/me``                            who the token belongs to, counts, run progress
``GET /api/next``                          the current query and the next ones, with clips;
                                           with none, ``state`` ``wait`` (ask again) or
                                           ``done``
``POST /api/label``                        store an answer (committed before the 200)
``GET /api/clip/{query_id}/{member}``      one clip, H.264 MP4 (rendered on demand, cached)
``GET /api/stats``                         the session's ``human/*`` numbers
=========================================  ==================================================

Errors are JSON ``{"detail": "..."}`` with a sentence a person can act on: 401 (token), 404
(unknown query or clip), 409 (answered already), 413 (body too large), 422 (invalid input),
503 (clip still rendering, or the store is busy: retry).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pbrl import __version__
from pbrl.human.clips import (
    PRIORITY_AHEAD,
    PRIORITY_CURRENT,
    ClipRenderer,
    ClipTimeout,
    ClipUnavailable,
)
from pbrl.human.session import LabelSession, Offer, SessionError
from pbrl.human.tokens import Labeller, TokenError, TokenRegistry

MAX_BODY = 64 * 1024
"""Largest request body accepted (an answer is a few hundred bytes)."""

PROMPTS = {
    "pair": "Which clip shows the better behaviour?",
    "triplet": "Which clip is more like the reference?",
    "ranking": "Rank the clips from best to worst",
}


# --- response and request models (they make the OpenAPI schema) ---------------------------
class ErrorOut(BaseModel):
    """An error: what went wrong and what to do."""

    detail: str


class PlanOut(BaseModel):
    """How a clip shows its segment (see :class:`pbrl.human.clips.ClipPlan`)."""

    horizon: int
    stride: int
    frames: int
    fps: int
    env_fps: float
    speed: float


class ClipOut(BaseModel):
    """One clip of a query, in display position."""

    position: int
    member: int
    role: str
    url: str
    ready: bool


class QueryOut(BaseModel):
    """A query as the page shows it."""

    id: str
    kind: str
    k: int
    horizon: int
    env: str
    prompt: str
    renderable: bool
    reason: str | None
    plan: PlanOut | None
    clips: list[ClipOut]


class ProgressOut(BaseModel):
    """Counts for the page header."""

    queries: int
    labels: int
    open: int
    overlap: int
    done: int = 0
    left: int = 0
    run: dict[str, float | int | None] = {}


class MeOut(BaseModel):
    """The labeller behind a token."""

    labeller: str
    title: str
    progress: ProgressOut


class NextOut(BaseModel):
    """The labeller's current query and the next ones, or why there is none.

    ``state``: ``ready`` (``query`` is set), ``wait`` (no query for you now, but
    ``held_by_others`` queries you have not answered are held by other labellers: ask again
    after ``retry_after`` seconds, or long-poll; one comes to you if its holder's lease lapses)
    or ``done`` (every query has its answers or yours; a running training run may add more).
    """

    state: Literal["ready", "wait", "done"]
    query: QueryOut | None
    upcoming: list[QueryOut]
    held_by_others: int = 0
    retry_after: float | None = None
    progress: ProgressOut


class LabelIn(BaseModel):
    """An answer to one query.

    ``choice`` is by display position: ``left`` / ``right`` for pairs and triplets (the two
    candidates beside the reference), ``equal``, ``skip``, or ``rank`` with ``ranking`` (the
    clip positions, best first) for ranking queries.
    """

    model_config = ConfigDict(extra="forbid")

    query_id: str = Field(min_length=1, max_length=256)
    choice: Literal["left", "right", "equal", "skip", "rank"]
    ranking: list[Annotated[int, Field(ge=0, le=63)]] | None = Field(default=None, max_length=64)
    client_time: float | None = Field(default=None, ge=0, le=4_102_444_800, allow_inf_nan=False)
    response_time: float | None = Field(default=None, ge=0, le=86_400, allow_inf_nan=False)


class LabelOut(BaseModel):
    """The stored answer."""

    query_id: str
    recorded: bool
    duplicate: bool
    feedback_id: str
    label: int
    progress: ProgressOut


class StatsOut(BaseModel):
    """The ``human/*`` scalars (NaN reported as null) and the counts."""

    summary: dict[str, float | None]
    progress: ProgressOut


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        401: "missing, unknown or revoked token",
        404: "unknown query or clip",
        409: "already answered",
        413: "request body too large",
        422: "invalid input",
        503: "busy or still rendering: retry",
    }.items()
}


class _Guard:
    """ASGI middleware: body size limit and security headers on every response."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),  # the token is in the URL
        (b"x-frame-options", b"DENY"),
        (
            b"content-security-policy",
            b"default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
            b"object-src 'none'; frame-ancestors 'none'",
        ),
    ]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY)
        if too_big:
            await _send_json(send, 413, f"request body over {MAX_BODY} bytes")
            return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY:
                    raise _BodyTooLarge
            return message

        started = False

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, f"request body over {MAX_BODY} bytes")


class _BodyTooLarge(Exception):
    pass


async def _send_json(send: Any, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_bearer = HTTPBearer(auto_error=False, description="the labeller's token")
_query_token = APIKeyQuery(name="token", auto_error=False, description="the labeller's token")


def _labeller(
    request: Request,
    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[str | None, Depends(_query_token)],
) -> Labeller:
    """The labeller whose token came with the request (header first, then ``?token=``)."""
    registry: TokenRegistry = request.app.state.tokens
    return registry.authenticate(cred.credentials if cred is not None else token)


Who = Annotated[Labeller, Depends(_labeller)]


def create_app(
    session: LabelSession,
    tokens: TokenRegistry,
    renderer: ClipRenderer | None,
    *,
    title: str = "",
    question: str | None = None,
    clip_wait_s: float = 20.0,
) -> FastAPI:
    """The labelling app over a session, its tokens and a clip renderer.

    Args:
        session: assigns queries and stores answers.
        tokens: who may label.
        renderer: makes the clips (``None``: queries are shown without video).
        title: shown in the page header (e.g. the run's name).
        question: the question asked for every pair (default :data:`PROMPTS`).
        clip_wait_s: how long a clip request waits for rendering before a 503.
    """
    app = FastAPI(
        title="pbrl labelling session",
        version=__version__,
        description=__doc__,
        docs_url=None,
        redoc_url=None,
    )
    app.state.tokens = tokens
    app.state.closing = False  # set by the server on shutdown: long polls return at once
    static = resources.files("pbrl.human") / "static"

    # --- errors ---------------------------------------------------------------------------
    @app.exception_handler(TokenError)
    async def _token_error(request: Request, err: TokenError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(err)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(SessionError)
    async def _session_error(request: Request, err: SessionError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(ClipUnavailable)
    async def _clip_unavailable(request: Request, err: ClipUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(ClipTimeout)
    async def _clip_timeout(request: Request, err: ClipTimeout) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(sqlite3.OperationalError)
    async def _store_busy(request: Request, err: sqlite3.OperationalError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the feedback store is busy ({err}); retry"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for e in err.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    # --- helpers --------------------------------------------------------------------------
    def progress(name: str) -> ProgressOut:
        return ProgressOut(**session.progress(name))

    def query_out(qid: str, name: str) -> QueryOut:
        info = session.info(qid)
        order = session.order(qid, name)
        plan, reason = None, None
        if not info.renderable:
            reason = "this query has no simulator state stored, so it has no video"
        elif renderer is None:
            reason = "this session renders no video"
        else:
            try:
                p = renderer.plan(info.env_name, info.horizon)
                plan = PlanOut(**{k: getattr(p, k) for k in PlanOut.model_fields})
            except ClipUnavailable as err:
                reason = str(err)
        if info.kind == "pair":
            roles = ["left", "right"]
        elif info.kind == "triplet":
            roles = ["reference", "left", "right"]
        else:
            roles = [f"clip {i + 1}" for i in range(info.k)]
        clips = [
            ClipOut(
                position=pos,
                member=member,
                role=roles[pos],
                url=f"/api/clip/{quote(qid, safe='')}/{member}",
                ready=plan is not None and renderer is not None and renderer.ready(qid, member),
            )
            for pos, member in enumerate(order)
        ]
        prompt = question if question and info.kind == "pair" else PROMPTS[info.kind]
        return QueryOut(
            id=qid,
            kind=info.kind,
            k=info.k,
            horizon=info.horizon,
            env=info.env_name,
            prompt=prompt,
            renderable=plan is not None,
            reason=reason,
            plan=plan,
            clips=clips,
        )

    # --- routes ---------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/api/health", summary="Liveness (no token needed)")
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/api/me", response_model=MeOut, responses=ERRORS)
    def me(who: Who) -> MeOut:
        """The labeller behind the token, their counts and the run's progress."""
        return MeOut(labeller=who.name, title=title, progress=progress(who.name))

    @app.get("/api/next", response_model=NextOut, responses=ERRORS)
    async def next_queries(
        who: Who, wait: Annotated[float, Query(ge=0, le=30, allow_inf_nan=False)] = 0.0
    ) -> NextOut:
        """The current query and the next ones; their clips start rendering now.

        With no query, ``state`` says whether to ask again (``wait``: others hold the queries
        you could answer) or not (``done``). A client stops only on ``done``.

        ``wait``: when there is nothing to label, wait up to this many seconds for a query
        (a new one, or one whose holder's lease lapsed) before answering (a long poll), so it
        shows at once; it also answers early when ``wait`` turns into ``done``.
        """
        # Poll on the event loop rather than block a worker thread per waiting labeller.
        deadline = time.monotonic() + wait
        first = None
        while True:
            got = await run_in_threadpool(session.offer, who.name)
            first = first or got.state
            if got.queries or got.state != first or app.state.closing:
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        return await run_in_threadpool(_next_out, who.name, got)

    def _next_out(name: str, got: Offer) -> NextOut:
        out = [query_out(q, name) for q in got.queries]
        if renderer is not None:
            for i, q in enumerate(out):
                if q.renderable:
                    pri = PRIORITY_CURRENT if i == 0 else PRIORITY_AHEAD + i
                    renderer.prefetch([(q.id, c.member) for c in q.clips], pri)
        return NextOut(
            state=got.state,
            query=out[0] if out else None,
            upcoming=out[1:],
            held_by_others=got.held_by_others,
            retry_after=None if got.retry_s is None else round(got.retry_s, 3),
            progress=progress(name),
        )

    @app.post("/api/label", response_model=LabelOut, responses=ERRORS)
    def label(answer: LabelIn, who: Who) -> LabelOut:
        """Store an answer; the 200 comes after the label is committed to disk.

        Sending the same answer again is acknowledged with ``duplicate: true`` and stores
        nothing; a different answer to an answered query is a 409.
        """
        rec = session.submit(
            who.name,
            answer.query_id,
            answer.choice,
            ranking=answer.ranking,
            client_time=answer.client_time,
            response_time=answer.response_time,
        )
        return LabelOut(
            query_id=answer.query_id,
            recorded=True,
            duplicate=rec.duplicate,
            feedback_id=rec.feedback_id,
            label=int(rec.feedback.label),
            progress=progress(who.name),
        )

    @app.get(
        "/api/clip/{query_id:path}/{member}",
        response_class=FileResponse,
        responses={**ERRORS, 200: {"content": {"video/mp4": {}}, "description": "the clip"}},
    )
    def clip(
        query_id: Annotated[str, Path(max_length=256)],
        member: Annotated[int, Path(ge=0, le=63)],
        who: Who,
    ) -> FileResponse:
        """One clip (H.264 MP4), rendered now if it is not cached yet."""
        if not session.known(query_id):
            return JSONResponse({"detail": f"unknown query id {query_id!r}"}, status_code=404)
        info = session.info(query_id)
        if member >= info.k:
            return JSONResponse(
                {"detail": f"query {query_id} has clips 0..{info.k - 1}, not {member}"},
                status_code=404,
            )
        if renderer is None:
            raise ClipUnavailable("this session renders no video")
        if not info.renderable:
            raise ClipUnavailable(
                f"query {query_id} has no simulator state stored, so it has no video"
            )
        path = renderer.get(query_id, member, timeout=clip_wait_s)
        # Defence in depth: the name is a hash, but never serve anything outside the cache.
        if path.resolve().parent != renderer.cache_dir.resolve():
            return JSONResponse({"detail": "clip not found"}, status_code=404)
        return FileResponse(
            path,
            media_type="video/mp4",
            headers={"Cache-Control": "private, max-age=86400, immutable"},
        )

    @app.get("/api/stats", response_model=StatsOut, responses=ERRORS)
    def stats(who: Who) -> StatsOut:
        """The session's ``human/*`` numbers: labels per minute, agreement, rates."""
        raw = session.summary()
        clean = {k: (None if v != v else float(v)) for k, v in raw.items()}  # NaN -> null
        return StatsOut(summary=clean, progress=progress(who.name))

    app.add_middleware(_Guard)
    return app
