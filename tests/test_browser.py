"""The draw-a-digit page in a real browser: headless Chromium draws sample digits with the mouse and a finger.

Needs Debian's chromium and chromium-driver (.ci/run installs them) and selenium (the test extra); without
them the test is skipped, saying which is missing. IGNITE_MNIST_SCREENSHOT=docs/serve.png also saves a
screenshot of the page after the last digit.
"""

import base64
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, g, run_cli
from ignite_mnist import data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _missing() -> list:
    missing = [name for name, found in (("chromium", CHROMIUM), ("chromedriver (chromium-driver)", CHROMEDRIVER))
               if not found]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    return missing


pytestmark = pytest.mark.skipif(bool(_missing()), reason=f"no browser to test the page in: {', '.join(_missing())} "
                                "missing (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def good_release(tmp_path_factory):
    """A release that reads handwriting: one epoch on the bundled sample's 4,000 training digits (~91%)."""
    folder = tmp_path_factory.mktemp("browser")
    options = g(folder, "sample")
    assert run_cli(*options, "init", "--config-path", ROOT / "config" / "config.sample.json").returncode == 0
    assert run_cli(*options, "train", "--max-epochs", 1, "--device", "cpu").returncode == 0
    r = run_cli(*options, "export-release")
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def server_url(good_release):
    process = subprocess.Popen([sys.executable, "-m", "ignite_mnist", "serve", "--release", good_release, "--port", "0"],
                               stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    try:
        assert " on http://127.0.0.1:" in line, line
        yield line.split(" on ")[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=800,640", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def draw(driver, canvas, digit: np.ndarray, kind: str) -> None:
    """Draw a 28x28 digit on the canvas through the page's own pointer events (real WebDriver input, mouse or
    touch): one stroke along each run of ink in each row, scaled to the canvas."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    actions = ActionBuilder(driver, mouse=PointerInput(kind, kind), duration=0)
    width, height = canvas.rect["width"], canvas.rect["height"]
    ink = digit > 100

    def at(row, column):  # offsets from the canvas's centre, in CSS pixels
        return int((column + 0.5) * width / 28 - width / 2), int((row + 0.5) * height / 28 - height / 2)

    for row in range(28):
        column = 0
        while column < 28:
            if ink[row, column]:
                start = column
                while column < 28 and ink[row, column]:
                    column += 1
                actions.pointer_action.move_to(canvas, *at(row, start))
                actions.pointer_action.pointer_down()
                actions.pointer_action.move_to(canvas, *at(row, column - 1))
                actions.pointer_action.pointer_up()
            column += 1
    actions.perform()


def shown(driver) -> tuple:
    """(label, [top-3 rows as text]) once the page has its answer to everything drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.body.dataset.busy === '0' && document.getElementById('label').textContent !== ''"))
    label = driver.find_element("id", "label").text
    return label, [item.text.replace("\n", " ") for item in driver.find_elements("css selector", "#top3 li")]


def test_drawing_a_sample_digit_shows_its_label(browser, server_url):
    from selenium.webdriver.common.actions.interaction import POINTER_MOUSE, POINTER_TOUCH

    images, labels = data.read_split(*data.locate("mnist-sample", Path("unused"))["test"])
    client = httpx.Client(base_url=server_url, timeout=30)
    # three digits of different classes that the release reads for sure as they are in the sample
    chosen, seen = [], set()
    for image, label in zip(images.numpy(), labels.tolist()):
        answer = client.post("/predict", content=png(image)).json()
        if label not in seen and answer["label"] == label and answer["probability"] > 0.99:
            chosen.append((image, label))
            seen.add(label)
        if len(chosen) == 3:
            break

    browser.get(server_url)
    assert browser.title == "ignite-mnist: draw a digit"
    canvas = browser.find_element("id", "pad")
    for (image, label), kind in zip(chosen, (POINTER_MOUSE, POINTER_TOUCH, POINTER_MOUSE)):
        browser.find_element("id", "clear").click()
        draw(browser, canvas, image, kind)
        page_label, top3 = shown(browser)
        assert page_label == str(label), f"drew a {label} with the {kind}, the page shows {page_label} ({top3})"
        # the page shows the server's answer for what is on the canvas: its label and top-3 probabilities
        drawn = base64.b64decode(browser.execute_script("return document.getElementById('pad').toDataURL()")
                                 .split(",", 1)[1])
        answer = client.post("/predict", content=drawn).json()
        ranked = sorted(range(10), key=lambda i: -answer["probabilities"][i])[:3]
        assert page_label == answer["class"]
        assert top3 == [f"{i} {100 * answer['probabilities'][i]:.1f}%" for i in ranked]
    if os.environ.get("IGNITE_MNIST_SCREENSHOT"):
        browser.save_screenshot(os.environ["IGNITE_MNIST_SCREENSHOT"])

    browser.find_element("id", "clear").click()
    assert browser.find_element("id", "label").text == "" and not browser.find_elements("css selector", "#top3 li")
    ink = browser.execute_script("const c = document.getElementById('pad'); const d = c.getContext('2d')"
                                 ".getImageData(0, 0, c.width, c.height).data; let s = 0;"
                                 "for (let i = 0; i < d.length; i += 4) s += d[i]; return s;")
    assert ink == 0, "Clear leaves a black canvas"
    client.close()


@pytest.mark.parametrize("failure, message", [
    ("Promise.resolve(new Response(JSON.stringify({error: 'the body is too large'}), {status: 413}))",
     "the body is too large"),
    ("Promise.reject(new TypeError('Failed to fetch'))", "The server did not answer: TypeError: Failed to fetch"),
], ids=["refused", "offline"])
def test_an_error_takes_the_older_drawings_answer_off_the_page(browser, server_url, failure, message):
    """A failed request showed its error beside the label and top-3 of an earlier drawing."""
    from selenium.webdriver.common.actions.interaction import POINTER_MOUSE
    from selenium.webdriver.support.ui import WebDriverWait

    images, _ = data.read_split(*data.locate("mnist-sample", Path("unused"))["test"])
    browser.get(server_url)
    canvas = browser.find_element("id", "pad")
    draw(browser, canvas, images[0].numpy(), POINTER_MOUSE)
    assert shown(browser)[0] != ""
    browser.execute_script(f"window.fetch = () => {failure};")  # the next request fails so
    draw(browser, canvas, images[1].numpy(), POINTER_MOUSE)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return document.body.dataset.busy === '0' && document.getElementById('status').textContent !== ''"))
    assert browser.find_element("id", "status").text == message
    assert browser.find_element("id", "label").text == "" and not browser.find_elements("css selector", "#top3 li")
