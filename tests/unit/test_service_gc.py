"""The relay process keeps Python's cyclic garbage collector off its hot path."""

import subprocess
import sys
import textwrap

# In a child process: freezing and the thresholds would otherwise stay with this one.
RUN_A_SERVICE_THAT_REPORTS_THE_COLLECTOR = textwrap.dedent(
    """
    import asyncio
    import gc

    import relay.service
    from relay.config import RelayConfig

    class ServiceThatReports:
        def __init__(self, config):
            pass

        def request_stop(self):
            pass

        async def run(self):
            print(gc.get_threshold()[0], gc.get_freeze_count())

    before = gc.get_threshold()[0]
    relay.service.RelayService = ServiceThatReports
    asyncio.run(relay.service.run_service(RelayConfig(dsn="postgresql://relay@db/app")))
    print(before)
    """
)


def test_a_running_relay_has_frozen_its_startup_heap_and_a_larger_young_generation():
    from relay.service import YOUNG_GENERATION_THRESHOLD

    result = subprocess.run(
        [sys.executable, "-c", RUN_A_SERVICE_THAT_REPORTS_THE_COLLECTOR],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    threshold, frozen, before = (int(word) for word in result.stdout.split())
    assert before < YOUNG_GENERATION_THRESHOLD  # the default (700; 2,000 from 3.13)
    assert threshold == YOUNG_GENERATION_THRESHOLD
    assert frozen > 10_000  # the imported modules, not a handful of objects
