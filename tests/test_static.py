"""Static files as deployed: `collectstatic`, then the site (uvicorn, DEBUG off)
serves them itself, under hashed names that browsers, proxies and CDNs may keep for
a year."""

from __future__ import annotations

import gzip
import re

import aiohttp

A_YEAR = 365 * 24 * 60 * 60
HASHED_STYLESHEET = re.compile(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"')


async def fetch(
    url: str, *, accept_encoding: str = "identity"
) -> tuple[aiohttp.ClientResponse, bytes]:
    """The answer and its body exactly as sent (not decompressed)."""
    headers = {"Accept-Encoding": accept_encoding}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as browser,
        browser.get(url, headers=headers) as answer,
    ):
        return answer, await answer.read()


async def hashed_stylesheet(site: str) -> str:
    answer, body = await fetch(f"{site}/admin/login/")
    assert answer.status == 200
    found = HASHED_STYLESHEET.search(body.decode())
    assert found, "the admin links base.css without a hash in its name"
    return site + found[1]


async def test_the_admin_s_stylesheet_is_served_under_its_hashed_name_for_a_year(
    deployed_site,
):
    stylesheet = await hashed_stylesheet(deployed_site)

    answer, body = await fetch(stylesheet)

    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/css")
    assert b"body" in body
    cache_control = answer.headers["Cache-Control"]
    assert "immutable" in cache_control
    assert "public" in cache_control  # proxies and CDNs may keep it too
    max_age = int(re.search(r"max-age=(\d+)", cache_control)[1])
    assert max_age >= A_YEAR


async def test_a_static_file_is_sent_gzipped_to_a_client_that_accepts_it(
    deployed_site,
):
    stylesheet = await hashed_stylesheet(deployed_site)
    _, plain = await fetch(stylesheet)

    answer, body = await fetch(stylesheet, accept_encoding="gzip")

    assert answer.status == 200
    assert answer.headers["Content-Encoding"] == "gzip"
    assert answer.headers["Vary"] == "Accept-Encoding"
    assert len(body) < len(plain)
    assert gzip.decompress(body) == plain


async def test_an_unknown_static_file_is_a_plain_not_found_page(deployed_site):
    answer, body = await fetch(f"{deployed_site}/static/admin/css/no-such-file.css")

    assert answer.status == 404
    assert answer.headers["Content-Type"].startswith("text/html")
    assert b"Not Found" in body
    assert b"Traceback" not in body
