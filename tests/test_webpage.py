"""The web page at ``/`` and Swagger UI at ``/docs``, in headless Chromium against the real service.

Debian's ``chromium`` (``scripts/install.sh test`` installs it), driven by
Playwright; no browser is ever downloaded. The service is the Procfile's
``web`` (gunicorn) over HTTP, a real Celery worker process, Redis and a VOD
server. ``UPDATE_SCREENSHOTS=1`` writes the README's screenshots to
``docs/screenshots``; otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from samplevod.server import serve_directory
from tests.services import REPO, free_port
from tests.test_scripts import procfile_web

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
CLIP_TIMEOUT_MS = 120_000
STEP_TIMEOUT_MS = 30_000
TOKEN = "page-token"

# Every change the page makes to a card's status or progress, in order: proof that it moved live.
RECORD_CARD_CHANGES = """() => {
  window.cardChanges = [];
  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      const card = mutation.target.closest && mutation.target.closest("[data-clip-id]");
      if (card) window.cardChanges.push([card.dataset.status, Number(card.dataset.progress || 0)]);
    }
  }).observe(document.getElementById("cards"),
             {subtree: true, childList: true, attributes: true,
              attributeFilter: ["data-status", "data-progress"]});
  window.sameDocument = "not reloaded";
}"""


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (scripts/install.sh test)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (scripts/install.sh test installs Debian's chromium)"
    return None


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser):
    """``open_page(url)``: a fresh browser context (its own localStorage) at ``url``."""
    contexts = []

    def open_at(url: str, **options):
        context = browser.new_context(viewport=LAPTOP, **options)
        context.set_default_timeout(STEP_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Console errors too (a request the Content-Security-Policy refused is one), but not failed
        # requests, which Chromium logs as well: the API's 4xx the tests ask for, a stream cut off.
        page.on("console", lambda message: message.type == "error" and not message.text.startswith(
            "Failed to load resource:") and errors.append(message.text))
        page.js_errors = errors
        page.goto(url)
        return page

    yield open_at
    for context in contexts:
        context.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = REPO / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def live_service(service_factory, tmp_path: Path, worker: bool = True, **env):
    """The Procfile's ``web`` (and a worker) for a new deployment; yields ``(service, base URL, process)``.

    Links to the clips point at that web, so the browser can load them.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    service = service_factory(PUBLIC_BASE_URL=base, **env)
    if worker:
        service.start_worker()
    with procfile_web(service.env, tmp_path / "web.log", port) as process:
        yield service, base, process


def leaf_processes(pid: int) -> list[int]:
    """The processes at the ends of ``pid``'s tree: for gunicorn, its workers."""
    listed = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [leaf for child in listed for leaf in leaf_processes(int(child))] if listed else [pid]


def fill_clip_form(page, vod_url: str, start: str, end: str, title: str | None = None) -> None:
    page.fill("#vod_url", vod_url)
    page.fill("#start_time", start)
    page.fill("#end_time", end)
    page.select_option("#quality", "360p")
    if title:
        page.fill("#title", title)


NEW_CARD_ID = """(known) => [...document.querySelectorAll("#cards [data-clip-id]")]
  .map((card) => card.dataset.clipId).find((id) => !known.includes(id))"""


def new_card_id(page, known: set[str] = frozenset()) -> str:
    """The id of the card that appears, besides the ``known`` ones."""
    return page.wait_for_function(NEW_CARD_ID, arg=sorted(known)).json_value()


def card(clip_id: str) -> str:
    return f'#cards [data-clip-id="{clip_id}"]'


def test_a_clip_made_through_the_form_moves_live_to_a_playable_card(
        service_factory, master_url, tmp_path, open_page, screenshots):
    vod_origin = master_url.split("/hls/")[0]
    with live_service(service_factory, tmp_path) as (service, base, web):
        page = open_page(f"{base}/", permissions=["clipboard-read", "clipboard-write"])
        assert "script-src 'self'" in requests.get(f"{base}/", timeout=10).headers["Content-Security-Policy"]
        assert page.locator('input[name="api_token"]').is_hidden(), "no token asked where API_TOKENS is unset"
        page.wait_for_selector('#stream-state[data-state="live"]')
        page.evaluate(RECORD_CARD_CHANGES)

        # Bad input: the page's own check, then the API's error next to the field it names.
        fill_clip_form(page, master_url, "1:75", "6")
        page.click("#create-button")
        assert "1:30" in page.text_content('[data-error-for="start_time"]')
        page.fill("#start_time", "0:00:08")  # h:mm:ss, after the end
        page.click("#create-button")
        page.wait_for_function("() => document.querySelector('[data-error-for=\"end_time\"]').textContent")
        assert "greater than start_time" in page.text_content('[data-error-for="end_time"]')
        assert page.locator("#cards [data-clip-id]").count() == 0

        # Scrubbing: hls.js plays the source (from its own origin); Set start takes the player's time.
        page.wait_for_function("() => document.getElementById('source-player').readyState >= 1")
        page.evaluate("""() => new Promise((resolve) => {
            const player = document.getElementById('source-player');
            player.addEventListener('seeked', resolve, {once: true});
            player.currentTime = 2;
        })""")
        page.click("#set-start")
        assert page.input_value("#start_time") == "0:02"
        page.fill("#end_time", "6.5")
        page.fill("#title", "from the page")
        page.check('input[name="outputs"][value="portrait"]')
        page.click("#create-button")

        clip_id = new_card_id(page)
        page.wait_for_selector(f'{card(clip_id)}[data-status="ready"]', timeout=CLIP_TIMEOUT_MS)
        clip = requests.get(f"{base}/api/v1/clips/{clip_id}", timeout=10).json()
        assert (clip["status"], clip["start_time"], clip["end_time"], clip["title"]) == (
            "ready", 2.0, 6.5, "from the page")
        assert page.evaluate("window.sameDocument") == "not reloaded"
        changes = page.evaluate("window.cardChanges")
        assert changes[0][0] == "processing" and changes[-1][0] == "ready", changes
        assert any(status == "processing" and 0 < progress < 100 for status, progress in changes), (
            f"no progress between 0 and 100 was shown: {changes}")

        thumb = page.locator(f"{card(clip_id)} img.thumb")
        assert thumb.is_visible() and thumb.get_attribute("src") == clip["thumbnail_url"]
        page.wait_for_function("(selector) => document.querySelector(selector).naturalWidth > 0",
                               arg=f"{card(clip_id)} img.thumb")
        video = f"{card(clip_id)} video.clip-video"
        assert page.get_attribute(video, "src") == clip["video_url"]
        page.screenshot(path=screenshots / "page-laptop.png", full_page=True)
        page.click(f"{card(clip_id)} button.play")
        page.wait_for_function("(selector) => document.querySelector(selector).readyState >= 2", arg=video)

        page.click(f"{card(clip_id)} button.copy")
        assert page.evaluate("navigator.clipboard.readText()") == clip["video_url"]

        # web's worker dies: the page's one stream comes back by itself, resuming after the last event.
        with page.expect_request(lambda request: request.url == f"{base}/api/v1/events"
                                 and "last-event-id" in request.headers) as resumed:
            for pid in leaf_processes(web.pid):
                os.kill(pid, signal.SIGKILL)
        assert re.fullmatch(r"\d+-\d+", resumed.value.headers["last-event-id"])
        page.wait_for_selector('#stream-state[data-state="live"]')

        page.evaluate("(selector) => document.querySelector(selector).pause()", video)
        page.set_viewport_size(PHONE)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone"
        page.screenshot(path=screenshots / "page-phone.png", full_page=True)
        # Everything came from the service, or the VOD for the player: no CDN.
        origins = page.evaluate("performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
        assert set(origins) <= {base, vod_origin}, origins

        # A new visitor (no localStorage) sees the clip from the service's listing, with what the worker made
        # beside it: thumbnails in sizes, the preview loop on hover, the portrait version.
        assert clip["preview_url"] and clip["thumbnails"] and clip["portrait_url"], clip
        visitor = open_page(f"{base}/")
        thumb = visitor.locator(f"{card(clip_id)} img.thumb")
        thumb.wait_for()
        sizes = clip["thumbnails"]
        expected = [f"{sizes['small']} 320w"] + ([f"{sizes['medium']} 640w"] if sizes["medium"] != sizes["small"] else [])
        assert thumb.get_attribute("srcset").split(", ")[:len(expected)] == expected
        assert visitor.get_attribute(f"{card(clip_id)} a.portrait", "href") == clip["portrait_url"]
        visitor.hover(f"{card(clip_id)} .media")
        visitor.wait_for_function("(selector) => document.querySelector(selector).readyState >= 2",
                                  arg=f"{card(clip_id)} .preview-slot.on video.preview")
        assert visitor.evaluate("(selector) => document.querySelector(selector).muted",
                                f"{card(clip_id)} video.preview")
        assert visitor.js_errors == []
        assert page.js_errors == []


def test_with_api_tokens_the_page_asks_for_one_shows_the_failure_and_replays_the_dead_letter(
        service_factory, vod_dir, tmp_path, open_page):
    source = serve_directory(vod_dir, fail_first={"/hls/master.m3u8": 10**6})
    try:
        # A source that keeps answering 503: the retries run out quickly and the job is dead-lettered.
        with live_service(service_factory, tmp_path, API_TOKENS=TOKEN, JOB_MAX_RETRIES="1",
                          FETCH_RETRIES="0") as (_, base, _web):
            page = open_page(f"{base}/")
            page.wait_for_selector('#stream-state[data-state="needs-token"]')
            assert page.locator('input[name="api_token"]').is_visible()
            page.evaluate(RECORD_CARD_CHANGES)

            fill_clip_form(page, f"{source.url}/hls/master.m3u8", "1", "0:04.5", "down source")
            page.click("#create-button")
            page.wait_for_function("() => document.getElementById('form-error').textContent")
            assert "Bearer" in page.text_content("#form-error")
            assert page.locator("#cards [data-clip-id]").count() == 0

            page.fill('input[name="api_token"]', TOKEN)
            page.click('#token-form button[type="submit"]')
            page.wait_for_selector('#stream-state[data-state="live"]')
            assert page.evaluate("localStorage.getItem('clipqueue.apiToken')") == TOKEN
            assert page.evaluate("document.cookie") == ""
            page.click("#create-button")

            clip_id = new_card_id(page)
            page.wait_for_selector(f'{card(clip_id)}[data-status="failed"]', timeout=CLIP_TIMEOUT_MS)
            assert "503" in page.text_content(f"{card(clip_id)} .reason")
            dead_letter = f'#dead-letter-list [data-dead-letter-id="{clip_id}"]'
            page.wait_for_selector(dead_letter)
            assert "503" in page.text_content(dead_letter)

            source.behaviour.fail_first.clear()  # the operator fixed the source
            page.click(f"{dead_letter} button.replay")
            page.wait_for_selector(f'{card(clip_id)}[data-status="processing"]')
            page.wait_for_selector(f'{card(clip_id)}[data-status="ready"]', timeout=CLIP_TIMEOUT_MS)
            assert page.locator(dead_letter).count() == 0
            assert page.evaluate("window.sameDocument") == "not reloaded"
            statuses = [status for status, _ in page.evaluate("window.cardChanges")]
            after_failing = statuses[statuses.index("failed"):]
            assert "processing" in after_failing and after_failing[-1] == "ready", statuses

            # A reload keeps the token and shows the clip again.
            page.reload()
            page.wait_for_selector(f'{card(clip_id)}[data-status="ready"]')
            page.wait_for_selector('#stream-state[data-state="live"]')

            # A slow source keeps the next clip processing until its Cancel button is pressed.
            source.behaviour.latency = 2.0
            fill_clip_form(page, f"{source.url}/hls/master.m3u8", "10", "14")
            page.click("#create-button")
            slow = new_card_id(page, {clip_id})
            page.click(f"{card(slow)} button.cancel")
            page.wait_for_selector(f'{card(slow)}[data-status="canceled"]')
            assert requests.get(f"{base}/api/v1/clips/{slow}", timeout=10).json()["status"] == "canceled"
            assert page.js_errors == []
    finally:
        source.stop()


def test_docs_is_swagger_ui_on_the_apis_own_document_and_tries_calls_on_this_server(
        service_factory, tmp_path, open_page, screenshots):
    with live_service(service_factory, tmp_path, worker=False) as (_, base, _web):
        page = open_page(f"{base}/docs")
        assert page.url == f"{base}/docs/"
        page.wait_for_selector(".opblock")
        page.screenshot(path=screenshots / "docs.png")
        document = requests.get(f"{base}/api/v1/openapi.json", timeout=10).json()
        operations = sum(len(methods) for methods in document["paths"].values())
        assert page.locator(".opblock").count() == operations
        queue = page.locator("#operations-default-getQueueCounts")
        queue.locator(".opblock-summary").click()  # "Try it out" is on already (tryItOutEnabled)
        queue.locator("button.execute").click()
        status = queue.locator(".live-responses-table td.response-col_status:not(.col_header)")
        status.wait_for()
        assert status.first.text_content().strip() == "200"
        assert '"pending"' in queue.locator(".live-responses-table .microlight").first.text_content()
        # Nothing came from elsewhere: every request the page made went to this server.
        origins = page.evaluate("performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
        assert set(origins) == {base}
