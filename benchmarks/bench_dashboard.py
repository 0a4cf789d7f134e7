"""How quickly the dashboard handles a key while a poll of the whole fleet lands with it.

Headless (Textual's test driver), fed by the recorded demo fleet at several sizes. Prints a table and can
write JSON. The test suite only checks that keys are handled at all under load (a hang detector); the
latency itself is measured here, since shared CI machines make timed unit tests flaky.

    .venv/bin/python benchmarks/bench_dashboard.py --json dashboard.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time


async def measure(nodes: int, deployments: int, keys: int) -> dict:
    from llmctl.tui.app import DashboardApp
    from llmctl.tui.recorded import RecordedFeed, demo_frame, demo_recording

    feed = RecordedFeed(demo_recording(nodes=nodes, deployments=deployments, frames=36))
    app = DashboardApp(feed)
    async with app.run_test(size=(120, 40)) as pilot:
        while app.fleet_updates < 36:
            await pilot.pause(0.05)
        with_poll, alone = [], []
        for i in range(keys):
            feed.play(demo_frame(36 + i, nodes=nodes, deployments=deployments))
            started = time.perf_counter()
            await pilot.press("down")
            with_poll.append(time.perf_counter() - started)
            while app.fleet_updates < 37 + i:
                await pilot.pause(0.01)
        for _ in range(keys):
            started = time.perf_counter()
            await pilot.press("up")
            alone.append(time.perf_counter() - started)
    return {
        "nodes": nodes, "deployments": deployments, "keys": keys,
        "key_with_poll_p50_ms": 1000 * statistics.median(with_poll), "key_with_poll_max_ms": 1000 * max(with_poll),
        "key_alone_p50_ms": 1000 * statistics.median(alone), "key_alone_max_ms": 1000 * max(alone),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=12)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    rows = [asyncio.run(measure(n, d, args.keys)) for n, d in ((5, 4), (50, 20), (100, 40))]
    print(f"{'nodes':>6} {'deploys':>8} {'key+poll p50':>13} {'key+poll max':>13} {'key p50':>8} {'key max':>8}")
    for r in rows:
        print(f"{r['nodes']:>6} {r['deployments']:>8} {r['key_with_poll_p50_ms']:>11.1f}ms "
              f"{r['key_with_poll_max_ms']:>11.1f}ms {r['key_alone_p50_ms']:>6.1f}ms {r['key_alone_max_ms']:>6.1f}ms")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
