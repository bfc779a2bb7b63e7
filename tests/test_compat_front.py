"""clip-retrieval's own web front end (from the clip-retrieval wheel, unchanged) driven in headless
Chromium against a running lookalike: served by lookalike itself (same origin) and from another
origin (CORS), as a user would use it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

from helpers import encode, serve_app
from lookalike import BadInputError, Collection
from lookalike.demo import draw_image
from lookalike.server.app import create_app
from lookalike.server.clip_front import build_folder
from lookalike.server.settings import ServerSettings

try:
    build_folder()
except BadInputError as missing:
    pytest.skip(str(missing), allow_module_level=True)

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

# test_web's browser fixture, as "chromium", and wait helper; importing it skips without Chromium
from test_web import _wait, webdriver
from test_web import driver as chromium  # noqa: F401

CAPTIONED = 64  # more than the front's first page of 40
COPY = CAPTIONED - 1  # picture 0 with one pixel changed: a near duplicate

# what the page shows, read from the <clip-front> element and its shadow DOM
STATE = """
const front = document.querySelector('clip-front');
if (!front || !front.shadowRoot || !front.shadowRoot.getElementById('products')) return null;
const figures = [...front.shadowRoot.querySelectorAll('#products figure')];
return {
  index: front.currentIndex,
  indices: front.indices,
  ids: Array.isArray(front.images) ? front.images.map(i => Number(i.id)) : front.images,
  text: front.shadowRoot.getElementById('products').textContent.trim(),
  shown: figures.map(f => {
    const img = f.querySelector('img.pic'), caption = f.querySelector('figcaption');
    const similarity = f.querySelector('p');
    return {src: img.src, loaded: img.complete && img.naturalWidth > 0,
            caption: caption ? caption.textContent.trim() : null,
            similarity: similarity ? similarity.textContent : null};
  }),
};
"""
# every /knn-service and /metadata call the front makes: what it asked and what came back
RECORD_CALLS = """
window.calls = [];
const send = window.fetch;
window.fetch = async (url, options) => {
  const response = await send(url, options);
  if (/knn-service|metadata/.test(String(url))) {
    const answer = await response.clone().text();
    calls.push({url: String(url), body: JSON.parse(options.body), status: response.status,
                answer: JSON.parse(answer)});
  }
  return response;
};
"""


@dataclass
class Served:
    captioned: Collection
    backend: str  # lookalike, serving the front too
    other: str  # another origin serving the front, allowed by the backend's --cors-origin
    ids: list[int]  # ids of the captioned pictures, by number


@pytest.fixture(scope="module")
def served(
    tiny_clip: tuple[str, Path], backbone_weights: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("front")
    pictures = []
    for i in range(CAPTIONED):
        image = draw_image(0 if i == COPY else i, (90 + i % 5 * 6, 70 + i % 3 * 5))
        if i == COPY:
            image.putpixel((0, 0), (255, 0, 255))
        pictures.append(root / "captioned" / f"pic{i:02d}.png")
        pictures[-1].parent.mkdir(exist_ok=True)
        pictures[-1].write_bytes(encode(image))
    captioned = Collection.create(root / "c1", spec, weights=weights)
    captioned.add_images(pictures, metadata=[{"caption": f"picture {i}"} for i in range(CAPTIONED)])
    ids = [captioned.lookup(p).id for p in pictures]  # type: ignore[union-attr]
    plain = Collection.create(root / "c2", spec, weights=weights)  # a folder, no metadata
    plain.add_images(pictures[10:18])
    blind = Collection.create(
        root / "c3", "torchvision:mobilenet_v2", weights=backbone_weights("mobilenet_v2")
    )
    blind.add_images(pictures[:3])
    collections = {"captioned": captioned, "plain": plain, "blind": blind}
    front_only = create_app(collections, ServerSettings(clip_front=True), load_models=False)
    with serve_app(front_only) as other:
        settings = ServerSettings(clip_front=True, cors_origins=(other,))
        with serve_app(create_app(collections, settings)) as backend:
            yield Served(captioned, backend, other, ids)
    for collection in collections.values():
        collection.close()


@pytest.fixture(scope="module")
def front(chromium: webdriver.Chrome) -> webdriver.Chrome:  # noqa: F811
    """The shared browser, recording the front's API calls on every page it opens."""
    chromium.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CALLS})
    return chromium


def state(driver: webdriver.Chrome) -> dict[str, Any] | None:
    return driver.execute_script(STATE)


def calls(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return driver.execute_script("return window.calls || []")


def shadow(driver: webdriver.Chrome) -> Any:
    return driver.execute_script("return document.querySelector('clip-front').shadowRoot")


def toggle(driver: webdriver.Chrome, label: str) -> None:
    """Click the checkbox of a label of the filter panel."""
    box = driver.execute_script(
        "return [...document.querySelector('clip-front').shadowRoot"
        ".querySelectorAll('#filter label')]"
        ".find(l => l.textContent.trim().startsWith(arguments[0])).querySelector('input')",
        label,
    )
    box.click()


def choose_index(driver: webdriver.Chrome, name: str) -> None:
    """Pick an index from the front's list, by typing its name on the list as a user can."""
    picker = shadow(driver).find_element(By.CSS_SELECTOR, "#filter select")
    picker.send_keys(name)
    _wait(driver, lambda d: state(d)["index"] == name, f"index {name} to be chosen")


def text_search(driver: webdriver.Chrome, text: str) -> None:
    bar = shadow(driver).find_element(By.CSS_SELECTOR, "#searchBar")
    bar.clear()
    bar.send_keys(text, Keys.ENTER)


def wait_shown(driver: webdriver.Chrome, what: str, check: Any, timeout: float = 15) -> dict:
    """Wait until every shown picture has loaded and ``check(state)`` holds."""

    def ready(d: webdriver.Chrome) -> dict | None:
        now = state(d)
        if not (now and isinstance(now["ids"], list) and now["shown"]):
            return None
        return now if all(s["loaded"] for s in now["shown"]) and check(now) else None

    return _wait(driver, ready, what, timeout)  # type: ignore[return-value]


def knn_calls(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [c for c in calls(driver) if c["url"].endswith("/knn-service")]


def wait_knn(driver: webdriver.Chrome, count: int, what: str) -> dict[str, Any]:
    """The front's ``count``-th /knn-service call, once it is answered."""
    found = _wait(driver, lambda d: len(knn_calls(d)) >= count and knn_calls(d), what)
    return found[count - 1]  # type: ignore[index]


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """Errors the page logged since the last call (the favicon the front lacks aside)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]
    ]


def in_collection(name: str, base: str) -> Any:
    prefix = f"{base}/v1/collections/{name}/items/"
    return lambda now: all(s["src"].startswith(prefix) for s in now["shown"])


def test_front_on_the_same_origin(front: webdriver.Chrome, served: Served) -> None:
    base = served.backend
    front.get(f"{base}/clip-front/")
    _wait(front, lambda d: (state(d) or {}).get("indices"), "the front to list the indices")
    assert state(front)["indices"] == ["captioned", "plain", "blind"]  # type: ignore[index]
    assert state(front)["index"] == "captioned"  # type: ignore[index]
    console_errors(front)  # start clean

    # text search: pictures with captions and similarities; past the first page of 40 the
    # front asks /metadata for the ids it holds, while the page's bottom is in view
    # (near duplicates shown: the tiny test model finds most pictures alike)
    toggle(front, "Hide (near) duplicate images")
    toggle(front, "Display similarities")
    text_search(front, "a red circle")
    knn = wait_knn(front, 1, "a text search")
    assert knn["body"]["num_result_ids"] == 3000 and knn["body"]["deduplicate"] is False
    assert len(knn["answer"]) == CAPTIONED
    assert sum("url" in r for r in knn["answer"]) == 40

    def past_first_page(now: dict) -> bool:
        # scrolled again at every look: a scroll made before the first page was laid out
        # (a loaded machine) brings the page's bottom into view too early to count
        front.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        return len(now["shown"]) > 40

    shown = wait_shown(front, "more than the first page", past_first_page, timeout=30)
    assert in_collection("captioned", base)(shown)
    assert all(s["caption"].startswith("picture ") for s in shown["shown"])
    assert all(-1 <= float(s["similarity"]) <= 1 for s in shown["shown"])
    pages = [c for c in calls(front) if c["url"].endswith("/metadata")]
    assert pages and all(len(c["answer"]) == len(c["body"]["ids"]) for c in pages)
    asked = sorted(i for c in pages for i in c["body"]["ids"])
    assert asked == sorted(r["id"] for r in knn["answer"][40:])
    wait_shown(front, "every result", lambda now: len(now["shown"]) == CAPTIONED)

    # search by this image: the first result is that very picture
    target = served.ids[5]
    picture = shadow(front).find_element(By.CSS_SELECTOR, f'img.pic[src$="/{target}/image"]')
    figure = picture.find_element(By.XPATH, "..")
    front.execute_script("arguments[0].scrollIntoView({block: 'center'})", figure)
    icon = figure.find_element(By.CSS_SELECTOR, ".subImageSearch")
    webdriver.ActionChains(front).move_to_element(figure).move_to_element(icon).click().perform()
    by_image = wait_knn(front, 2, "a search by image")
    assert by_image["body"]["image_url"] == f"{base}/v1/collections/captioned/items/{target}/image"
    assert by_image["answer"][0]["id"] == target
    wait_shown(front, "results by image", lambda now: now["ids"][:1] == [target])

    # the duplicate toggle: near duplicates go; safe mode off: searched again, same answer
    toggle(front, "Hide (near) duplicate images")
    deduplicated = wait_knn(front, 3, "a search without near duplicates")
    assert deduplicated["body"]["deduplicate"] is True
    kept = [r["id"] for r in deduplicated["answer"]]
    assert kept[0] == target and served.ids[COPY] not in kept and len(kept) < CAPTIONED
    vectors = served.captioned.vectors(kept)
    assert np.all((vectors @ vectors.T)[np.triu_indices(len(kept), 1)] < 0.94)
    wait_shown(front, "results without near duplicates", lambda now: now["ids"] == kept)
    toggle(front, "Safe mode")
    redone = wait_knn(front, 4, "the search again without safe mode")
    assert redone["body"]["use_safety_model"] is False
    assert [r["id"] for r in redone["answer"]] == kept

    # switching index: a collection without captions renders (the image query goes along)
    choose_index(front, "plain")
    assert wait_knn(front, 5, "a search of the plain collection")["body"]["indice_name"] == "plain"
    plain = wait_shown(front, "the plain collection", in_collection("plain", base))
    assert all(s["caption"] == "" for s in plain["shown"])
    assert all("caption" not in r for r in knn_calls(front)[4]["answer"])
    text_search(front, "a blue square")
    assert wait_knn(front, 6, "a text search of plain")["body"]["text"] == "a blue square"
    wait_shown(front, "text results of plain", in_collection("plain", base))

    # an image-only collection asked for text: no results, no crash; searching goes on
    choose_index(front, "blind")
    refused = wait_knn(front, 7, "a text search of the image-only collection")
    assert refused["status"] == 200 and refused["answer"] == []
    _wait(front, lambda d: state(d)["ids"] == [], "no results from the image-only collection")
    choose_index(front, "captioned")
    wait_knn(front, 8, "a search after the image-only collection")
    wait_shown(front, "results again", in_collection("captioned", base))
    assert console_errors(front) == []


def test_front_from_another_origin(front: webdriver.Chrome, served: Served) -> None:
    base = served.backend
    front.get(f"{served.other}/clip-front/?back={quote(base, safe='')}")
    _wait(front, lambda d: (state(d) or {}).get("indices"), "the indices over CORS")
    console_errors(front)
    text_search(front, "a green triangle")
    assert wait_knn(front, 1, "a search over CORS")["url"] == f"{base}/knn-service"
    shown = wait_shown(front, "results over CORS", in_collection("captioned", base))
    assert shown["shown"][0]["caption"].startswith("picture ")
    second = shown["ids"][1]
    icons = shadow(front).find_elements(By.CSS_SELECTOR, "figure .subImageSearch")
    front.execute_script("arguments[0].click()", icons[1])
    assert wait_knn(front, 2, "a search by image over CORS")["answer"][0]["id"] == second
    wait_shown(front, "results by image over CORS", lambda now: now["ids"][:1] == [second])
    assert console_errors(front) == []
