#!/usr/bin/env node
// Replication benchmark: Truce's RxDB replication protocol against
// pouchdb-server replicating to PouchDB, same run, same machine, loopback.
//
//   node bench.mjs [--docs 100000] [--push 20000] [--batch 500] [--json]
//                  [--no-rxdb] [--no-peer] [--timeout 900]
//
// Truce side: `truce serve` (TRUCE_BIN, else target/release/truce under the
// repository root) on a free loopback port and a temporary data directory;
// `--docs` documents loaded with POST /v1/tx; then
//   pull: a fresh client pages through GET /v1/c/bench/_pull?limit=500&checkpoint=…
//         with fetch + JSON.parse (what truce-rxdb's pull handler does), and
//         again through a real RxDB (replicateRxCollection via truce-rxdb,
//         memory storage) as a second figure;
//   push: `--push` new documents in POST /v1/c/bench/_push batches of 500 rows
//         with assumedMasterState null, one request at a time.
// Peer: `pouchdb-server --in-memory` on a free loopback port, the same
// documents loaded with _bulk_docs, replicated to a fresh in-memory PouchDB
// in this process with replicate.from(remote, {batch_size: 500}).
//
// Every process this script starts is ended by its PID, also on an error, a
// signal or the overall timeout. See docs/benchmarks-replication.md.

import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const COLL = 'bench';
const REQUEST_TIMEOUT_MS = 120_000;

// ---------------------------------------------------------------- options

function parseArgs(argv) {
  const opts = { docs: 100_000, push: 20_000, batch: 500, json: false, rxdb: true, peer: true, timeout: 900 };
  const number = (name, v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) usage(`--${name} needs a positive integer, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [key, inline] = a.includes('=') ? a.split(/=(.*)/s, 2) : [a, undefined];
    const value = () => inline ?? argv[++i];
    switch (key) {
      case '--docs': opts.docs = number('docs', value()); break;
      case '--push': opts.push = number('push', value()); break;
      case '--batch': opts.batch = number('batch', value()); break;
      case '--timeout': opts.timeout = number('timeout', value()); break;
      case '--json': opts.json = true; break;
      case '--no-rxdb': opts.rxdb = false; break;
      case '--no-peer': opts.peer = false; break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (opts.batch > 1000) usage('--batch is at most 1000 (a push is one transaction of at most 1,000 ops)');
  return opts;
}

function usage(error) {
  const text = `usage: node bench.mjs [--docs 100000] [--push 20000] [--batch 500] [--json] [--no-rxdb] [--no-peer] [--timeout 900]
  --docs N     documents loaded, then pulled by a fresh client (both systems)
  --push N     new documents pushed to Truce in --batch rows per request
  --batch N    pull limit / push rows / PouchDB batch_size (default 500)
  --json       also print one JSON summary line at the end
  --no-rxdb    skip the second Truce pull figure through RxDB (replicateRxCollection)
  --no-peer    skip pouchdb-server (no ratio)
  --timeout S  overall limit in seconds; past it every started process is ended
env: TRUCE_BIN  the truce binary (default: target/release/truce under the repository root;
                build it with: cargo build --release -p truce-server)`;
  if (error) {
    console.error(`error: ${error}\n${text}`);
    process.exit(2);
  }
  console.log(text);
  process.exit(0);
}

// ------------------------------------------------------ processes, cleanup

/** Every child this script started and has not seen exit: pid -> {name, child}. */
const children = new Map();
const tempDirs = [];

function track(name, child) {
  children.set(child.pid, { name, child });
  child.once('exit', () => children.delete(child.pid));
  return child;
}

/** Ends one child by its PID: SIGTERM, then SIGKILL after 3 s; resolves when it is gone. */
async function endProcess(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  try {
    process.kill(child.pid, 'SIGTERM');
  } catch {
    return; // already gone
  }
  const t = setTimeout(() => {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {}
  }, 3000);
  await gone;
  clearTimeout(t);
}

let cleaning = null;
function cleanup() {
  cleaning ??= (async () => {
    await Promise.all([...children.values()].map(({ child }) => endProcess(child)));
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  })();
  return cleaning;
}

// Last resort (process.exit from anywhere): SIGKILL what is left, by PID.
process.on('exit', () => {
  for (const pid of children.keys()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {}
  }
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.error(`\n${sig}: ending started processes`);
    cleanup().finally(() => process.exit(130));
  });
}

/** A free loopback port: bound, then released for the server to take. */
async function freePort() {
  const srv = createServer();
  await new Promise((r, j) => srv.listen(0, '127.0.0.1', r).on('error', j));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

function tempDir(prefix) {
  const dir = mkdtempSync(join(os.tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

/** Starts `cmd args`, keeps the tail of its output, waits until `ready()` is true. */
async function startProcess(name, cmd, args, { cwd, env, ready, within = 30_000 }) {
  const child = track(name, spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] }));
  let tail = '';
  const keep = (b) => {
    tail = (tail + b.toString()).slice(-4000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((r) => child.once('exit', (code, sig) => r({ code, sig })));
  const deadline = Date.now() + within;
  while (Date.now() < deadline) {
    const gone = await Promise.race([exited, sleep(50, null)]);
    if (gone) throw new Error(`${name} exited (${JSON.stringify(gone)}):\n${tail}`);
    try {
      if (await ready()) return { child, tail: () => tail };
    } catch {
      // not listening yet
    }
  }
  throw new Error(`${name} did not become ready within ${within} ms:\n${tail}`);
}

// -------------------------------------------------------------- utilities

async function http(url, init = {}) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  if (!res.ok) throw new Error(`${init.method ?? 'GET'} ${url} answered ${res.status}: ${(await res.text()).slice(0, 500)}`);
  return res;
}

function postJson(url, body) {
  return http(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

/** Runs `task(i)` for i in [0, count) with at most `width` running at once. */
async function pool(count, width, task) {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, count) }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

const fmt = (n) => Math.round(n).toLocaleString('en-US');
const secs = (ms) => (ms / 1000).toFixed(2);

/** The documents both systems get: small (~150 bytes of JSON), a stable id. */
function docId(prefix, i) {
  return `${prefix}${String(i).padStart(7, '0')}`;
}
function docBody(i) {
  return {
    name: `item ${i}`,
    n: i,
    group: i % 100,
    tags: [`t${i % 7}`, 'bench'],
    text: `lorem ipsum ${(i * 2654435761) % 4294967296} dolor sit amet ${i % 977}`,
  };
}

/** Newest modification time of the Rust sources (to warn about a stale binary). */
function newestSource(dir) {
  let newest = 0;
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.rs') || e.name === 'Cargo.toml') newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  try {
    walk(join(REPO, 'crates'));
  } catch {}
  return newest;
}

function machineLine() {
  const cpus = os.cpus();
  const load = os.loadavg().map((l) => l.toFixed(2)).join(' ');
  return `machine: ${cpus.length} cores (${cpus[0]?.model?.trim() ?? 'unknown'}); ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; node ${process.version}; load average ${load}; temp dir ${os.tmpdir()}`;
}

// ------------------------------------------------------------------ Truce

/** An error the user can fix (printed without a stack). */
class UsageError extends Error {}

function locateTruce() {
  const bin = process.env.TRUCE_BIN ? resolve(process.env.TRUCE_BIN) : join(REPO, 'target', 'release', 'truce');
  if (!existsSync(bin)) {
    throw new UsageError(
      `no truce binary at ${bin}\nbuild it first:  cd ${REPO} && cargo build --release -p truce-server\n(or set TRUCE_BIN to a truce binary)`,
    );
  }
  let version = 'truce';
  try {
    version = execFileSync(bin, ['--version'], { timeout: 10_000 }).toString().trim();
  } catch {}
  const stale = !process.env.TRUCE_BIN && newestSource(REPO) > statSync(bin).mtimeMs;
  return { bin, version, stale };
}

async function startTruce(bin) {
  const root = tempDir('truce-bench-repl-');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const { child } = await startProcess('truce serve', bin, ['serve', '--listen', `127.0.0.1:${port}`, '--data', join(root, 'data')], {
    cwd: root,
    env: { ...process.env, TRUCE_LOG: process.env.TRUCE_LOG ?? 'warn' },
    ready: async () => (await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) })).ok,
  });
  return { url, child, dataDir: join(root, 'data') };
}

/** `docs` documents through POST /v1/tx, 1,000 puts per transaction, 4 in flight. */
async function loadTruce(url, docs) {
  const per = 1000;
  const started = performance.now();
  await pool(Math.ceil(docs / per), 4, async (b) => {
    const ops = [];
    for (let i = b * per; i < Math.min(docs, (b + 1) * per); i++) ops.push({ op: 'put', c: COLL, id: docId('d', i), doc: docBody(i) });
    await postJson(`${url}/v1/tx`, { ops });
  });
  return performance.now() - started;
}

/**
 * A fresh client pulls everything: GET _pull with the last checkpoint until a
 * page comes back short, exactly as truce-rxdb's pull handler does it, one
 * request at a time. Also splits each request's time into the wait for the
 * answer's headers (the server builds the whole JSON before sending), reading
 * the body, and JSON.parse.
 */
async function pullTruce(url, limit) {
  const documents = [];
  let checkpoint = null;
  let requests = 0;
  let headers = 0;
  let body = 0;
  let parse = 0;
  let bytes = 0;
  const started = performance.now();
  for (;;) {
    const cp = checkpoint ? `&checkpoint=${encodeURIComponent(JSON.stringify(checkpoint))}` : '';
    const t0 = performance.now();
    const res = await http(`${url}/v1/c/${COLL}/_pull?limit=${limit}&primaryKey=id${cp}`);
    const t1 = performance.now();
    const text = await res.text();
    const t2 = performance.now();
    const page = JSON.parse(text);
    const t3 = performance.now();
    requests++;
    headers += t1 - t0;
    body += t2 - t1;
    parse += t3 - t2;
    bytes += text.length;
    for (const d of page.documents) documents.push(d);
    checkpoint = page.checkpoint ?? checkpoint;
    if (page.documents.length < limit) break;
  }
  const elapsed = performance.now() - started;
  return { documents, elapsed, requests, headers, body, parse, bytes };
}

function checkPulled(documents, docs, prefix) {
  if (documents.length !== docs) throw new Error(`pull returned ${documents.length} documents, expected ${docs}`);
  const seen = new Set();
  for (const d of documents) {
    if (d._deleted !== false) throw new Error(`pulled document ${d.id} has _deleted=${d._deleted}`);
    const i = Number(d.id.slice(prefix.length));
    if (d.id !== docId(prefix, i) || d.n !== i || d.text !== docBody(i).text) throw new Error(`pulled document ${JSON.stringify(d)} is not what was loaded`);
    seen.add(d.id);
  }
  if (seen.size !== docs) throw new Error(`pull returned ${seen.size} distinct documents, expected ${docs}`);
}

/** The same pull through RxDB: replicateRxCollection (truce-rxdb), memory storage, not live. */
async function pullTruceRxdb(url, docs, limit) {
  const { createRxDatabase } = await import('rxdb');
  const { getRxStorageMemory } = await import('rxdb/plugins/storage-memory');
  const { replicateTruce } = await import('truce-rxdb');
  const db = await createRxDatabase({
    name: `benchclient${process.pid}x${Date.now()}`,
    storage: getRxStorageMemory(),
    multiInstance: false,
    eventReduce: true,
  });
  try {
    const { items } = await db.addCollections({
      items: {
        schema: {
          version: 0,
          primaryKey: 'id',
          type: 'object',
          properties: {
            id: { type: 'string', maxLength: 32 },
            name: { type: 'string' },
            n: { type: 'number' },
            group: { type: 'number' },
            tags: { type: 'array', items: { type: 'string' } },
            text: { type: 'string' },
          },
          required: ['id'],
        },
      },
    });
    const errors = [];
    const started = performance.now();
    const rep = replicateTruce({ collection: items, url, remoteCollection: COLL, primaryKey: 'id', live: false, batchSize: limit, retryTime: 1000 });
    rep.error$.subscribe((e) => errors.push(e?.message ?? String(e)));
    await rep.awaitInitialReplication();
    const elapsed = performance.now() - started;
    await rep.cancel();
    if (errors.length) throw new Error(`RxDB replication errors: ${errors.slice(0, 3).join('; ')}`);
    const count = await items.count().exec();
    if (count !== docs) throw new Error(`RxDB pulled ${count} documents, expected ${docs}`);
    return { elapsed };
  } finally {
    await db.close();
  }
}

/** `count` new documents pushed in `batch`-row requests (assumedMasterState null), one at a time. */
async function pushTruce(url, count, batch) {
  let requests = 0;
  const started = performance.now();
  for (let from = 0; from < count; from += batch) {
    const rows = [];
    for (let i = from; i < Math.min(count, from + batch); i++) {
      rows.push({ assumedMasterState: null, newDocumentState: { id: docId('p', i), ...docBody(i), _deleted: false } });
    }
    const conflicts = await (await postJson(`${url}/v1/c/${COLL}/_push?primaryKey=id`, rows)).json();
    requests++;
    if (!Array.isArray(conflicts) || conflicts.length) throw new Error(`push answered conflicts: ${JSON.stringify(conflicts).slice(0, 300)}`);
  }
  return { elapsed: performance.now() - started, requests };
}

// --------------------------------------------------------- pouchdb-server

function peerVersions() {
  const version = (name) => {
    try {
      return require(`${name}/package.json`).version;
    } catch {
      return '?';
    }
  };
  return { server: version('pouchdb-server'), client: version('pouchdb-core') };
}

async function startPouchServer() {
  const dir = tempDir('pouchdb-server-bench-');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const bin = require.resolve('pouchdb-server/bin/pouchdb-server');
  const { child } = await startProcess(
    'pouchdb-server',
    process.execPath,
    [bin, '--in-memory', '--host', '127.0.0.1', '--port', String(port), '--dir', dir, '--config', join(dir, 'config.json'), '--no-stdout-logs'],
    { cwd: dir, env: { ...process.env }, ready: async () => (await fetch(`${url}/`, { signal: AbortSignal.timeout(1000) })).ok },
  );
  return { url, child };
}

/** The same documents with _bulk_docs, 1,000 per request, 4 in flight. */
async function loadPouch(url, docs) {
  await http(`${url}/${COLL}`, { method: 'PUT' });
  const per = 1000;
  const started = performance.now();
  await pool(Math.ceil(docs / per), 4, async (b) => {
    const list = [];
    for (let i = b * per; i < Math.min(docs, (b + 1) * per); i++) list.push({ _id: docId('d', i), ...docBody(i) });
    const rows = await (await postJson(`${url}/${COLL}/_bulk_docs`, { docs: list })).json();
    const failed = rows.filter((r) => !r.ok);
    if (failed.length) throw new Error(`_bulk_docs failed rows: ${JSON.stringify(failed.slice(0, 3))}`);
  });
  const elapsed = performance.now() - started;
  const info = await (await http(`${url}/${COLL}`)).json();
  if (info.doc_count !== docs) throw new Error(`pouchdb-server holds ${info.doc_count} documents after loading, expected ${docs}`);
  return elapsed;
}

/** A fresh in-memory PouchDB in this process replicates everything from the server. */
async function pullPouch(url, docs, batch) {
  const PouchDB = require('pouchdb-core')
    .plugin(require('pouchdb-adapter-memory'))
    .plugin(require('pouchdb-adapter-http'))
    .plugin(require('pouchdb-replication'));
  const local = new PouchDB(`benchlocal${process.pid}x${Date.now()}`, { adapter: 'memory' });
  const remote = new PouchDB(`${url}/${COLL}`);
  try {
    const started = performance.now();
    const result = await local.replicate.from(remote, { batch_size: batch });
    const elapsed = performance.now() - started;
    if (!result.ok || result.docs_written !== docs) throw new Error(`PouchDB replication: ${JSON.stringify({ ok: result.ok, docs_written: result.docs_written, errors: result.errors })}`);
    const info = await local.info();
    if (info.doc_count !== docs) throw new Error(`local PouchDB holds ${info.doc_count} documents, expected ${docs}`);
    const probe = await local.get(docId('d', docs - 1));
    if (probe.n !== docs - 1 || probe.text !== docBody(docs - 1).text) throw new Error(`replicated document differs: ${JSON.stringify(probe)}`);
    return { elapsed, written: result.docs_written };
  } finally {
    await local.destroy().catch(() => {});
    await remote.close().catch(() => {});
  }
}

// ------------------------------------------------------------------- main

async function main(opts) {
  const out = (line) => console.log(line);
  out(machineLine());
  const truce = locateTruce();
  out(`truce: ${truce.bin} (${truce.version})${truce.stale ? ' WARNING: older than the sources under crates/; rebuild with cargo build --release -p truce-server' : ''}`);

  const result = { truce_pull_docs_s: null, truce_push_docs_s: null, peer_pull_docs_s: null };

  // Truce
  const server = await startTruce(truce.bin);
  try {
    const loadMs = await loadTruce(server.url, opts.docs);
    out(`truce load: ${fmt(opts.docs)} docs via POST /v1/tx (1,000 puts per transaction, 4 in flight) in ${secs(loadMs)} s (${fmt((opts.docs / loadMs) * 1000)} docs/s)`);

    const pull = await pullTruce(server.url, opts.batch);
    checkPulled(pull.documents, opts.docs, 'd');
    result.truce_pull_docs_s = (opts.docs / pull.elapsed) * 1000;
    const per = (ms) => `${(ms / pull.requests).toFixed(2)} ms`;
    out(
      `truce pull (fetch + JSON.parse, limit=${opts.batch}): ${fmt(opts.docs)} docs in ${pull.requests} requests, ${secs(pull.elapsed)} s → ${fmt(result.truce_pull_docs_s)} docs/s` +
        `\n  per request: wait for headers ${per(pull.headers)}, read body ${per(pull.body)} (${fmt(pull.bytes / pull.requests)} bytes), JSON.parse ${per(pull.parse)}, rest ${per(pull.elapsed - pull.headers - pull.body - pull.parse)}`,
    );
    pull.documents.length = 0;

    if (opts.rxdb) {
      const rx = await pullTruceRxdb(server.url, opts.docs, opts.batch);
      result.truce_rxdb_pull_docs_s = (opts.docs / rx.elapsed) * 1000;
      out(`truce pull through RxDB 17 (replicateRxCollection via truce-rxdb, memory storage, batchSize ${opts.batch}): ${fmt(opts.docs)} docs in ${secs(rx.elapsed)} s → ${fmt(result.truce_rxdb_pull_docs_s)} docs/s`);
    }

    const push = await pushTruce(server.url, opts.push, opts.batch);
    result.truce_push_docs_s = (opts.push / push.elapsed) * 1000;
    const info = await (await http(`${server.url}/couch/${COLL}/`)).json();
    if (info.doc_count !== opts.docs + opts.push) throw new Error(`Truce holds ${info.doc_count} documents after the push, expected ${opts.docs + opts.push}`);
    out(`truce push (POST _push, ${opts.batch} rows per request, assumedMasterState null, one at a time): ${fmt(opts.push)} docs in ${push.requests} requests, ${secs(push.elapsed)} s → ${fmt(result.truce_push_docs_s)} docs/s`);
  } finally {
    await endProcess(server.child);
  }

  // pouchdb-server
  if (opts.peer) {
    const v = peerVersions();
    const peer = await startPouchServer();
    try {
      const loadMs = await loadPouch(peer.url, opts.docs);
      out(`pouchdb-server ${v.server} --in-memory load: ${fmt(opts.docs)} docs via _bulk_docs (1,000 per request, 4 in flight) in ${secs(loadMs)} s (${fmt((opts.docs / loadMs) * 1000)} docs/s)`);
      const pull = await pullPouch(peer.url, opts.docs, opts.batch);
      result.peer_pull_docs_s = (opts.docs / pull.elapsed) * 1000;
      out(`pouchdb-server pull (PouchDB ${v.client} memory adapter, replicate.from batch_size ${opts.batch}): ${fmt(pull.written)} docs in ${secs(pull.elapsed)} s → ${fmt(result.peer_pull_docs_s)} docs/s`);
    } finally {
      await endProcess(peer.child);
    }
    const ratio = result.truce_pull_docs_s / result.peer_pull_docs_s;
    result.ratio = ratio;
    out(
      `ratio truce/pouchdb-server (pull): ${ratio.toFixed(2)}×` +
        (result.truce_rxdb_pull_docs_s ? `  (through RxDB: ${(result.truce_rxdb_pull_docs_s / result.peer_pull_docs_s).toFixed(2)}×)` : ''),
    );
  }
  out(`load average at the end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);

  const pullOk = result.truce_pull_docs_s >= 100_000;
  const ratioOk = result.ratio == null ? null : result.ratio >= 5;
  out(`target: pull ≥ 100,000 docs/s: ${pullOk ? 'met' : 'NOT met'}; pull ≥ 5× pouchdb-server: ${ratioOk == null ? 'not measured' : ratioOk ? 'met' : 'NOT met'}`);

  if (opts.json) {
    const round = (x) => (x == null ? null : Math.round(x));
    console.log(
      JSON.stringify({
        bench: 'replication',
        truce_pull_docs_s: round(result.truce_pull_docs_s),
        truce_push_docs_s: round(result.truce_push_docs_s),
        peer: 'pouchdb-server',
        peer_pull_docs_s: round(result.peer_pull_docs_s),
        ratio: result.ratio == null ? null : Math.round(result.ratio * 100) / 100,
      }),
    );
  }
}

const opts = parseArgs(process.argv.slice(2));
const overall = setTimeout(() => {
  console.error(`error: the benchmark did not finish within ${opts.timeout} s; ending started processes`);
  cleanup().finally(() => process.exit(3));
}, opts.timeout * 1000);

main(opts)
  .then(async () => {
    clearTimeout(overall);
    await cleanup();
    process.exit(0);
  })
  .catch(async (err) => {
    clearTimeout(overall);
    console.error(`error: ${err instanceof UsageError ? err.message : (err?.stack ?? err)}`);
    await cleanup();
    process.exit(1);
  });
