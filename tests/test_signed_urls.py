"""Signed image links: one image, no API key, until they expire; anything else is refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from helpers import encode
from lookalike import Collection
from lookalike.cli import app as cli
from lookalike.demo import draw_image
from lookalike.errors import BadInputError
from lookalike.server import ServerSettings, create_app
from lookalike.signing import sign_image_url

SECRET = "s3cret-for-tests-only-0123456789"
KEY = "the-api-key"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[tuple[TestClient, list[int], dict[int, bytes]]]:
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("signed")
    paths = []
    for i in range(3):
        path = root / f"p{i}.png"
        path.write_bytes(encode(draw_image(i, (40, 30), "RGB")))
        paths.append(path)
    col = Collection.create(root / "col", spec, weights=weights)
    ids = col.add_images(paths).ids
    settings = ServerSettings(api_keys=(KEY,), url_secret=SECRET, auth_failures_per_minute=0)
    with TestClient(create_app({"photos": col}, settings)) as client:
        yield client, ids, {i: p.read_bytes() for i, p in zip(ids, paths, strict=True)}
    col.close()


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_a_signed_link_opens_its_image_without_a_key(served) -> None:
    client, ids, data = served
    assert client.get(f"/v1/collections/photos/items/{ids[0]}/image").status_code == 401
    url = sign_image_url("http://testserver", "photos", ids[0], SECRET, ttl_s=60)
    answer = client.get(_path(url))
    assert answer.status_code == 200 and answer.content == data[ids[0]]


@pytest.mark.parametrize("how", ["wrong", "altered-expiry", "other-image", "other-collection"])
def test_a_wrong_or_altered_token_is_refused(served, how: str) -> None:
    client, ids, _ = served
    url = sign_image_url("http://testserver", "photos", ids[0], SECRET, ttl_s=60)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    path = f"/v1/collections/photos/items/{ids[0]}/image"
    if how == "wrong":
        query["token"] = sign_image_url("http://x", "photos", ids[0], "another-secret-0123456789")
        query["token"] = parse_qs(urlsplit(query["token"]).query)["token"][0]
    elif how == "altered-expiry":
        query["expires"] = str(int(query["expires"]) + 3600)
    elif how == "other-image":  # a token for image 0 does not open image 1
        path = f"/v1/collections/photos/items/{ids[1]}/image"
    answer = client.get(path, params=query)
    if how == "other-collection":
        answer = client.get("/v1/collections/other/items/0/image", params=query)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "bad_token"


def test_an_expired_link_is_refused(served) -> None:
    client, ids, _ = served
    url = sign_image_url(
        "http://testserver", "photos", ids[2], SECRET, ttl_s=1, now=time.time() - 5
    )
    answer = client.get(_path(url))
    assert answer.status_code == 403 and "expired" in answer.json()["error"]["message"]


def test_a_token_opens_no_other_route(served) -> None:
    client, ids, _ = served
    url = sign_image_url("http://testserver", "photos", ids[0], SECRET, ttl_s=60)
    query = urlsplit(url).query
    assert client.get(f"/v1/collections/photos/items/{ids[0]}/thumbnail?{query}").status_code == 401
    assert client.get(f"/v1/collections/photos/items/{ids[0]}?{query}").status_code == 401


def test_the_server_signs_links_for_key_holders(served) -> None:
    client, ids, data = served
    body = {"ids": ids[:2], "ttl_s": 120}
    assert client.post("/v1/collections/photos/signed-urls", json=body).status_code == 401
    answer = client.post(
        "/v1/collections/photos/signed-urls", json=body, headers={"x-api-key": KEY}
    )
    assert answer.status_code == 200, answer.text
    links = answer.json()["urls"]
    assert [link["id"] for link in links] == ids[:2]
    assert all(abs(link["expires"] - time.time() - 120) < 5 for link in links)
    for link in links:
        assert client.get(_path(link["url"])).content == data[link["id"]]
    unknown = client.post(
        "/v1/collections/photos/signed-urls", json={"ids": [99999]}, headers={"x-api-key": KEY}
    )
    assert unknown.status_code == 404


def test_wrong_tokens_are_rate_limited_like_wrong_keys(served, tiny_clip) -> None:
    _, ids, _ = served
    client, _, _ = served
    col = client.app.state.served.collections["photos"]
    settings = ServerSettings(url_secret=SECRET, auth_failures_per_minute=2)
    with TestClient(create_app({"photos": col}, settings, load_models=False)) as limited:
        path = f"/v1/collections/photos/items/{ids[0]}/image?expires=9999999999&token=x"
        assert [limited.get(path).status_code for _ in range(3)] == [403, 403, 429]


def test_bad_secrets_and_lifetimes_are_refused() -> None:
    with pytest.raises(BadInputError, match="at least 16 bytes"):
        sign_image_url("http://h", "c", 1, "short")
    with pytest.raises(BadInputError, match="lifetime"):
        sign_image_url("http://h", "c", 1, SECRET, ttl_s=0)
    with pytest.raises(BadInputError, match="http"):
        sign_image_url("ftp://h", "c", 1, SECRET)


def test_cli_sign_url_uses_the_env_secret(served, monkeypatch: pytest.MonkeyPatch) -> None:
    client, ids, data = served
    monkeypatch.setenv("LOOKALIKE_URL_SECRET", SECRET)
    result = CliRunner().invoke(cli, ["sign-url", "http://testserver", "photos", str(ids[1])])
    assert result.exit_code == 0, result.output
    assert client.get(_path(result.output.strip())).content == data[ids[1]]
    monkeypatch.delenv("LOOKALIKE_URL_SECRET")
    result = CliRunner().invoke(cli, ["sign-url", "http://testserver", "photos", "1"])
    assert result.exit_code != 0 and "LOOKALIKE_URL_SECRET" in str(result.exception)
