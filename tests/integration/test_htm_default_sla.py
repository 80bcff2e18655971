"""A default SLA per task type and priority (GRACE_HTM_DEFAULT_SLA_MS) for tasks submitted without sla_ms,
enforced like any other on the injected clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from grace import errors
from grace.clock import ManualClock
from grace.htm import load_config
from grace.htm.origins import Origin
from tests.htmkit import manual_htm, submit

DEFAULTS = "critical=1000,htm.echo=5000,htm.echo:low=9000"


async def test_a_task_without_sla_ms_gets_the_default_of_its_type_and_priority(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock, default_sla_ms=DEFAULTS) as htm:
        [critical] = await submit(htm, Origin.SCHEDULER, task_type="htm.noop", priority="critical")
        [echo] = await submit(htm, Origin.SCHEDULER, task_type="htm.echo")
        [echo_low] = await submit(htm, Origin.SCHEDULER, task_type="htm.echo", priority="low")
        [echo_critical] = await submit(htm, Origin.SCHEDULER, task_type="htm.echo", priority="critical")
        [plain] = await submit(htm, Origin.SCHEDULER, task_type="htm.noop")
        [own] = await submit(htm, Origin.SCHEDULER, task_type="htm.echo", priority="low", sla_ms=7770)
        got = {t: (await htm.get(t, principal=None)) for t in (critical, echo, echo_low, echo_critical, plain, own)}
        assert {t: task.sla_ms for t, task in got.items()} == {
            critical: 1000,  # by priority
            echo: 5000,  # by type
            echo_low: 9000,  # by type and priority
            echo_critical: 5000,  # the type's default comes before the priority's
            plain: None,  # nothing matches: no SLA
            own: 7770,  # the submission's own wins
        }
        for task in got.values():
            if task.sla_ms is not None:
                assert task.deadline == task.created_at + timedelta(milliseconds=task.sla_ms)

        # Enforced like any SLA, on the injected clock: the warning at 80%, the violation at 100%.
        clock.advance(0.799)
        assert (await htm.sla.tick()).fired == []
        clock.advance(0.001)
        assert (await htm.sla.tick()).tasks_at("warning") == [critical]
        clock.advance(0.2)
        assert (await htm.sla.tick()).tasks_at("violated") == [critical]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("critical", "expected type:priority=ms"),
        ("critical=soon", "is not a whole number"),
        ("critical=0", "between 1 ms and 30 days"),
        ("htm.echo:urgent=5", "is not a priority"),
        (":high=5", "names no task type"),
    ],
)
def test_a_bad_default_sla_stops_start_up_naming_the_variable(value: str, says: str) -> None:
    with pytest.raises(errors.ConfigurationError) as raised:
        load_config(default_sla_ms=value)
    assert "GRACE_HTM_DEFAULT_SLA_MS" in str(raised.value) and says in str(raised.value)
