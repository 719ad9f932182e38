"""Past the function time wall: export 50,000 invoices to CSV, one step per page.

Each page is a step. A page whose step committed is in the run's journal, so when the
worker dies (``kill -9`` it) the run is queued again and the next attempt replays the
finished pages from the journal in microseconds and carries on at the first page that has
no record. Progress is in the run's metadata (``outlast runs show <run id>``).

Why the page step truncates before it appends: a step body runs at least once (C3). If the
process dies after writing a page's rows but before the step's result is committed, that
page runs again. So each page starts by cutting the file back to where the previous,
committed page ended (its recorded ``end_offset``): a repeated page overwrites its own
partial output instead of duplicating rows. Every row ends up in the file exactly once.

Try it::

    outlast trigger export-invoices --payload '{}'          # 50,000 rows, ~10 s
    outlast runs show <run id>                              # metadata.progress climbs
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from outlast import Retry, current_run, logger, metadata, step, task

from . import fake_services

HEADER = ["invoice_id", "customer_id", "issued_on", "amount_cents", "currency", "status"]


class ExportInvoices(BaseModel):
    rows: int = Field(default=50_000, ge=0)
    page_size: int = Field(default=1_000, ge=1)
    # A stand-in for the database query behind each page, so that an export takes long
    # enough to kill the worker in the middle of it. Set it to 0 for speed.
    page_delay: float = Field(default=0.2, ge=0)
    # Simulate a crash in the middle of this page (after half its rows are written), once.
    fail_on_page: int | None = None


class ExportResult(BaseModel):
    path: str
    rows: int
    pages: int
    bytes: int


@dataclass
class PageDone:
    page: int
    rows: int
    end_offset: int


def invoice_row(n: int) -> list[str]:
    """Invoice number ``n`` (1-based). Deterministic: the same n always gives the same row."""
    day = 1 + (n * 7) % 28
    month = 1 + (n * 5) % 12
    amount = 500 + (n * 7919) % 250_000
    status = ("paid", "paid", "paid", "open", "void")[n % 5]
    return [f"INV-{n:06d}", f"cus_{(n * 31) % 997:04d}", f"2025-{month:02d}-{day:02d}",
            str(amount), "EUR", status]


def export_path(run_id: str) -> Path:
    return fake_services.data_dir() / "exports" / f"invoices-{run_id}.csv"


def export_page(
    path: str,
    page: int,
    page_size: int,
    total_rows: int,
    start_offset: int,
    page_delay: float,
    fail_on_page: int | None,
) -> PageDone:
    """Write one page of rows at ``start_offset``, which is where the previous page ended."""
    first = page * page_size + 1
    last = min(total_rows, first + page_size - 1)
    time.sleep(page_delay)  # "the query"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if page == 0:
        writer.writerow(HEADER)
    rows = [invoice_row(n) for n in range(first, last + 1)]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a+b") as f:
        # Undo whatever a previous run of this very page left behind (see the module doc).
        f.truncate(start_offset)
        f.seek(start_offset)
        if page == fail_on_page and fake_services.count_call(f"crash:{path}:{page}") == 1:
            writer.writerows(rows[: len(rows) // 2])
            f.write(buf.getvalue().encode())
            f.flush()
            raise ConnectionError(f"simulated crash in the middle of page {page}")
        writer.writerows(rows)
        f.write(buf.getvalue().encode())
        f.flush()
        os.fsync(f.fileno())  # on disk before the step's result is committed
        end = f.tell()
    return PageDone(page=page, rows=len(rows), end_offset=end)


@task(id="export-invoices", retry=Retry(max_attempts=10, min_delay=1.0, max_delay=30.0))
async def export_invoices(payload: ExportInvoices) -> ExportResult:
    path = export_path(current_run().id)
    pages = math.ceil(payload.rows / payload.page_size)
    offset = 0
    for page in range(pages):
        done = await step.run(
            f"page-{page}", export_page, str(path), page, payload.page_size, payload.rows,
            offset, payload.page_delay, payload.fail_on_page,
        )
        offset = done.end_offset
        metadata.set("progress", round((page + 1) / pages, 4))
        logger.info("page exported", page=page + 1, of=pages, rows=done.rows)
    return ExportResult(path=str(path), rows=payload.rows, pages=pages, bytes=offset)
