"""A real browser on the running app: Debian's chromium driven by Playwright, fully offline.

Opens the page (the recorded example shows at once), runs a prompt, waits for streamed colored
tokens and the tree and entropy figures, saves assets/screenshot.png, and checks that the page
asked for nothing outside 127.0.0.1 (no CDN, no fonts, no analytics).
"""
import os
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
SCREENSHOT = Path(__file__).resolve().parent.parent / "assets" / "screenshot.png"
PROMPT = ("Summarize in one sentence: The quick brown fox jumps over the lazy dog. The dog was not amused, "
          "and the fox ran back into the forest, where the other foxes were waiting for the quick brown fox.")

pytestmark = [
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium (make chromium)"),
    pytest.mark.skipif(models.status("smollm2-135m") != "ready", reason="smollm2-135m is not installed"),
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),  # pandas deprecations inside gradio
]


@pytest.fixture(scope="module")
def url():
    from specviz.ui import build_demo, launch_kwargs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo()
    demo.queue().launch(**{**launch_kwargs(), "server_name": "127.0.0.1", "server_port": port,
                           "prevent_thread_lock": True, "quiet": True})
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_page_runs_a_prompt_and_shows_tokens_and_figures(url):
    playwright = pytest.importorskip("playwright.sync_api")
    outside = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})

        def guard(route):
            host = urlparse(route.request.url).hostname
            if host not in ("127.0.0.1", "localhost") and not route.request.url.startswith(("data:", "blob:")):
                outside.append(route.request.url)
                return route.abort()
            return route.continue_()

        page.route("**/*", guard)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        # the recorded example renders on load, before any model runs
        page.wait_for_selector("#specviz-tokens .tok", timeout=30_000)
        page.wait_for_selector("#specviz-status:has-text('recorded example')", timeout=30_000)
        # the prompt box holds the prompt of the recorded example on display
        from specviz import trace
        from specviz.examples import example_traces, landing_example

        shown = trace.load(example_traces()[landing_example()])[0].prompt
        page.wait_for_function("(p) => document.querySelector('#specviz-prompt textarea').value === p", arg=shown,
                               timeout=30_000)
        # choosing a stopping rule shows its parameters, with their defaults from the registry
        page.get_by_text("When drafting stops").click()
        page.click("#specviz-stop-rule input")
        page.get_by_role("option", name="schedule").click()
        page.wait_for_selector("#specviz-stop-about:has-text('Draft-length schedule')", timeout=30_000)
        grow = page.get_by_label("grow")
        grow.wait_for(state="visible", timeout=30_000)
        assert grow.input_value() == "2"
        page.click("#specviz-stop-rule input")
        page.get_by_role("option", name="static").click()
        grow.wait_for(state="hidden", timeout=30_000)

        page.fill("#specviz-prompt textarea", PROMPT)
        page.click("#specviz-run")
        page.wait_for_selector("#specviz-status:has-text('▶ running')", timeout=60_000)  # streaming
        page.wait_for_selector("#specviz-status:has-text('✔ done')", timeout=120_000)
        page.wait_for_selector("#specviz-tree .js-plotly-plot .scatterlayer .point", timeout=30_000)
        page.wait_for_selector("#specviz-entropy .js-plotly-plot .scatterlayer .point", timeout=30_000)

        tokens = page.locator("#specviz-tokens .tok")
        assert tokens.count() >= 10
        accepted = page.locator("#specviz-tokens .tok-accepted")
        assert accepted.count() >= 1, "pld on a summary should accept some drafts"
        bg = accepted.first.evaluate("el => getComputedStyle(el).backgroundColor")
        assert bg not in ("rgba(0, 0, 0, 0)", "transparent"), "accepted tokens are colored"
        assert "acceptance" in accepted.first.get_attribute("title")
        assert page.locator("#specviz-legend:has-text('accepted draft')").count() == 1
        assert "Step" in page.inner_text("#specviz-explain")
        assert page.locator("#specviz-metrics table").count() == 1
        assert page.locator("#specviz-metrics-plot .js-plotly-plot").count() == 1

        # look back at a step with a rejected draft: type its number into the step box
        rejected = page.locator("#specviz-tokens .tok-rejected")
        if rejected.count():
            step = int(rejected.first.get_attribute("title").split("(step ")[1].split(")")[0])
            box = page.locator("#specviz-step input[type=number]")
            box.fill(str(step))
            box.press("Enter")
            page.wait_for_selector(f"#specviz-explain:has-text('Step {step}:')", timeout=30_000)
            assert "rejected" in page.inner_text("#specviz-explain")
            page.wait_for_selector("#specviz-tree .js-plotly-plot .scatterlayer .point", timeout=30_000)
        page.wait_for_timeout(300)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # race mode: both sides stream into their own panes
        page.fill("#specviz-prompt textarea", PROMPT)
        page.click("#specviz-race")
        page.wait_for_selector("#specviz-race-score:has-text('Speedup so far')", timeout=120_000)
        page.wait_for_function("document.querySelector('#specviz-race-score').innerText.split('finished').length > 2",
                               timeout=180_000)
        assert page.locator("#specviz-race-spec .tok").count() >= 10
        assert page.locator("#specviz-race-ar .tok-target").count() >= 10
        page.screenshot(path=str(SCREENSHOT.with_name("screenshot-race.png")), full_page=True)
        browser.close()
    assert not outside, f"the page tried to reach the network: {outside[:5]}"
    assert not errors, errors
    assert SCREENSHOT.stat().st_size > 20_000
