"""The playground page (server/http/playground.py + static/) in a real browser: Playwright drives
Debian's /usr/bin/chromium (headless; never a downloaded browser) against the real server.

A person's path through the page, checked on pixels: upload, paint a stroke with the mouse (and
with a finger), stream against the exported tiny SD model and the built-in model, download the
result and compare it with the upload outside the stroke; the page's curl and Python code rerun
outside the browser give the same image; an empty mask shows the API's message; cancel stops the
server's denoising; the key lives in sessionStorage only. Screenshots go to docs/images/.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from tests.helpers import missing_package, png

CHROMIUM = "/usr/bin/chromium"
# the background-networking flags keep Chromium from calling out (the test machines have no
# internet, and refused connections slow it down)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "sk-test-playground"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
#: pixels of the seam the server blends around the edit region, plus rounding of the stroke
SEAM_PX = 6

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=missing_package("chromium", f"no {CHROMIUM}")
)


# ------------------------------------------------------------------ images


def landscape(h: int, w: int) -> np.ndarray:
    """uint8 HxWx3: sky gradient, a sun, green hills, and a red box (the thing to remove) at
    the centre, covering the middle 12% x 14% of the picture."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    t = yy / h
    img[..., 0] = 110 + 90 * t
    img[..., 1] = 160 + 60 * t
    img[..., 2] = 235 - 30 * t
    sun = (xx - 0.8 * w) ** 2 + (yy - 0.22 * h) ** 2 < (0.07 * w) ** 2
    img[sun] = (255, 226, 120)
    hill = yy > h * (0.62 + 0.06 * np.sin(xx / w * 6.0))
    img[hill] = np.stack([60 + 0 * xx, 140 - 40 * t, 70 + 0 * xx], -1)[hill]
    cy, cx = h // 2, w // 2
    img[cy - int(0.07 * h) : cy + int(0.07 * h), cx - int(0.06 * w) : cx + int(0.06 * w)] = (
        205,
        30,
        40,
    )
    return img.clip(0, 255).astype(np.uint8)


def read_png(path: Path | str) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def outside(shape, box, grow: int) -> np.ndarray:
    """bool HxW: True outside ``box`` (x0, y0, x1, y1 in image pixels) grown by ``grow``."""
    h, w = shape[:2]
    x0, y0, x1, y1 = box
    keep = np.ones((h, w), bool)
    keep[
        max(0, int(y0) - grow) : min(h, int(np.ceil(y1)) + grow),
        max(0, int(x0) - grow) : min(w, int(np.ceil(x1)) + grow),
    ] = False
    return keep


def save_screenshot(shot: bytes, path: Path) -> None:
    """Write a screenshot for the README only when the page looks different (over 1% of the
    pixels), so that a changed timing line does not touch docs/images/ on every run."""
    new = np.array(Image.open(io.BytesIO(shot)).convert("RGB"))
    if path.exists():
        old = read_png(path)
        if old.shape == new.shape and (old != new).any(-1).mean() < 0.01:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(shot)


def denoising_steps(base: str) -> float:
    """The server's denoising row-step counter, all models together."""
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^inpaint_denoising_steps_total(?:\{[^}]*\})? (\S+)$", text, re.M)
    )


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def served(start_server, tiny_model_fp32, tmp_path_factory):
    """A server with a key: the exported tiny SD model (default) and the built-in model."""
    models = tmp_path_factory.mktemp("models")
    (models / "tiny-sd").symlink_to(tiny_model_fp32, target_is_directory=True)
    return start_server(
        ["--api-key", KEY, "--models-dir", str(models), "--provider", "cpu"], key=KEY, timeout=120
    )


@pytest.fixture(scope="module")
def open_server(start_server, tmp_path_factory):
    """A server with auth off and only the built-in model."""
    srv, _ = start_server(["--no-auth", "--models-dir", str(tmp_path_factory.mktemp("none"))])
    return srv.base


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    small, large = landscape(96, 128), landscape(1200, 1600)
    (folder / "small.png").write_bytes(png(small))
    (folder / "large.png").write_bytes(png(large))
    return {"dir": folder, "small": small, "large": large}


class Page:
    """A playground tab: the page, what went wrong in it (page errors, CSP reports), and the
    steps a person takes."""

    def __init__(self, browser, base: str, key: str | None = None, path: str = "/", **context):
        self.context = browser.new_context(accept_downloads=True, **context)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(m.text)
                if "Content Security Policy" in m.text or "Refused to" in m.text
                else None
            ),
        )
        self.page.goto(base + path)
        self.page.wait_for_selector("html[data-ready=true]", timeout=15_000)
        if key:
            self.by("api-key").fill(key)
        self.page.wait_for_selector("[data-testid=model] option", state="attached")

    def by(self, testid: str):
        return self.page.get_by_test_id(testid)

    def upload(self, path: Path) -> None:
        """Choose ``path`` in the file input; wait until the page shows it (and sized the mask)."""
        w, h = Image.open(path).size
        self.by("image-input").set_input_files(str(path))
        self.page.wait_for_selector(f"#stage[data-image='{w}x{h}']")

    def stroke(self, a: tuple[float, float], b: tuple[float, float], brush: int = 20):
        """Drag the mouse from ``a`` to ``b`` (fractions of the displayed image) with a brush of
        ``brush`` CSS pixels; return the painted box in image pixels (x0, y0, x1, y1)."""
        self.by("brush-size").fill(str(brush))
        box = self.by("mask-canvas").bounding_box()
        width = self.page.evaluate("document.querySelector('[data-testid=mask-canvas]').width")
        scale = width / box["width"]
        (ax, ay), (bx, by) = [
            (box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in (a, b)
        ]
        self.page.mouse.move(ax, ay)
        self.page.mouse.down()
        self.page.mouse.move(bx, by, steps=10)
        self.page.mouse.up()
        r = brush / 2 + 1
        return (
            (min(ax, bx) - r - box["x"]) * scale,
            (min(ay, by) - r - box["y"]) * scale,
            (max(ax, bx) + r - box["x"]) * scale,
            (max(ay, by) + r - box["y"]) * scale,
        )

    def unlabelled(self) -> list[str]:
        """Visible controls without an accessible name, and buttons without an aria-label."""
        return self.page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button, [tabindex]')]
              .filter((el) => el.getClientRects().length > 0)
              .filter((el) => (el.tagName === 'BUTTON' && !el.getAttribute('aria-label'))
                || !((el.labels && el.labels.length) || el.getAttribute('aria-label')
                     || el.getAttribute('aria-labelledby')))
              .map((el) => el.id || el.outerHTML.slice(0, 80))"""
        )

    def code(self) -> tuple[str, str]:
        return self.by("code-curl").inner_text(), self.by("code-python").inner_text()

    def submit(self) -> str:
        """Click Generate; return the selector of this run's progress bar (data-run counts)."""
        run = int(self.by("progress").get_attribute("data-run") or 0) + 1
        self.by("submit").click()
        return f"[data-testid=progress][data-run='{run}']"

    def submit_and_wait(self, timeout_ms: int = 60_000) -> str:
        """Click Generate and wait until this run is over: "done" or "error"."""
        bar = self.submit()
        self.page.wait_for_selector(
            f"{bar}[data-state=done], {bar}[data-state=error]", timeout=timeout_ms
        )
        return self.by("progress").get_attribute("data-state")

    def download(self, testid: str, index: int = 0) -> Path:
        with self.page.expect_download() as info:
            self.by(testid).nth(index).click()
        return Path(info.value.path())

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems


# ------------------------------------------------------------------ tests


def test_page_is_public_with_its_own_security_headers(served):
    base = served[0].base
    for path in ("/", "/playground"):
        with urllib.request.urlopen(base + path) as r:  # no key: the page itself is public
            html = r.read().decode()
            csp = r.headers["Content-Security-Policy"]
            assert r.headers["Content-Type"].startswith("text/html")
            assert r.headers["X-Content-Type-Options"] == "nosniff"
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["default-src"] == "'none'"
    assert directives["img-src"] == "'self' blob: data:"
    # every script is a module file of this origin: nothing inline, nothing remote
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all(
        'src="/playground/static/' in a and not body.strip() for a, body in scripts
    )
    assert "http://" not in html and "https://" not in html
    with urllib.request.urlopen(base + "/playground/static/main.js") as r:
        assert r.headers["Content-Type"].startswith("text/javascript")
        assert r.headers["Content-Security-Policy"] == csp
    for bad in ("/playground/static/nope.js", "/playground/static/..%2Fplayground.py"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + bad)
        assert err.value.code == 404 and "error" in json.loads(err.value.read())
    # the API behind it still wants the key
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/v1/models")
    assert err.value.code == 401


def test_sd_stream_previews_result_and_the_code_panel(served, browser, files, tmp_path):
    tab = Page(browser, served[0].base, KEY, viewport=DESKTOP)
    page = tab.page
    # the key: this tab's sessionStorage, never localStorage
    stored = page.evaluate(
        "[sessionStorage.getItem('inpaint-playground.api-key'), localStorage.length]"
    )
    assert stored == [KEY, 0]
    options = page.eval_on_selector_all("[data-testid=model] option", "os => os.map(o => o.value)")
    assert sorted(options) == ["opencv-telea-inpaint", "tiny-sd"]
    assert tab.by("model").input_value() == "tiny-sd"  # the server's default
    assert "reads the prompt" in tab.by("model").locator("option:checked").inner_text()
    assert tab.by("steps").is_visible() and tab.by("scheduler").is_visible()

    tab.upload(files["dir"] / "small.png")
    box = tab.stroke((0.35, 0.45), (0.65, 0.55), brush=12)
    tab.by("prompt").fill("a wooden bench")
    tab.by("steps").fill("6")
    curl, python = tab.code()
    seed = int(re.search(r"-F seed=(\d+)", curl).group(1))
    assert "-F model=tiny-sd" in curl and "-F steps=6" in curl and "-F partial_images=3" in curl
    assert f'"seed": {seed}' in python and 'model="tiny-sd"' in python
    with page.expect_download() as info:
        page.click("#save-mask")
    mask_path = Path(info.value.path())

    assert tab.submit_and_wait() == "done", tab.by("error").inner_text()
    progress = tab.by("progress")
    assert progress.get_attribute("data-partials") == "3"  # live previews arrived
    assert progress.get_attribute("data-completed") == "1"
    done, total = map(int, progress.get_attribute("data-steps").split("/"))  # step events
    assert done == total >= 6
    assert tab.by("result-image").count() == 1
    assert tab.unlabelled() == []  # every control, the result's included, has a label
    assert f"seed {seed}" in page.locator(".result .seed").inner_text()
    out = read_png(tab.download("download"))
    src = files["small"]
    assert out.shape == src.shape  # size auto = the input's size
    keep = outside(src.shape, box, SEAM_PX)
    assert np.array_equal(out[keep], src[keep])  # only the painted region changed
    assert np.abs(out[~keep].astype(int) - src[~keep]).mean() > 5

    # the mask the page sent: OpenAI's convention at the image's size, alpha 0 inside the stroke
    m = np.array(Image.open(mask_path))
    assert m.shape == (96, 128, 4) and set(np.unique(m[..., 3])) == {0, 255}
    assert (m[..., 3][keep] == 255).all()

    # the code panel is the same request: run it outside the browser, get the same pixels
    shutil.copy(files["dir"] / "small.png", tmp_path / "image.png")
    shutil.copy(mask_path, tmp_path / "mask.png")
    env = {"INPAINT_API_KEY": KEY, "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=env, check=True, timeout=120)
    assert np.array_equal(read_png(tmp_path / "edited-0.png"), out)
    if shutil.which("curl"):
        sse = subprocess.run(
            ["bash", "-c", curl],
            cwd=tmp_path,
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
        ).stdout.decode()
        done = [json.loads(d) for d in re.findall(r"^data: (.*)$", sse, re.M)]
        final = [d for d in done if d.get("type") == "image_edit.completed"]
        assert len(final) == 1
        steps = [d for d in done if d.get("type") == "image_edit.progress"]
        assert steps[0]["steps_done"] == 0 and steps[-1]["steps_done"] == steps[-1]["steps_total"]
        got = np.array(
            Image.open(io.BytesIO(base64.b64decode(final[0]["b64_json"]))).convert("RGB")
        )
        assert np.array_equal(got, out)

    # n = 2: two results in image order, made with seed and seed + 1
    tab.by("n").fill("2")
    seed = int(re.search(r"-F seed=(\d+)", tab.code()[0]).group(1))
    assert tab.submit_and_wait() == "done", tab.by("error").inner_text()
    assert tab.by("progress").get_attribute("data-partials") == "6"
    done_2, total_2 = map(int, tab.by("progress").get_attribute("data-steps").split("/"))
    assert done_2 == total_2 == 2 * total  # steps over both images
    captions = page.locator(".result .seed").all_inner_texts()
    assert captions == [f"Result 1 · seed {seed}", f"Result 2 · seed {seed + 1}"]
    tab.close()


def test_empty_mask_shows_the_api_message(served, browser, files):
    _, client = served
    small = files["small"]
    opaque = np.zeros(small.shape[:2] + (4,), np.uint8)
    opaque[..., 3] = 255  # opaque black: keep every pixel (what the page sends unpainted)
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(
            image=("a.png", png(small), "image/png"),
            mask=("m.png", png(opaque), "image/png"),
            prompt="x",
        )
    message = err.value.body["message"]
    # the key handed over in the address (what `make serve` prints): moved to sessionStorage
    # and out of the address bar
    tab = Page(browser, served[0].base, None, path=f"/#key={KEY}", viewport=DESKTOP)
    assert tab.page.url == served[0].base + "/"
    assert tab.page.evaluate("sessionStorage.getItem('inpaint-playground.api-key')") == KEY
    assert tab.by("api-key").input_value() == KEY
    tab.upload(files["dir"] / "small.png")
    tab.by("prompt").fill("x")
    assert tab.submit_and_wait() == "error"
    shown = tab.by("error")
    assert shown.is_visible() and shown.inner_text().startswith(message)
    assert "(field: mask)" in shown.inner_text()
    assert tab.by("submit").is_enabled() and tab.by("cancel").is_disabled()
    # keyboard: Tab moves on from the prompt and the focus is visible
    tab.by("prompt").click()
    tab.page.keyboard.press("Tab")
    focused = tab.page.evaluate(
        "[document.activeElement.id, getComputedStyle(document.activeElement).outlineStyle]"
    )
    assert focused == ["negative_prompt", "solid"]
    # the browser enforces the page's policy: an injected inline script does not run
    ran = tab.page.evaluate(
        """() => { const s = document.createElement('script');
        s.textContent = 'window.injected = true'; document.head.append(s);
        return window.injected === true; }"""
    )
    assert ran is False
    tab.page.wait_for_timeout(100)  # the console report arrives asynchronously
    assert any("inline script" in p for p in tab.problems), tab.problems
    tab.problems.clear()
    tab.close()


def test_cancel_closes_the_stream_and_the_server_stops(served, browser, files):
    base = served[0].base
    tab = Page(browser, base, KEY, viewport=DESKTOP)
    tab.upload(files["dir"] / "small.png")
    tab.stroke((0.2, 0.2), (0.8, 0.8), brush=30)
    tab.by("prompt").fill("slow")
    tab.by("n").fill("10")
    tab.by("steps").fill("150")
    total = 10 * 150
    before = denoising_steps(base)
    bar = tab.submit()
    tab.page.wait_for_selector(f"{bar}:not([data-partials='0'])", timeout=60_000)
    tab.by("cancel").click()
    tab.page.wait_for_selector(f"{bar}[data-state=cancelled]", timeout=5_000)
    assert tab.by("error").is_hidden()
    time.sleep(1.5)  # the server polls for hang-ups every 0.25 s and stops at the next step
    mid = denoising_steps(base)
    time.sleep(1.5)
    after = denoising_steps(base)
    assert 0 < mid - before < total  # it ran, and stopped before finishing
    assert after == mid  # no more work for the closed stream
    assert tab.by("result-image").count() == 0
    tab.close()


def test_builtin_model_without_auth_full_size_touch_and_screenshots(open_server, browser, files):
    tab = Page(browser, open_server, None, viewport=DESKTOP)
    page = tab.page
    assert tab.by("model").input_value() == "opencv-telea-inpaint"
    assert "ignores the prompt" in tab.by("model").locator("option:checked").inner_text()
    assert tab.by("steps").is_hidden() and tab.by("seed").is_hidden()  # no sampling knobs
    tab.upload(files["dir"] / "large.png")
    shown = tab.by("mask-canvas").bounding_box()["width"]
    assert shown < 1600  # a large photo is shown scaled...
    boxes = [tab.stroke((0.41, v), (0.59, v), brush=60) for v in (0.45, 0.5, 0.55)]
    # keyboard undo / redo of the last stroke (focus on the brush slider, not in a text field)
    assert tab.by("redo").is_disabled()
    page.keyboard.press("Control+z")
    assert tab.by("redo").is_enabled()
    page.keyboard.press("Control+Shift+Z")
    assert tab.by("redo").is_disabled()
    tab.by("prompt").fill("remove the red box")
    curl, python = tab.code()
    assert "Authorization" not in curl and "--no-auth" in python
    assert tab.submit_and_wait() == "done", tab.by("error").inner_text()
    assert tab.by("progress").get_attribute("data-completed") == "1"
    out = read_png(tab.download("download"))
    src = files["large"]
    assert out.shape == src.shape  # ... and sent (and answered) at full resolution
    box = (*np.min(boxes, 0)[:2], *np.max(boxes, 0)[2:])
    keep = outside(src.shape, box, SEAM_PX)
    assert np.array_equal(out[keep], src[keep])
    red = out[520:680, 708:892].astype(int)  # the red box: filled from the sky and the hills
    assert (red[..., 0] - red[..., 1]).mean() < 60
    # for the README: the page from the top down to the results
    page.evaluate("window.scrollTo(0, 0)")
    bottom = page.locator(".run").bounding_box()
    clip = {
        "x": 0,
        "y": 0,
        "width": DESKTOP["width"],
        "height": bottom["y"] + bottom["height"] + 16,
    }
    save_screenshot(page.screenshot(full_page=True, clip=clip), DESKTOP_SHOT)

    # edit again: the result becomes the input, with a fresh empty region
    page.get_by_test_id("use-as-input").click()
    expect(page.locator("#image-info")).to_contain_text("edited-1.png: 1600×1200 px")
    assert tab.by("undo").is_disabled()
    tab.close()

    # a phone: one column, no sideways scrolling, and a finger paints
    phone = Page(browser, open_server, None, viewport=PHONE, is_mobile=True, has_touch=True)
    page = phone.page
    phone.upload(files["dir"] / "large.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    rect = phone.by("mask-canvas").bounding_box()
    cdp = phone.context.new_cdp_session(page)
    y = rect["y"] + rect["height"] / 2
    xs = [rect["x"] + rect["width"] * f for f in (0.3, 0.4, 0.5, 0.6, 0.7)]
    touch = "Input.dispatchTouchEvent"
    cdp.send(touch, {"type": "touchStart", "touchPoints": [{"x": xs[0], "y": y}]})
    for x in xs[1:]:
        cdp.send(touch, {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send(touch, {"type": "touchEnd", "touchPoints": []})
    painted = page.evaluate(
        """() => { const c = document.querySelector('[data-testid=mask-canvas]');
        const d = c.getContext('2d').getImageData(0, c.height / 2, c.width, 1).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 127; return n / c.width; }"""
    )
    assert painted > 0.4  # the finger's stroke covers 0.3..0.7 of the middle row, plus the brush
    assert phone.by("undo").is_enabled()
    save_screenshot(page.screenshot(), PHONE_SHOT)
    phone.close()


def test_drop_paste_mask_file_and_mask_tools(open_server, browser, files, tmp_path):
    tab = Page(browser, open_server, None, viewport=DESKTOP)
    page = tab.page

    def hand_over(path: Path, how: str) -> None:
        """Drop ``path`` on the stage, or paste it, as a browser delivers a file."""
        page.evaluate(
            """([b64, how]) => {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const dt = new DataTransfer();
              dt.items.add(new File([bytes], 'handed.png', { type: 'image/png' }));
              const init = { bubbles: true, cancelable: true };
              if (how === 'drop') document.getElementById('stage')
                .dispatchEvent(new DragEvent('drop', { ...init, dataTransfer: dt }));
              else document.dispatchEvent(new ClipboardEvent('paste', { ...init, clipboardData: dt }));
            }""",
            [base64.b64encode(path.read_bytes()).decode(), how],
        )

    def sent_mask() -> np.ndarray:
        """The alpha of the mask the page would send (uint8 HxW, 0 = edit)."""
        with page.expect_download() as info:
            page.click("#save-mask")
        return np.array(Image.open(info.value.path()))[..., 3]

    hand_over(files["dir"] / "small.png", "drop")
    page.wait_for_selector("#stage[data-image='128x96']")
    region = np.full((96, 128, 4), 255, np.uint8)
    region[20:60, 10:50, 3] = 0  # OpenAI's convention: transparent = edit
    (tmp_path / "m.png").write_bytes(png(region))
    tab.by("mask-input").set_input_files(str(tmp_path / "m.png"))
    expect(tab.by("undo")).to_be_enabled()
    assert np.array_equal(sent_mask(), region[..., 3])
    tab.by("invert").click()
    assert np.array_equal(sent_mask(), 255 - region[..., 3])
    tab.by("clear").click()
    assert (sent_mask() == 255).all()  # nothing to edit: opaque everywhere
    tab.by("undo").click()
    tab.by("undo").click()
    assert np.array_equal(sent_mask(), region[..., 3])
    # erase part of the region with the brush
    tab.by("mode-erase").click()
    tab.stroke((0.0, 0.4), (1.0, 0.4), brush=8)
    erased = sent_mask()
    assert (erased[20:60, 10:50] == 255).any() and (erased[20:60, 10:50] == 0).any()
    assert (erased[~(region[..., 3] == 0)] == 255).all()  # erasing never adds to the region

    # a mask of another size is refused with both sizes named
    (tmp_path / "wrong.png").write_bytes(png(np.zeros((10, 10, 4), np.uint8)))
    tab.by("mask-input").set_input_files(str(tmp_path / "wrong.png"))
    expect(tab.by("error")).to_contain_text("10×10 px but the image is 128×96 px")

    hand_over(files["dir"] / "large.png", "paste")
    page.wait_for_selector("#stage[data-image='1600x1200']")
    assert tab.by("undo").is_disabled() and (sent_mask() == 255).all()  # a new, empty region
    tab.close()


DESKTOP_SHOT = DOCS_IMAGES / "playground-desktop.png"
PHONE_SHOT = DOCS_IMAGES / "playground-phone.png"
