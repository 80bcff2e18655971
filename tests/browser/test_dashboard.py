"""The dashboard page: the figures of a known workload, its violation and slow task, health, charts.

Erin (a member, nobody else's tasks in her figures) runs a workload whose answers are known: four
tasks that complete, two that fail, and one that runs past its one-second SLA. The page must show
exactly those counts, the violation and the slow task, and the charts must be drawn.
"""

from __future__ import annotations

import time
from typing import Any

from playwright.sync_api import Locator, expect

from tests.browser.conftest import DESKTOP, PHONE, Grace, Session, axe_violations, screenshot

COMPLETED, FAILED = 4, 2


def _wait_for(grace: Grace, who: str, task_ids: list[str], statuses: set[str]) -> None:
    """Wait until each task has reached one of ``statuses`` (the task manager's own answer)."""
    with grace.api(who) as http:
        for task_id in task_ids:
            deadline = time.monotonic() + 120
            while http.get(f"/api/htm/tasks/{task_id}").json()["task"]["status"] not in statuses:
                assert time.monotonic() < deadline, f"{task_id} never reached {statuses}"
                time.sleep(0.2)


def _workload(grace: Grace) -> str:
    """Erin's tasks: 4 completed, 2 failed, 1 running past its SLA; returns the running one's id."""
    with grace.api("erin") as http:

        def submit(**body: Any) -> str:
            made = http.post("/api/htm/tasks", json=body)
            assert made.status_code == 201, made.text
            return str(made.json()["task_id"])

        done = [submit(task_type="htm.noop") for _ in range(COMPLETED)]
        failed = [submit(task_type="htm.sleep", payload={"seconds": -1}, max_attempts=1) for _ in range(FAILED)]
        slow = submit(task_type="htm.sleep", payload={"seconds": 600}, sla_ms=1000, priority="high")
    _wait_for(grace, "erin", done, {"completed"})
    _wait_for(grace, "erin", failed, {"failed"})
    _wait_for(grace, "erin", [slow], {"running"})
    return slow


def test_the_dashboard_shows_the_counts_of_a_known_workload(grace: Grace, open_session: Any) -> None:
    slow = _workload(grace)
    try:
        session: Session = open_session("erin")
        page = session.go("/dashboard")

        def tile(figure: str) -> Locator:
            return page.locator(f"#tiles [data-figure={figure}] dd")

        expect(page.locator("#scope")).to_have_text("Your tasks")
        expect(tile("total_tasks")).to_have_text(str(COMPLETED + FAILED + 1))
        expect(tile("completed_tasks")).to_have_text(str(COMPLETED))
        expect(tile("failed_tasks")).to_have_text(str(FAILED))
        expect(tile("active_tasks")).to_have_text("1")
        # The running task passes its 1 s SLA: the page shows it as a violation on a later refresh.
        expect(tile("active_violations")).to_have_text("1", timeout=30_000)
        expect(page.locator("#violations tbody")).to_contain_text("htm.sleep")
        expect(page.locator("#slow tbody")).to_contain_text(slow[:14])
        expect(page.locator("#origins tbody")).to_contain_text("user_request")
        # 2 failed of 6 finished is above the default failing threshold (GRACE_HTM_HEALTH_*: 25%).
        expect(page.locator("#health-status")).to_have_text("Failing")
        expect(page.locator("#health-alerts")).to_contain_text("(failure_rate)")
        for chart in ("tasks", "p95", "sla", "queue"):
            expect(page.locator(f"#chart-{chart} canvas")).to_have_count(1)
        found = {}
        for viewport in (PHONE, DESKTOP):
            page.set_viewport_size(viewport)
            for scheme in ("light", "dark"):
                page.emulate_media(color_scheme=scheme)
                loaded = int(page.locator("#dashboard").get_attribute("data-loaded") or "0")
                # Wait for a refresh drawn at this size and in these colours.
                expect(page.locator("#dashboard")).not_to_have_attribute("data-loaded", str(loaded), timeout=20_000)
                shot = f"dashboard-{viewport['width']}-{scheme}"
                overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"{shot} scrolls sideways by {overflow}px"
                screenshot(page, f"{grace.backend}-{shot}")
                found[shot] = axe_violations(page)
        assert found == {shot: [] for shot in found}
        session.check_clean()

        # An operator sees everyone's figures, Erin's among them.
        olga: Session = open_session("olga")
        page = olga.go("/dashboard")
        expect(page.locator("#scope")).to_have_text("Everyone's tasks")
        total = page.locator("#tiles [data-figure=total_tasks] dd")
        expect(total).to_have_count(1)
        assert int(total.inner_text()) >= COMPLETED + FAILED + 1
    finally:
        with grace.api("erin") as http:
            http.post(f"/api/htm/tasks/{slow}/cancel")
