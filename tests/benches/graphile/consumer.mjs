// graphile-worker as the peer in Hangar's queue benchmark (tests/benches/queue.rs):
// one worker instance consuming the benchmark's jobs from the same PostgreSQL,
// with the settings graphile-worker's performance documentation gives
// (24 concurrent jobs, a pool of 25, a local queue of 500, completions and
// failures written without delay), woken by its own LISTEN/NOTIFY.
//
// The benchmark starts it, waits for "ready" on stdout, enqueues through
// graphile-worker's SQL API, and closes stdin to stop it. On stdin, "count"
// asks how many no-op jobs have run (answered "ran N"), "reset" sets that count
// to 0 (answered "reset").
// Job kinds:
//   noop   does nothing but count;
//   timed  prints "lat <ms>": the time from its payload's `sent` (nanoseconds
//          since the epoch, taken just before the enqueue) to its start.
//
// Environment: GRAPHILE_WORKER_DIR (where npm installed graphile-worker), PGHOST,
// PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLROOTCERT (TLS is verified).

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";

const env = process.env;
for (const name of ["GRAPHILE_WORKER_DIR", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLROOTCERT"]) {
  if (!env[name]) {
    console.error(`graphile consumer: ${name} is not set`);
    process.exit(2);
  }
}
const require = createRequire(path.join(env.GRAPHILE_WORKER_DIR, "package.json"));
const { run, Logger } = require("graphile-worker");
const { Pool } = require("pg");

// Nanoseconds since the epoch, with the sub-millisecond part of the monotonic clock.
const nowNanos = () => (performance.timeOrigin + performance.now()) * 1e6;

const pgPool = new Pool({
  host: env.PGHOST,
  port: Number(env.PGPORT),
  user: env.PGUSER,
  password: env.PGPASSWORD,
  database: env.PGDATABASE,
  ssl: { ca: readFileSync(env.PGSSLROOTCERT, "utf8"), rejectUnauthorized: true },
  max: 25,
});
pgPool.on("error", (e) => console.error(`graphile consumer: idle database connection failed: ${e.message}`));

// Only warnings and errors, on stderr: stdout carries the protocol.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    console.error(`graphile-worker ${level}: ${message}`);
  }
});

let ran = 0;
const taskList = {
  noop: async () => {
    ran += 1;
  },
  timed: async (payload) => {
    const ms = (nowNanos() - Number(payload.sent)) / 1e6;
    process.stdout.write(`lat ${ms}\n`);
  },
};

const runner = await run({
  pgPool,
  taskList,
  logger,
  noHandleSignals: false,
  preset: {
    worker: {
      concurrentJobs: 24,
      maxPoolSize: 25,
      localQueue: { size: 500 },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    },
  },
});
process.stdout.write("ready\n");

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const word = line.trim();
  if (word === "count") {
    process.stdout.write(`ran ${ran}\n`);
  } else if (word === "reset") {
    ran = 0;
    process.stdout.write("reset\n");
  }
});
lines.on("close", async () => {
  await runner.stop();
  await pgPool.end();
  process.exit(0);
});
await runner.promise;
