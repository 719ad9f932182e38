"""Alerts in the SQL store (``AlertStore``): rules, the outbox of deliveries with their
attempts, the storm limit, and the two scans the scheduler's tick runs: failed runs
(grouped into error groups and turned into run.failed / run.timed_out alerts in one
transaction, so a crash loses neither) and conditions (queue backlog, no worker).

Nothing here is on a worker's path: a failing run's commit writes nothing extra; the
scan finds it by the partial index ``runs_failed`` behind a watermark.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._ids import new_id
from .._serde import dumps, loads
from ._alerts_base import (
    STORM_LIMIT,
    STORM_WINDOW,
    AlertAttempt,
    AlertDelivery,
    AlertRule,
    DueDelivery,
    ScanReport,
)
from ._fingerprint import Fingerprint, fingerprint
from ._rows import Row, Tx
from ._sql_core import SqlCore

_SUMMARY_SAMPLES = 10


def _rule(row: Row) -> AlertRule:
    return AlertRule(
        id=row["id"],
        env=row["env"],
        event=row["event"],
        task_id=row["task_id"],
        queue=row["queue"],
        older_than=row["older_than"],
        webhook_url=row["webhook_url"],
        format=row["format"],
        created_at=row["created_at"],
    )


class AlertsMixin(SqlCore):
    def create_alert_rule(self, rule: AlertRule, secret: str) -> None:
        with self._transaction() as tx:
            tx.x(
                "insert_alert_rule",
                id=rule.id,
                env=rule.env,
                event=rule.event,
                task_id=rule.task_id,
                queue=rule.queue,
                older_than=rule.older_than,
                webhook_url=rule.webhook_url,
                format=rule.format,
                secret=secret,
                created_at=rule.created_at,
            )

    def seal_alert_secrets(self, seal: Callable[[str], str]) -> int:
        with self._transaction() as tx:
            rows = tx.q("plaintext_alert_secrets")
            return sum(tx.x("seal_alert_secret", id=r["id"], plaintext=r["secret"],
                            sealed=seal(r["secret"])) for r in rows)

    def list_alert_rules(self, env: str) -> list[AlertRule]:
        with self._transaction() as tx:
            return [_rule(r) for r in tx.q("list_alert_rules", env=env)]

    def delete_alert_rule(self, env: str, rule_id: str) -> bool:
        with self._transaction() as tx:
            if not tx.x("delete_alert_rule", env=env, id=rule_id):
                return False
            tx.x("delete_rule_deliveries", id=rule_id)  # its secret is gone: unsendable
            return True

    def list_alert_deliveries(
        self, env: str, rule_id: str | None = None, limit: int = 50
    ) -> list[AlertDelivery]:
        with self._transaction() as tx:
            rows = tx.q("list_alert_deliveries", env=env, rule_id=rule_id, limit=limit)
            return [
                AlertDelivery(
                    id=r["id"],
                    env=r["env"],
                    rule_id=r["rule_id"],
                    event=r["event"],
                    payload=loads(r["payload"]),
                    status=r["status"],
                    attempts=int(r["attempts"]),
                    created_at=r["created_at"],
                    next_at=r["next_at"],
                    delivered_at=r["delivered_at"],
                    summary_of=int(r["summary_of"]),
                    attempt_log=[
                        AlertAttempt(a["n"], a["at"], a["status_code"], a["error"], a["duration"])
                        for a in tx.q("alert_attempts", id=r["id"])
                    ],
                )
                for r in rows
            ]

    # -- raising: the outbox and the storm limit -----------------------------------------
    def raise_alert(
        self,
        env: str,
        event: str,
        data: Mapping[str, Any],
        *,
        task_id: str | None = None,
        queue: str | None = None,
        once: str | None = None,
    ) -> int:
        now = self.now()
        with self._transaction() as tx:
            if once is not None and not tx.x(
                "alert_once_claim", env=env, event=event, key=once, now=now
            ):
                return 0  # raised already, here or by another scheduler
            return self._raise(tx, env, event, data, task_id, queue, now)

    def alert_rule_envs(self, event: str) -> list[str]:
        with self._transaction() as tx:
            return [str(r["env"]) for r in tx.q("alert_rule_envs", event=event)]

    def _raise(
        self,
        tx: Tx,
        env: str,
        event: str,
        data: Mapping[str, Any],
        task_id: str | None,
        queue: str | None,
        now: float,
    ) -> int:
        rules = tx.q("matching_alert_rules", env=env, event=event, task_id=task_id, queue=queue)
        for rule in rules:
            start, sent = float(rule["window_start"]), int(rule["window_sent"])
            if now - start >= STORM_WINDOW:
                start, sent = now, 0
            tx.x("set_alert_window", id=rule["id"], window_start=start, window_sent=sent + 1)
            payload = {"type": event, "env": env, "timestamp": now, "data": dict(data)}
            if sent < STORM_LIMIT:
                tx.x(
                    "insert_alert_delivery",
                    id=new_id("msg"),
                    env=env,
                    rule_id=rule["id"],
                    event=event,
                    payload=dumps(payload),
                    now=now,
                    next_at=now,
                    summary_of=0,
                )
            else:
                self._summarize(tx, env, rule["id"], event, payload, start, now)
        return len(rules)

    def _summarize(
        self, tx: Tx, env: str, rule_id: str, event: str, payload: dict[str, Any],
        window_start: float, now: float,
    ) -> None:
        """One delivery stands for every event past the limit in this window, sent when
        the window ends: a storm of 10,000 failures sends a handful of posts."""
        found = tx.q("open_alert_summary", rule_id=rule_id, now=now, window_start=window_start)
        if found:
            summary = loads(found[0]["payload"])
            summary["data"]["count"] += 1
            if len(summary["data"]["samples"]) < _SUMMARY_SAMPLES:
                summary["data"]["samples"].append(payload["data"])
            tx.x(
                "grow_alert_summary",
                id=found[0]["id"],
                payload=dumps(summary),
                summary_of=int(found[0]["summary_of"]) + 1,
            )
            return
        summary = {
            "type": "alert.summary",
            "env": env,
            "timestamp": now,
            "data": {
                "event": event,
                "count": 1,
                "window_start": window_start,
                "window_seconds": STORM_WINDOW,
                "samples": [payload["data"]],
            },
        }
        tx.x(
            "insert_alert_delivery",
            id=new_id("msg"),
            env=env,
            rule_id=rule_id,
            event=event,
            payload=dumps(summary),
            now=now,
            next_at=window_start + STORM_WINDOW,
            summary_of=1,
        )

    # -- sending ---------------------------------------------------------------------------
    def due_deliveries(self, limit: int = 20, lease: float = 30.0) -> list[DueDelivery]:
        now = self.now()
        claimed: list[DueDelivery] = []
        with self._transaction() as tx:
            for due in tx.q("due_alert_deliveries", now=now, limit=limit):
                rows = tx.q("claim_alert_delivery", id=due["id"], now=now, until=now + lease)
                if not rows:
                    continue
                d = rows[0]
                target = tx.q("alert_rule_target", id=d["rule_id"])
                if not target:
                    continue
                claimed.append(
                    DueDelivery(
                        id=d["id"],
                        event=d["event"],
                        payload=loads(d["payload"]),
                        attempts=int(d["attempts"]),
                        url=target[0]["webhook_url"],
                        format=target[0]["format"],
                        rule_id=d["rule_id"],
                        secret=target[0]["secret"],
                    )
                )
        return claimed

    def record_alert_attempt(
        self,
        delivery_id: str,
        *,
        status_code: int | None,
        error: str | None,
        duration: float,
        retry_at: float | None,
    ) -> None:
        now = self.now()
        if error is None:
            status, next_at, delivered = "delivered", now, now
        elif retry_at is not None:
            status, next_at, delivered = "pending", retry_at, None
        else:
            status, next_at, delivered = "failed", now, None
        with self._transaction() as tx:
            rows = tx.q(
                "finish_alert_attempt",
                id=delivery_id,
                status=status,
                next_at=next_at,
                delivered_at=delivered,
            )
            if rows:
                tx.x(
                    "insert_alert_attempt",
                    delivery_id=delivery_id,
                    n=rows[0]["attempts"],
                    at=now,
                    status_code=status_code,
                    error=error,
                    duration=duration,
                )

    # -- the tick's scans ------------------------------------------------------------------
    def scan_failures(self, limit: int = 500, lag: float = 10.0) -> ScanReport:
        with self._transaction() as tx:
            locked = tx.q("lock_failure_scan")
            if not locked:
                return ScanReport()  # another scheduler is scanning
            watermark = float(locked[0]["watermark"])
            rows = tx.q("new_failures", since=watermark - lag, limit=limit)
            if not rows:
                return ScanReport()
            alerts = self._group_failures(tx, rows)
            tx.x("set_failure_watermark", watermark=max(watermark, rows[-1]["finished_at"]))
        return ScanReport(failures=len(rows), alerts=alerts)

    def _group_failures(self, tx: Tx, rows: list[Row]) -> int:
        """Count a batch of failed runs into their groups (a statement per group, not per
        run) and queue their alerts; return how many alerts were queued."""
        prints = [fingerprint(r["error"], r["status"]) for r in rows]
        tx.many("insert_error_occurrence", [
            {"run_id": r["id"], "env": r["env"], "fingerprint": fp.key,
             "task_id": r["task_id"], "at": r["finished_at"], "version": r["version"]}
            for r, fp in zip(rows, prints, strict=True)
        ])
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (r, fp) in enumerate(zip(rows, prints, strict=True)):
            groups.setdefault((r["env"], fp.key), []).append(i)
        ignored: set[tuple[str, str]] = set()
        for (env, key), members in groups.items():
            first, last = rows[members[0]], rows[members[-1]]  # rows are in finished_at order
            found = tx.q("get_error_group_status", env=env, fingerprint=key)
            common = {"env": env, "fingerprint": key, "n": len(members),
                      "last_seen": last["finished_at"], "sample_run_id": last["id"]}
            if not found:
                fp = prints[members[0]]
                tx.x("insert_error_group", exc_type=fp.exc_type, message=fp.message,
                     frame=fp.frame, first_seen=first["finished_at"], **common)
            else:
                tx.x("grow_error_group", **common)
                if found[0]["status"] == "ignored":
                    ignored.add((env, key))  # an ignored group sends no alerts
        return self._failure_alerts(tx, rows, prints, ignored)

    def _failure_alerts(
        self, tx: Tx, rows: list[Row], prints: list[Fingerprint], ignored: set[tuple[str, str]]
    ) -> int:
        alerts = 0
        has_rules: dict[tuple[str, str, str, str], bool] = {}
        now = self.now()
        for r, fp in zip(rows, prints, strict=True):
            if (r["env"], fp.key) in ignored:
                continue
            event = "run.timed_out" if r["status"] == "TIMED_OUT" else "run.failed"
            key = (r["env"], event, r["task_id"], r["queue"])
            if key not in has_rules:  # most failures match no rule: one look per kind
                has_rules[key] = bool(tx.q("matching_alert_rules", env=r["env"], event=event,
                                           task_id=r["task_id"], queue=r["queue"]))
            if not has_rules[key]:
                continue
            error = loads(r["error"]) if r["error"] else {}
            data = {
                "run_id": r["id"],
                "task_id": r["task_id"],
                "queue": r["queue"],
                "status": r["status"],
                "error": {
                    "type": fp.exc_type,
                    "message": error.get("message") if isinstance(error, dict) else None,
                },
                "fingerprint": fp.key,
            }
            alerts += self._raise(tx, r["env"], event, data, r["task_id"], r["queue"], now)
        return alerts

    def prune_alerts(self, older_than: float = 30 * 86400.0) -> int:
        before = self.now() - older_than
        with self._transaction() as tx:
            tx.x("prune_alert_attempts", before=before)
            gone = tx.x("prune_alert_deliveries", before=before)
            gone += tx.x("alert_once_prune", before=before)
            return gone + tx.x("prune_error_occurrences", before=before)

    def check_alert_conditions(self) -> int:
        now = self.now()
        raised = 0
        with self._transaction() as tx:
            rules = tx.q("condition_alert_rules")
            backlog: dict[str, list[Row]] = {}
            for rule in rules:
                env = rule["env"]
                if env not in backlog:
                    backlog[env] = tx.q("queued_backlog", env=env)
                firing = self._conditions(tx, rule, backlog[env], now)
                before = set(loads(rule["firing"]))
                for key, data in firing.items():
                    if key not in before:
                        task_id, queue = data.get("task_id"), data.get("queue")
                        raised += self._raise_one(tx, rule, data, task_id, queue, now)
                if set(firing) != before:
                    tx.x("set_alert_firing", id=rule["id"], firing=dumps(sorted(firing)))
        return raised

    def _raise_one(
        self, tx: Tx, rule: Row, data: dict[str, Any], task_id: str | None,
        queue: str | None, now: float,
    ) -> int:
        """Queue a condition's alert for this one rule (not every rule of its event:
        each rule tracks its own firing set)."""
        payload = {"type": rule["event"], "env": rule["env"], "timestamp": now, "data": data}
        tx.x(
            "insert_alert_delivery",
            id=new_id("msg"),
            env=rule["env"],
            rule_id=rule["id"],
            event=rule["event"],
            payload=dumps(payload),
            now=now,
            next_at=now,
            summary_of=0,
        )
        return 1

    def _conditions(
        self, tx: Tx, rule: Row, queued: list[Row], now: float
    ) -> dict[str, dict[str, Any]]:
        """What is firing now for this rule, by key (a queue, or a task)."""
        event = rule["event"]
        older_than = float(rule["older_than"] or (300.0 if event == "queue.backlog" else 60.0))
        rows = [
            r for r in queued
            if (rule["queue"] is None or r["queue"] == rule["queue"])
            and (rule["task_id"] is None or r["task_id"] == rule["task_id"])
        ]
        firing: dict[str, dict[str, Any]] = {}
        if event == "queue.backlog":
            by_queue: dict[str, tuple[float, int]] = {}
            for r in rows:
                oldest, n = by_queue.get(r["queue"], (now, 0))
                by_queue[r["queue"]] = (min(oldest, float(r["oldest"])), n + int(r["n"]))
            for name, (oldest, n) in by_queue.items():
                if now - oldest >= older_than:
                    firing[name] = {"queue": name, "queued": n, "oldest_age": now - oldest}
            return firing
        served: set[str] = set()
        for w in tx.q("alive_worker_tasks", env=rule["env"], now=now):
            served.update(loads(w["tasks"]) or [])
        for r in rows:
            if r["task_id"] not in served and now - float(r["oldest"]) >= older_than:
                firing[r["task_id"]] = {
                    "task_id": r["task_id"],
                    "queue": r["queue"],
                    "queued": int(r["n"]),
                    "oldest_age": now - float(r["oldest"]),
                }
        return firing
