"""GRACE_TRUSTED_PROXIES and the client address a request is counted under."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from starlette.requests import Request

from grace import errors
from grace.api.forwarded import client_address
from grace.config import load_settings


def request_from(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "client": (peer, 5000)})


def test_the_setting_takes_addresses_and_networks_and_names_a_bad_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().trusted_proxies == ()
    monkeypatch.setenv("GRACE_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8,::1")
    assert load_settings().trusted_proxies == (
        ip_network("127.0.0.1/32"),
        ip_network("10.0.0.0/8"),
        ip_network("::1/128"),
    )
    monkeypatch.setenv("GRACE_TRUSTED_PROXIES", "127.0.0.1,proxy.local")
    with pytest.raises(errors.ConfigurationError, match="GRACE_TRUSTED_PROXIES must be IP addresses or networks"):
        load_settings()


def test_without_trusted_proxies_the_header_is_never_believed() -> None:
    assert client_address(request_from("127.0.0.1", "203.0.113.5"), ()) == "127.0.0.1"
    trusted = (ip_network("10.0.0.0/8"),)
    assert client_address(request_from("198.51.100.1", "203.0.113.5"), trusted) == "198.51.100.1"


def test_behind_trusted_proxies_the_first_untrusted_hop_from_the_nearest_is_the_client() -> None:
    trusted = (ip_network("10.0.0.0/8"),)
    # The client wrote "1.2.3.4" itself; the outer proxy saw 203.0.113.5; an inner proxy 10.0.0.7.
    assert client_address(request_from("10.0.0.2", "1.2.3.4, 203.0.113.5", "10.0.0.7"), trusted) == "203.0.113.5"
    assert client_address(request_from("10.0.0.2"), trusted) == "10.0.0.2"  # no header: the proxy itself
    assert client_address(request_from("10.0.0.2", "10.0.0.9"), trusted) == "10.0.0.9"
    assert client_address(request_from("10.0.0.2", "not-an-address"), trusted) == "10.0.0.2"
