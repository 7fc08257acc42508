"""Per-labeller tokens: issued once, kept across restarts, revocable, checked in constant time."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pbrl.human.tokens import TokenError, TokenRegistry, check_name


def test_issue_is_stable_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tokens.json"
    reg = TokenRegistry(path)
    alice = reg.issue("alice")
    assert reg.issue("alice") == alice  # issuing again returns the same token
    bob = reg.issue("bob")
    assert alice.token != bob.token and len(alice.token) >= 24
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # as private as the store
    again = TokenRegistry(path)  # a restarted server
    assert again.authenticate(alice.token).name == "alice"
    assert [e.name for e in again.labellers()] == ["alice", "bob"]
    assert again.authenticate(bob.token).teacher_id == "human:bob"


def test_revoked_tokens_are_refused_with_a_reason_even_by_a_running_server(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    running = TokenRegistry(path)
    alice = running.issue("alice")
    assert running.authenticate(alice.token).name == "alice"
    TokenRegistry(path).revoke("alice")  # another process: `pbrl-label tokens revoke alice`
    with pytest.raises(TokenError, match="revoked"):
        running.authenticate(alice.token)
    assert running.labellers() == []
    assert running.labellers(include_revoked=True)[0].revoked is not None
    fresh = running.issue("alice")  # re-issuing gives a new token; the old stays refused
    assert fresh.token != alice.token
    with pytest.raises(TokenError, match="unknown access token"):
        running.authenticate(alice.token)
    assert running.authenticate(fresh.token).name == "alice"


@pytest.mark.parametrize("token", [None, "", "x" * 24, "nonsense"])
def test_missing_or_unknown_tokens_are_refused(tmp_path: Path, token: str | None) -> None:
    reg = TokenRegistry(tmp_path / "tokens.json")
    reg.issue("alice")
    with pytest.raises(TokenError, match="token"):
        reg.authenticate(token)


@pytest.mark.parametrize("name", ["", "../x", "a b", "x" * 33, "-lead", "é"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(TokenError, match="invalid labeller name"):
        check_name(name)
    with pytest.raises(TokenError):
        TokenRegistry(tmp_path / "t.json").issue(name)


def test_revoking_an_unknown_name_says_who_exists(tmp_path: Path) -> None:
    reg = TokenRegistry(tmp_path / "t.json")
    reg.issue("alice")
    with pytest.raises(TokenError, match="known: alice"):
        reg.revoke("bob")


def test_a_damaged_file_is_reported_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text("{not json")
    with pytest.raises(TokenError, match="damaged"):
        TokenRegistry(path)
