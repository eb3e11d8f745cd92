"""The card list's images by relative, content-addressed URL (app/media.py): no server path in the
page, served to a signed-in user, refused (401) without sign-in, and nothing outside DATA_DIR/images
and assets/ reachable (`..`, bad names, other folders), on the session's launched app."""

from __future__ import annotations

import http.client
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from app.context import REPO
from app.media import PREFIX, media_file, media_url
from app.tabs.annotate_cards import item_view


def _login(studio, user: str) -> requests.Session:
    s = requests.Session()
    r = s.post(studio.url + "login", data={"username": user, "password": studio.users[user]})
    assert r.status_code < 400
    return s


def _item_with_images(ctx):
    """An example mention with its own image and a candidate card with an image."""
    for m in ctx.examples:
        mm = ctx.store.get_mention(f"example:{m.id}")
        preds = ctx.store.predictions(mm.id)
        if mm.image_path and preds:
            view = item_view(ctx, mm, preds[0])
            if view["html"].count("<img") >= 2:
                return mm, view
    pytest.fail("no example mention with an image and a candidate image")


def test_card_list_images_carry_no_server_path_and_serve_only_when_signed_in(studio):
    ctx = studio.ctx
    m, view = _item_with_images(ctx)
    page = view["html"]
    srcs = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert srcs and all(s.startswith(f"{PREFIX}/images/") or s.startswith(f"{PREFIX}/assets/") for s in srcs)
    data_dir = str(Path(ctx.config.data_dir).resolve())
    for secret in (data_dir, str(ctx.config.data_dir), str(REPO), "gradio_api/file="):
        assert secret not in page, secret
    mention_src = re.search(r"<img class='annot-mention-image' src='([^']*)'", page).group(1)
    stored = Path(ctx.config.data_dir) / m.image_path
    assert mention_src == f"{PREFIX}/images/{stored.name}"  # the content hash names it
    signed = _login(studio, "ana")
    for src in srcs:
        r = signed.get(studio.url + src)
        assert r.status_code == 200, (src, r.status_code)
        assert r.content == media_file(*src[len(PREFIX) + 1 :].split("/", 1), ctx.config.data_dir).read_bytes()
        assert "private" in r.headers["cache-control"]
        assert requests.get(studio.url + src).status_code == 401  # no sign-in, no image
    assert signed.get(studio.url + mention_src).content == stored.read_bytes()
    assert signed.head(studio.url + mention_src).status_code == 200
    assert signed.post(studio.url + mention_src).status_code == 405


def _raw_get(studio, path: str, cookies: dict) -> int:
    """A GET with the path sent exactly as written (no client-side `..` normalisation)."""
    u = urlparse(studio.url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request("GET", path, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})
    status = c.getresponse().status
    c.close()
    return status


def test_media_route_refuses_escapes_bad_names_and_other_folders(studio):
    ctx = studio.ctx
    signed = _login(studio, "ana")
    cookies = signed.cookies.get_dict()
    db = Path(ctx.store.settings.sqlite_path)
    for path in (
        f"/{PREFIX}/assets/../app/common.py",
        f"/{PREFIX}/assets/%2e%2e/app/common.py",
        f"/{PREFIX}/assets/..%2fapp%2fcommon.py",
        f"/{PREFIX}/assets//etc/passwd",
        f"/{PREFIX}/images/../{db.name}",
        f"/{PREFIX}/images/{db.name}",
        f"/{PREFIX}/images/{'0' * 64}.png",  # a well-formed name no image has
        f"/{PREFIX}/images/{'a' * 63}.png",
        f"/{PREFIX}/imports/x",
        f"/{PREFIX}/journal/{db.name}",
    ):
        assert _raw_get(studio, path, cookies) == 404, path
    # without sign-in the answer is 401 before any file is looked for
    assert _raw_get(studio, f"/{PREFIX}/assets/../app/common.py", {}) == 401
    # the helpers: only stored images and assets get a URL; escapes find no file
    assert media_url("/etc/passwd", ctx.config.data_dir) is None
    assert media_url(str(REPO / "app" / "common.py"), ctx.config.data_dir) is None
    assert media_file("assets", "../app/common.py", ctx.config.data_dir) is None
    assert media_file("images", "../annotations.db", ctx.config.data_dir) is None
    asset = media_url("assets/demo_kb/images/chelsea.jpg", ctx.config.data_dir)
    assert asset == f"{PREFIX}/assets/demo_kb/images/chelsea.jpg"
    assert signed.get(studio.url + asset).content == (REPO / "assets/demo_kb/images/chelsea.jpg").read_bytes()
