"""The Python client and ``lookalike search --server`` against a real ``lookalike serve`` process.

The server runs as a subprocess on a free port of 127.0.0.1 and is killed when the module ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import lookalike
from helpers import encode
from lookalike import (
    APIError,
    AsyncClient,
    BadInputError,
    Client,
    Collection,
    Hit,
    IngestReport,
    Item,
    LookalikeError,
    Query,
)
from lookalike.demo import draw_image

KEY = "s3cret-key"
N = 12
STARTUP_SECONDS = 90


@dataclass
class Server:
    url: str
    collection: Path
    paths: list[Path]
    ids: list[int]  # ids[i]: id of picture i
    vectors: np.ndarray  # vectors[i]: stored vector of picture i
    root: Path

    def client(self, **options: Any) -> Client:
        return Client(self.url, KEY, **options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_API_KEY")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[Server]:
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("client")
    images = root / "images"
    images.mkdir()
    paths = []
    for i in range(N):
        fmt, suffix = ("PNG", "png") if i % 2 == 0 else ("JPEG", "jpg")
        paths.append(images / f"pic{i:02d}.{suffix}")
        paths[-1].write_bytes(encode(draw_image(i, (40 + 6 * i, 36 + 4 * i)), fmt))
    metadata = [{"n": i, "split": "train" if i % 2 == 0 else "test"} for i in range(N)]
    with Collection.create(root / "photos", spec, weights=weights) as col:
        assert col.add_images(paths, metadata=metadata).added == N
        ids = [col.lookup(p).id for p in paths]  # type: ignore[union-attr]
        vectors = col.vectors(ids)
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in the finalizer
    command = [sys.executable, "-m", "lookalike", "serve", str(root / "photos")]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--api-key", KEY],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=quiet_env(),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"lookalike serve exited: {(root / 'server.log').read_text(encoding='utf-8')}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                log = (root / "server.log").read_text(encoding="utf-8")
                pytest.fail(f"no /health in {STARTUP_SECONDS} s: {log}")
            time.sleep(0.1)
        yield Server(url, root / "photos", paths, ids, vectors, root)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with server.client() as c:
        yield c


def item_url(server: Server, item: int) -> str:
    return f"{server.url}/v1/collections/photos/items/{item}/image"


# --- Client -----------------------------------------------------------------------------------


def test_health_and_collections(client: Client, server: Server) -> None:
    assert client.health() == {"status": "ok", "collections": 1}
    (listed,) = client.collections()
    assert listed["name"] == "photos"  # served under its folder's name
    assert listed["count"] >= N and listed["dim"] == 32 and listed["supports_text"] is True


def test_search_by_text_gives_hits_with_absolute_urls(client: Client, server: Server) -> None:
    hits = client.search("photos", text="a red circle", k=5)
    assert len(hits) == 5 and all(isinstance(h, Hit) for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    for hit in hits:
        assert hit.url == item_url(server, hit.id)
        assert hit.path is None and hit.width > 0 and hit.height > 0
    first = hits[0]
    picture = server.ids.index(first.id)
    assert first.metadata == {"n": picture, "split": "train" if picture % 2 == 0 else "test"}
    # the URL really serves the image
    image = httpx.get(first.url, headers={"x-api-key": KEY})  # type: ignore[arg-type]
    assert image.status_code == 200 and image.content == server.paths[picture].read_bytes()
    assert len(client.search("photos", text="a red circle")) == min(20, N)


@pytest.mark.parametrize("form", ["path", "str", "bytes", "pil"])
def test_search_by_image(client: Client, server: Server, form: str) -> None:
    path = server.paths[5]
    image: Any = {
        "path": path,
        "str": str(path),
        "bytes": path.read_bytes(),
        "pil": Image.open(path),
    }[form]
    hits = client.search("photos", image=image, k=3)
    assert hits[0].id == server.ids[5]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_search_by_id_and_vector(client: Client, server: Server) -> None:
    query = server.ids[4]
    hits = client.search("photos", id=query, k=N)
    assert query not in [h.id for h in hits] and len(hits) == N - 1
    with_self = client.search("photos", id=query, k=3, include_self=True)
    assert with_self[0].id == query and with_self[0].score == pytest.approx(1.0, abs=1e-4)
    by_vector = client.search("photos", vector=server.vectors[7], k=2)
    assert by_vector[0].id == server.ids[7]
    assert by_vector[0].score == pytest.approx(1.0, abs=1e-4)
    # the same vector as a plain list of floats
    assert client.search("photos", vector=server.vectors[7].tolist(), k=1)[0].id == server.ids[7]


def test_search_by_query_parts_matches_the_library(client: Client, server: Server) -> None:
    a, b, c = server.ids[1], server.ids[2], server.ids[3]
    parts = [
        {"id": a},
        {"image": server.paths[6], "weight": 0.5},
        {"text": "at night", "weight": 0.25},
        {"id": c, "weight": -0.5},
    ]
    hits = client.search("photos", query=parts, k=6, filter={"split": "train"}, exclude_ids=[b])
    assert not {a, b, c} & {h.id for h in hits}
    assert all(h.metadata["split"] == "train" for h in hits)
    with Collection.open(server.collection) as col:
        local = col.search(
            query=[{**p, "image": p["image"].read_bytes()} if "image" in p else p for p in parts],
            k=6,
            filter={"split": "train"},
            exclude_ids=[b],
        )
    assert [h.id for h in hits] == [h.id for h in local]
    assert [h.score for h in hits] == pytest.approx([h.score for h in local], abs=1e-5)


def test_search_many_answers_as_the_searches_one_at_a_time(client: Client, server: Server) -> None:
    queries: list[Any] = [
        {"text": "a red circle"},
        {"image": server.paths[6], "k": 2},
        {"id": server.ids[3]},
        Query.build(vector=server.vectors[7], k=1),
    ]
    found = client.search_many("photos", queries, k=3)
    assert [len(hits) for hits in found] == [3, 2, 3, 1]
    alone = [
        client.search("photos", q)
        if isinstance(q, Query)
        else client.search("photos", **{"k": 3, **q})
        for q in queries
    ]
    assert found == alone
    assert found[3][0].id == server.ids[7]
    # past one request's worth, the client sends several; none for no queries
    assert client.search_many("photos", queries, k=3, batch_size=3) == found
    assert client.search_many("photos", [], k=3) == []
    with pytest.raises(BadInputError, match="batch_size"):
        client.search_many("photos", queries, batch_size=0)
    with pytest.raises(APIError, match="on its own"):
        client.search_many("photos", [{"url": "http://127.0.0.1:1/a.png"}])


def test_get(client: Client, server: Server) -> None:
    item = client.get("photos", server.ids[8])
    assert isinstance(item, Item)
    assert item.id == server.ids[8]
    assert item.url == item_url(server, server.ids[8])
    assert (item.width, item.height) == Image.open(server.paths[8]).size
    assert item.metadata == {"n": 8, "split": "train"}


def test_add_search_remove(client: Client, server: Server, tmp_path: Path) -> None:
    first, second = tmp_path / "new-a.png", tmp_path / "new-b.jpg"
    first.write_bytes(encode(draw_image(500, (60, 50))))
    second.write_bytes(encode(draw_image(501, (50, 70)), "JPEG"))
    before = client.collections()[0]["count"]
    report = client.add("photos", [first, str(second)], metadata=[{"tag": "a"}, {"tag": "b"}])
    assert isinstance(report, IngestReport)
    assert report.added == 2 and report.failed == []
    new_ids = list(report.ids)
    assert [client.get("photos", i).metadata for i in new_ids] == [{"tag": "a"}, {"tag": "b"}]
    assert client.collections()[0]["count"] == before + 2
    hit = client.search("photos", image=second, k=1)[0]
    assert hit.id == new_ids[1] and hit.metadata == {"tag": "b"}
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    assert client.get("photos", new_ids[0]).metadata == {"tag": "a"}
    # bytes and PIL images are uploaded too
    pil = draw_image(502, (40, 40))
    raw = encode(draw_image(503, (44, 44)))
    uploaded = client.add("photos", [pil, raw])
    assert uploaded.added == 2
    assert client.search("photos", image=raw, k=1)[0].id == uploaded.ids[1]
    new_ids += uploaded.ids
    for item in new_ids:
        assert client.remove("photos", item) == 1
    with pytest.raises(APIError) as caught:
        client.get("photos", new_ids[0])
    assert caught.value.status == 404
    assert new_ids[1] not in [h.id for h in client.search("photos", image=second, k=100)]


def test_collection_handle_mirrors_the_library(
    client: Client, server: Server, tmp_path: Path
) -> None:
    """client.collection(name) takes Collection's arguments and gives Collection's types."""
    photos = client.collection("photos")
    a, b = server.ids[1], server.ids[4]
    hits = photos.search(id=[a, b], k=5, filter={"split": "train"})  # "more like these"
    with Collection.open(server.collection) as col:
        local = col.search(id=[a, b], k=5, filter={"split": "train"})
        assert [h.id for h in hits] == [h.id for h in local]
        assert all(isinstance(h, Hit) for h in hits)
        query = Query.build(text="a red circle", k=3, exclude_ids=[a])
        assert [h.id for h in photos.search(query)] == [h.id for h in col.search(query)]
        batch = [query, {"id": a, "k": 2}]
        assert [[h.id for h in hits] for hits in photos.search_many(batch)] == [
            [h.id for h in hits] for hits in col.search_many(batch)
        ]
    assert photos.get(a) == client.get("photos", a)
    added = tmp_path / "handle.png"
    added.write_bytes(encode(draw_image(700, (40, 30))))
    report = photos.add_images([added], metadata=[{"via": "handle"}])
    assert isinstance(report, IngestReport) and report.added == 1 and len(report.ids) == 1
    assert photos.get(report.ids[0]).metadata == {"via": "handle"}
    assert photos.remove(report.ids) == 1

    async def asynchronous() -> None:
        async with AsyncClient(server.url, KEY) as remote:
            handle = remote.collection("photos")
            assert [
                h.id for h in await handle.search(id=[a, b], k=5, filter={"split": "train"})
            ] == [h.id for h in hits]
            assert (await handle.get(a)).id == a

    asyncio.run(asynchronous())


def test_errors_raise_api_error(client: Client, server: Server) -> None:
    with pytest.raises(APIError) as caught:
        client.search("nope", text="x")
    error = caught.value
    assert isinstance(error, LookalikeError)
    assert (error.status, error.code) == (404, "not_found")
    assert "nope" in error.message and "404" in str(error)
    with pytest.raises(APIError) as caught:
        client.get("photos", 99999)
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    with pytest.raises(APIError) as caught:
        client.search("photos", text="x", k=5000)
    assert caught.value.status == 400 and "1000" in caught.value.message
    with pytest.raises(APIError) as caught:
        client.search("photos", vector=[1.0, 2.0])
    assert (caught.value.status, caught.value.code) == (400, "model_mismatch")
    # kinds combine over HTTP as in the library; a bad query is refused before it is sent
    assert client.search("photos", text="x", id=server.ids[1], k=3)
    with pytest.raises(BadInputError, match="k must be"):
        client.search("photos", text="x", k=0)
    with pytest.raises(APIError) as caught:
        client.search("photos", image=b"not an image at all")
    assert (caught.value.status, caught.value.code) == (415, "bad_image")
    assert client.health()["status"] == "ok"


def test_api_key_is_required(server: Server) -> None:
    for key in (None, "wrong"):
        with Client(server.url, key) as anonymous:
            assert anonymous.health()["status"] == "ok"  # /health is public
            with pytest.raises(APIError) as caught:
                anonymous.collections()
            assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    with Client(server.url, KEY) as keyed:
        assert keyed.collections()[0]["name"] == "photos"


def test_unreachable_server_raises_after_retries() -> None:
    port = free_port()  # nothing listens there now
    started = time.monotonic()
    dead = Client(f"http://127.0.0.1:{port}", retries=2, timeout=2)
    with dead, pytest.raises(LookalikeError) as caught:
        dead.search("photos", text="x")
    elapsed = time.monotonic() - started
    assert not isinstance(caught.value, APIError)
    assert "cannot reach" in str(caught.value)
    assert 0.5 <= elapsed < 5  # two back-offs (0.2 s + 0.4 s), then it gives up
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{port}", retries=0) as once, pytest.raises(LookalikeError):
        once.health()
    assert time.monotonic() - started < 0.5


def test_bad_image_arguments_are_refused_locally(client: Client, tmp_path: Path) -> None:
    with pytest.raises(lookalike.BadInputError):
        client.search("photos", image=12345)
    missing = tmp_path / "missing.png"
    with pytest.raises(lookalike.BadInputError, match=r"missing\.png"):
        client.search("photos", image=missing)
    with pytest.raises(lookalike.BadInputError, match=r"missing\.png"):
        client.add("photos", [missing])


# --- AsyncClient ------------------------------------------------------------------------------


def test_async_client(server: Server, tmp_path: Path) -> None:
    new = tmp_path / "async.png"
    new.write_bytes(encode(draw_image(600, (52, 46))))

    async def scenario() -> None:
        async with AsyncClient(server.url, KEY) as client:
            assert (await client.health())["status"] == "ok"
            assert (await client.collections())[0]["name"] == "photos"
            many = await asyncio.gather(
                client.search("photos", text="a blue square", k=4),
                client.search("photos", image=server.paths[9], k=1),
                client.search("photos", id=server.ids[9], k=3, include_self=True),
                client.search("photos", vector=server.vectors[10].tolist(), k=1),
                client.search_many("photos", [{"id": server.ids[9]}], k=3, include_self=True),
            )
            by_text, by_image, by_id, by_vector, batched = many
            assert batched == [by_id]
            assert len(by_text) == 4 and by_text[0].url.startswith(server.url)  # type: ignore[union-attr]
            assert by_image[0].id == server.ids[9] == by_id[0].id
            assert by_vector[0].id == server.ids[10]
            item = await client.get("photos", server.ids[9])
            assert item.metadata == {"n": 9, "split": "test"}
            report = await client.add("photos", [new], metadata=[{"via": "async"}])
            new_id = report.ids[0]
            assert (await client.search("photos", image=new, k=1))[0].id == new_id
            assert await client.remove("photos", new_id) == 1
            try:
                await client.get("photos", new_id)
            except APIError as error:
                assert error.status == 404
            else:
                raise AssertionError("a removed item was still served")
            try:
                await client.search("nope", text="x")
            except APIError as error:
                assert (error.status, error.code) == (404, "not_found")
            else:
                raise AssertionError("an unknown collection was searched")
        async with AsyncClient(f"http://127.0.0.1:{free_port()}", retries=1) as dead:
            try:
                await dead.health()
            except APIError:
                raise AssertionError("a connection error is not an API error") from None
            except LookalikeError as error:
                assert "cannot reach" in str(error)
            else:
                raise AssertionError("a closed port answered")

    asyncio.run(scenario())


# --- the command line and the import cost -----------------------------------------------------


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lookalike", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=quiet_env(**env),
        encoding="utf-8",
    )


def test_cli_search_against_the_server(server: Server) -> None:
    remote = ["search", "photos", "--server", server.url]
    done = cli(*remote, "--id", str(server.ids[3]), "--json", "--api-key", KEY)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    ids = [h["id"] for h in hits]
    assert server.ids[3] not in ids and len(ids) == N - 1
    assert all(h["url"] == item_url(server, h["id"]) for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    with Client(server.url, KEY) as client:
        expected = client.search("photos", id=server.ids[3])
    assert ids == [h.id for h in expected]
    # several ids, a filter and k; the key from the environment
    several = ["--id", str(server.ids[0]), "--id", str(server.ids[2]), "--filter", "split=train"]
    done = cli(*remote, *several, "-k", "3", "--json", LOOKALIKE_API_KEY=KEY)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert len(hits) == 3 and all(h["metadata"]["split"] == "train" for h in hits)
    assert not {server.ids[0], server.ids[2]} & {h["id"] for h in hits}
    # errors are one line on stderr and exit status 1
    done = cli("search", "nope", "--server", server.url, "--text", "x", "--api-key", KEY)
    assert done.returncode == 1 and "error" in done.stderr and "nope" in done.stderr
    done = cli(*remote, "--text", "x")
    assert done.returncode == 1 and "401" in done.stderr


def test_client_import_is_light() -> None:
    code = (
        "import sys, json, lookalike\n"
        "lookalike.Client, lookalike.AsyncClient, lookalike.APIError\n"
        "heavy = ('torch', 'torchvision', 'open_clip', 'fastapi', 'starlette', 'uvicorn',"
        " 'numpy', 'PIL', 'faiss')\n"
        "print(json.dumps({'heavy': [m for m in heavy if m in sys.modules],"
        " 'client': 'lookalike.client' in sys.modules, 'httpx': 'httpx' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, encoding="utf-8"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"heavy": [], "client": True, "httpx": True}
