"""Images for pages the app renders itself (the Annotate card list), by a relative,
content-addressed URL instead of Gradio's `gradio_api/file=<absolute server path>`.

Why: a URL holding the server's absolute path shows where DATA_DIR lives in the page source, and
server paths never reach a client (issue 18). The store keeps each image once, named by its SHA-256
(db/images.py: DATA_DIR/images/<sha[:2]>/<sha><ext>), so the name alone finds the file:

    mimic-media/images/<sha256><ext>     a stored image (immutable: cached for a year)
    mimic-media/assets/<relative path>   a file of the repository's assets/ (the demo KB's photos)

`MediaRoute` is an ASGI middleware (launch(app_kwargs={"middleware": [...]}), as app/auth.py's
guard) that answers these two prefixes and passes every other request on. It applies Gradio's own
sign-in rule (gradio/routes.py `login_check`): when the app has sign-in, a request without a valid
session cookie gets 401; a name that is not a stored image, or an assets path leading out of
assets/ (`..`, a symlink), gets 404. Nothing else of DATA_DIR is reachable through it.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from db.images import ImageStore

from .context import ASSETS, _inside, resolve_image

PREFIX = "mimic-media"
_IMAGE = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{1,5}$")


def media_url(path: str | None, data_dir: Path) -> str | None:
    """The relative URL of a stored or asset image (`resolve_image` decides what may be served);
    None for anything else."""
    real = resolve_image(path, data_dir)
    if real is None:
        return None
    r = Path(real)
    if _inside(r, Path(data_dir).resolve() / "images") and _IMAGE.match(r.name):
        return f"{PREFIX}/images/{r.name}"
    if _inside(r, ASSETS):
        return f"{PREFIX}/assets/{quote(r.relative_to(ASSETS.resolve()).as_posix())}"
    return None  # under images/ but not a content-addressed name: not served by name


def media_file(kind: str, name: str, data_dir: Path) -> Path | None:
    """The file a media URL names, or None (bad name, missing, or outside its folder)."""
    if "\x00" in name:
        return None
    if kind == "images":
        if not _IMAGE.match(name):
            return None
        stem, ext = name.split(".", 1)
        p = ImageStore(Path(data_dir).resolve() / "images").path_for(stem, f".{ext}")  # the store's layout
        real = resolve_image(str(p), data_dir)
    elif kind == "assets":
        if not name or name.startswith("/") or ".." in Path(name).parts:
            return None
        real = resolve_image(str(ASSETS / name), data_dir)
        if real is not None and not _inside(Path(real), ASSETS):
            return None
    else:
        return None
    return Path(real) if real else None


async def signed_in(scope) -> bool:
    """Gradio's rule for its authorised routes: open when the app has no sign-in, else a user."""
    gapp = scope.get("app")
    auth, dependency = getattr(gapp, "auth", None), getattr(gapp, "auth_dependency", None)
    if auth is None and dependency is None:
        return True
    request = Request(scope)
    if dependency is not None:
        user = dependency(request)
        if inspect.isawaitable(user):
            user = await user
        return user is not None
    cid = getattr(gapp, "cookie_id", "")
    token = request.cookies.get(f"access-token-{cid}") or request.cookies.get(f"access-token-unsecure-{cid}")
    return token is not None and getattr(gapp, "tokens", {}).get(token) is not None


class MediaRoute:
    """ASGI middleware serving `mimic-media/images/...` and `mimic-media/assets/...` (see above)."""

    def __init__(self, app, data_dir: str | Path):
        self.app, self.data_dir = app, Path(data_dir)

    def _target(self, scope) -> tuple[str, str] | None:
        path = scope.get("path", "")
        root = (scope.get("root_path") or "").rstrip("/")
        for base in {f"/{PREFIX}/", f"{root}/{PREFIX}/"}:
            if path.startswith(base):
                kind, _, name = path[len(base) :].partition("/")
                return kind, name  # the server has percent-decoded the path once
        return None

    async def __call__(self, scope, receive, send):
        target = self._target(scope) if scope["type"] == "http" else None
        if target is None:
            return await self.app(scope, receive, send)
        response: Response
        if scope.get("method") not in ("GET", "HEAD"):
            response = JSONResponse({"detail": "method not allowed"}, status_code=405)
        elif not await signed_in(scope):
            response = JSONResponse({"detail": "Not authenticated"}, status_code=401)
        else:
            f = media_file(*target, self.data_dir)
            if f is None:
                response = JSONResponse({"detail": "not found"}, status_code=404)
            else:
                age = 31_536_000 if target[0] == "images" else 3600
                immutable = ", immutable" if target[0] == "images" else ""
                response = FileResponse(f, headers={"Cache-Control": f"private, max-age={age}{immutable}"})
        await response(scope, receive, send)
