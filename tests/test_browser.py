"""A real browser on the running app: Debian's chromium driven by Playwright, fully offline.

At 1280x720: the run controls and the live output are in the first screen; a bad prompt and a bad
trace are one toast each, with no panel marked as failed and the views left as they were; a run
scrolls its output into view, streams, and ends on the most instructive step; rejected drafts appear
only behind their toggle. At 1440x900: a tree drafter's tree is labelled node by node; a stopped run
can be downloaded (partial); step-by-step takes two clicks a step; the race runs both sides.
Screenshots go to assets/ (screenshot-*.png), to be looked at; the page asks nothing outside 127.0.0.1.
"""
import json
import os
import re
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from specviz import models  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ASSETS = Path(__file__).resolve().parent.parent / "assets"
SCREENSHOT = ASSETS / "screenshot.png"
PROMPT = ("Summarize in one sentence: The quick brown fox jumps over the lazy dog. The dog was not amused, "
          "and the fox ran back into the forest, where the other foxes were waiting for the quick brown fox.")
BADGES = "[data-testid='status-tracker'] span.error"  # gradio's red "Error" on a failed event's outputs

pytestmark = [
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium (make chromium)"),
    pytest.mark.skipif(models.status("smollm2-135m") != "ready", reason="smollm2-135m is not installed"),
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),  # pandas deprecations inside gradio
]


def launched():
    """The page, built and served in this process on a free port of 127.0.0.1: (demo, its URL)."""
    from specviz.ui import build_demo, launch_kwargs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo()
    demo.queue().launch(**{**launch_kwargs(), "server_name": "127.0.0.1", "server_port": port,
                           "prevent_thread_lock": True, "quiet": True})
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def url():
    demo, address = launched()
    yield address
    demo.close()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url, width, height, outside, errors):
    page = browser.new_page(viewport={"width": width, "height": height})

    def guard(route):
        host = urlparse(route.request.url).hostname
        if host not in ("127.0.0.1", "localhost") and not route.request.url.startswith(("data:", "blob:")):
            outside.append(route.request.url)
            return route.abort()
        return route.continue_()

    page.route("**/*", guard)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.wait_for_selector("#specviz-tokens .tok", timeout=30_000)  # the recorded example, before any model runs
    page.wait_for_selector("#specviz-status:has-text('recorded example')", timeout=30_000)
    return page


def visible_badges(page) -> int:
    return sum(1 for el in page.locator(BADGES).all() if el.is_visible())


def in_first_screen(page, selector: str, height: int) -> bool:
    box = page.locator(selector).first.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + min(box["height"], 40) <= height


def pick(page, menu: str, option: str):
    page.click(f"{menu} input")
    page.get_by_role("option", name=re.compile(rf"^{re.escape(option)}( ·|$)")).first.click()


def set_number(page, elem_id: str, value: int):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def toast(page, text: str):
    page.wait_for_selector(f"[data-testid='toast-body']:has-text('{text}')", timeout=30_000)
    page.wait_for_timeout(300)


def test_first_screen_errors_in_one_place_and_a_run_in_view(url, browser, tmp_path):
    outside, errors = [], []
    page = open_page(browser, url, 1280, 720, outside, errors)
    from specviz import trace
    from specviz.examples import example_traces, landing_example

    shown = trace.load(example_traces()[landing_example()])[0].prompt
    page.wait_for_function("(p) => document.querySelector('#specviz-prompt textarea').value === p", arg=shown,
                           timeout=30_000)
    for selector in ("#specviz-run", "#specviz-stop", "#specviz-race", "#specviz-step-start", "#specviz-status",
                     "#specviz-tokens"):
        assert in_first_screen(page, selector, 720), f"{selector} is below the first screen at 1280x720"
    page.screenshot(path=str(ASSETS / "screenshot-1280x720.png"))

    # an empty prompt: one toast, no panel marked as failed, the example still on display
    before = page.inner_html("#specviz-tokens")
    page.fill("#specviz-prompt textarea", "   ")
    page.click("#specviz-run")
    toast(page, "the prompt is empty")
    assert visible_badges(page) == 0
    assert page.inner_html("#specviz-tokens") == before
    page.screenshot(path=str(ASSETS / "screenshot-error.png"))

    # a bad trace: the same
    bad = tmp_path / "bad.trace.json"
    bad.write_text(json.dumps({"format": "specviz-trace", "version": 2, "events": [{"event": "Nope"}]}))
    with page.expect_file_chooser(timeout=30_000) as chooser:
        page.click("#specviz-import")
    chooser.value.set_files(str(bad))
    toast(page, "could not import")
    assert visible_badges(page) == 0
    assert page.inner_html("#specviz-tokens") == before

    # the visitor dismisses the error toasts (the run's screenshot shows the page, not old errors)
    for close in page.locator("[data-testid='toast-close']").all():
        if close.is_visible():
            close.click()
    page.wait_for_selector("[data-testid='toast-body']", state="detached", timeout=10_000)

    # a run: the output scrolls into view, the status says the phase, the end opens an instructive step
    page.fill("#specviz-prompt textarea", PROMPT)
    page.mouse.wheel(0, 2000)  # scrolled down, as after reading the figures
    page.wait_for_timeout(300)
    page.click("#specviz-run")
    page.wait_for_selector("#specviz-status:has-text('▶')", timeout=60_000)
    page.wait_for_timeout(500)
    assert in_first_screen(page, "#specviz-status", 720), "the output was not scrolled into view"
    page.wait_for_selector("#specviz-status:has-text('✔ done')", timeout=180_000)
    page.wait_for_selector("#specviz-tree .js-plotly-plot .scatterlayer .point", timeout=30_000)
    assert "tok/s decoding" in page.inner_text("#specviz-status") and "prompt read in" in page.inner_text(
        "#specviz-status")
    assert page.locator("#specviz-tokens .tok-accepted").count() >= 1
    assert page.locator("#specviz-tokens .tok-rejected").count() == 0  # behind the toggle
    metrics = page.inner_text("#specviz-metrics")
    for row in ("acceptance per step", "acceptance per node", "decoding speed", "prompt read (prefill)"):
        assert row in metrics
    explain = page.inner_text("#specviz-explain")
    if "rejected" in page.inner_html("#specviz-tokens"):  # a run with a rejection opens on a step that shows one
        assert "accepted" in explain and "rejected" in explain
    page.check("#specviz-show-rejected input")
    page.wait_for_timeout(1000)
    titles = " ".join(t.get_attribute("title") or "" for t in page.locator("#specviz-tokens .tok").all())
    assert page.locator("#specviz-tokens .tok-rejected").count() == titles.count("rejected draft (step")
    assert visible_badges(page) == 0
    page.screenshot(path=str(ASSETS / "screenshot-1280x720-run.png"))

    # the page's default drafter is `auto`: the drafter panel says which arm it chose and why, with the bars
    choice = page.inner_text("#specviz-drafter")
    assert "Chosen:" in choice and "eagle3" in choice, choice
    page.locator("#specviz-choice-plot").scroll_into_view_if_needed()
    page.wait_for_selector("#specviz-choice-plot .js-plotly-plot", timeout=30_000)
    page.locator("#specviz-drafter").scroll_into_view_if_needed()
    page.screenshot(path=str(ASSETS / "screenshot-drafter-choice.png"))
    page.close()
    assert not outside, f"the page tried to reach the network: {outside[:5]}"
    assert not errors, errors


def test_trees_stop_step_by_step_and_race(url, browser):
    outside, errors = [], []
    page = open_page(browser, url, 1440, 900, outside, errors)
    for selector in ("#specviz-run", "#specviz-status", "#specviz-tokens"):
        assert in_first_screen(page, selector, 900), f"{selector} is below the first screen at 1440x900"

    # a tree drafter: every node drawn has its label
    page.fill("#specviz-prompt textarea", PROMPT)
    pick(page, "#specviz-drafter-menu", "ngram-tree")
    page.get_by_text("Decoding knobs").click()
    set_number(page, "specviz-draft-len", 8)
    page.click("#specviz-run")
    page.wait_for_selector("#specviz-status:has-text('ngram-tree'):has-text('✔ done')", timeout=180_000)
    page.wait_for_selector("#specviz-tree .js-plotly-plot .scatterlayer .point", timeout=30_000)
    assert "a tree of" in page.inner_text("#specviz-explain")
    points = page.locator("#specviz-tree .scatterlayer .trace .points .point").count()
    labels = [t.text_content() or "" for t in page.locator("#specviz-tree .scatterlayer .textpoint").all()]
    assert points and sum(1 for t in labels if t.strip() and "more" not in t) == points, (points, labels)
    page.locator("#specviz-tree").scroll_into_view_if_needed()
    page.screenshot(path=str(ASSETS / "screenshot-tree.png"))

    # Stop mid-run: the partial run can be downloaded
    pick(page, "#specviz-drafter-menu", "pld")
    set_number(page, "specviz-max-new", 400)
    page.fill("#specviz-prompt textarea", "Write a long story about a lighthouse keeper and the sea.")
    page.click("#specviz-run")
    page.wait_for_selector("#specviz-status:has-text('▶ decoding')", timeout=120_000)
    page.click("#specviz-stop")
    page.wait_for_selector("#specviz-status:has-text('stopped by you')", timeout=30_000)
    page.wait_for_function("!document.querySelector('#specviz-download').disabled", timeout=30_000)
    with page.expect_download(timeout=30_000) as info:
        page.click("#specviz-download")
    assert "partial" in info.value.suggested_filename

    # step-by-step: draft (the tree, not checked yet), then verify (the verdicts)
    set_number(page, "specviz-max-new", 16)
    page.fill("#specviz-prompt textarea", PROMPT)
    page.click("#specviz-step-start")
    page.wait_for_selector("#specviz-status:has-text('Step-by-step')", timeout=120_000)
    for _ in range(6):  # until a step drafted something (pld may find nothing to look up at first)
        if "Verify ▶" in page.inner_text("#specviz-status"):
            break
        page.click("#specviz-next")
        page.wait_for_timeout(1500)
    assert "not verified yet" in page.inner_text("#specviz-explain")
    page.screenshot(path=str(ASSETS / "screenshot-step-draft.png"))
    page.click("#specviz-next")
    page.wait_for_selector("#specviz-status:has-text('verified')", timeout=60_000)
    assert "not verified yet" not in page.inner_text("#specviz-explain")

    # the race: each side alone on the machine, each with its own decoding speed
    page.click("#specviz-race")
    page.wait_for_function("(document.querySelector('#specviz-race-score')?.innerText || '').split('finished')"
                           ".length > 2", timeout=240_000)
    assert page.locator("#specviz-race-spec .tok").count() >= 10
    assert page.locator("#specviz-race-ar .tok-target").count() >= 10
    assert page.inner_text("#specviz-race-score").count("tok/s decoding") == 2
    page.screenshot(path=str(ASSETS / "screenshot-race.png"), full_page=True)
    page.get_by_role("tab", name="Watch").click()
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # a merged tree (the EAGLE-3 head's and the n-gram tree's): some step shows whose node is whose
    page.fill("#specviz-prompt textarea", "Copy this sentence exactly, then translate it into French: "
              "The small red boat sails across the quiet lake every morning at seven.")
    pick(page, "#specviz-drafter-menu", "eagle3+ngram")
    pick(page, "#specviz-shape-menu", "dynamic")
    set_number(page, "specviz-draft-len", 2)
    page.click("#specviz-run")
    page.wait_for_selector("#specviz-status:has-text('n-gram tree'):has-text('✔ done')", timeout=180_000)
    for _ in range(40):  # back through the steps to one both drafters proposed nodes in
        if "from the n-gram tree (squares)" in page.inner_text("#specviz-explain"):
            break
        page.click("#specviz-prev")
        page.wait_for_timeout(500)
    assert "from the EAGLE-3 head (circles)" in page.inner_text("#specviz-explain")
    assert "proposed by the n-gram tree" in page.inner_text("#specviz-tree")  # the legend
    page.locator("#specviz-tree").scroll_into_view_if_needed()
    page.screenshot(path=str(ASSETS / "screenshot-merged-tree.png"))
    assert visible_badges(page) == 0
    page.close()
    assert not outside, f"the page tried to reach the network: {outside[:5]}"
    assert not errors, errors
    assert SCREENSHOT.stat().st_size > 20_000


def test_lesson_lossless_check_what_if_and_acceptance_map(url, browser):
    """Teaching mode at 1280x720: the lesson from start to end (each step highlights its panel), one lossless
    check, the what-if explorer and the acceptance map of this session's run; a screenshot of each."""
    from specviz.views import lesson

    outside, errors = [], []
    page = open_page(browser, url, 1280, 720, outside, errors)
    page.click("#specviz-lesson-start")
    for i, step in enumerate(lesson.STEPS):
        page.wait_for_selector(f"#specviz-lesson-card:has-text('Lesson {i + 1} of {len(lesson.STEPS)}')",
                               timeout=60_000)
        page.wait_for_selector(f"#{step.panel}.specviz-lesson-hl", timeout=30_000)
        assert page.locator(".specviz-lesson-hl").count() == 1
        assert views_prompt(page) == lesson.lesson_events(step)[0].prompt
        if i in (0, 1, 3, 6):
            page.wait_for_timeout(500)
            page.screenshot(path=str(ASSETS / f"screenshot-lesson-{i + 1}.png"))
        if i + 1 < len(lesson.STEPS):
            page.click("#specviz-lesson-next")
    page.click("#specviz-lesson-back")
    page.wait_for_selector(f"#specviz-lesson-card:has-text('Lesson {len(lesson.STEPS) - 1} of')", timeout=60_000)
    page.click("#specviz-lesson-close")
    page.wait_for_selector("#specviz-lesson-card", state="hidden", timeout=30_000)
    assert page.locator(".specviz-lesson-hl").count() == 0
    assert visible_badges(page) == 0
    page.close()

    # a fresh visitor (the lesson set the controls to its last trace's lossy rule): a live run, for the
    # explorer's point and the acceptance map
    page = open_page(browser, url, 1280, 720, outside, errors)
    page.fill("#specviz-prompt textarea", PROMPT)
    page.get_by_text("Decoding knobs").click()
    set_number(page, "specviz-max-new", 32)
    page.click("#specviz-run")
    page.wait_for_selector("#specviz-status:has-text('✔ done')", timeout=300_000)

    # the lossless check, sampling, with a drafter that drafts from the first token on
    set_number(page, "specviz-temperature", 0.8)
    pick(page, "#specviz-drafter-menu", "ngram")
    page.get_by_role("tab", name="Lossless?").click()
    page.wait_for_selector("#specviz-ll-run", state="visible", timeout=30_000)
    set_number(page, "specviz-ll-n", 300)
    page.click("#specviz-ll-run")
    try:
        page.wait_for_selector("#specviz-ll-status:has-text('sampling')", timeout=300_000)  # progress
        page.wait_for_selector("#specviz-ll-result:has-text('The check')", timeout=400_000)
    finally:
        page.screenshot(path=str(ASSETS / "screenshot-lossless.png"))
    result = page.inner_text("#specviz-ll-result")
    assert "passes" in result and "chi-square" in result and "drafted" in result, result

    page.get_by_role("tab", name="What if").click()
    page.wait_for_selector("#specviz-wi-text:has-text('Chain')", timeout=60_000)
    page.wait_for_selector("#specviz-wi-plot .js-plotly-plot .heatmaplayer", timeout=60_000)
    assert "run on display" in page.inner_text("#specviz-wi-text")
    page.locator("#specviz-wi-plot").scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ASSETS / "screenshot-whatif.png"))

    page.get_by_role("tab", name="Acceptance map").click()
    page.get_by_role("button", name="From this session's runs").click()
    page.wait_for_selector("#specviz-am-status:has-text('of this session')", timeout=60_000)
    page.wait_for_selector("#specviz-am-plot .js-plotly-plot", timeout=30_000)
    page.screenshot(path=str(ASSETS / "screenshot-acceptance-map.png"))
    assert visible_badges(page) == 0
    page.close()
    assert not outside, f"the page tried to reach the network: {outside[:5]}"
    assert not errors, errors


def views_prompt(page) -> str:
    return page.eval_on_selector("#specviz-prompt textarea", "el => el.value")
