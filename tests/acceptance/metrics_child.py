"""Another process reading ``GET /metrics`` from the same database, with the scrape token.

Usage: python -m tests.acceptance.metrics_child DATA_DIR DATABASE_URL (the token in GRACE_METRICS_TOKEN)

Prints the exposition text.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

from grace.api import create_app
from grace.config import load_settings
from grace.services import build


async def main(data_dir: str, database_url: str) -> None:
    settings = load_settings(data_dir=Path(data_dir), database_url=database_url)
    services = await build(settings, migrate=False)
    try:
        app = create_app(settings, services=services)
        token = settings.metrics_token
        assert token is not None
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://grace.test") as http:
            r = await http.get("/metrics", headers={"Authorization": f"Bearer {token.get_secret_value()}"})
        assert r.status_code == 200, r.text
        sys.stdout.write(r.text)
    finally:
        await services.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
