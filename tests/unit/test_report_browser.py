"""The report page in a real headless browser: it renders, the grid holds the right cells,
every link resolves inside the bundle, and a screenshot is kept (.rig/artifacts/report.png).

Chromium: $RIG_CHROMIUM, else Debian's /usr/bin/chromium, else Google Chrome (GitHub's
runners); Playwright drives it and never downloads a browser. Skipped only where neither a
browser nor Playwright can be had, and never under RIG_CI=1 (.ci/run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.unit.reportkit import DEAD, LAUNCH_FAILS, PASS, REPO, TCG, fake_run, rig

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str | None:
    for candidate in (
        os.environ.get("RIG_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("google-chrome"),
        shutil.which("chromium"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _need(what: str) -> None:
    if os.environ.get("RIG_CI"):
        pytest.fail(f"{what} is missing, and CI (RIG_CI=1) must run the browser test")
    pytest.skip(f"{what} is not installed")


def test_report_page_in_headless_chromium(tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright (PyPI)")
    browser_path = _chromium()
    if browser_path is None:
        _need("chromium (Debian) or google-chrome")
    _, prev = fake_run(
        tmp_path,
        "prev",
        {"bochs-6.12-haswell": PASS, "bochs-6.12-penryn": PASS, "tcg-6.12-penryn": TCG},
    )
    _, now = fake_run(
        tmp_path,
        "now",
        {"bochs-6.12-haswell": LAUNCH_FAILS, "bochs-6.12-penryn": DEAD, "tcg-6.12-penryn": TCG},
    )
    page_file = tmp_path / "bundle" / "index.html"
    p = rig("report", str(now), "--compare", str(prev), "--html", str(page_file), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    os.environ.setdefault("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "no-downloads"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto(page_file.as_uri())
        assert page.title() == "vmlaunch-rig matrix"
        # the grid: every cell of the run, with its status and five stage chips
        tiles = page.locator("a.tile")
        got = {
            tiles.nth(i).get_attribute("data-cell"): tiles.nth(i).get_attribute("data-status")
            for i in range(tiles.count())
        }
        assert got == {
            "bochs-6.12-haswell": "failed",
            "bochs-6.12-penryn": "error",
            "bochs-6.12-icelake": "excluded",
            "tcg-6.12-penryn": "passed",
            "tcg-6.12-haswell": "impossible",
            "tcg-6.12-icelake": "impossible",
        }
        assert page.locator("a.tile .st").count() == 6 * 5
        assert page.locator("a.tile[data-cell='bochs-6.12-haswell'] .st").all_inner_texts() == [
            "P",
            "P",
            "F",
            "P",
            "P",
        ]
        # failures first, with the reason in plain text; the comparison with the baseline
        first = page.locator("#attention .bad").first
        assert first.get_attribute("id") == "cell-bochs-6.12-penryn"  # an error before a failure
        text = page.locator("#attention").inner_text()
        assert "vmlaunch VMfailValid, error 8 <invalid host>" in text
        assert page.locator("#changes tr[data-change='new failure']").count() == 2
        # every link resolves: anchors to an element, files inside the bundle
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        assert any(h.endswith("/console.txt") for h in hrefs)
        for href in hrefs:
            url = urlparse(href)
            if url.fragment and url.path.endswith("index.html"):
                assert page.locator(f"[id='{unquote(url.fragment)}']").count() == 1, href
            else:
                target = Path(unquote(url.path))
                assert url.scheme == "file" and target.is_file(), href
                assert target.is_relative_to(page_file.parent), href
        page.goto(page_file.parent.joinpath("logs/bochs-6.12-haswell/console.txt").as_uri())
        assert "exit reason 0x12" in page.inner_text("body")
        page.goto(page_file.as_uri())
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000
    keep = REPO / ".rig" / "artifacts"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, keep / "report.png")
