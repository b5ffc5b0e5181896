"""Character portraits, `speakers/<id>.png|jpg|webp`: listed in /speakers and served as the image
they are, and nothing else from the speakers dir (no other file, no link out of it, no text
renamed .png)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import scripted_env
from tests.fixtures.images import write_png
from tests.server import running_server

KEY = "portrait-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("portraits")
    env = scripted_env(root, api_key=KEY)
    speakers = root / "speakers"
    write_png(speakers / "Low.png", 48, 32, (10, 120, 200))
    (speakers / "High.jpg").write_text("<script>alert(1)</script>")  # not a JPEG: never served
    outside = write_png(root / "outside.png", 8, 8, (0, 0, 0))
    (speakers / "Fragile.png").symlink_to(outside)  # leads out of the speakers dir: refused
    with running_server("app_stream", env, root / "server.log") as running:
        yield running


def get(server, path: str, *, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server.base_url}{path}", headers=headers, timeout=10)


def test_speakers_list_a_portrait_only_where_one_may_be_served(server):
    listed = {s["id"]: s["portrait_url"] for s in get(server, "/speakers").json()["speakers"]}
    assert listed == {"Low": "/speakers/Low/portrait", "High": None, "Fragile": None, "Broken": None}


def test_a_portrait_is_served_as_the_image_it_is(server, tmp_path):
    response = get(server, "/speakers/Low/portrait")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in response.headers["content-security-policy"]
    expected = write_png(tmp_path / "same.png", 48, 32, (10, 120, 200)).read_bytes()
    assert response.content == expected


@pytest.mark.parametrize(
    ("path", "status", "error_type"),
    [
        ("/speakers/High/portrait", 404, "no_portrait"),  # a text file named .jpg
        ("/speakers/Fragile/portrait", 404, "no_portrait"),  # a link to a file outside the dir
        ("/speakers/Broken/portrait", 404, "no_portrait"),  # none at all
        ("/speakers/Nobody/portrait", 404, "unknown_speaker"),
        ("/speakers/..%2Foutside/portrait", 404, "not_found"),  # no route: never joined to a path
    ],
)
def test_anything_else_is_a_clear_404(server, path, status, error_type):
    response = get(server, path)
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == error_type


def test_portraits_need_the_api_key_like_the_speaker_list(server):
    assert get(server, "/speakers/Low/portrait", key=None).status_code == 401
    assert get(server, "/speakers/Low/portrait", key="wrong").status_code == 401
