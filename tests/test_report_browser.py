"""
The batch report in a real headless Chromium (Playwright), opened from ``file://``.

A sandbox batch with a failed row writes its report; the browser must show every
poster, log no console error, ask for nothing outside the report's folder, filter
the contact sheet, and follow the system's dark mode.  A screenshot of each mode is
kept as a test artefact (``$PIXELBYTE_TEST_ARTIFACTS``, default ``.artifacts/``).

Needs Debian's ``chromium`` and the ``playwright`` package (the tests group);
``.ci/run`` installs Chromium when missing.  Skipped locally without them, failed
under CI (``$CI``): CI must never pass by skipping the proof.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pixelbyte_async import run_batch
from pixelbyte_async.testing import JobScript

from conftest import bound_client


pytestmark = pytest.mark.anyio

SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"
ROOT = Path(__file__).resolve().parent.parent
#: Chromium as root in a container, with no network to talk to: the flags the
#: machine's notes give (background networking off, or it retries Google's hosts).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must install it: see .ci/run)", pytrace=False)
    pytest.skip(what)


def _chromium() -> str:
    found = os.environ.get("PIXELBYTE_CHROMIUM") or shutil.which("chromium")
    if found is None:
        _missing("no chromium executable (Debian's package 'chromium')")
    assert found is not None
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = _chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("the playwright package is not installed (the tests group)")
    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


def _artifacts() -> Path:
    folder = Path(os.environ.get("PIXELBYTE_TEST_ARTIFACTS", ROOT / ".artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _rows(n: int) -> list[dict[str, object]]:
    prompts = (
        "a paper boat drifts from a puddle into the open sea",
        "dawn breaks over a glass city as the camera rises",
        "a fox turns into a flock of orange birds",
    )
    return [
        {
            "id": f"shot-{i:02d}",
            "model": SLUG,
            "input": {
                "image_url": f"https://e.x/{i}.jpg",
                "end_image_url": "https://e.x/end.jpg",
                "duration": str(5 + i % 4),
                "prompt": prompts[i % len(prompts)],
            },
        }
        for i in range(n)
    ]


@pytest.fixture
async def report(fake: Any, tmp_path: Path) -> Path:
    """A finished sandbox batch of 6 rows, one failed: its report.html."""
    for i in range(6):
        fake.script_next(
            JobScript(
                outcome="failed",
                error_code="GENERATION_FAILED",
                error_message="the end frame could not be matched",
            )
            if i == 2
            else JobScript(queue_seconds=5 + 5 * i, processing_seconds=180 + 10 * i)
        )
    out = tmp_path / "out"
    async with bound_client(fake, max_concurrent_jobs=3) as pb:
        summary = await run_batch(
            pb,
            _rows(6),
            journal=tmp_path / "j.sqlite",
            out_dir=out,
            max_cost_micro_cents=3_000_000,
        ).summary()
    assert (summary.completed, summary.failed) == (5, 1)
    assert summary.report is not None
    return summary.report


async def _open(
    browser: Any, page_file: Path, scheme: str
) -> tuple[Any, dict[str, list[str]]]:
    """Open *page_file*; record console errors and every request, refusing strays."""
    folder = page_file.parent.as_uri() + "/"
    seen: dict[str, list[str]] = {"errors": [], "requests": [], "outside": []}
    page = await browser.new_page(
        viewport={"width": 1200, "height": 900}, color_scheme=scheme
    )
    page.on(
        "console",
        lambda m: seen["errors"].append(m.text) if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))

    async def guard(route: Any) -> None:
        url = route.request.url
        seen["requests"].append(url)
        if url.startswith((folder, "data:")):
            await route.continue_()
        else:
            seen["outside"].append(url)
            await route.abort()

    await page.route("**/*", guard)
    await page.goto(page_file.as_uri())
    await page.wait_for_load_state("load")
    return page, seen


async def test_the_report_in_chromium(browser: Any, report: Path) -> None:
    """Posters load, no console errors, nothing outside the folder, filters work."""
    page, seen = await _open(browser, report, "light")
    posters = await page.evaluate(
        "Array.from(document.querySelectorAll('img.poster'))"
        ".map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.alt])"
    )
    assert len(posters) == 5
    for src, complete, width, alt in posters:
        assert complete, src
        assert width > 0, f"{src} did not load"
        assert alt.startswith("Poster of shot-"), alt
    assert await page.locator(".noposter").count() == 1  # the failed row
    assert await page.locator("svg.chart").count() == 3
    assert "GENERATION_FAILED" in await page.locator(".card.failed").inner_text()
    await page.screenshot(path=_artifacts() / "report-light.png", full_page=True)

    # The contact sheet's filter: only the failed card, then all again.
    await page.get_by_role("button", name="Failed (1)").click()
    assert await page.locator(".card:visible").count() == 1
    await page.get_by_role("button", name="All (6)").click()
    assert await page.locator(".card:visible").count() == 6
    # A video opens with its poster, from the folder.
    await page.locator("details summary").first.click()
    video = page.locator("video").first
    assert await video.is_visible()
    assert await video.get_attribute("poster") == "shot-00.poster.jpg"

    assert seen["errors"] == []
    assert seen["outside"] == []
    assert any(u.endswith("/shot-00.poster.jpg") for u in seen["requests"])
    await page.close()


async def test_the_report_follows_dark_mode(browser: Any, report: Path) -> None:
    """Light and dark palettes from the system setting; readable in both."""
    backgrounds = {}
    for scheme in ("light", "dark"):
        page, seen = await _open(browser, report, scheme)
        backgrounds[scheme] = await page.evaluate(
            "getComputedStyle(document.body).backgroundColor"
        )
        text = await page.evaluate("getComputedStyle(document.body).color")
        assert text != backgrounds[scheme]
        assert seen["errors"] == []
        if scheme == "dark":
            await page.screenshot(path=_artifacts() / "report-dark.png", full_page=True)
        await page.close()
    assert backgrounds["light"] != backgrounds["dark"]
