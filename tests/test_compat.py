"""clip-retrieval's back-end API (/knn-service, /metadata, /indices-list) and the serving of its
front end, driven in-process through FastAPI's TestClient, as clip-retrieval's ClipClient and
front end post them. The front end itself runs in a browser in test_compat_front.py."""

from __future__ import annotations

import base64
import importlib.util
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers import encode, serve_app
from lookalike import BadInputError, Collection
from lookalike.demo import draw_image
from lookalike.fetch import FetchPolicy
from lookalike.server import ServerSettings, create_app
from lookalike.server.clip_front import build_folder
from lookalike.server.launch import ServeConfig
from test_cli import one_line_error, run_main

N = 30
COPY = N - 1  # image 0 with one pixel changed: a near duplicate
BASE = "http://testserver"  # TestClient's base URL
ERROR = "x-lookalike-error"


def _metadata(i: int) -> dict[str, Any]:
    """Captions as collections hold them: text, null, a number, or no key at all."""
    meta: dict[str, Any] = {"n": i, "title": f"title {i}"}
    if i % 4 == 0:
        meta["caption"] = f"picture {i}"
    elif i % 4 == 1:
        meta["caption"] = None
    elif i % 4 == 2:
        meta["caption"] = i
    return meta


@dataclass
class Shared:
    col: Collection  # "photos": files, opened refusing private URLs
    urls: Collection  # "urls": images indexed by URL from a loopback server
    blind: Collection  # "blind": an image-only model
    paths: list[Path]
    ids: list[int]
    url_of: dict[int, str]  # id in "urls" -> its URL

    def data(self, i: int) -> bytes:
        return self.paths[i].read_bytes()


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_clip: tuple[str, Path],
    backbone_weights: Any,
    http_root: tuple[Path, str],
) -> Iterator[Shared]:
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("compat")
    (root / "photos").mkdir()
    paths = []
    for i in range(N):
        image = draw_image(0 if i == COPY else i, (48 + 3 * i, 40 + 2 * i))
        if i == COPY:
            image = draw_image(0, (48, 40))
            image.putpixel((0, 0), (255, 0, 255))
        paths.append(root / "photos" / f"pic{i:02d}.png")
        paths[-1].write_bytes(encode(image))
    made = Collection.create(root / "col", spec, weights=weights)
    assert made.add_images(paths, metadata=[_metadata(i) for i in range(N)]).added == N
    ids = [made.lookup(p).id for p in paths]  # type: ignore[union-attr]
    made.close()

    served, base = http_root
    links = []
    for i in range(4):
        (served / f"compat-{i}.png").write_bytes(encode(draw_image(100 + i, (50, 40))))
        links.append(f"{base}/compat-{i}.png")
    loader = Collection.create(
        root / "urls", spec, weights=weights, fetch_policy=FetchPolicy(allow_private=True)
    )
    assert loader.add_images(links).added == 4
    loader.close()

    blind = Collection.create(
        root / "blind", "torchvision:mobilenet_v2", weights=backbone_weights("mobilenet_v2")
    )
    blind.add_images(paths[:3])

    # served as `lookalike serve` opens them: URLs reaching loopback are refused
    col, urls = Collection.open(root / "col"), Collection.open(root / "urls")
    url_of = {urls.lookup(link).id: link for link in links}  # type: ignore[union-attr]
    yield Shared(col, urls, blind, paths, ids, url_of)
    for collection in (col, urls, blind):
        collection.close()


@pytest.fixture(scope="module")
def api(shared: Shared) -> Iterator[TestClient]:
    with TestClient(create_app({"photos": shared.col, "urls": shared.urls})) as client:
        yield client


def knn_body(**fields: Any) -> dict[str, Any]:
    """What clip_retrieval.clip_client.ClipClient posts, field for field."""
    body = {
        "text": None,
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "deduplicate": False,
        "use_safety_model": True,
        "use_violence_detector": True,
        "indice_name": "photos",
        "use_mclip": False,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "image",
        "num_images": 10,
        "num_result_ids": 10,
        "verbose": False,
    }
    body.update(fields)
    return body


def post(client: TestClient, route: str, body: Any) -> Any:
    # like requests.post(url, data=json.dumps(...)) and the front's fetch(): no JSON content type
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(route, content=raw)


def knn(client: TestClient, **fields: Any) -> list[dict[str, Any]]:
    response = post(client, "/knn-service", knn_body(**fields))
    assert response.status_code == 200, response.text
    assert ERROR not in response.headers, response.headers[ERROR]
    return response.json()


def no_results(response: Any, *needles: str) -> None:
    """clip-retrieval's answer to a request it cannot serve: 200 and []; the reason in a header."""
    assert response.status_code == 200, response.text
    assert response.json() == []
    for needle in needles:
        assert needle in response.headers[ERROR], response.headers[ERROR]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def item_link(name: str, item_id: int, kind: str = "image", base: str = BASE) -> str:
    return f"{base}/v1/collections/{name}/items/{item_id}/{kind}"


# --- results ----------------------------------------------------------------------------------


def test_knn_service_by_text(api: TestClient, shared: Shared) -> None:
    results = knn(api, text="a red circle", num_images=N, num_result_ids=N)
    expected = shared.col.search(text="a red circle", k=N)
    assert [r["id"] for r in results] == [h.id for h in expected]
    for result, hit in zip(results, expected, strict=True):
        assert result["similarity"] == pytest.approx(hit.score, abs=1e-5)
        # absolute: the front shows them from its own origin and searches by them
        assert result["url"] == item_link("photos", hit.id)
        assert result["thumbnail_url"] == item_link("photos", hit.id, "thumbnail")
        assert result["n"] == hit.metadata["n"]  # metadata is spread into the result
        # the front reads caption.length whenever the key is there: no key without a caption
        caption = hit.metadata.get("caption")
        if caption is None:
            assert "caption" not in result
        else:
            assert result["caption"] == str(caption)


def test_knn_service_by_image_url_and_embedding(
    api: TestClient, shared: Shared, http_root: tuple[Path, str]
) -> None:
    by_image = knn(api, image=b64(shared.data(15)), num_images=40, num_result_ids=3)
    assert len(by_image) == 3
    assert by_image[0]["id"] == shared.ids[15]
    assert by_image[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    vector = shared.col.vectors([shared.ids[16]])[0].tolist()
    by_vector = knn(api, embedding_input=vector, num_images=2, num_result_ids=2)
    assert by_vector[0]["id"] == shared.ids[16] and len(by_vector) == 2
    folder, base = http_root
    (folder / "knn-17.png").write_bytes(shared.data(17))
    # the collection refuses loopback URLs as `lookalike serve` does: [] and the reason
    refused = post(api, "/knn-service", knn_body(image_url=f"{base}/knn-17.png"))
    no_results(refused, "fetch_failed", "loopback")
    fetching = Collection.open(shared.col.path, fetch_policy=FetchPolicy(allow_private=True))
    with fetching:
        client = TestClient(create_app({"photos": fetching}, load_models=False))
        assert knn(client, image_url=f"{base}/knn-17.png")[0]["id"] == shared.ids[17]


def test_knn_service_deduplicate(api: TestClient, shared: Shared) -> None:
    results = knn(api, image=b64(shared.data(0)), deduplicate=True, num_images=20)
    kept = [r["id"] for r in results]
    assert kept[0] == shared.ids[0] and shared.ids[COPY] not in kept
    vectors = shared.col.vectors(kept)
    assert np.all((vectors @ vectors.T)[np.triu_indices(len(kept), 1)] < 0.94)
    assert shared.ids[COPY] in [r["id"] for r in knn(api, image=b64(shared.data(0)))]


def test_caption_column(shared: Shared) -> None:
    def captions(settings: ServerSettings) -> dict[str, dict[int, str | None]]:
        client = TestClient(
            create_app({"photos": shared.col, "urls": shared.urls}, settings, load_models=False)
        )
        found = {}
        for name in ("photos", "urls"):
            results = knn(client, indice_name=name, text="x", num_images=N, num_result_ids=N)
            found[name] = {r["id"]: r.get("caption") for r in results}
        return found

    titled = captions(ServerSettings(caption_columns=("photos=title",)))
    assert titled["photos"] == {i: f"title {n}" for n, i in enumerate(shared.ids)}
    assert set(titled["urls"].values()) == {None}  # others keep the default column
    everywhere = captions(ServerSettings(caption_columns=("n",)))
    assert everywhere["photos"] == {i: str(n) for n, i in enumerate(shared.ids)}
    with pytest.raises(BadInputError, match="'nope'"):
        create_app({"photos": shared.col}, ServerSettings(caption_columns=("nope=title",)))
    with pytest.raises(BadInputError, match="NAME=COLUMN"):
        ServerSettings(caption_columns=("photos=",))


def test_result_ids_past_the_first_page_and_their_metadata(api: TestClient, shared: Shared) -> None:
    """The front asks 3,000 ids and 40 with metadata, then pages through the rest."""
    results = knn(api, text="a blue square", num_images=5, num_result_ids=25)
    expected = shared.col.search(text="a blue square", k=25, include_self=True)
    assert [r["id"] for r in results] == [h.id for h in expected]
    assert all("url" in r for r in results[:5])
    assert all(set(r) == {"id", "similarity"} for r in results[5:])
    similarities = [r["similarity"] for r in results]
    assert similarities == sorted(similarities, reverse=True)

    wanted = [r["id"] for r in results[5:10]]
    response = post(api, "/metadata", {"ids": [*wanted, 99999], "indice_name": "photos"})
    assert response.status_code == 200
    answers = response.json()
    assert [a["id"] for a in answers] == wanted  # unknown ids are left out
    for answer in answers:
        stored = shared.col.get(answer["id"])
        assert answer["metadata"]["n"] == stored.metadata["n"]
        assert answer["metadata"]["url"] == item_link("photos", answer["id"])
        assert ("caption" in answer["metadata"]) == (stored.metadata.get("caption") is not None)
    assert post(api, "/metadata", {"ids": [], "indice_name": "photos"}).json() == []
    assert api.get("/indices-list").json() == ["photos", "urls"]


def test_front_sized_requests_are_capped_silently(api: TestClient) -> None:
    """Its download button asks 10,000 images; its searches 3,000 ids."""
    everything = knn(api, text="x", num_images=10_000, num_result_ids=10_000)
    assert len(everything) == N and all("url" in r for r in everything)
    beyond = knn(api, text="x", num_images=40, num_result_ids=10**6)
    assert len(beyond) == N


def test_front_default_search_over_many_ids_is_fast(tmp_path: Path) -> None:
    """3,000 ids with near duplicates hidden, of 512-d vectors: the front's every search."""
    rng = np.random.default_rng(0)
    with Collection.create(tmp_path / "many", "vectors:512") as many:
        vectors = rng.standard_normal((12_000, 512)).astype(np.float32)
        vectors[1::3] = vectors[::3][: len(vectors[1::3])] + 0.01  # near duplicates
        many.add_vectors(vectors, [f"v{i}" for i in range(len(vectors))])
        client = TestClient(create_app({"many": many}, load_models=False))
        body = knn_body(indice_name="many", embedding_input=vectors[0].tolist(), deduplicate=True)
        started = time.perf_counter()
        results = knn(client, **{**body, "num_images": 40, "num_result_ids": 3000})
        took = time.perf_counter() - started
        print(f"3,000 deduplicated ids of 12,000 in {took:.2f} s")
        assert took < 10, f"{took:.1f} s"  # comparing hit by hit took minutes

        # what greedy deduplication keeps: hits in rank order, none within 0.94 of another,
        # and each hit left out before the last one kept is within 0.94 of a better kept one
        ranked = [h.id for h in many.search(vector=vectors[0], k=10_000)]
        ids = [r["id"] for r in results]
        assert len(ids) == 3000 and ids[0] == ranked[0]
        rank = {item_id: position for position, item_id in enumerate(ranked)}
        assert [rank[i] for i in ids] == sorted(rank[i] for i in ids)
        kept = many.vectors(ids)
        gram = kept @ kept.T
        np.fill_diagonal(gram, 0)
        assert gram.max() < 0.94
        dropped = sorted(set(ranked[: rank[ids[-1]]]) - set(ids))
        assert dropped  # the near duplicates
        near = many.vectors(dropped) @ kept.T >= 0.94
        better = (
            np.array([rank[i] for i in ids])[None, :]
            < np.array([rank[i] for i in dropped])[:, None]
        )
        assert np.all((near & better).any(axis=1))


# --- search by an image of this server ----------------------------------------------------------


def test_search_by_this_servers_own_image_links(api: TestClient, shared: Shared) -> None:
    """The front's "search by this image" sends a result's url: answered from the stored image,
    with no HTTP fetch (the collection refuses loopback URLs)."""
    target = shared.ids[7]
    for link in (
        item_link("photos", target),
        item_link("photos", target, "thumbnail"),
        f"/v1/collections/photos/items/{target}/image",
    ):
        results = knn(api, image_url=link)
        assert results[0]["id"] == target, link
        assert results[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    # an image of another served collection, then the URL an image was indexed by
    across = knn(api, indice_name="urls", image_url=item_link("photos", target), num_result_ids=1)
    assert len(across) == 1 and across[0]["url"] in shared.url_of.values()
    stored_id, link = next(iter(shared.url_of.items()))
    by_stored_url = knn(api, indice_name="urls", image_url=link)
    assert by_stored_url[0]["id"] == stored_id and by_stored_url[0]["url"] == link
    assert by_stored_url[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    # an unknown id of this server
    no_results(post(api, "/knn-service", knn_body(image_url=item_link("photos", 10**9))))


def test_public_url_makes_the_links(shared: Shared) -> None:
    public = "https://images.example.org/lookalike"
    settings = ServerSettings(public_url=public + "/")
    client = TestClient(create_app({"photos": shared.col}, settings, load_models=False))
    results = knn(client, image=b64(shared.data(3)))
    assert results[0]["url"] == item_link("photos", shared.ids[3], base=public)
    again = knn(client, image_url=results[0]["url"])  # resolved, not fetched
    assert again[0]["id"] == shared.ids[3]
    with pytest.raises(BadInputError, match="public URL"):
        ServerSettings(public_url="ftp://example.org")


# --- failures ---------------------------------------------------------------------------------


def test_failures_answer_an_empty_list(api: TestClient, shared: Shared) -> None:
    """clip-retrieval's front end takes any answer for its result list: an error object would
    break it for good. The reason is logged and in a header; /v1 keeps its typed errors."""
    no_results(post(api, "/knn-service", knn_body()), "bad_input", "give text")
    no_results(post(api, "/knn-service", knn_body(text="x", indice_name="no")), "not_found")
    no_results(post(api, "/knn-service", b"nope"), "bad_input", "JSON")
    no_results(post(api, "/knn-service", knn_body(text="x", num_images=0)), "num_images")
    no_results(post(api, "/knn-service", {"text": "x"}), "indice_name is required")
    no_results(post(api, "/knn-service", knn_body(image="%%%")), "base64")
    no_results(post(api, "/knn-service", knn_body(embedding_input=[1.0, 2.0])), "model_mismatch")
    no_results(post(api, "/metadata", {"ids": [1], "indice_name": "no"}), "not_found")
    no_results(post(api, "/metadata", {"ids": "x"}), "invalid_body")
    blind = TestClient(create_app({"blind": shared.blind}))
    no_results(post(blind, "/knn-service", knn_body(indice_name="blind", text="a cat")), "text")
    assert knn(blind, indice_name="blind", image=b64(shared.data(1)))[0]["similarity"] > 0.99
    typed = blind.post("/v1/collections/blind/search", json={"text": "a cat"})
    assert typed.status_code == 400 and typed.json()["error"]["code"] == "unsupported_query"
    assert api.get("/health").status_code == 200


def test_one_collection_needs_no_indice_name(shared: Shared) -> None:
    client = TestClient(create_app({"photos": shared.col}, load_models=False))
    answer = post(client, "/knn-service", {"text": "x", "num_images": 2})
    assert answer.status_code == 200 and len(answer.json()) == 2


def test_clip_retrievals_own_client(shared: Shared, tmp_path: Path) -> None:
    """clip_retrieval.clip_client.ClipClient, loaded from the wheel by file: its package's
    __init__ imports the back end's dependencies, which are not installed."""
    pytest.importorskip("requests")
    try:
        wheel = metadata.distribution("clip-retrieval")
    except metadata.PackageNotFoundError:
        pytest.skip("needs clip-retrieval's wheel: pip install --no-deps clip-retrieval==2.45.0")
    spec = importlib.util.spec_from_file_location(
        "clip_client", wheel.locate_file("clip_retrieval/clip_client.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    query = tmp_path / "query.png"
    query.write_bytes(shared.data(9))
    with serve_app(create_app({"photos": shared.col}, load_models=False)) as base:
        client = module.ClipClient(f"{base}/knn-service", "photos", num_images=5, deduplicate=False)
        by_text = client.query(text="a red circle")
        by_image = client.query(image=str(query))
        by_link = client.query(image=by_image[0]["url"])
    assert len(by_text) == 5 and all(r["url"].startswith(base) for r in by_text)
    assert by_image[0]["id"] == shared.ids[9] and by_link[0]["id"] == shared.ids[9]


# --- the front end ----------------------------------------------------------------------------


def test_clip_front_is_served_with_its_config(shared: Shared) -> None:
    try:
        build_folder()
    except BadInputError as missing:
        pytest.skip(str(missing))
    settings = ServerSettings(clip_front=True)
    client = TestClient(create_app({"photos": shared.col, "urls": shared.urls}, settings))
    moved = client.get("/clip-front", follow_redirects=False)
    assert moved.status_code == 307 and moved.headers["location"] == "/clip-front/"
    page = client.get("/clip-front/")
    assert page.status_code == 200 and "<clip-front>" in page.text
    script = page.text.split('src="main.')[1].split('"')[0]
    assert client.get(f"/clip-front/main.{script}").status_code == 200
    assert client.get("/clip-front/config.json").json() == {
        "defaultBackend": BASE,
        "defaultIndex": "photos",
        "urlColumn": "url",
    }
    assert client.get("/clip-front/nothing.js").status_code == 404
    assert "/clip-front/config.json" not in client.get("/openapi.json").json()["paths"]
    public = ServerSettings(clip_front=True, public_url="https://search.example.org/")
    behind = TestClient(create_app({"photos": shared.col}, public, load_models=False))
    config = behind.get("/clip-front/config.json").json()
    assert config["defaultBackend"] == "https://search.example.org"
    assert TestClient(create_app({"photos": shared.col})).get("/clip-front/").status_code == 404


def test_serve_rejects_bad_options_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_main(
        monkeypatch, capsys, "serve", f"a={tmp_path}", "--public-url", "example.org"
    )
    assert code == 1
    one_line_error(err, "public URL")
    code, _, err = run_main(
        monkeypatch, capsys, "serve", f"a={tmp_path}", "--caption-column", "b=title"
    )
    assert code == 1
    one_line_error(err, "'b'", "not served")


def test_options_reach_worker_processes(shared: Shared) -> None:
    """`serve --workers N` hands its settings to each worker as JSON."""
    settings = ServerSettings(
        clip_front=True, public_url="https://images.example.org", caption_columns=("photos=title",)
    )
    config = ServeConfig.from_entries([f"photos={shared.col.path}"], settings)
    assert ServeConfig.from_json(config.to_json()).settings == settings
