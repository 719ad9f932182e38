"""The DBOS app for dbos_bench.py: a queue, a no-op workflow and a three-step workflow.

``python dbos_app.py migrate`` creates the system database; ``python dbos_app.py`` runs
a worker (DBOS.launch) until SIGTERM. BENCH_DSN is the system database URL (postgresql://
or sqlite:///); BENCH_CONC, when set, is the queue's worker_concurrency.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from dbos import DBOS, DBOSConfig

config: DBOSConfig = {
    "name": "bench",
    "system_database_url": os.environ["BENCH_DSN"],
    "log_level": "WARNING",
}
DBOS(config=config)


@DBOS.step()
def nothing() -> int:
    return 1


@DBOS.workflow()
def noop_wf() -> None:
    return None


@DBOS.workflow()
def three_wf() -> int:
    return nothing() + nothing() + nothing()


def main() -> None:
    DBOS.launch()
    conc = int(os.environ.get("BENCH_CONC") or 0)
    DBOS.register_queue("bench", worker_concurrency=conc or None)
    if sys.argv[1:] == ["migrate"]:
        DBOS.destroy()
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait(3600)
    DBOS.destroy()


if __name__ == "__main__":
    main()
