"""Serves the console: its page, its static files and who the signed-in token is.

The page is revalidated on every load (ETag); the static files live under a path that names
a digest of them all, so they are cached for a year and a new release is a new path. Every
response carries a Content-Security-Policy that allows scripts and styles from this origin
only (no inline script can run, whatever ends up in the page)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from edge.auth import authenticate, caller_of
from edge.routes.admin import serving_json
from services.common.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STATIC_CACHE = "public, max-age=31536000, immutable"


def _load_static() -> tuple[str, dict[str, bytes]]:
    files = {
        path.relative_to(STATIC_DIR).as_posix(): path.read_bytes()
        for path in sorted(STATIC_DIR.rglob("*"))
        if path.is_file() and path.suffix in CONTENT_TYPES
    }
    digest = hashlib.sha256()
    for name, content in files.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()[:16], files


def console_router() -> APIRouter:
    version, files = _load_static()
    static_base = f"/console/static/{version}"
    page = files.pop("index.html").decode().replace("{{static}}", static_base).encode()
    page_etag = f'"{version}"'
    router = APIRouter(include_in_schema=False)

    @router.get("/console")
    async def console_root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=308)

    @router.get("/console/")
    async def console_page(request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": page_etag}
        if request.headers.get("if-none-match") == page_etag:
            return Response(status_code=304, headers=headers)
        return Response(page, media_type=CONTENT_TYPES[".html"], headers=headers)

    @router.get("/console/static/{release}/{name:path}")
    async def console_static(release: str, name: str) -> Response:
        content = files.get(name) if release == version else None
        if content is None:
            raise NotFound(f"No console file {name} in this release.")
        media_type = CONTENT_TYPES[Path(name).suffix]
        headers = {**SECURITY_HEADERS, "Cache-Control": STATIC_CACHE}
        return Response(content, media_type=media_type, headers=headers)

    return router


session_router = APIRouter(dependencies=[Depends(authenticate)])


@session_router.get("/console/v1/session")
async def console_session(request: Request) -> dict:
    """Who the token is: the admin token, or a key and its serving (read-only for it)."""
    caller = caller_of(request)
    if caller.admin:
        return {"role": "admin", "serving": None, "key": None}
    if caller.key is None:
        # EDGE_AUTH_ENABLED=false: the public API is open, the admin API still needs its token.
        return {"role": "open", "serving": None, "key": None}
    serving = await request.app.state.edge.catalog.serving(caller.key.serving_id)
    key = {"id": caller.key.id, "name": caller.key.name, "serving_id": caller.key.serving_id}
    return {"role": "key", "serving": serving_json(serving), "key": key}
