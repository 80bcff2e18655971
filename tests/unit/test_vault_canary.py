"""The canary collector really catches a leak: each channel leaked on purpose into a separate collector."""

from __future__ import annotations

import logging
import secrets

import httpx

from tests import canary


async def test_a_deliberate_leak_is_detected_on_every_channel() -> None:
    needle = "leak-" + secrets.token_hex(12)
    collector = canary.Collector(needle)
    handler = canary.CapturingHandler(collector)
    logger = logging.getLogger("grace.vault.leak_drill")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.info("vault.leak_drill", extra={"value": needle})  # in a structured field
        logger.warning("vault.%s", needle)  # in the message itself
    finally:
        logger.removeHandler(handler)

    def leaking(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"secret_value": needle}, headers={"x-echo": needle})

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(leaking), event_hooks={"response": [collector.record_response]}
    ) as client:
        authorised = await client.get("http://grace.test/authorised")
        collector.authorise(authorised)
        await client.get("http://grace.test/leaky")

    class Holder:
        __module__ = "grace.vault.drill"

        def __repr__(self) -> str:
            return f"Holder({needle})"

    holder = Holder()
    canary.scan_live_objects(collector)
    collector.add("report:drill", f"AssertionError: {needle!r} != 'x'")
    collector.add("at-rest:drill.db", b"header" + needle.encode() + b"trailer")

    leaks = collector.leaks()
    kinds = sorted({leak.split(":", 1)[0].split(" ", 1)[0] for leak in leaks})
    assert kinds == ["at-rest", "log", "report", "repr", "response"], leaks
    assert sum(leak.startswith("log:") for leak in leaks) == 2
    assert [leak for leak in leaks if leak.startswith("response")] == ["response GET /leaky"]
    assert holder is not None


def test_nothing_is_reported_when_nothing_leaks() -> None:
    collector = canary.Collector("never-" + secrets.token_hex(8))
    collector.add("log:x", "vault.secret_stored {'secret_id': 'sec_1'}")
    collector.add("at-rest:x", b"\x00\x01ciphertext")
    assert collector.leaks() == []
