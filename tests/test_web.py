"""The web page, driven in headless Chromium against a real server over a tiny collection."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike.demo import draw_image

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path("/tmp/lookalike-web.png")
COLOURS = ["red", "green", "blue", "yellow", "purple"]

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        "needs chromium and chromium-driver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
uvicorn = pytest.importorskip("uvicorn", reason="needs the server extra")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from conftest import serve_app  # noqa: E402
from lookalike import Collection  # noqa: E402
from lookalike.server.app import create_app  # noqa: E402
from lookalike.server.settings import ServerSettings  # noqa: E402

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download anything


@pytest.fixture(scope="module")
def photos(
    tiny_clip: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Collection, dict[int, Path]]:
    """A collection of 20 generated pictures with metadata; (collection, id -> file)."""
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("web")
    paths = []
    for i in range(20):
        path = root / "images" / f"pic{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        draw_image(i, (96 + 8 * (i % 4), 72 + 6 * (i % 3))).save(path)
        paths.append(path)
    col = Collection.create(root / "photos", spec, weights=weights)
    col.add_images(
        paths,
        metadata=[
            {"title": f"Picture {i}", "colour": COLOURS[i % len(COLOURS)], "n": i}
            for i in range(20)
        ],
    )
    ids = {}
    for path in paths:
        item = col.lookup(path)
        assert item is not None
        ids[item.id] = path
    return col, ids


@pytest.fixture(scope="module")
def base_url(photos: tuple[Collection, dict[int, Path]]) -> Iterator[str]:
    with serve_app(create_app({"photos": photos[0]})) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url(photos: tuple[Collection, dict[int, Path]]) -> Iterator[str]:
    settings = ServerSettings(api_keys=("sesame",))
    with serve_app(create_app({"photos": photos[0]}, settings, load_models=False)) as url:
        yield url


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console, for get_log
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(20)
    yield browser
    browser.quit()


def _wait(driver: webdriver.Chrome, condition, what: str, timeout: float = 10) -> object:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: condition(d), message=f"timed out waiting for {what}"
    )


def _state(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.ID, "main").get_attribute("data-state")


def _done(driver: webdriver.Chrome) -> None:
    _wait(driver, lambda d: _state(d) in {"done", "error"}, "the search to finish")
    assert _state(driver) == "done", driver.find_element(By.ID, "error").text


def _result_ids(driver: webdriver.Chrome) -> list[int]:
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
    return [int(c.get_attribute("data-id")) for c in cards]


def _thumbnails_loaded(driver: webdriver.Chrome) -> bool:
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('#results img')];"
        "return imgs.length > 0 && imgs.slice(0, 4).every(i => i.complete && i.naturalWidth > 0);"
    )


def test_search_page(
    driver: webdriver.Chrome, base_url: str, photos: tuple[Collection, dict[int, Path]]
) -> None:
    _, files = photos
    driver.get(base_url + "/")
    _wait(driver, lambda d: "20 images" in d.find_element(By.ID, "collection-info").text, "info")
    assert driver.find_element(By.ID, "collection-name").text == "photos"
    assert not driver.find_element(By.ID, "collection").is_displayed()  # only one collection
    assert driver.find_element(By.ID, "empty").is_displayed()

    # upload a file: the first result is that very image
    query_id, query_file = next((i, p) for i, p in files.items() if p.name == "pic05.png")
    driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(query_file))
    _done(driver)
    uploaded = _result_ids(driver)
    assert uploaded[0] == query_id
    assert len(uploaded) == 20
    first = driver.find_element(By.CSS_SELECTOR, "#results .card")
    assert first.find_element(By.CSS_SELECTOR, ".score").text == "1.000"
    assert first.find_element(By.TAG_NAME, "img").get_attribute("loading") == "lazy"
    assert "Uploaded image" in driver.find_element(By.ID, "query-label").text
    assert " ms" in driver.find_element(By.ID, "stats").text
    assert "id=" not in driver.current_url and "c=photos" in driver.current_url
    _wait(driver, _thumbnails_loaded, "thumbnails")

    # click a result: search by its id
    clicked = uploaded[1]
    driver.find_elements(By.CSS_SELECTOR, "#results .thumb")[1].click()
    _wait(driver, lambda d: f"id={clicked}" in d.current_url, "the URL to hold the id")
    _done(driver)
    by_id = _result_ids(driver)
    assert by_id and clicked not in by_id
    assert f"#{clicked}" in driver.find_element(By.ID, "query-label").text

    # and again, then back: the previous search comes back
    second = by_id[0]
    driver.find_elements(By.CSS_SELECTOR, "#results .thumb")[0].click()
    _wait(driver, lambda d: f"id={second}" in d.current_url, "the URL to hold the second id")
    _done(driver)
    driver.back()
    _wait(driver, lambda d: f"id={clicked}" in d.current_url, "back to the first id")
    _done(driver)
    assert _result_ids(driver) == by_id
    driver.back()
    _wait(driver, lambda d: "id=" not in d.current_url, "back to the upload")
    _done(driver)
    assert _result_ids(driver) == uploaded

    # a text query with Enter; the link re-runs it on reload
    box = driver.find_element(By.ID, "text-input")
    box.send_keys("a red circle", Keys.ENTER)
    _wait(driver, lambda d: "text=a+red+circle" in d.current_url, "the URL to hold the text")
    _done(driver)
    by_text = _result_ids(driver)
    assert len(by_text) == 20
    driver.refresh()
    _wait(driver, lambda d: _result_ids(d) == by_text, "the reloaded link to search again")
    assert driver.find_element(By.ID, "text-input").get_attribute("value") == "a red circle"

    # exports: the downloads' names and contents, caught instead of saved
    driver.execute_script(
        "window.downloads = [];"
        "HTMLAnchorElement.prototype.click = function () {"
        "  if (this.download) fetch(this.href).then(r => r.text())"
        "    .then(text => downloads.push([this.download, text])); };"
    )
    driver.find_element(By.ID, "export-json").click()
    driver.find_element(By.ID, "export-csv").click()
    _wait(driver, lambda d: len(d.execute_script("return downloads")) == 2, "the exports")
    caught = driver.execute_script("return downloads")
    downloads = {name.rsplit(".", 1)[1]: text for name, text in caught}
    assert sorted(downloads) == ["csv", "json"]
    exported = json.loads(downloads["json"])
    assert exported["query"] == {"text": "a red circle"}
    assert [r["id"] for r in exported["results"]] == by_text
    assert exported["results"][0]["url"].startswith(base_url + "/v1/collections/photos/items/")
    rows = list(csv.DictReader(io.StringIO(downloads["csv"])))
    assert [int(r["id"]) for r in rows] == by_text and rows[0]["title"].startswith("Picture")

    # details: metadata, size and a link to the full image
    driver.find_elements(By.CSS_SELECTOR, "#results .details-button")[0].click()
    dialog = driver.find_element(By.ID, "details")
    _wait(driver, lambda d: "Picture" in dialog.text, "the details")
    target = by_text[0]
    image = dialog.find_element(By.ID, "details-link").get_attribute("href")
    assert image.endswith(f"/v1/collections/photos/items/{target}/image")
    n = int(files[target].stem.removeprefix("pic"))
    assert f"Picture {n}" in dialog.text and COLOURS[n % len(COLOURS)] in dialog.text
    assert " × " in dialog.text and "px" in dialog.text
    dialog.find_element(By.CSS_SELECTOR, ".dialog-head button").click()
    _wait(driver, lambda d: not dialog.is_displayed(), "the details to close")

    # an error from the API shows its message
    box = driver.find_element(By.ID, "url-input")
    box.send_keys("http://127.0.0.1:9/nothing.png", Keys.ENTER)
    _wait(driver, lambda d: _state(d) == "error", "the error")
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed()
    assert "loopback" in error.text and "refused" in error.text
    assert not _result_ids(driver)

    # back from the error restores the text results; a picture for the lead
    driver.back()
    _wait(driver, lambda d: _result_ids(d) == by_text, "the text results again")
    assert not driver.find_element(By.ID, "error").is_displayed()
    _wait(driver, _thumbnails_loaded, "thumbnails")
    assert driver.save_screenshot(str(SCREENSHOT))
    print(f"screenshot: {SCREENSHOT}")


def test_api_key(driver: webdriver.Chrome, keyed_url: str) -> None:
    driver.get(keyed_url + "/?c=photos&text=green")
    driver.execute_script("localStorage.clear()")
    driver.refresh()
    key_form = driver.find_element(By.ID, "key-form")
    _wait(driver, lambda d: key_form.is_displayed(), "the API key prompt")
    driver.find_element(By.ID, "key-input").send_keys("sesame", Keys.ENTER)
    _done(driver)
    assert len(_result_ids(driver)) == 20
    assert not key_form.is_displayed()
    _wait(driver, _thumbnails_loaded, "thumbnails fetched with the key")
    assert driver.execute_script("return localStorage.getItem('lookalike.apiKey')") == "sesame"
