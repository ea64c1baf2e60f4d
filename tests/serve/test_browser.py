"""End to end in a real browser: uvicorn serves a tiny run on a free port, Debian's Chromium
(driven by Playwright through its ``executable_path``) uploads a phantom study on the page and
the probabilities it shows equal the API's answer."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from cxrfuse.serve import Service, create_app
from cxrfuse.store.distributed import free_port

CHROMIUM = next((p for p in (os.environ.get("CXRFUSE_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)  # fmt: skip
SCREENSHOT_ENV = "CXRFUSE_SCREENSHOT"
"""Set to a path (e.g. docs/img/serve.png) to keep the page's screenshot there."""

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (Debian package "
                                "`chromium`; `make system-deps` installs it as root)")


@pytest.fixture(scope="module")
def server(served_run: Path) -> Iterator[str]:
    """The app under a real uvicorn server on loopback, in a thread of this process."""
    port = free_port()
    config = uvicorn.Config(create_app(service=Service(served_run)), host="127.0.0.1",
                            port=port, log_level="warning")  # fmt: skip
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield url
    uv.should_exit = True
    thread.join(10)


def test_page_uploads_a_study_and_shows_the_probabilities(server: str, test_study: dict,
                                                          tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    frontal, lateral = test_study["frontal"], test_study["lateral"]
    with open(frontal, "rb") as f, open(lateral, "rb") as lat:
        expected = httpx.post(f"{server}/v1/predict", timeout=60,
                              files=[("images", ("frontal.png", f.read())),
                                     ("images", ("lateral.png", lat.read()))],
                              data={"views": ["PA", "LATERAL"],
                                    "indication": test_study["indication"]}).json()  # fmt: skip
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('card').textContent.includes('run served')")
            assert "SYNTHETIC" in page.inner_text("#card")
            page.set_input_files("#files", [frontal, lateral])
            assert page.locator("#filelist .file").count() == 2
            assert page.locator("#filelist select").nth(0).input_value() == "PA"  # from the name
            assert page.locator("#filelist select").nth(1).input_value() == "LATERAL"
            page.fill("#indication", test_study["indication"])
            page.click("#submit")
            page.wait_for_selector("#probabilities tbody tr[data-label='abnormal']", timeout=60_000)
            page.wait_for_selector("#overlays img", timeout=60_000)
            shown = float(page.inner_text("#probabilities tr[data-label='abnormal'] td.prob"))
            assert shown == pytest.approx(expected["probabilities"]["abnormal"], abs=5e-4)
            row = "#probabilities tr[data-label='abnormal']"
            decision = page.inner_text(f"{row} td.decision")
            kinds = expected["verdicts"]["abnormal"]
            if "chance" in kinds:  # the fixture's 10 test studies: AUROC interval includes 0.5
                assert "not distinguishable from chance" in decision
                assert page.get_attribute(row, "class") == "noskill"  # no red "positive"
                assert "not distinguishable from chance" in page.inner_text("#verdicts")
            else:
                assert decision == ("positive" if expected["decisions"]["abnormal"] else "negative")
            assert "synthetic phantom" in page.inner_text("#warnings")
            assert page.locator("#overlays img").count() == 2  # one per view, one label
            assert "retrieval" in page.inner_text("#draft")
            shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "serve.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert all(url.startswith((server, "data:")) for url in requests), requests
