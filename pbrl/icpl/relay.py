"""``llm=manual``: an OpenAI-compatible chat server on loopback whose answers are written by hand.

:class:`RelayServer` (started by the loop, like :class:`~pbrl.icpl.llm.LocalServer` for
``llm=local``) turns every chat request into files in a relay folder and blocks until an
answer file appears, so that a person, or another program, answers the ICPL prompts — e.g. by
pasting each prompt into a chat web UI of a capable model:

- ``<relay_dir>/pending/<id>.json``: the request (model, messages, sampling settings, the
  run label, round tag and sample index) and ``<relay_dir>/pending/<id>.prompt.md``, the
  messages rendered for reading;
- the answerer writes the assistant's answer text to ``<relay_dir>/answers/<id>.md``
  **atomically**: write ``<id>.md.tmp`` (or anywhere on the same file system), then
  ``mv`` it to ``<id>.md`` (``python -m pbrl.icpl.relay answer <dir> <id> <file>`` does it);
- the server returns the text as a chat completion and moves the request to
  ``<relay_dir>/done/<id>.json`` (with the answer); ``answers/<id>.md`` stays as the record.

The id is ``[<label>-]<tag>-s<sample>-<hash>``: ``tag`` is the round (``r0``, ``r1-summary``,
from the ``X-Pbrl-Tag`` header the ICPL client sends), ``sample`` the sample index
(``X-Pbrl-Sample``), ``hash`` the first 8 hex digits of the SHA-256 of (model, messages,
settings) — requests that differ only in their sample index share it, so an answerer sees
e.g. ``r0-s0-…`` to ``r0-s5-…`` of one prompt and writes six different answers. Ids are
deterministic: a run restarted while waiting finds the answer written meanwhile, and two runs
of one relay folder with the same label that ask the same prompt and sample wait on (and get)
the same answer.

The answers also go through the client's :class:`~pbrl.icpl.llm.AnswerCache`, so a rerun of
the run, or any run with the same ``llm.cache_dir`` and ``llm.model``, replays them without
the relay: these are the recorded answers.

``python -m pbrl.icpl.relay list <dir>`` lists the pending requests, ``show <dir> [id]``
prints a prompt (default: the oldest pending), ``answer <dir> <id> <file|->`` stores an answer
atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pbrl.icpl.llm import LLMError

TAG_HEADER = "X-Pbrl-Tag"
SAMPLE_HEADER = "X-Pbrl-Sample"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe(text: str) -> str:
    return _SAFE.sub("_", text).strip("_-")[:60]


def request_hash(body: Mapping[str, Any]) -> str:
    """8 hex digits of the SHA-256 of a request body (model, messages, settings)."""
    blob = json.dumps(dict(body), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def request_id(label: str, tag: str, sample: int, body: Mapping[str, Any]) -> str:
    """``[<label>-]<tag>-s<sample>-<hash>`` (file-name safe)."""
    parts = [p for p in (_safe(label), _safe(tag) or "chat") if p]
    return "-".join([*parts, f"s{int(sample)}", request_hash(body)])


def render_prompt(rid: str, body: Mapping[str, Any], answer_path: Path) -> str:
    """The messages of a request as Markdown, with how to answer."""
    settings = {k: v for k, v in body.items() if k not in ("messages",)}
    out = [
        f"# Request {rid}",
        "",
        f"Settings: `{json.dumps(settings, sort_keys=True)}`",
        "",
        "Answer as the assistant: write the answer text to a temporary file, then move it to",
        f"`{answer_path}` (e.g. `python -m pbrl.icpl.relay answer "
        f"{answer_path.parent.parent} {rid} answer.md`).",
        "Requests that differ only in `-s<sample>` are separate samples of one prompt: answer "
        "each independently (different answers, as sampling at temperature 1 would give).",
        "",
    ]
    for i, m in enumerate(body.get("messages", [])):
        out += [f"## message {i}: {m.get('role')}", "", str(m.get("content", "")), ""]
    return "\n".join(out)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _check_dir(root: Path) -> None:
    """Create ``pending/``, ``answers/``, ``done/`` under ``root`` or say why not."""
    fix = "pass llm.relay_dir=<a folder you can write>"
    if root.exists() and not root.is_dir():
        raise LLMError(f"llm.relay_dir {root} exists and is not a folder; {fix}")
    try:
        for sub in ("pending", "answers", "done"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root / "pending", prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise LLMError(f"llm.relay_dir {root} is not a writable folder ({err}); {fix}") from None


class RelayServer:
    """An OpenAI-compatible server on 127.0.0.1 that relays chat requests to ``relay_dir``.

    Args:
        relay_dir: the relay folder (``pending/``, ``answers/``, ``done/`` are created).
        label: prefix of the request ids (e.g. the run's name; ``""``: none).
        answer_timeout: seconds a request waits for its answer before the server answers 504.
        poll: seconds between looks for the answer file.
        settle: an answer file must be non-empty and unchanged for this long before it is
            read (a guard for writers that do not rename; renaming is still the rule).
        port: TCP port (0: a free one).
        alias: the model name ``GET /v1/models`` lists.
    """

    def __init__(
        self,
        relay_dir: str | Path,
        *,
        label: str = "",
        answer_timeout: float = 86400.0,
        poll: float = 0.5,
        settle: float = 1.0,
        port: int = 0,
        alias: str = "manual",
    ) -> None:
        self.root = Path(relay_dir)
        self.label = str(label or "")
        self.answer_timeout = float(answer_timeout)
        self.poll = float(poll)
        self.settle = float(settle)
        self.port = int(port)
        self.alias = alias
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._unnumbered: dict[str, int] = {}
        self._stop = threading.Event()

    @property
    def base_url(self) -> str:
        """The API root to give :class:`~pbrl.icpl.llm.ChatClient`."""
        if self._httpd is None:
            raise LLMError("the relay server is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # --- the files ------------------------------------------------------------------------
    def _sample_of(self, headers: Mapping[str, str], h: str) -> int:
        raw = headers.get(SAMPLE_HEADER)
        if raw is not None:
            try:
                return int(raw)
            except ValueError:
                pass
        with self._lock:  # a client that sends no index: number identical requests in order
            n = self._unnumbered.get(h, 0)
            self._unnumbered[h] = n + 1
        return n

    def submit(self, body: dict[str, Any], tag: str, sample: int) -> str:
        """Write the pending files of a request; returns its id."""
        rid = request_id(self.label, tag, sample, body)
        answer = self.root / "answers" / f"{rid}.md"
        meta = {
            "id": rid,
            "label": self.label,
            "tag": tag,
            "round": _round_of(tag),
            "sample": int(sample),
            "same_prompt": request_hash(body),
            "model": body.get("model"),
            "settings": {k: v for k, v in body.items() if k not in ("model", "messages")},
            "messages": body.get("messages", []),
            "created": time.time(),
            "answer_file": str(answer),
        }
        if not answer.exists():
            _write_atomic(
                self.root / "pending" / f"{rid}.prompt.md", render_prompt(rid, body, answer)
            )
            _write_atomic(self.root / "pending" / f"{rid}.json", json.dumps(meta, indent=1))
        return rid

    def wait(self, rid: str, timeout: float | None = None) -> str:
        """Block until ``answers/<rid>.md`` is there and complete; returns its text."""
        path = self.root / "answers" / f"{rid}.md"
        deadline = time.monotonic() + (self.answer_timeout if timeout is None else timeout)
        last: tuple[int, int] | None = None
        stable_since = 0.0
        while not self._stop.is_set():
            try:
                st = path.stat()
                sig = (st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                sig = None
            now = time.monotonic()
            if sig is not None and sig[0] > 0:
                if sig != last:
                    last, stable_since = sig, now
                age = time.time() - sig[1] / 1e9  # wall-clock seconds since its last write
                if now - stable_since >= self.settle or age >= self.settle:
                    text = path.read_text(errors="replace")
                    if text.strip():
                        self._finish(rid, text)
                        return text
            if now >= deadline:
                raise TimeoutError(
                    f"no answer to {rid} in {self.root / 'answers'} within "
                    f"{self.answer_timeout if timeout is None else timeout:g} s"
                )
            time.sleep(min(self.poll, max(0.01, deadline - now)))
        raise LLMError("the relay server was stopped")

    def _finish(self, rid: str, text: str) -> None:
        pending = self.root / "pending" / f"{rid}.json"
        done = self.root / "done" / f"{rid}.json"
        try:
            meta = json.loads(pending.read_text())
        except (OSError, ValueError):  # another run of this folder finished it already
            if done.exists():
                return
            meta = {"id": rid}
        meta.update(answer=text, answered=time.time())
        _write_atomic(done, json.dumps(meta, indent=1))
        for p in (pending, self.root / "pending" / f"{rid}.prompt.md"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    # --- the server -----------------------------------------------------------------------
    def start(self) -> RelayServer:
        """Check the relay folder and serve on loopback in a daemon thread."""
        _check_dir(self.root)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": outer.alias}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                        raise ValueError("the body has no 'messages' list")
                except (ValueError, TypeError) as err:
                    self._send(400, {"error": {"message": f"bad request: {err}"}})
                    return
                h = request_hash(body)
                tag = self.headers.get(TAG_HEADER) or "chat"
                sample = outer._sample_of(dict(self.headers), h)
                rid = outer.submit(body, tag, sample)
                print(f"[relay] waiting for {outer.root / 'answers' / rid}.md", flush=True)
                try:
                    text = outer.wait(rid)
                except TimeoutError as err:
                    self._send(504, {"error": {"message": str(err)}})
                    return
                except LLMError as err:
                    self._send(503, {"error": {"message": str(err)}})
                    return
                self._send(
                    200,
                    {
                        "id": f"relay-{rid}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", outer.alias),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {},
                    },
                )

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (waiting requests end with 503)."""
        self._stop.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> RelayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _round_of(tag: str) -> int | None:
    m = re.match(r"r(\d+)", tag)
    return int(m.group(1)) if m else None


# --- the command line -------------------------------------------------------------------------
def pending(root: str | Path) -> list[dict[str, Any]]:
    """The pending requests of a relay folder, oldest first."""
    out = []
    for f in Path(root, "pending").glob("*.json"):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda m: (m.get("created", 0), m.get("id", "")))


def store_answer(root: str | Path, rid: str, text: str) -> Path:
    """Write ``answers/<rid>.md`` atomically (tmp file, then rename)."""
    if not text.strip():
        raise ValueError("the answer is empty")
    path = Path(root, "answers", f"{rid}.md")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent} is not a relay folder's answers/ folder")
    _write_atomic(path, text)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pbrl.icpl.relay list|show|answer <dir> ...``."""
    p = argparse.ArgumentParser(
        prog="python -m pbrl.icpl.relay", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="pending requests, oldest first").add_argument("dir")
    s = sub.add_parser("show", help="print a pending request's prompt (default: the oldest)")
    s.add_argument("dir")
    s.add_argument("id", nargs="?")
    a = sub.add_parser("answer", help="store an answer atomically")
    a.add_argument("dir")
    a.add_argument("id")
    a.add_argument("file", help="answer text file, or - for stdin")
    args = p.parse_args(argv)
    root = Path(args.dir)
    if not (root / "pending").is_dir():
        print(f"error: {root} is not a relay folder (no pending/ in it)", file=sys.stderr)
        return 2
    if args.cmd == "list":
        reqs = pending(root)
        for m in reqs:
            age = time.time() - float(m.get("created", time.time()))
            print(f"{m['id']}\t{age:6.0f}s\t{root / 'pending' / (m['id'] + '.prompt.md')}")
        print(f"{len(reqs)} pending", file=sys.stderr)
        return 0
    if args.cmd == "show":
        rid = args.id
        if rid is None:
            reqs = pending(root)
            if not reqs:
                print("nothing pending", file=sys.stderr)
                return 1
            rid = reqs[0]["id"]
        f = root / "pending" / f"{rid}.prompt.md"
        if not f.exists():
            print(f"error: no pending request {rid} in {root}", file=sys.stderr)
            return 1
        print(f.read_text())
        return 0
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        print(store_answer(root, args.id, text))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
