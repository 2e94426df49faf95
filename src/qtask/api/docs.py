"""/docs (Swagger UI) and /redoc served with their assets from this package, never from a CDN.

FastAPI's defaults load the pages' scripts, styles, favicon and fonts from public hosts, so on a
machine without internet the pages stay blank. The files live in `static/` (versions and licences
in its README); this module mounts them and builds the two pages (FastAPI's self-hosting recipe).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PATH = "/static/docs"
FAVICON = f"{STATIC_PATH}/swagger-ui/favicon-32x32.png"


def install(app: FastAPI) -> None:
    """Serve /docs and /redoc on `app` (created with docs_url=None, redoc_url=None)."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{STATIC_PATH}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_PATH}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=FAVICON,
            # Swagger UI would send the schema to validator.swagger.io for its badge.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{STATIC_PATH}/redoc/redoc.standalone.js",
            redoc_favicon_url=FAVICON,
            with_google_fonts=False,
        )
