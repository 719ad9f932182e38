// Drive outlast with the official Trigger.dev SDK, unchanged. Usage:
//   TRIGGER_API_URL=http://127.0.0.1:PORT TRIGGER_SECRET_KEY=... node compat.mjs sdk-4.0
// Prints one JSON object with what each call returned; tests/test_trigger_sdk.py checks it.
const pkg = process.argv[2];
const { tasks, runs, wait, idempotencyKeys } = await import(pkg);

const out = { sdk: pkg, steps: {} };
const note = (name, value) => { out.steps[name] = value; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(id, pred, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const run = await runs.retrieve(id);
    if (pred(run) || Date.now() > end) return run;
    await sleep(100);
  }
}

try {
  // 1. trigger with a payload full of superjson types
  const payload = {
    userId: 42,
    since: new Date("2025-01-02T03:04:05.000Z"),
    big: 10n,
    set: new Set(["a", "b"]),
    map: new Map([["k", 1]]),
    gone: undefined,
    re: /ab+c/i,
    nan: NaN,
    nested: { when: new Date("2026-01-01T00:00:00.000Z"), list: [1n, 2] },
  };
  const idemKey = await idempotencyKeys.create(`compat-${pkg}-${process.env.RUN_SALT}`,
                                               { scope: "global" });
  const options = {
    idempotencyKey: idemKey,
    idempotencyKeyTTL: "1h",
    tags: ["org:1", "compat"],
    ttl: "1h",
    priority: 5,
    concurrencyKey: "org:1",
    maxAttempts: 2,
    metadata: { source: "node" },
  };
  const first = await tasks.trigger("compat-echo", payload, options);
  const again = await tasks.trigger("compat-echo", payload, options);
  note("trigger", { id: first.id, isCached: first.isCached ?? false, hasToken: !!first.publicAccessToken });
  note("triggerAgain", { id: again.id, isCached: again.isCached ?? false });
  const done = await until(first.id, (r) => r.isCompleted);
  note("retrieve", { status: done.status, output: done.output, tags: done.tags,
                     isSuccess: done.isSuccess, taskIdentifier: done.taskIdentifier,
                     payload: done.payload, attemptCount: done.attemptCount });

  // 2. a payload over 128 KB (offloaded as a packet by SDK >= 4.5)
  const large = { blob: "x".repeat(200 * 1024), n: 7 };
  const bigRun = await tasks.trigger("compat-echo", large);
  const bigDone = await until(bigRun.id, (r) => r.isCompleted);
  note("large", { status: bigDone.status, length: bigDone.output?.blob?.length, n: bigDone.output?.n });

  // 3. batch trigger
  const btag = `batch-${process.env.RUN_SALT}`;
  const batch = await tasks.batchTrigger("compat-echo", [
    { payload: { i: 1 }, options: { tags: [btag] } },
    { payload: { i: 2 }, options: { tags: [btag, "b2"] } },
    { payload: { i: 3 }, options: { tags: [btag] } },
  ]);
  let batchRuns = [];
  for (let k = 0; k < 100; k++) {
    batchRuns = (await runs.list({ tag: btag, limit: 10 })).data;
    if (batchRuns.length === 3 && batchRuns.every((r) => r.isCompleted)) break;
    await sleep(100);
  }
  note("batch", { batchId: batch.batchId, runCount: batch.runCount,
                  completed: batchRuns.filter((r) => r.status === "COMPLETED").length });

  // 4. list with filters
  const page = await runs.list({ taskIdentifier: "compat-echo", tag: "compat", limit: 10 });
  note("list", { count: page.data.length, ids: page.data.map((r) => r.id),
                 statuses: page.data.map((r) => r.status), env: page.data[0]?.env?.name });

  // 5. cancel a delayed run, replay a finished one
  const delayed = await tasks.trigger("compat-echo", { late: true }, { delay: "1h" });
  const cancelled = await runs.cancel(delayed.id);
  const afterCancel = await runs.retrieve(delayed.id);
  note("cancel", { id: cancelled.id, status: afterCancel.status });
  const replayed = await runs.replay(first.id);
  const replayDone = await until(replayed.id, (r) => r.isCompleted);
  note("replay", { id: replayed.id, status: replayDone.status, differs: replayed.id !== first.id });

  // 6. idempotency key reset (4.3.1+)
  if (typeof idempotencyKeys.reset === "function") {
    await idempotencyKeys.reset("compat-echo", options.idempotencyKey);
    const fresh = await tasks.trigger("compat-echo", payload, options);
    note("reset", { isCached: fresh.isCached ?? false, differs: fresh.id !== first.id });
  } else {
    note("reset", { unsupportedInSdk: true });
  }

  // 7. waitpoint tokens: a Python task waits; the SDK completes it; a POST to the URL too
  const token = await wait.createToken({ timeout: "10m", tags: ["approval"] });
  const waiter = await tasks.trigger("compat-wait-token", { tokenId: token.id });
  await until(waiter.id, (r) => r.status === "WAITING");
  await wait.completeToken(token, { approved: true, at: new Date("2025-01-01T00:00:00.000Z") });
  await wait.completeToken(token.id, { approved: false });  // second completion: idempotent
  const waited = await until(waiter.id, (r) => r.isCompleted);
  note("token", { id: token.id, url: token.url, status: waited.status, output: waited.output });

  const token2 = await wait.createToken({ timeout: "10m" });
  const waiter2 = await tasks.trigger("compat-wait-token", { tokenId: token2.id });
  await until(waiter2.id, (r) => r.status === "WAITING");
  const resp = await fetch(token2.url, { method: "POST", body: JSON.stringify({ via: "callback" }),
                                         headers: { "content-type": "application/json" } });
  const waited2 = await until(waiter2.id, (r) => r.isCompleted);
  note("callback", { http: resp.status, status: waited2.status, output: waited2.output });

  // 8. errors: unknown task and a bad payload are clear, final errors
  try { await tasks.trigger("compat-missing-task", {}); note("unknownTask", { thrown: false }); }
  catch (e) { note("unknownTask", { thrown: true, status: e.status, message: String(e.message) }); }
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e?.stack ?? e);
}
console.log(JSON.stringify(out));
