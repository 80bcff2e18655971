"""Sign-in over HTTP as an attacker tries it: forged X-Forwarded-For, and locking out one's neighbours."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from ipaddress import ip_network

import httpx
import pytest

from grace.api import create_app
from grace.auth import BootstrapCredentials
from grace.services import Services
from tests.acceptance.test_api_platform import assert_error

WRONG = {"username": "admin", "password": "not the password"}


def right(admin: BootstrapCredentials) -> dict[str, str]:
    return {"username": admin.username, "password": admin.password}


@pytest.fixture
async def behind_proxy(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests come through a proxy Grace trusts (the test transport's 127.0.0.1)."""
    settings = services.settings.model_copy(update={"trusted_proxies": (ip_network("127.0.0.0/8"),)})
    app = create_app(settings, services=dataclasses.replace(services, settings=settings))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://grace.test") as http:
        yield http


async def test_forwarded_for_is_not_believed_from_an_untrusted_peer(
    client: httpx.AsyncClient, admin: BootstrapCredentials, services: Services
) -> None:
    # Before: uvicorn and the app believed X-Forwarded-For from 127.0.0.1, so a new header per guess dodged the limit.
    for n in range(services.settings.login_max_failures):
        forged = {"X-Forwarded-For": f"198.51.100.{n}"}
        assert_error(await client.post("/api/auth/login", json=WRONG, headers=forged), 401, "unauthenticated")
    limited = await client.post("/api/auth/login", json=right(admin), headers={"X-Forwarded-For": "198.51.100.99"})
    assert_error(limited, 429, "rate_limited")


async def test_behind_a_trusted_proxy_each_client_address_is_counted_on_its_own(
    behind_proxy: httpx.AsyncClient, admin: BootstrapCredentials, services: Services
) -> None:
    for n in range(services.settings.login_max_failures):
        # The client's own (forged) entries come first; the proxy appends the address it saw.
        hops = {"X-Forwarded-For": f"10.9.9.{n}, 203.0.113.5"}
        assert_error(await behind_proxy.post("/api/auth/login", json=WRONG, headers=hops), 401, "unauthenticated")
    limited = await behind_proxy.post(
        "/api/auth/login", json=right(admin), headers={"X-Forwarded-For": "10.9.9.200, 203.0.113.5"}
    )
    assert_error(limited, 429, "rate_limited")
    elsewhere = await behind_proxy.post(
        "/api/auth/login", json=right(admin), headers={"X-Forwarded-For": "203.0.113.6"}
    )
    assert elsewhere.status_code == 200, elsewhere.text


async def test_failures_for_one_user_do_not_lock_out_the_others_behind_the_same_address(
    client: httpx.AsyncClient, admin: BootstrapCredentials, admin_headers: dict[str, str], services: Services
) -> None:
    made = await client.post(
        "/api/users", json={"username": "mia", "password": "mia's long password"}, headers=admin_headers
    )
    assert made.status_code == 201
    for _ in range(services.settings.login_max_failures):
        assert_error(await client.post("/api/auth/login", json=WRONG), 401, "unauthenticated")
    assert_error(await client.post("/api/auth/login", json=right(admin)), 429, "rate_limited")
    mia = await client.post("/api/auth/login", json={"username": "mia", "password": "mia's long password"})
    assert mia.status_code == 200, mia.text
