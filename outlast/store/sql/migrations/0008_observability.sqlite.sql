-- Version 8: the trace context a run was triggered under (W3C traceparent), written only
-- when tracing is on (outlast[otel]), so every worker that takes the run up (after a
-- crash, a retry or a long wait) continues the caller's trace. A table of its own: the
-- hot runs row and its inserts stay as they were when tracing is off.
CREATE TABLE run_traces (
    run_id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    traceparent TEXT NOT NULL
);
