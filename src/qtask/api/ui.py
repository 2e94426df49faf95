"""/ui: the web page (one HTML file, a script and a stylesheet in `static/ui/`, no build step).

The page talks to the same API a script would (POST /tasks, GET /tasks, GET /backends, the
task websocket); nothing here reads the store. It is served with a Content-Security-Policy that
allows only this server's own scripts, styles and connections: no inline script runs, so even a
mistake that put server text into HTML could not execute it (the page inserts all server text
with textContent anyway).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).with_name("static") / "ui"
ASSETS_PATH = "/ui/assets"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page changes with qtask's version; an old cached copy would call routes that moved.
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Serve the page at /ui and its files under /ui/assets."""
    app.mount(ASSETS_PATH, StaticFiles(directory=UI_DIR), name="ui-assets")

    @app.get("/ui", include_in_schema=False)
    async def ui_page() -> FileResponse:
        return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=_HEADERS)
