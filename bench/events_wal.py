"""WAL frames a SQLite single trigger and single publish write, and which b-trees they touch.

    .venv/bin/python bench/events_wal.py [N] [--src REV]

On a fresh SQLite file set up as events_bench's (its tasks, its warm-up), N calls of each
of: trigger (one run), publish of `bench.one` (two subscribers: two runs) and of `solo.one`
(one run). A second connection holds a read transaction open meanwhile, so no checkpoint
can restart the WAL: it only grows, and each frame's header names the page it holds.
Prints frames per call and, per call, the frames of each table or index (pages mapped to
their b-tree by `dbstat` once the calls are done): each kind alone, then the three in turn
as events_bench interleaves them (runs of other tasks between, so fewer index pages are
shared from one call to the next). A commit's cost (its WAL checksums and
fsync) grows with its frames (bench/README.md, "Events"); this counts them, which other
sessions on a shared machine do not move.
"""

from __future__ import annotations

import argparse
import collections
import sqlite3
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import events_bench as eb  # its tasks and set-up; it reads --src from the command line

from outlast.client import Client  # from --src: events_bench put it on the path

WAL_HEADER, FRAME_HEADER = 32, 24


def frames(data: bytes, page_size: int, start: int, end: int) -> list[int]:
    """The page numbers of the WAL's frames between byte offsets ``start`` and ``end``."""
    step = FRAME_HEADER + page_size
    return [struct.unpack(">I", data[off:off + 4])[0] for off in range(start, end, step)]


def call(client: Client, what: str, i: int) -> None:
    if what == "trigger":
        client.trigger(eb.plain, {"n": i})
    else:
        client.publish(what, {"n": i})


def measure(whats: list[str], n: int) -> None:
    """N rounds of the calls ``whats`` in turn on one fresh database; frames per call of
    each, by b-tree."""
    with c.fresh_database("sqlite", "outlast_ev_wal") as url:
        client = eb._client(url)
        path = Path(url.removeprefix("sqlite:///"))
        wal = path.with_name(path.name + "-wal")
        reader = sqlite3.connect(path, isolation_level=None)
        page_size = reader.execute("PRAGMA page_size").fetchone()[0]
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot
        spans: dict[str, list[tuple[int, int]]] = {w: [] for w in whats}
        for i in range(n):
            for what in whats:
                before = wal.stat().st_size
                call(client, what, i)
                spans[what].append((max(before, WAL_HEADER), wal.stat().st_size))
        data = wal.read_bytes()
        reader.execute("COMMIT")
        client.close()
        names = dict(reader.execute("SELECT pageno, name FROM dbstat"))
        reader.close()
    for what in whats:
        pages = [p for a, b in spans[what] for p in frames(data, page_size, a, b)]
        per = collections.Counter(names.get(p, f"page {p} (freed)") for p in pages)
        print(f"{what}: {len(pages) / n:.2f} frames per call")
        for name, k in per.most_common():
            print(f"    {name:32} {k / n:6.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int, nargs="?", default=300)
    p.add_argument("--src", default="worktree")
    args = p.parse_args(argv)
    print(f"source: {eb.SRC_DESC}")
    print("each alone:")
    for what in ("trigger", "bench.one", "solo.one"):
        measure([what], args.n)
    print("interleaved, as events_bench takes them:")
    measure(["trigger", "bench.one", "solo.one"], args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
