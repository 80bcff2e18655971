"""/docs and /redoc work offline: every asset they load is served by Grace, from the vendored files."""

from __future__ import annotations

import re

import httpx
import pytest

from grace.api.docs_pages import STATIC

# Where a page loads something from: src= and href= attributes, and the JS the page runs (url: '...').
REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")
CDN = re.compile(r"https?://[^\s\"'`)]*(?:cdn|unpkg|jsdelivr|googleapis|gstatic|cloudflare)", re.IGNORECASE)
KINDS = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_page_references_only_local_assets(client: httpx.AsyncClient, page: str) -> None:
    served = await client.get(page)
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
    assert "http://" not in served.text and "https://" not in served.text, "the page names a remote address"
    references = {a or b for a, b in REFERENCE.findall(served.text)}
    assert "/openapi.json" in references
    assert any(r.endswith(".js") for r in references), references
    for reference in sorted(references):
        assert reference.startswith("/") and not reference.startswith("//"), f"{page} loads {reference}"
        asset = await client.get(reference)
        assert asset.status_code == 200, f"{page} loads {reference}: {asset.status_code}"
        kind = next(v for k, v in KINDS.items() if reference.endswith(k))
        assert kind in asset.headers["content-type"], (reference, asset.headers["content-type"])


def test_the_vendored_bundles_load_nothing_from_a_cdn() -> None:
    bundles = sorted(p for p in STATIC.rglob("*") if p.suffix in {".js", ".css"})
    assert {p.name for p in bundles} == {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"}
    for bundle in bundles:
        found = CDN.findall(bundle.read_text(encoding="utf-8"))
        assert not found, f"{bundle.name} loads from {found}"


def test_the_vendored_files_carry_their_licences_and_versions() -> None:
    for directory in ("swagger-ui", "redoc"):
        assert (STATIC / directory / "LICENSE").is_file()
    notes = (STATIC / "VENDORED.md").read_text(encoding="utf-8")
    for expected in ("swagger-ui-dist", "5.36.0", "Apache-2.0", "redoc", "2.5.4", "MIT"):
        assert expected in notes
