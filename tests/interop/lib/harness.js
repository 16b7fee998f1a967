// Shared pieces of the interop tests: a real `truce serve` per test (free
// loopback port, temporary data directory, ended by PID), RxDB clients on the
// free in-memory storage, and await-until helpers that always have a deadline.

import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';

import { createRxDatabase } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';

/** The `truce` binary under test (the Rust test passes its own build). */
export const TRUCE_BIN = process.env.TRUCE_BIN;
if (!TRUCE_BIN) {
  throw new Error('set TRUCE_BIN to the truce binary (cargo test -p truce-server --test interop does)');
}

/** A free loopback port: bound, then released for the server to take. */
async function freePort() {
  const srv = createServer();
  await new Promise((resolve, reject) => srv.listen(0, '127.0.0.1', resolve).on('error', reject));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/** `truce keys create --role ROLE --data DIR`: the new API key (printed once on stdout). */
async function createKey(data, role) {
  const out = await new Promise((resolve, reject) => {
    execFile(TRUCE_BIN, ['keys', 'create', '--role', role, '--data', data], { timeout: 20_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`truce keys create failed: ${err.message}\n${stderr}`)) : resolve(stdout),
    );
  });
  const key = out.split(/\s+/).find((w) => w.startsWith('truce_'));
  if (!key) throw new Error(`no key in the output of truce keys create: ${out}`);
  return key;
}

/**
 * Starts `truce serve` on a fresh data directory and a free port; resolves
 * once `/healthz` answers. `kill9()` SIGKILLs it by PID, `restart()` starts it
 * again on the same port and data, `stop()` kills it and removes the data.
 * With `keys: ['write', …]`, API keys are created first (`server.keys`), so
 * every request then needs `Authorization: Bearer <key>`. `args` are added
 * to `truce serve`'s own (e.g. `['--max-body-bytes', '200000']`).
 */
export async function startServer({ keys = [], args = [] } = {}) {
  const dataRoot = await mkdtemp(join(tmpdir(), 'truce-interop-'));
  const server = {
    keys: [],
    port: await freePort(),
    data: join(dataRoot, 'data'),
    child: null,
    stderr: '',
    get url() {
      return `http://127.0.0.1:${this.port}`;
    },
    get pid() {
      return this.child?.pid;
    },
    async spawn() {
      const child = spawn(TRUCE_BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data', this.data, ...args], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, TRUCE_LOG: process.env.TRUCE_LOG ?? 'warn' },
      });
      this.child = child;
      // Keep the tail of stderr for failure messages (and keep the pipe drained).
      child.stderr.on('data', (b) => {
        this.stderr = (this.stderr + b.toString()).slice(-8000);
      });
      const exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve({ code, sig })));
      child.exitedPromise = exited;
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        const gone = await Promise.race([exited, sleep(50, null)]);
        if (gone) throw new Error(`truce serve exited (${JSON.stringify(gone)}):\n${this.stderr}`);
        try {
          const res = await fetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(1000) });
          if (res.ok) return;
        } catch {
          // not listening yet
        }
      }
      throw new Error(`truce serve did not answer /healthz on ${this.url} within 20 s:\n${this.stderr}`);
    },
    /** SIGKILL by PID; resolves when the process is gone. */
    async kill9() {
      const child = this.child;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      process.kill(child.pid, 'SIGKILL');
      await child.exitedPromise;
      this.child = null;
    },
    async restart() {
      await this.kill9();
      await this.spawn();
    },
    async stop() {
      await this.kill9();
      await rm(dataRoot, { recursive: true, force: true });
    },
  };
  for (const role of keys) server.keys.push(await createKey(server.data, role));
  await server.spawn();
  return server;
}

/** Resolves when `check()` returns truthy; throws `message()` at the deadline. */
export async function waitUntil(check, { timeout = 15_000, interval = 50, message = () => 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = typeof message === 'function' ? await message() : message;
      throw new Error(`timed out after ${timeout} ms waiting for ${detail}${last instanceof Error ? `: ${last.stack}` : ''}`);
    }
    await sleep(interval);
  }
}

/** Rejects if `promise` takes longer than `ms`. */
export function within(ms, promise, what = 'operation') {
  let t;
  const timer = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timer]).finally(() => clearTimeout(t));
}

/** The schema every test uses. No top-level `_` fields (RxDB forbids them). */
export const itemSchema = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: {
    id: { type: 'string', maxLength: 100 },
    name: { type: 'string' },
    count: { type: 'number' },
    tags: { type: 'array', items: { type: 'string' } },
    by: { type: 'string' },
  },
  required: ['id'],
};

let dbCounter = 0;

/**
 * An RxDB database (in-memory, one per client) with an `items` collection.
 * Close it with `db.close()` (or `closeAll`) at the end of the test: the
 * free RxDB limits how many collections a process may have open.
 */
export async function createClient({ conflictHandler } = {}) {
  const db = await createRxDatabase({
    name: `client${process.pid}x${++dbCounter}x${Date.now()}`,
    storage: getRxStorageMemory(),
    multiInstance: false,
    eventReduce: true,
  });
  const { items } = await db.addCollections({
    items: { schema: itemSchema, ...(conflictHandler ? { conflictHandler } : {}) },
  });
  return { db, items };
}

/** Closes databases, ignoring ones already closed. */
export async function closeAll(...dbs) {
  await Promise.all(dbs.filter(Boolean).map((db) => (db.closed ? null : db.close())));
}

/** The live documents of a collection as plain objects, sorted by id. */
export async function clientDocs(collection) {
  const docs = await collection.find().exec();
  return docs.map((d) => normalize(d.toJSON())).sort(byId);
}

/** The live documents of `coll` on the server (via `_pull`), sorted by id. */
export async function serverDocs(url, coll = 'items', headers = {}) {
  const out = [];
  let checkpoint = null;
  for (;;) {
    const cp = checkpoint ? `&checkpoint=${encodeURIComponent(JSON.stringify(checkpoint))}` : '';
    const res = await fetch(`${url}/v1/c/${coll}/_pull?primaryKey=id&limit=1000${cp}`, { headers });
    if (!res.ok) throw new Error(`_pull answered ${res.status}: ${await res.text()}`);
    const body = await res.json();
    for (const d of body.documents) if (!d._deleted) out.push(normalize(d));
    if (body.documents.length < 1000) break;
    checkpoint = body.checkpoint;
  }
  return out.sort(byId);
}

/** Drops `_deleted` and RxDB's meta fields so documents compare by content. */
function normalize(doc) {
  const { _deleted, _meta, _rev, _attachments, ...rest } = doc;
  return rest;
}

const byId = (a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/** Waits until every source (functions returning sorted doc arrays) agrees, and returns the docs. */
export async function waitConverged(sources, { timeout = 20_000, expect } = {}) {
  let snapshot = [];
  await waitUntil(
    async () => {
      snapshot = await Promise.all(sources.map((s) => s()));
      const first = snapshot[0];
      if (expect && !isDeepStrictEqual(first, expect)) return false;
      return snapshot.every((s) => isDeepStrictEqual(s, first));
    },
    {
      timeout,
      interval: 100,
      message: () => `convergence${expect ? ` to ${JSON.stringify(expect).slice(0, 500)}` : ''}; ${describeDiff(snapshot, expect)}`,
    },
  );
  return snapshot[0];
}

/** Says how the snapshots differ from the first one (or from `expect`): counts, missing, extra and differing ids. */
function describeDiff(snapshot, expect) {
  const ref = expect ?? snapshot[0] ?? [];
  const refById = new Map(ref.map((d) => [d.id, d]));
  return snapshot
    .map((docs, i) => {
      const byId = new Map(docs.map((d) => [d.id, d]));
      const missing = [...refById.keys()].filter((id) => !byId.has(id));
      const extra = [...byId.keys()].filter((id) => !refById.has(id));
      const differ = [...byId.keys()].filter((id) => refById.has(id) && !isDeepStrictEqual(byId.get(id), refById.get(id)));
      const show = (ids) => JSON.stringify(ids.slice(0, 20)) + (ids.length > 20 ? `…(${ids.length})` : '');
      const diffs = differ.slice(0, 3).map((id) => `${JSON.stringify(byId.get(id))} vs ${JSON.stringify(refById.get(id))}`);
      return `source ${i}: ${docs.length} docs, missing ${show(missing)}, extra ${show(extra)}, differing ${show(differ)} ${diffs.join('; ')}`;
    })
    .join(' | ');
}

/** Collects a replication's errors (for failure messages) without failing on the expected ones. */
export function collectErrors(replicationState, label) {
  const errors = [];
  replicationState.error$.subscribe((err) => {
    errors.push(`${label}: ${err?.message ?? err}`);
    if (process.env.INTEROP_DEBUG) console.error(label, err);
  });
  return errors;
}

/** A direct HTTP write on the server, as another application would do it. */
export async function serverPut(url, coll, id, body) {
  const res = await fetch(`${url}/v1/c/${coll}/${encodeURIComponent(id)}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`PUT ${coll}/${id} answered ${res.status}: ${JSON.stringify(json)}`);
  return json;
}

/** GET a document from the server's native API (null when absent). */
export async function serverGet(url, coll, id) {
  const res = await fetch(`${url}/v1/c/${coll}/${encodeURIComponent(id)}`);
  if (res.status === 404) return null;
  if (!res.ok) throw new Error(`GET ${coll}/${id} answered ${res.status}: ${await res.text()}`);
  return res.json();
}
