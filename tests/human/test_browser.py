"""The page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Run ``.ci/install-browser.sh`` first; the tests skip when Chromium or Playwright is missing.
A screenshot of the page is saved to ``$PBRL_ARTIFACTS_DIR`` (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbrl.data import Label, QueryBatch, SegmentBatch
from pbrl.human.clips import ClipSpec
from pbrl.human.server import LabelServer
from pbrl.store import FeedbackStore

from .helpers import pair_queries, require_web_stack, token_of

require_web_stack()

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("PBRL_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run .ci/install-browser.sh")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def artifact(name: str, tmp_path: Path) -> Path:
    d = Path(os.environ.get("PBRL_ARTIFACTS_DIR") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d / name


def wait_ready(page, previous: str | None = None, timeout: float = 30_000) -> str:
    """Wait until a query other than ``previous`` is on screen with its clips playable."""
    page.wait_for_function(
        "prev => document.body.dataset.state === 'ready' && document.body.dataset.query "
        "&& document.body.dataset.query !== prev",
        arg=previous,
        timeout=timeout,
    )
    return page.evaluate("() => document.body.dataset.query")


def playing(page) -> list[dict]:
    return page.evaluate(
        """() => [...document.querySelectorAll('#stage video')].map(v => ({
            paused: v.paused, t: v.currentTime, ready: v.readyState,
            visible: v.getBoundingClientRect().width > 50, w: v.videoWidth}))"""
    )


def wait_labels(store: FeedbackStore, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while store.num_labels() < n and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def page_server(tmp_path: Path, segments: SegmentBatch) -> Iterator[LabelServer]:
    st = FeedbackStore(tmp_path / "store.sqlite")
    st.add_queries(pair_queries(segments, 6))
    srv = LabelServer(
        st,
        tmp_path / "human",
        port=0,
        labellers=["alice"],
        clip=ClipSpec(width=192, height=192, max_frames=10),
        shuffle=False,
        title="browser test",
    ).start()
    yield srv
    srv.stop()
    st.close()


def test_two_playing_clips_answered_by_keys_and_a_click(
    browser, page_server: LabelServer, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 820})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{page_server.url}/?token={token_of(page_server, 'alice')}")
    q1 = wait_ready(page)
    page.wait_for_timeout(600)  # let the loops run a little
    first, second = playing(page), None
    page.wait_for_timeout(300)
    second = playing(page)
    assert len(first) == 2 and all(v["visible"] and v["ready"] >= 2 for v in first), first
    assert all(not v["paused"] for v in second), second
    assert all(v["w"] == 192 for v in second)
    assert [a["t"] for a in first] != [b["t"] for b in second]  # time moves: they play
    assert abs(second[0]["t"] - second[1]["t"]) < 0.15  # and in step with each other
    assert page.locator("#who").inner_text() == "alice"
    assert "browser test" in page.locator(".bar").inner_text()
    assert "6 left" in page.locator(".counts").inner_text().replace("\n", " ")
    shot = artifact("human_label_page.png", tmp_path)
    page.screenshot(path=str(shot))

    answered = [q1]
    page.keyboard.press("ArrowLeft")
    q2 = wait_ready(page, q1)
    page.keyboard.press("ArrowRight")
    q3 = wait_ready(page, q2)
    page.keyboard.press("ArrowUp")
    q4 = wait_ready(page, q3)
    answered += [q2, q3, q4]
    page.locator('#stage .clip[data-position="1"]').click()  # the right clip is better
    wait_ready(page, q4)
    page.wait_for_function(
        "() => document.querySelector('#done').textContent === '4'", timeout=20_000
    )
    assert "Saved" in page.locator("#toast").inner_text()

    store = page_server.store
    wait_labels(store, 4)
    got = [(f.query_id, f.label, f.teacher_id) for f in store.feedback()]
    assert got == [
        (q1, Label.FIRST, "human:alice"),
        (q2, Label.SECOND, "human:alice"),
        (q3, Label.EQUAL, "human:alice"),
        (q4, Label.SECOND, "human:alice"),
    ]
    assert all(f.response_time > 0 and f.timestamp > 1e9 for f in store.feedback())
    assert len(set(answered)) == 4
    page.wait_for_timeout(500)
    assert store.num_labels() == 4  # exactly those four, nothing sent twice
    assert not errors, errors
    page.close()


def test_an_answer_given_while_the_server_is_down_arrives_after_a_restart(
    browser, tmp_path: Path, segments: SegmentBatch
) -> None:
    """The server goes away, the person answers anyway and closes the tab; nothing is lost."""
    path = tmp_path / "store.sqlite"
    with FeedbackStore(path) as st:
        st.add_queries(pair_queries(segments, 4))

    def serve(port: int = 0) -> LabelServer:
        clip = ClipSpec(width=64, height=64, max_frames=10)
        return LabelServer(
            path, tmp_path / "human", port=port, labellers=["alice"], clip=clip, shuffle=False
        ).start()

    srv = serve()
    link = f"{srv.url}/?token={token_of(srv, 'alice')}"
    context = browser.new_context()  # one profile: its localStorage outlives the tab
    page = context.new_page()
    try:
        page.goto(link)
        q1 = wait_ready(page)
        page.keyboard.press("ArrowLeft")
        q2 = wait_ready(page, q1)  # on screen, clips loaded
        page.wait_for_function("() => document.querySelector('#done').textContent === '1'")
        srv.stop()  # the server is gone (restarted, or the laptop lost the network)
        page.keyboard.press("ArrowRight")  # answered while nobody can store it
        page.wait_for_function(
            "q => Object.keys(localStorage).some(k => k.startsWith('pbrl-pending') "
            "&& localStorage.getItem(k).includes(q))",
            arg=q2,
            timeout=10_000,
        )
        page.close()  # and the tab is closed before the server is back
        srv = serve(srv.port)
        page = context.new_page()
        page.goto(link)
        q3 = wait_ready(page)
        page.wait_for_function(
            "() => document.querySelector('#done').textContent === '2'", timeout=20_000
        )
        assert q3 not in (q1, q2)
        with FeedbackStore(path) as st:
            got = [(f.query_id, f.label) for f in st.feedback()]
        assert got == [(q1, Label.FIRST), (q2, Label.SECOND)]
    finally:
        context.close()
        srv.stop()


def test_triplet_and_ranking_queries(browser, tmp_path: Path, segments: SegmentBatch) -> None:
    st = FeedbackStore(tmp_path / "store.sqlite")
    st.add_queries(
        QueryBatch.from_members(
            [segments[0:1], segments[1:2], segments[2:3]], kind="triplet", ids=["t0"]
        )
    )
    st.add_queries(
        QueryBatch.from_members(
            [segments[3:4], segments[4:5], segments[5:6], segments[6:7]], kind="ranking", ids=["r0"]
        )
    )
    srv = LabelServer(
        st, tmp_path / "human", port=0, labellers=["bob"], clip=ClipSpec(64, 64), shuffle=False
    ).start()
    page = browser.new_page(viewport={"width": 1200, "height": 820})
    try:
        page.goto(f"{srv.url}/?token={token_of(srv, 'bob')}")
        assert wait_ready(page) == "t0"
        assert len(playing(page)) == 3
        assert "Reference" in page.locator("#stage").inner_text()
        page.keyboard.press("ArrowRight")  # b is closer to the anchor
        assert wait_ready(page, "t0") == "r0"
        assert len(playing(page)) == 4
        assert page.locator("#keys-rank").is_visible() and not page.locator("#keys").is_visible()
        for key in ("3", "1", "4"):  # the last one is implied
            page.keyboard.press(key)
        assert page.locator(".clip.ranked").count() == 4
        page.screenshot(path=str(artifact("human_ranking_page.png", tmp_path)))
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.body.dataset.state === 'empty'", timeout=20_000)
        wait_labels(st, 2)
        by_id = {f.query_id: f for f in st.feedback()}
        assert by_id["t0"].label == Label.SECOND
        assert by_id["r0"].ranking == (2, 0, 3, 1)
    finally:
        page.close()
        srv.stop()
        st.close()


def test_the_page_asks_for_a_token(browser, page_server: LabelServer) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{page_server.url}/?token=wrong")
        page.wait_for_function("() => document.body.dataset.state === 'login'", timeout=20_000)
        assert "unknown access token" in page.locator("#login").inner_text()
    finally:
        page.close()


def test_chromium_is_debians(browser) -> None:
    """The CI browser is the system package, not a downloaded build."""
    assert shutil.which("chromium") or Path(CHROMIUM).exists()
    assert browser.version
