"""Identifiers: the batch generator gives ids of the same shape and order as one by one."""

from __future__ import annotations

import re
import time

from outlast._ids import derived_id, new_id, new_ids

ID = re.compile(r"run_[0-9a-hjkmnp-tv-z]{26}")


def test_batch_ids_look_like_single_ids_and_sort_by_time() -> None:
    before = new_id("run")
    time.sleep(0.002)
    batch = new_ids("run", 1000)
    time.sleep(0.002)
    after = new_id("run")
    assert all(ID.fullmatch(i) for i in [before, after, *batch])
    assert len(set(batch)) == 1000
    assert before < min(batch) and max(batch) < after
    assert new_ids("run", 0) == []


def test_derived_ids_are_stable() -> None:
    assert derived_id("run", "a", "b") == derived_id("run", "a", "b")
    assert derived_id("run", "a", "b") != derived_id("run", "ab")
    # Pinned: a replay of an old journal must find the objects it created.
    assert derived_id("wp", "run_x", "k") == "wp_zj711mjq62g69mvk1k9ypn3g31"
