"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium):
load it, upload a photo, wait for the result, check it is a real RGBA image, save a screenshot."""
from __future__ import annotations

import base64
import io
import os
import shutil
import threading

import pytest
from conftest import make_settings, photo, save_image
from PIL import Image
from werkzeug.serving import make_server

import API

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Where to keep the screenshots (docs/: U2NET_SCREENSHOTS=docs): web-page.png, web-page-phone.png
SCREENSHOTS = os.environ.get("U2NET_SCREENSHOTS")


def need_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def serve(tmp_path, random_weights, runtime, **changes):
    root = tmp_path / "OpenCloneFS"
    root.mkdir()
    app = API.create_app(make_settings(root, random_weights, **changes), runtime=runtime)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def live_server(tmp_path, random_weights, runtime):
    server = serve(tmp_path, random_weights, runtime)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


TOKEN = "page-token-0123456789abcdef"


@pytest.fixture
def guarded_server(tmp_path, random_weights, runtime):
    server = serve(tmp_path, random_weights, runtime, api_token=TOKEN)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def wait_for_outcome(browser) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")


@pytest.fixture
def browser(tmp_path):
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_a_photo_and_get_a_real_rgba_cutout(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    picture = save_image(tmp_path / "portrait.png", photo(320, 240))
    browser.get(live_server + "/")
    assert "Background removal" in browser.title
    # Nothing on the page may come from elsewhere: it must work on an offline machine.
    sources = browser.execute_script(
        "return [...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href)")
    assert all(not s or s.startswith((live_server, "blob:", "data:")) for s in sources)

    browser.find_element(By.ID, "file").send_keys(str(picture))
    Select(browser.find_element(By.ID, "mode")).select_by_value("soft")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    status = browser.find_element(By.ID, "status").text
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status
    assert "320x240" in status and "mode soft" in status

    result = result_image(browser)
    assert result.format == "PNG" and result.mode == "RGBA" and result.size == (320, 240)
    assert browser.execute_script("return document.getElementById('mask').naturalWidth") == 320
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("download") == "portrait-nobg.png" and link.is_displayed()

    keep_screenshot(browser, tmp_path, "web-page.png")


def keep_screenshot(browser, tmp_path, name: str) -> None:
    shot = tmp_path / name
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0
    if SCREENSHOTS:
        shutil.copy(shot, os.path.join(SCREENSHOTS, name))


def result_image(browser) -> Image.Image:
    """The result as the page holds it: its blob URL fetched and decoded here."""
    encoded = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('result').src).then(r => r.arrayBuffer()).then(buf => {
          let s = ''; new Uint8Array(buf).forEach(b => s += String.fromCharCode(b));
          done(btoa(s));
        });""")
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


def api_calls(browser) -> int:
    return browser.execute_script("return performance.getEntriesByType('resource')"
                                  ".filter(e => e.name.includes('/api/remove')).length")


def test_keyboard_alone_reaches_every_control_and_runs_it(browser, live_server, tmp_path):
    """Tab reaches the file picker (visually hidden, still focusable) and then every control,
    and Enter on the button runs the cut-out; one request brings the result and the mask."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    picture = save_image(tmp_path / "portrait.png", photo(200, 150))
    browser.get(live_server + "/")

    def tab() -> str:  # a real key press, to whatever has the focus
        ActionChains(browser).send_keys(Keys.TAB).perform()
        active = browser.switch_to.active_element
        return active.get_attribute("id") or active.text

    seen = [tab()]
    while seen[-1] != "file" and len(seen) < 5:
        seen.append(tab())
    assert seen[-1] == "file", seen
    assert browser.execute_script("return getComputedStyle(document.getElementById('drop'))"
                                  ".outlineStyle") != "none"  # the focus shows on the drop zone
    # the operating system's file dialog is out of a headless browser's reach: the file is given
    # to the focused picker as a user's choice would be
    browser.switch_to.active_element.send_keys(str(picture))
    reached = [tab()]
    while reached[-1] != "go" and len(reached) < 20:
        reached.append(tab())
    assert {"mode", "subject_filter", "crop", "background", "go"} <= set(reached), reached
    browser.execute_script("window.progressSeen = []; const p = document.getElementById('progress');"
                           "new MutationObserver(() => window.progressSeen.push(!p.hidden))"
                           ".observe(p, {attributes: true});")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert wait_for_outcome(browser) == "done", browser.find_element(By.ID, "status").text
    assert True in browser.execute_script("return window.progressSeen")  # progress was shown
    assert api_calls(browser) == 1
    assert browser.execute_script("return document.getElementById('mask').naturalWidth") == 200
    assert result_image(browser).size == (200, 150)


def test_at_phone_width_nothing_overflows_and_the_result_fills_the_screen(browser, live_server,
                                                                          tmp_path):
    from selenium.webdriver.common.by import By

    browser.set_window_size(390, 844)
    picture = save_image(tmp_path / "portrait.png", photo(320, 400))
    browser.get(live_server + "/")
    width = browser.execute_script("return window.innerWidth")
    assert width <= 390
    browser.find_element(By.ID, "file").send_keys(str(picture))
    browser.find_element(By.ID, "go").click()
    assert wait_for_outcome(browser) == "done"
    layout = browser.execute_script("""
        const d = document.getElementById('drop'), r = document.getElementById('result');
        return {page: document.documentElement.scrollWidth, drop: [d.scrollWidth, d.clientWidth],
                result: r.getBoundingClientRect().width};""")
    assert layout["page"] <= width, layout  # no sideways scrolling
    assert layout["drop"][0] <= layout["drop"][1], layout  # the drop zone's text is not cut off
    assert layout["result"] >= width - 60, layout  # one column: the result the screen's width
    keep_screenshot(browser, tmp_path, "web-page-phone.png")


def test_a_new_file_or_an_error_clears_the_old_result(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By

    good = save_image(tmp_path / "portrait.png", photo(120, 90))
    bogus = tmp_path / "not-an-image.png"
    bogus.write_bytes(b"plain text pretending to be a png")
    browser.get(live_server + "/")

    def on_screen():
        return browser.execute_script(
            "return ['mask', 'result'].filter(id => document.getElementById(id).hasAttribute('src'))"
            ".concat(document.getElementById('download').hidden ? [] : ['download'])")

    browser.find_element(By.ID, "file").send_keys(str(good))
    browser.find_element(By.ID, "go").click()
    assert wait_for_outcome(browser) == "done"
    assert on_screen() == ["mask", "result", "download"]
    browser.find_element(By.ID, "file").send_keys(str(bogus))
    assert on_screen() == []  # the old result is not the new file's
    browser.find_element(By.ID, "go").click()
    assert wait_for_outcome(browser) == "error"
    assert on_screen() == []
    assert "not a decodable image" in browser.find_element(By.ID, "status").text
    browser.find_element(By.ID, "file").send_keys(str(good))
    browser.find_element(By.ID, "go").click()
    assert wait_for_outcome(browser) == "done"
    assert browser.find_element(By.ID, "status").get_attribute("class") == ""
    assert api_calls(browser) == 3  # one per click


def test_background_crop_and_padding_controls_reach_the_service(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    picture = save_image(tmp_path / "portrait.png", photo(160, 120))
    beach = save_image(tmp_path / "beach.png", photo(90, 60, seed=4))
    browser.get(live_server + "/")
    browser.find_element(By.ID, "file").send_keys(str(picture))
    background = Select(browser.find_element(By.ID, "background"))

    def run() -> tuple[Image.Image, str]:
        browser.find_element(By.ID, "go").click()
        assert wait_for_outcome(browser) == "done", browser.find_element(By.ID, "status").text
        sent = browser.execute_script("return performance.getEntriesByType('resource')"
                                      ".filter(e => e.name.includes('/api/remove')).pop().name")
        return result_image(browser), sent

    background.select_by_value("color")
    browser.execute_script("const c = document.getElementById('bg_color'); c.value = '#ff0000';"
                           "c.dispatchEvent(new Event('input'));")
    image, sent = run()
    assert image.format == "JPEG" and image.size == (160, 120) and "bg_color=%23ff0000" in sent
    background.select_by_value("blur")
    image, sent = run()
    assert image.format == "JPEG" and "bg_blur=20" in sent
    background.select_by_value("image")
    browser.find_element(By.ID, "bg_image").send_keys(str(beach))
    Select(browser.find_element(By.ID, "bg_fit")).select_by_value("contain")
    image, sent = run()
    assert image.format == "JPEG" and "bg_fit=contain" in sent and "bg_blur" not in sent
    background.select_by_value("blur")  # back from the picture (blur 0 there): blurs again
    image, sent = run()
    assert image.format == "JPEG" and "bg_blur=20" in sent
    background.select_by_value("none")
    browser.find_element(By.ID, "crop").click()
    browser.find_element(By.ID, "padding").send_keys("10%")
    image, sent = run()
    assert image.format == "PNG" and image.mode == "RGBA" and "crop=1" in sent \
        and "padding=10%25" in sent
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("download") == "portrait-nobg.png"


def test_errors_are_shown_on_the_page(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bogus = tmp_path / "not-an-image.png"
    bogus.write_bytes(b"plain text pretending to be a png")
    browser.get(live_server + "/")
    browser.find_element(By.ID, "file").send_keys(str(bogus))
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error")
    assert "not a decodable image" in browser.find_element(By.ID, "status").text


def test_with_a_token_the_page_asks_for_it_and_then_works(browser, guarded_server, tmp_path):
    """U2NET_API_TOKEN set: the page loads (its files are public), finds out that the API needs
    the token, shows the field, and sends the token once it is typed in. The strict CSP holds:
    the page works with no inline code and reports no policy violation."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    picture = save_image(tmp_path / "portrait.png", photo(120, 90))
    browser.get(guarded_server + "/")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-token") == "needed")
    field = browser.find_element(By.ID, "token")
    assert field.is_displayed()
    browser.find_element(By.ID, "file").send_keys(str(picture))
    browser.find_element(By.ID, "go").click()
    assert wait_for_outcome(browser) == "error"
    assert "Bearer" in browser.find_element(By.ID, "status").text
    field.send_keys(TOKEN)
    browser.find_element(By.ID, "go").click()
    assert wait_for_outcome(browser) == "done", browser.find_element(By.ID, "status").text
    assert "120x90" in browser.find_element(By.ID, "status").text
    errors = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not errors, errors


def test_the_model_select_offers_the_served_models_and_runs_the_chosen_one(browser, tmp_path,
                                                                           random_weights,
                                                                           runtime):
    """Issue 12: with two models served, the page lists them (the default first) and the result
    says which one cut the photo out; with one, the select stays hidden (the other tests)."""
    from helpers import write_model
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from u2net.runtime import ModelRuntime, RuntimeOptions

    tiny = ModelRuntime.load(RuntimeOptions(model=str(write_model(tmp_path)), device="cpu"))
    tiny.start(background=False)
    server = serve(tmp_path, random_weights, [runtime, tiny])
    try:
        picture = save_image(tmp_path / "p.png", photo(160, 120))
        browser.get(f"http://127.0.0.1:{server.server_port}/")
        select = Select(browser.find_element(By.ID, "model"))
        WebDriverWait(browser, 30).until(lambda d: len(select.options) == 2)
        assert [o.text for o in select.options] == ["u2netp", "tiny"]
        assert browser.find_element(By.ID, "model-row").is_displayed()
        select.select_by_value("tiny")
        browser.find_element(By.ID, "file").send_keys(str(picture))
        browser.find_element(By.ID, "go").click()
        assert wait_for_outcome(browser) == "done"
        assert "model tiny" in browser.find_element(By.ID, "status").text
    finally:
        server.shutdown()
        tiny.close()



def test_the_api_page_is_served_from_here_and_try_it_out_works(browser, live_server, tmp_path):
    """/docs: Swagger UI from the swagger-ui-bundle package, nothing from elsewhere, no policy
    violation, and "try it out" on the website's call cuts out a real file in the shared root."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    source = save_image(tmp_path / "OpenCloneFS/Clones/4/clone-image-with-bg.png", photo(96, 72))
    browser.get(live_server + "/docs")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    sources = browser.execute_script(
        "return [...document.querySelectorAll('script[src],link[href]')].map(e => e.src || e.href)")
    assert sources and all(s.startswith(live_server) for s in sources), sources
    operation = browser.find_element(By.ID, "operations-default-post_remove_background")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    WebDriverWait(browser, 10).until(lambda d: operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    operation.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    operation.find_element(By.CSS_SELECTOR, ".execute").click()
    status = WebDriverWait(browser, 60).until(lambda d: operation.find_elements(
        By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"))
    assert status[0].text.strip() == "200"
    out = Image.open(source.parent / "clone-image-no-bg.png")
    assert (out.mode, out.size) == ("RGBA", (96, 72))
    errors = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not errors, errors
