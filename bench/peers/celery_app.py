"""The Celery app for celery_bench.py: Redis broker, no result backend (Celery's default).

Each task records when it started and ended in Redis (one pipelined round trip), since
Celery itself keeps no timestamps without a result backend.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/11")
app = Celery("bench", broker=BROKER)
app.conf.worker_hijack_root_logger = False
_redis = redis.Redis.from_url(BROKER)


@app.task(name="noop")
def noop(sent_at: float) -> None:
    started = time.time()
    pipe = _redis.pipeline(transaction=False)
    pipe.setnx("bench:first", started)
    pipe.set("bench:last", time.time())
    pipe.rpush("bench:lat", f"{sent_at},{started}")
    pipe.incr("bench:done")
    pipe.execute()
