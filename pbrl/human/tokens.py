"""Per-labeller access tokens: generated, printed, revocable, kept on disk across restarts.

A token is a random URL-safe string (``secrets.token_urlsafe(18)``, 144 bits). The registry
is one JSON file written atomically with mode ``0600``; it holds the tokens in plain text so
that a restarted run or server can print the same links again (the file is as sensitive as
the feedback store beside it). A revoked token stays in the file, marked, so it is refused
with a clear message rather than treated as unknown.

Other processes may edit the file (``pbrl-label tokens revoke NAME`` while a server runs):
the registry re-reads it whenever its modification time changes.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
"""A labeller name: 1-32 letters, digits, ``_ . -``; it becomes ``teacher_id="human:NAME"``."""


class TokenError(ValueError):
    """A token or labeller name is invalid, unknown or revoked; the message says which."""


@dataclass(frozen=True)
class Labeller:
    """One labeller's access entry.

    Attributes:
        name: labeller name (stored labels carry ``teacher_id="human:<name>"``).
        token: the secret that goes in the page URL (``?token=...``).
        created: when the token was issued (seconds since the epoch).
        revoked: when it was revoked, or ``None`` while it is valid.
    """

    name: str
    token: str
    created: float
    revoked: float | None = None

    @property
    def teacher_id(self) -> str:
        """The ``teacher_id`` stored with this labeller's labels."""
        return f"human:{self.name}"


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid labeller name, else raise :class:`TokenError`."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TokenError(
            f"invalid labeller name {name!r}: use 1-32 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class TokenRegistry:
    """The labellers of one store and their tokens, persisted in ``path`` (JSON).

    Thread-safe. Every change is written to disk (atomically, fsynced) before it returns.

    Args:
        path: the JSON file; created (mode 0600, parent directories too) on the first change.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, Labeller] = {}
        self._mtime: float | None = None
        with self._lock:
            self._reload()

    # --- persistence ----------------------------------------------------------------------
    def _reload(self) -> None:
        """Re-read the file if it changed on disk (lock held)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._entries, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            raw = json.loads(self.path.read_text())
            entries = {
                e["name"]: Labeller(
                    name=str(e["name"]),
                    token=str(e["token"]),
                    created=float(e["created"]),
                    revoked=None if e.get("revoked") is None else float(e["revoked"]),
                )
                for e in raw["labellers"]
            }
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TokenError(
                f"token file {self.path} is damaged ({err}); fix or delete it (deleting it "
                "invalidates every token)"
            ) from err
        self._entries, self._mtime = entries, mtime

    def _write(self) -> None:
        """Atomically replace the file with the current entries (lock held)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        data = {"labellers": [asdict(e) for e in self._entries.values()]}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._mtime = self.path.stat().st_mtime_ns

    # --- changes --------------------------------------------------------------------------
    def issue(self, name: str) -> Labeller:
        """The valid entry of ``name``, creating a token if it has none (or a revoked one)."""
        check_name(name)
        with self._lock:
            self._reload()
            entry = self._entries.get(name)
            if entry is not None and entry.revoked is None:
                return entry
            entry = Labeller(name=name, token=secrets.token_urlsafe(18), created=time.time())
            self._entries[name] = entry
            self._write()
            return entry

    def revoke(self, name: str) -> Labeller:
        """Revoke ``name``'s token; its labels stay in the store. Idempotent."""
        with self._lock:
            self._reload()
            entry = self._entries.get(name)
            if entry is None:
                raise TokenError(
                    f"no labeller named {name!r}; known: {', '.join(sorted(self._entries)) or '-'}"
                )
            if entry.revoked is None:
                entry = Labeller(entry.name, entry.token, entry.created, revoked=time.time())
                self._entries[name] = entry
                self._write()
            return entry

    # --- lookups --------------------------------------------------------------------------
    def authenticate(self, token: str | None) -> Labeller:
        """The valid labeller holding ``token``.

        Raises:
            TokenError: the token is missing, unknown or revoked.
        """
        if not token:
            raise TokenError(
                "no access token: open the link printed by the server (it ends in ?token=...)"
            )
        with self._lock:
            self._reload()
            entries = list(self._entries.values())
        found = None
        for e in entries:
            # Compare every entry in constant time so timing does not reveal a prefix.
            if hmac.compare_digest(e.token.encode(), token.encode()):
                found = e
        if found is None:
            raise TokenError("unknown access token: ask whoever runs the session for a link")
        if found.revoked is not None:
            raise TokenError(f"the access token of {found.name!r} has been revoked")
        return found

    def labellers(self, include_revoked: bool = False) -> list[Labeller]:
        """All entries in the order they were issued."""
        with self._lock:
            self._reload()
            out = sorted(self._entries.values(), key=lambda e: e.created)
        return [e for e in out if include_revoked or e.revoked is None]
