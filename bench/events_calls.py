"""The events benchmark's operations N times on a fresh SQLite file, to count instructions.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/events_calls.py publish 1000 [--src REV]

Run it again with 0: the difference of the two "Collected" totals over N is one call's
instructions (Python, the sqlite3 module and SQLite together), a figure other sessions on
a shared machine do not move, where latencies do (bench/README.md, "Events"). What:
trigger, publish (bench.one: two subscribers), bulk-trigger (3N runs in chunks of 1,000),
bulk-publish (N events to three subscribers in batches of 333).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import events_bench as eb  # its tasks and set-up; it reads --src from the command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("trigger", "publish", "bulk-trigger", "bulk-publish"))
    p.add_argument("n", type=int)
    p.add_argument("--src", default="worktree")
    args = p.parse_args(argv)
    with c.fresh_database("sqlite", "outlast_ev_calls") as url:
        if args.what == "bulk-trigger":
            eb.bulk_trigger(url, 3 * args.n)
        elif args.what == "bulk-publish":
            eb.bulk_publish(url, args.n)
        else:
            client = eb._client(url)  # the same warm-up for any n
            for i in range(args.n):
                if args.what == "trigger":
                    client.trigger(eb.plain, {"n": i})
                else:
                    client.publish("bench.one", {"n": i})
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
