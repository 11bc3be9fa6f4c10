"""The app in a real browser: Playwright drives Debian's chromium against ``python app.py`` (offline, so it falls
back to tiny-llava): the banner, an example, the analysis, every panel rendered (plots with their images and
traces, tables, downloads), hover text, a bad input answered with an error toast, and a screenshot under
tests/artifacts/.

Needs ``pip install playwright`` and ``apt-get install chromium`` (``.ci/run`` installs both). Outside CI a
missing browser skips these tests; in CI (``CI`` set) it fails them."""

from __future__ import annotations

import os
import shutil

import pytest
from app_helpers import ARTIFACTS, running_app

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update"]
HEATMAPS = ("plot-attention", "plot-prior", "plot-relative")
PLOTS = (*HEATMAPS, "plot-graph", "plot-methods")
TIMEOUT_MS = 120_000


def _require_browser():
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        problems.append(f"chromium at {CHROMIUM} (apt-get install chromium)")
    if problems:
        message = "browser test needs " + " and ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def page():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with running_app(name="server-browser") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.wait_for_selector("#analyze-btn")
            yield page
        finally:
            browser.close()


def test_example_analysis_renders_every_panel(page):
    banner = page.inner_text("#model-banner")
    assert "Could not load" in banner and "tiny-llava" in banner and "random weights" in banner
    page.get_by_role("button", name="coffee", exact=True).click()
    page.wait_for_function("() => document.querySelector('#input-image img')?.naturalWidth === 600")
    values = [t.input_value() for t in page.locator("textarea").all()]
    assert "the spoon on the saucer" in values and "325, 67, 423, 324" in values

    page.click("#analyze-btn")
    for plot in PLOTS:
        page.wait_for_selector(f"#{plot} .js-plotly-plot .main-svg")
    page.wait_for_function("() => document.querySelector('#status-md')?.innerText.includes('N = 64')")

    for plot in PLOTS:
        root = page.locator(f"#{plot} .js-plotly-plot")
        box = root.bounding_box()
        assert box and box["width"] > 200 and box["height"] > 200, plot
        photos = page.locator(f"#{plot} g.imagelayer image")
        assert photos.count() >= 1, f"{plot}: the photo is missing"
        assert photos.first.get_attribute("href").startswith("data:image/jpeg;base64,")
    for plot in HEATMAPS:
        heat = page.locator(f"#{plot} g.heatmaplayer image")
        assert heat.count() == 1 and heat.first.get_attribute("href").startswith("data:image/png;base64,")
        assert page.locator(f"#{plot} .colorbar").count() == 1
    assert page.locator("#plot-graph g.scatterlayer path").count() > 50  # edges and 64 nodes
    assert page.locator("#plot-methods g.imagelayer image").count() == 7  # vanilla + six methods
    assert page.locator("#plot-methods g.heatmaplayer image").count() == 7  # the pruned-token shading
    titles = page.eval_on_selector_all("#plot-methods .annotation-text", "els => els.map(e => e.textContent)")
    assert sum("16 / 64 tokens" in t for t in titles) == 6 and any("64 / 64 tokens" in t for t in titles)

    answers = page.inner_text("#answers")
    for label in ("Vanilla (unpruned)", "FastV", "DART", "DivPrune", "MMR", "D²Pruner", "DI only"):
        assert label in answers
    assert "MFLOPs" in page.inner_text("#efficiency")
    downloads = page.inner_text("#downloads")
    assert ".json" in downloads and ".png" in downloads

    heat = page.locator("#plot-attention .nsewdrag").first
    heat.scroll_into_view_if_needed()
    box = heat.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#plot-attention .hovertext")
    hover = page.eval_on_selector("#plot-attention .hovertext", "e => e.textContent")
    assert "token #" in hover and "row" in hover and "attention" in hover

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "app-analysis.png"), full_page=True)

    # the colour-scale switch redraws the cached analysis: one range for the three heatmaps
    page.get_by_label("shared").check()
    page.wait_for_function("() => document.querySelector('#status-md')?.innerText.includes('from cache')")
    ticks = [page.eval_on_selector_all(f"#{plot} .colorbar .ytick text", "els => els.map(e => e.textContent)")
             for plot in HEATMAPS]
    assert ticks[0] == ticks[1] == ticks[2]
    page.get_by_label("per panel").check()


def test_question_mode_shows_the_question_box(page):
    page.get_by_label("Question", exact=True).first.check()
    page.get_by_label("Question", exact=True).last.wait_for(state="visible")
    page.get_by_label("Grounding", exact=True).check()
    page.get_by_label("Referring expression").wait_for(state="visible")


def test_bad_input_shows_an_error_and_the_next_request_works(page):
    ratio = page.locator("#keep-ratio input[type=number]")
    ratio.fill("0")
    ratio.press("Enter")
    page.click("#analyze-btn")
    page.get_by_text("Keep ratio 0 would remove every visual token").wait_for()
    ratio.fill("0.5")
    ratio.press("Enter")
    page.click("#analyze-btn")
    page.wait_for_function("() => document.querySelector('#status-md')?.innerText.includes('n = 32')")
    page.screenshot(path=str(ARTIFACTS / "app-after-error.png"))


def test_two_clicks_on_the_image_set_the_ground_truth_box(page):
    page.get_by_role("button", name="cat", exact=True).click()
    page.wait_for_function("() => document.querySelector('#input-image img')?.naturalWidth === 451")
    page.get_by_role("button", name="coffee", exact=True).click()
    page.wait_for_function("() => document.querySelector('#input-image img')?.naturalWidth === 600")
    photo = page.locator("#input-image img").first
    photo.scroll_into_view_if_needed()
    box = photo.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25)
    page.get_by_text("First corner at (150, 100)").wait_for()
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.5)
    # 600×400 image: corners (150, 100) and (450, 200) in image pixels
    page.wait_for_function(
        "() => [...document.querySelectorAll('textarea')].some(t => t.value === '150, 100, 450, 200')")
