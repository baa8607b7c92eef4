"""The page with a vision-language target (SPECVIZ_VLM: a tiny random SmolVLM-shaped model saved by the
test): the image input appears only for that target, a run on an uploaded image streams into the same
views, and an image with a text-only target is one toast. The screenshot goes to assets/ to be looked at."""
import os
import shutil

import pytest

from test_browser import ARGS, ASSETS, BADGES, CHROMIUM, launched, open_page, pick
from test_vlm import saved_tiny_smolvlm

from specviz import models

pytestmark = [
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium (make chromium)"),
    pytest.mark.skipif(models.status("smollm2-135m") != "ready", reason="smollm2-135m is not installed"),
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),
]


@pytest.fixture(scope="module")
def vlm_url(tmp_path_factory):
    path = saved_tiny_smolvlm(tmp_path_factory.mktemp("vlm") / "tiny-smolvlm")
    before = os.environ.get("SPECVIZ_VLM")
    os.environ["SPECVIZ_VLM"] = str(path)
    demo, address = launched()
    yield address, str(path)
    demo.close()
    if before is None:
        os.environ.pop("SPECVIZ_VLM", None)
    else:
        os.environ["SPECVIZ_VLM"] = before


def test_an_image_run_with_a_vision_language_target(vlm_url):
    playwright = pytest.importorskip("playwright.sync_api")
    url, path = vlm_url
    outside, errors = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = open_page(browser, url, 1280, 900, outside, errors)
        assert not page.locator("#specviz-image").is_visible()  # a text target: no image input
        page.fill("#specviz-prompt textarea", "What is in the picture?")
        page.click("#specviz-target input")  # its label is the path (slashes): picked by its description
        page.get_by_role("option").filter(has_text="vision-language").first.click()
        page.wait_for_selector("#specviz-image", state="visible", timeout=10_000)
        # the page's default drafter (auto) reads the target's states, which a VLM's hold image positions: the
        # menu falls back to prompt lookup and says which drafters it leaves out
        page.wait_for_selector("#specviz-drafter-note:has-text('not offered')", timeout=10_000)
        assert page.input_value("#specviz-drafter-menu input").startswith("pld")
        page.locator("#specviz-image input[type=file]").set_input_files(str(ASSETS / "images" / "red-ball-blue-box.png"))
        page.wait_for_selector("#specviz-image img", timeout=10_000)
        page.click("#specviz-run")
        page.wait_for_selector("#specviz-status:has-text('tiny-smolvlm'):has-text('✔ done')", timeout=120_000)
        status = page.inner_text("#specviz-status")
        assert "tiny-smolvlm" in status and "pld" in status
        assert page.locator("#specviz-tokens .tok").count() > 0
        assert sum(1 for el in page.locator(BADGES).all() if el.is_visible()) == 0
        page.screenshot(path=str(ASSETS / "screenshot-vlm.png"), full_page=False)
        # back to the text target: the image input hides and is cleared, so the next run is text alone
        pick(page, "#specviz-target", "smollm2-135m")
        page.wait_for_selector("#specviz-image", state="hidden", timeout=10_000)
        browser.close()
    assert not outside and not errors, (outside, errors)
