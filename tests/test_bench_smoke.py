"""The benchmark scenarios (bench/scenarios.py, run by bench/compare_bench.py against Heddle
and Synapse) at tiny sizes against a Heddle test server, on both engines.

Only correctness is asserted, never a timing: every listener gets every event exactly once
and in order, /messages pages through every event once and in order, an initial sync holds
every room, idle long-polls stay open. So the harness keeps working as the server changes,
and a fast path that drops or repeats events is caught here too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bench import scenarios
from tests.harness import HomeserverTestCase, ensure_deferred, nio, on_both_engines


class BenchSmokeTests(HomeserverTestCase):
    async def run_scenario(
        self, scenario: Callable[[aiohttp.ClientSession], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                return await scenario(session)

        return await nio(run())

    @ensure_deferred
    async def test_send_every_message_acknowledged_once(self) -> None:
        result = await self.run_scenario(
            lambda s: scenarios.send(s, self.base_url, senders=3, per_sender=5)
        )
        assert result["messages"] == 15, result
        assert result["distinct_event_ids"] == 15, result
        assert result["send_latency"]["count"] == 15, result

    @ensure_deferred
    async def test_fanout_delivers_every_event_once_in_order(self) -> None:
        result = await self.run_scenario(
            lambda s: scenarios.fanout(s, self.base_url, listeners=5, messages=10, rate=50.0)
        )
        assert result["expected"] == 50, result
        assert result["delivered"] == 50, result
        assert result["missing"] == 0, result
        assert result["duplicates"] == 0, result
        assert result["listeners_out_of_order"] == 0, result
        assert result["listener_errors"] == 0, result
        assert result["send_to_receive"]["count"] == 50, result
        # At least one response per listener carried the events.
        assert result["sync_responses"] >= 5, result

    @ensure_deferred
    async def test_initial_sync_holds_every_room(self) -> None:
        result = await self.run_scenario(
            lambda s: scenarios.initial_sync(s, self.base_url, rooms=3, messages=3, requests=2)
        )
        assert result["rooms_in_response"] == 3, result
        assert result["rooms_with_last_message"] == 3, result
        assert result["initial_sync"]["count"] == 2, result

    @ensure_deferred
    async def test_messages_pages_every_event_once_newest_first(self) -> None:
        result = await self.run_scenario(
            lambda s: scenarios.messages(s, self.base_url, events=120, limit=50, fill_batch=1)
        )
        assert result["messages_seen"] == 120, result
        assert result["distinct_seen"] == 120, result
        assert result["complete"], result
        assert result["newest_first"], result
        # 120 messages and the room's creation events, 50 a page: at least three pages.
        assert result["pages"] >= 3, result

    @ensure_deferred
    async def test_messages_concurrent_fill_keeps_batch_order(self) -> None:
        result = await self.run_scenario(
            lambda s: scenarios.messages(s, self.base_url, events=60, limit=25, fill_batch=10)
        )
        assert result["complete"] and result["distinct_seen"] == 60, result
        assert result["newest_first"], result

    @ensure_deferred
    async def test_idle_long_polls_stay_open(self) -> None:
        result = await self.run_scenario(
            lambda s: scenarios.idle(s, self.base_url, connections=12, per_user=5)
        )
        assert result["still_open"] == 12, result
        assert result["answered_early"] == 0, result


on_both_engines(BenchSmokeTests)
