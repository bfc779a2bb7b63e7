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
PHONE_SCREENSHOT = Path("/tmp/lookalike-web-phone.png")
COLOURS = ["red", "green", "blue", "yellow", "purple"]
LONG_NAME = "summer-holiday-photos-2024-camera-roll"
REMOTE = "shots/remote%20shot.png?size=40"  # on the http_root server

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        "needs chromium and chromium-driver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
uvicorn = pytest.importorskip("uvicorn", reason="needs the server extra")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from helpers import encode, serve_app  # noqa: E402
from lookalike import Collection  # noqa: E402
from lookalike.fetch import FetchPolicy  # noqa: E402
from lookalike.server.app import create_app  # noqa: E402
from lookalike.server.settings import ServerSettings  # noqa: E402

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download anything


@pytest.fixture(scope="module")
def photos(
    tiny_clip: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Collection, dict[int, Path]]:
    """A collection of 20 generated pictures with metadata, the last ten in a subfolder;
    (collection, id -> file)."""
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("web")
    paths = []
    for i in range(20):
        path = root / "images" / ("more" if i >= 10 else "") / f"pic{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
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
def plain(
    backbone_weights, http_root: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Collection:
    """An image-only collection: three uploaded pictures and one by URL."""
    folder, base = http_root
    (folder / "shots").mkdir(exist_ok=True)
    (folder / "shots" / "remote shot.png").write_bytes(encode(draw_image(7, (40, 40))))
    col = Collection.create(
        tmp_path_factory.mktemp("plain") / "plain",
        "torchvision:mobilenet_v2",
        weights=backbone_weights("mobilenet_v2"),
        fetch_policy=FetchPolicy(allow_private=True),
    )
    col.add_images([encode(draw_image(i, (40, 40))) for i in range(3)])
    col.add_images([f"{base}/{REMOTE}"])
    return col


@pytest.fixture(scope="module")
def base_url(photos: tuple[Collection, dict[int, Path]]) -> Iterator[str]:
    """A server that shows paths, as a local one does."""
    settings = ServerSettings(show_paths=True)
    with serve_app(create_app({"photos": photos[0]}, settings)) as url:
        yield url


@pytest.fixture(scope="module")
def mixed_url(photos: tuple[Collection, dict[int, Path]], plain: Collection) -> Iterator[str]:
    """A server that hides paths (the default), with an image-only collection too."""
    with serve_app(create_app({"photos": photos[0], "plain": plain})) as url:
        yield url


@pytest.fixture(scope="module")
def long_url(photos: tuple[Collection, dict[int, Path]]) -> Iterator[str]:
    """A server with one collection under a long name."""
    with serve_app(create_app({LONG_NAME: photos[0]}, load_models=False)) as url:
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
    # read in one script: cards looked up one by one can be replaced in between (stale)
    return driver.execute_script(
        "return [...document.querySelectorAll('#results .card')].map(c => Number(c.dataset.id))"
    )


def _indexed_folder(files: dict[int, Path]) -> Path:
    """The folder the photos were added from (holding more/)."""
    return next(p for p in files.values() if p.name == "pic00.png").parent


def _searches(driver: webdriver.Chrome) -> int:
    """Search requests the page sent since it was loaded."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.endsWith('/search')).length"
    )


def _error(driver: webdriver.Chrome) -> str:
    _wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed(), "the error")
    return driver.find_element(By.ID, "error").text


def _focused_card(driver: webdriver.Chrome) -> int | None:
    """Index of the result card holding the focus, if one does."""
    return driver.execute_script(
        "const card = document.activeElement.closest('#results .card');"
        "return card ? [...card.parentNode.children].indexOf(card) : null;"
    )


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
    assert driver.find_element(By.TAG_NAME, "h1").text == "lookalike"
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
    # each card names its file, with its folder under the indexed one where it has one
    assert first.find_element(By.CSS_SELECTOR, ".file").text == "pic05.png"
    nested = next(i for i, p in files.items() if p.name == "pic12.png")
    card12 = driver.find_element(By.CSS_SELECTOR, f"#results .card[data-id='{nested}']")
    assert card12.find_element(By.CSS_SELECTOR, ".file").text == "more/\npic12.png"
    assert card12.find_element(By.CSS_SELECTOR, ".file").get_attribute("title") == "more/pic12.png"
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
    indexed = _indexed_folder(files)
    where = {files[i].name: files[i].relative_to(indexed).as_posix() for i in by_text}
    assert {r["name"]: r["path"] for r in exported["results"]} == where
    rows = list(csv.DictReader(io.StringIO(downloads["csv"])))
    assert [int(r["id"]) for r in rows] == by_text and rows[0]["title"].startswith("Picture")
    assert {r["name"]: r["path"] for r in rows} == where

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
    assert f"File\n{files[target].name}" in dialog.text
    assert f"Path\n{where[files[target].name]}" in dialog.text
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


def test_links_that_cannot_search(driver: webdriver.Chrome, mixed_url: str) -> None:
    # an unknown collection: an error naming it, and no search of another collection
    driver.get(mixed_url + "/?c=nope&id=3")
    message = _error(driver)
    assert "“nope”" in message and "“photos”" in message and "“plain”" in message
    assert _state(driver) == "idle" and not _result_ids(driver)
    assert _searches(driver) == 0

    # an id that is no number: said so, with no broken preview and nothing sent
    driver.get(mixed_url + "/?c=photos&id=abc")
    assert "“abc” is not an image id" in _error(driver)
    assert not driver.find_element(By.ID, "preview-button").is_displayed()
    assert _searches(driver) == 0

    # an id the collection does not hold: the server's answer, told plainly
    driver.get(mixed_url + "/?c=photos&id=999")
    assert "“photos” has no image #999" in _error(driver)
    assert not driver.find_element(By.ID, "preview-button").is_displayed()
    assert _state(driver) == "error" and not _result_ids(driver)

    # a k that is no number
    driver.get(mixed_url + "/?c=photos&text=red&k=lots")
    assert "“lots” is not a number of results" in _error(driver)
    assert _searches(driver) == 0

    # text on an image-only collection: the box is off, and a link is not sent either
    driver.get(mixed_url + "/?c=plain&text=a+cat")
    assert "image-only model (torchvision:mobilenet_v2)" in _error(driver)
    assert _searches(driver) == 0
    assert not driver.find_element(By.ID, "text-input").is_enabled()
    assert "embeds images only" in driver.find_element(By.ID, "text-hint").text

    # paths hidden (the default): cards name only the file
    driver.get(mixed_url + "/?c=photos&text=red")
    _done(driver)
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .file")]
    assert len(names) == 20 and all(n.startswith("pic") and "/" not in n for n in names)


def test_api_names_and_paths(
    base_url: str,
    mixed_url: str,
    plain: Collection,
    photos: tuple[Collection, dict[int, Path]],
    http_root: tuple[Path, str],
) -> None:
    import httpx

    _, files = photos
    indexed = _indexed_folder(files)
    nested = next(i for i, p in files.items() if p.name == "pic12.png")
    shown = httpx.get(f"{base_url}/v1/collections/photos/items/{nested}").json()
    assert (shown["name"], shown["path"]) == ("pic12.png", "more/pic12.png")
    hidden = httpx.get(f"{mixed_url}/v1/collections/photos/items/{nested}").json()
    assert (hidden["name"], hidden["path"]) == ("pic12.png", None)
    hits = httpx.post(
        f"{base_url}/v1/collections/photos/search", json={"id": nested, "k": 19}
    ).json()["results"]
    assert {h["path"] for h in hits} == {
        p.relative_to(indexed).as_posix() for i, p in files.items() if i != nested
    }
    remote = plain.lookup(f"{http_root[1]}/{REMOTE}")
    assert remote is not None
    body = httpx.get(f"{mixed_url}/v1/collections/plain/items/{remote.id}").json()
    assert (body["name"], body["path"]) == ("remote shot.png", None)


def test_more_results_and_keyboard(driver: webdriver.Chrome, base_url: str) -> None:
    driver.get(base_url + "/?c=photos&text=red&k=10")
    _done(driver)
    assert len(_result_ids(driver)) == 10
    assert driver.find_element(By.ID, "k").get_attribute("value") == "10"
    more = driver.find_element(By.ID, "more")
    assert more.is_displayed() and more.text == "Show 10 more"

    # more: the next page joins the first, focus on its first card; all 20 shown, no more
    first_page = _result_ids(driver)
    more.click()
    _wait(driver, lambda d: len(_result_ids(d)) == 20, "the second page")
    assert _result_ids(driver)[:10] == first_page
    assert _focused_card(driver) == 10
    assert "k=" not in driver.current_url  # 20 is the default
    assert not more.is_displayed()

    # arrows move through the cards; the focused card is ringed
    columns = driver.execute_script(
        "const cards = [...document.querySelectorAll('#results .card')];"
        "return cards.filter(c => c.offsetTop === cards[0].offsetTop).length;"
    )
    keys = ActionChains(driver)
    keys.send_keys(Keys.ARROW_RIGHT).perform()
    assert _focused_card(driver) == 11
    keys.send_keys(Keys.ARROW_UP).perform()
    assert _focused_card(driver) == 11 - columns
    keys.send_keys(Keys.ARROW_LEFT).perform()
    assert _focused_card(driver) == 10 - columns
    ring = driver.execute_script(
        "const s = getComputedStyle(document.activeElement.closest('.card'));"
        "return [s.outlineStyle, s.outlineWidth];"
    )
    assert ring[0] == "solid" and ring[1] != "0px"

    # Enter on a card searches by it; focus is not lost, it goes to the first new result
    clicked = _result_ids(driver)[10 - columns]
    keys.send_keys(Keys.ENTER).perform()
    _wait(driver, lambda d: f"id={clicked}" in d.current_url, "the search by id")
    _done(driver)
    assert _focused_card(driver) == 0

    # the page size chosen holds for new searches
    Select(driver.find_element(By.ID, "k")).select_by_visible_text("50")
    _wait(driver, lambda d: "k=50" in d.current_url, "k in the link")
    _done(driver)
    assert len(_result_ids(driver)) == 19  # all there are

    # `/` goes to the search box, whose focus stays through a search
    driver.find_element(By.TAG_NAME, "body").click()
    keys.send_keys("/").perform()
    box = driver.find_element(By.ID, "text-input")
    assert driver.switch_to.active_element == box
    keys.send_keys("blue", Keys.ENTER).perform()
    _wait(driver, lambda d: "text=blue" in d.current_url, "the text search")
    _done(driver)
    assert driver.switch_to.active_element == box
    assert box.get_attribute("value") == "blue"


def test_phone_layout(driver: webdriver.Chrome, long_url: str) -> None:
    driver.set_window_size(390, 844)
    try:
        driver.get(long_url + f"/?c={LONG_NAME}&text=red")
        _done(driver)
        fits = driver.execute_script(
            "const name = document.getElementById('collection-name');"
            "const box = name.getBoundingClientRect();"
            "return box.left >= 0 && box.right <= innerWidth && box.width > 0"
            "  && name.scrollWidth <= name.clientWidth;"
        )
        assert fits, "the collection name is cut off"
        assert driver.find_element(By.ID, "collection-name").text == LONG_NAME
        top, height = driver.execute_script(
            "return [document.querySelector('#results .card').getBoundingClientRect().top,"
            " innerHeight];"
        )
        assert top < height * 0.75, f"results start at {top}px of a {height}px screen"
        overflow = driver.execute_script("return document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, "the page scrolls sideways"
        assert driver.save_screenshot(str(PHONE_SCREENSHOT))
    finally:
        driver.set_window_size(1280, 900)


CURATION_SCREENSHOT = Path("/tmp/lookalike-web-curation.png")
CURATION_PHONE_SCREENSHOT = Path("/tmp/lookalike-web-curation-phone.png")
RECORD_BODIES = (
    "window.sent = []; const send = window.fetch;"
    "window.fetch = (url, options = {}) => {"
    "  if (typeof options.body === 'string') sent.push([String(url), JSON.parse(options.body)]);"
    "  return send(url, options); };"
)


def _card(driver: webdriver.Chrome, item_id: int):
    return driver.find_element(By.CSS_SELECTOR, f"#results .card[data-id='{item_id}']")


def _sent(driver: webdriver.Chrome, path: str) -> list[dict]:
    """JSON bodies the page sent to URLs ending in ``path`` since RECORD_BODIES ran."""
    return [body for url, body in driver.execute_script("return sent") if url.endswith(path)]


def test_relevance_feedback_rounds(driver: webdriver.Chrome, base_url: str) -> None:
    driver.get(base_url + "/?c=photos&text=red")
    _done(driver)
    driver.execute_script(RECORD_BODIES)
    first = _result_ids(driver)
    marks = driver.find_element(By.ID, "marks")
    assert not driver.find_element(By.ID, "feedback").is_displayed()  # until a mark is made

    # marks toggle, show on the card and the counter, and go into the URL at once
    rel, irr = first[:2], first[5]
    for item in rel:
        _card(driver, item).find_element(By.CSS_SELECTOR, ".mark-rel").click()
    _card(driver, irr).find_element(By.CSS_SELECTOR, ".mark-irr").click()
    _card(driver, irr).find_element(By.CSS_SELECTOR, ".mark-rel").click()  # switches sides...
    _card(driver, irr).find_element(By.CSS_SELECTOR, ".mark-irr").click()  # ...and back
    assert marks.text == "2 ✓ · 1 ✗"
    pressed = _card(driver, irr).find_element(By.CSS_SELECTOR, ".mark-irr")
    assert pressed.get_attribute("aria-pressed") == "true"
    assert f"rel={rel[0]}%2C{rel[1]}" in driver.current_url
    assert f"irr={irr}" in driver.current_url and "text=red" in driver.current_url

    # the next round sends the query and the marks; marked ids leave the results
    driver.find_element(By.ID, "next-round").click()
    _done(driver)
    _wait(driver, lambda d: _sent(d, "/search"), "the next round")
    body = _sent(driver, "/search")[-1]
    assert body == {"text": "red", "relevant": rel, "irrelevant": [irr], "k": 20}
    second = _result_ids(driver)
    assert second and not {*rel, irr} & set(second)
    assert len(second) == 17
    # the match count for the same query, at the last result's score: exact on 20 images
    count = driver.find_element(By.ID, "count")
    _wait(driver, lambda d: "exact" in count.text, "the match count")
    assert count.text.startswith("17 exact score ≥ ")
    assert _sent(driver, "/count")[-1]["relevant"] == rel
    assert driver.save_screenshot(str(CURATION_SCREENSHOT))

    # reload keeps the marks and the round
    driver.refresh()
    _done(driver)
    assert _result_ids(driver) == second
    assert driver.find_element(By.ID, "marks").text == "2 ✓ · 1 ✗"

    # diversity is sent and kept in the URL; clearing the marks takes them from the URL
    driver.execute_script(RECORD_BODIES)
    Select(driver.find_element(By.ID, "diverse")).select_by_value("0.6")
    _wait(driver, lambda d: "div=0.6" in d.current_url, "diversity in the URL")
    _done(driver)
    assert _sent(driver, "/search")[-1]["diverse"] == 0.6
    driver.find_element(By.ID, "clear-marks").click()
    assert not driver.find_element(By.ID, "feedback").is_displayed()
    assert driver.execute_script("return document.getElementById('marks').textContent") == (
        "0 ✓ · 0 ✗"
    )
    assert "rel=" not in driver.current_url and "div=0.6" in driver.current_url


def test_selection_and_tags(driver: webdriver.Chrome, base_url: str) -> None:
    driver.get(base_url + "/?c=photos&text=blue")
    _done(driver)
    shown = _result_ids(driver)
    bar = driver.find_element(By.ID, "selection-bar")
    assert not bar.is_displayed()

    # a checkbox, then shift-click another: the range between; ctrl-click a picture adds one
    boxes = driver.find_elements(By.CSS_SELECTOR, "#results .pick input")
    boxes[0].click()
    ActionChains(driver).key_down(Keys.SHIFT).click(boxes[2]).key_up(Keys.SHIFT).perform()
    thumbs = driver.find_elements(By.CSS_SELECTOR, "#results .thumb")
    ActionChains(driver).key_down(Keys.CONTROL).click(thumbs[4]).key_up(Keys.CONTROL).perform()
    picked = [shown[0], shown[1], shown[2], shown[4]]
    assert driver.find_element(By.ID, "selected-count").text == "4 selected"
    assert "id=" not in driver.current_url  # ctrl-click selects, it does not search
    assert [b.is_selected() for b in boxes[:5]] == [True, True, True, False, True]

    # export the selection only
    driver.execute_script(
        "window.downloads = [];"
        "HTMLAnchorElement.prototype.click = function () {"
        "  if (this.download) fetch(this.href).then(r => r.text())"
        "    .then(text => downloads.push([this.download, text])); };"
    )
    driver.find_element(By.ID, "export-selection-json").click()
    _wait(driver, lambda d: d.execute_script("return downloads.length") == 1, "the export")
    exported = json.loads(driver.execute_script("return downloads[0][1]"))
    assert [r["id"] for r in exported["results"]] == picked

    # tag the selection: the tag list counts it
    driver.find_element(By.ID, "tag-selection").click()
    alert = driver.switch_to.alert
    alert.send_keys("picked")
    alert.accept()
    offer = "#tag-list .tag-offer[data-tag='picked']"
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, offer), "the tag in the list")
    assert driver.find_element(By.CSS_SELECTOR, f"{offer} .tag-count").text == "4"

    # a required tag filters the results to the tagged; excluding it leaves the others
    driver.find_element(By.CSS_SELECTOR, f"{offer} .tag-need").click()
    _wait(driver, lambda d: "tag=picked" in d.current_url, "the tag filter in the URL")
    _done(driver)
    assert sorted(_result_ids(driver)) == sorted(picked)
    chip = driver.find_element(By.CSS_SELECTOR, "#tag-chips .chip.need")
    assert chip.text == "has picked ×"
    driver.find_element(By.CSS_SELECTOR, f"{offer} .tag-skip").click()
    _wait(driver, lambda d: "xtag=picked" in d.current_url, "the exclusion in the URL")
    _done(driver)
    assert "tag=picked&" not in driver.current_url and len(_result_ids(driver)) == 16
    assert not set(picked) & set(_result_ids(driver))
    driver.find_element(By.CSS_SELECTOR, "#tag-chips .chip.skip").click()
    _wait(driver, lambda d: "xtag=" not in d.current_url, "the exclusion dropped")
    _done(driver)
    assert len(_result_ids(driver)) == 20

    # more like these: a search by the selected ids, which leave the results
    boxes = driver.find_elements(By.CSS_SELECTOR, "#results .pick input")
    like = _result_ids(driver)[:2]
    boxes[0].click()
    boxes[1].click()
    driver.find_element(By.ID, "like-these").click()
    _wait(driver, lambda d: f"id={like[0]}%2C{like[1]}" in d.current_url, "the search by ids")
    _done(driver)
    assert len(_result_ids(driver)) == 18 and not set(like) & set(_result_ids(driver))
    assert not bar.is_displayed()

    # unlike these: the selection marked irrelevant, and the next round leaves it out
    unlike = _result_ids(driver)[0]
    driver.find_elements(By.CSS_SELECTOR, "#results .pick input")[0].click()
    driver.find_element(By.ID, "unlike-these").click()
    _wait(driver, lambda d: f"irr={unlike}" in d.current_url, "the irrelevant mark")
    _done(driver)
    assert unlike not in _result_ids(driver) and len(_result_ids(driver)) == 17

    # on a phone: marks, selection bar and tags fit without sideways scrolling
    driver.set_window_size(390, 844)
    try:
        driver.find_elements(By.CSS_SELECTOR, "#results .mark-rel")[0].click()
        driver.find_elements(By.CSS_SELECTOR, "#results .pick input")[1].click()
        overflow = driver.execute_script("return document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, "the page scrolls sideways"
        assert driver.save_screenshot(str(CURATION_PHONE_SCREENSHOT))
    finally:
        driver.set_window_size(1280, 900)


def test_paths_are_shown_by_default_only_on_loopback() -> None:
    """Without --show-paths/--hide-paths, `lookalike serve` shows paths when bound to a
    loopback address and hides them when bound to any other."""
    from lookalike.server.settings import is_local_host

    assert all(map(is_local_host, ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_local_host, ["0.0.0.0", "::", "192.168.1.2", "example.org"]))
    assert not ServerSettings().show_paths  # an app made in code shows none unless told to
