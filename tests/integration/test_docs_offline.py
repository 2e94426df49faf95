"""/docs, /redoc and /ui work without internet: every page and every asset it references comes
from the qtask server itself, and nothing they load names another host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from qtask_testkit import ServerProcess

# References a page or a stylesheet makes the browser load (src=, href=, CSS url(), @import).
REFERENCE = re.compile(
    r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)["']?\s*\)"""
    r"""|@import\s+["']([^"']+)["']"""
)
ABSOLUTE_URL = re.compile(r"""https?://[^\s"'<>)]+""")
# In a script, what it makes the browser load: an element's src (JSX `src:"..."` or HTML) or
# a fetch of an absolute URL. Plain strings (links, licence headers, XML namespaces) load nothing.
SCRIPT_LOAD = re.compile(r"""(?:\bsrc\s*[:=]\s*|fetch\(\s*)["'`](https?://[^"'`]+)""")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("docs") / "data", workers=1)
    process.start()
    yield process
    process.terminate()


def references(text: str) -> list[str]:
    """What `text` (HTML or CSS) asks the browser to load, data: URIs left out."""
    found = [next(g for g in match.groups() if g) for match in REFERENCE.finditer(text)]
    return [ref for ref in found if not ref.startswith(("data:", "#"))]


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/ui"])
def test_a_docs_page_loads_everything_from_the_server_itself(
    server: ServerProcess, page: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        html = http.get(page)
        assert html.status_code == 200
        assert ABSOLUTE_URL.findall(html.text) == []
        assets = references(html.text)
        assert len(assets) >= 2 if page == "/docs" else len(assets) >= 1  # script(s), css, icon
        seen: set[str] = set()
        while assets:
            ref = urljoin(f"{server.url}{page}", assets.pop())
            assert urlsplit(ref).netloc == urlsplit(server.url).netloc, ref
            if ref in seen:
                continue
            seen.add(ref)
            asset = http.get(ref)
            assert asset.status_code == 200, ref
            assert len(asset.content) > 0
            if "css" in asset.headers["content-type"]:
                assets += references(asset.text)
            if ref.endswith(".js"):
                assert SCRIPT_LOAD.findall(asset.text) == [], ref
        assert any(ref.endswith(".js") for ref in seen)
        # The page loads the schema it documents from the same server.
        assert http.get("/openapi.json").json()["info"]["title"] == "qtask"


def test_the_openapi_schema_names_no_other_host(server: ServerProcess) -> None:
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).text
    assert ABSOLUTE_URL.findall(schema) == []
