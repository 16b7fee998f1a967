// truce-rxdb where things go wrong: the event stream reconnects while pulls
// fail and the replication is paused, a push larger than the server's body
// limit, tombstones meeting a schema with required fields and a validating
// storage, and the event stream's failures as typed errors.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createRxDatabase } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { wrappedValidateAjvStorage } from 'rxdb/plugins/validate-ajv';
import { replicateTruce } from 'truce-rxdb';

import {
  clientDocs,
  closeAll,
  collectErrors,
  createClient,
  itemSchema,
  serverDocs,
  serverGet,
  serverPut,
  startServer,
  waitConverged,
  waitUntil,
  within,
} from '../lib/harness.js';

async function serverDelete(url, id) {
  const res = await fetch(`${url}/v1/c/items/${encodeURIComponent(id)}?version=-1`, { method: 'DELETE' });
  const text = await res.text();
  if (!res.ok) throw new Error(`DELETE ${id} answered ${res.status}: ${text}`);
}

/** A 429 as the server answers it when busy. */
const busy = () =>
  new Response(JSON.stringify({ error: 'overloaded', message: 'busy (the test)' }), {
    status: 429,
    headers: { 'content-type': 'application/json' },
  });

/**
 * A fetch whose pulls can be made to fail (429) and whose event stream the
 * test can break, hold back before reconnecting, and watch.
 */
function controlledFetch() {
  const ctl = {
    failPulls: false,
    refused: 0, // pulls answered 429
    streams: 0, // stream connections asked for
    hold: null, // a promise the next stream connection waits for
    seen: '', // every byte the streams delivered, as text
    breakStream: null,
  };
  ctl.fetch = async (url, init) => {
    const target = String(url);
    if (target.includes('/_pull/stream')) {
      ctl.streams++;
      if (ctl.hold) await ctl.hold;
      const res = await fetch(url, init);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const body = new ReadableStream({
        start(controller) {
          ctl.breakStream = () => controller.error(new TypeError('connection broken by the test'));
        },
        async pull(controller) {
          const { value, done } = await reader.read();
          if (done) return controller.close();
          ctl.seen += decoder.decode(value, { stream: true });
          controller.enqueue(value);
        },
        cancel: (why) => reader.cancel(why),
      });
      return new Response(body, { status: res.status, headers: res.headers });
    }
    if (ctl.failPulls && target.includes('/_pull?')) {
      ctl.refused++;
      return busy();
    }
    return fetch(url, init);
  };
  return ctl;
}

test('the stream reconnects while pulls fail, an event arrives, the replication is paused: after start() nothing is missing', { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  const client = await createClient();
  t.after(async () => {
    await closeAll(client.db);
    await server.stop();
  });
  const ctl = controlledFetch();
  const rep = replicateTruce({ collection: client.items, url: server.url, retryTime: 100, fetch: ctl.fetch });
  await within(15_000, rep.awaitInitialReplication(), 'initial replication');
  // The stream is live: a server write comes through it.
  await serverPut(server.url, 'items', 'd0', { name: 'first' });
  await waitUntil(() => ctl.seen.includes('"d0"'), { message: 'd0 on the stream' });

  // The stream breaks; A is written while it is down; it reconnects, and
  // the pull of its RESYNC is refused (the server is busy).
  let release;
  ctl.hold = new Promise((resolve) => {
    release = resolve;
  });
  ctl.failPulls = true;
  ctl.breakStream();
  await waitUntil(() => ctl.streams === 2, { message: 'the reconnect' });
  await serverPut(server.url, 'items', 'A', { name: 'written while the stream was down' });
  ctl.hold = null;
  release();
  await waitUntil(() => ctl.refused >= 2, { message: 'the RESYNC pull refused' });

  // B comes through the new connection, and reaches rxdb's queue (behind
  // the RESYNC that keeps failing).
  const stats = rep.internalReplicationState.stats.down;
  const emitted = stats.masterChangeStreamEmit;
  await serverPut(server.url, 'items', 'B', { name: 'after the reconnect' });
  await waitUntil(() => ctl.seen.includes('"B"') && stats.masterChangeStreamEmit > emitted, { message: "B's event in rxdb" });

  // Paused, the failing RESYNC gives up; started again, with the server
  // answering: A must arrive, not only B.
  await rep.pause();
  // Until rxdb's downstream queue has run what it holds: the RESYNC that
  // gives up once it sees the pause, and what is queued behind it.
  await within(5_000, rep.internalReplicationState.streamQueue.down, 'the downstream queue');
  ctl.failPulls = false;
  await rep.start();
  await waitConverged([() => clientDocs(client.items)], {
    timeout: 5_000,
    expect: [
      { id: 'A', name: 'written while the stream was down' },
      { id: 'B', name: 'after the reconnect' },
      { id: 'd0', name: 'first' },
    ],
  });
});

test("a push larger than the server's body limit is split until it fits, and later writes still go", { timeout: 60_000 }, async (t) => {
  const server = await startServer({ args: ['--max-body-bytes', '200000'] });
  const client = await createClient();
  t.after(async () => {
    await closeAll(client.db);
    await server.stop();
  });
  const rep = replicateTruce({ collection: client.items, url: server.url, retryTime: 200 });
  const errors = collectErrors(rep, 'client');
  await within(15_000, rep.awaitInitialReplication(), 'initial replication');
  // 100 documents of 3 KB: one push of the default batchSize is ~310 KB.
  const filler = 'x'.repeat(3000);
  const docs = Array.from({ length: 100 }, (_, i) => ({ id: `big${String(i).padStart(3, '0')}`, name: filler, count: i }));
  await client.items.bulkInsert(docs);
  await waitUntil(async () => (await serverDocs(server.url)).length === 100, {
    timeout: 15_000,
    message: () => `the 100 documents on the server; errors: ${errors.slice(0, 3).join('; ')}`,
  });
  await client.items.insert({ id: 'small', name: 'after' });
  await waitUntil(async () => (await serverGet(server.url, 'items', 'small'))?.name === 'after', {
    timeout: 10_000,
    message: 'the later small write on the server',
  });
  assert.deepEqual(errors, [], 'a push that can be split is not an error');
});

test('tombstones with a schema of required fields and a validating storage: pulled, streamed and answered to a push, they delete', { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  const db = await createRxDatabase({
    name: `strict${process.pid}x${Date.now()}`,
    storage: wrappedValidateAjvStorage({ storage: getRxStorageMemory() }),
    multiInstance: false,
  });
  const { items } = await db.addCollections({ items: { schema: { ...itemSchema, required: ['id', 'name'] } } });
  t.after(async () => {
    await closeAll(db);
    await server.stop();
  });
  // A document deleted before this replica ever saw it: its tombstone
  // deletes nothing here.
  await serverPut(server.url, 'items', 'gone', { name: 'never seen' });
  await serverDelete(server.url, 'gone');
  for (const n of [1, 2, 3, 4]) await serverPut(server.url, 'items', `k${n}`, { name: `k${n}` });

  const ctl = controlledFetch();
  const rep = replicateTruce({ collection: items, url: server.url, retryTime: 100, fetch: ctl.fetch });
  const errors = collectErrors(rep, 'strict');
  await within(15_000, rep.awaitInitialReplication(), 'initial replication');
  const local = () => clientDocs(items);
  const keep = (...ids) => ids.map((id) => ({ id, name: id }));
  await waitConverged([local], { expect: keep('k1', 'k2', 'k3', 'k4') });

  // Through the stream.
  await serverDelete(server.url, 'k1');
  await waitConverged([local], { expect: keep('k2', 'k3', 'k4') });

  // Through a pull.
  await rep.pause();
  await serverDelete(server.url, 'k2');
  await rep.start();
  await waitConverged([local], { expect: keep('k3', 'k4') });

  // As a push's conflict: edited here while the server deletes it; the
  // pulls are refused meanwhile, so the push meets the delete first.
  await rep.pause();
  ctl.failPulls = true;
  await serverDelete(server.url, 'k3');
  await (await items.findOne('k3').exec()).incrementalPatch({ count: 33 });
  await rep.start();
  // The default conflict handler takes the server's state: deleted.
  await waitConverged([local], { expect: keep('k4') });
  ctl.failPulls = false;
  await waitConverged([local, () => serverDocs(server.url)], { expect: keep('k4') });
  assert.deepEqual(
    errors.filter((e) => !e.includes('busy (the test)')),
    [],
    'no pull or write refused',
  );
});

test('the event stream reports its failures on error$ as TruceErrors with stable codes', { timeout: 30_000 }, async (t) => {
  const server = await startServer();
  const client = await createClient();
  t.after(async () => {
    await closeAll(client.db);
    await server.stop();
  });
  // The stream's first connection fails, the second ends with an `error`
  // event, the third sends an event that is not a page; then the real one.
  let streams = 0;
  const sse = (text) => new Response(text, { status: 200, headers: { 'content-type': 'text/event-stream' } });
  const fetchFn = async (url, init) => {
    if (!String(url).includes('/_pull/stream')) return fetch(url, init);
    streams++;
    if (streams === 1) throw new TypeError('fetch failed');
    if (streams === 2) return sse('event: error\ndata: {"error":"overloaded"}\n\n');
    if (streams === 3) return sse('data: {"not": "a page"}\n\n');
    return fetch(url, init);
  };
  const rep = replicateTruce({ collection: client.items, url: server.url, retryTime: 250, fetch: fetchFn });
  const reported = [];
  rep.error$.subscribe((err) => reported.push(err));
  await within(15_000, rep.awaitInitialReplication(), 'initial replication');
  await waitUntil(() => streams >= 4, { message: 'the fourth stream connection' });
  assert.deepEqual(
    reported.map((e) => [e.name, e.code, e.status, e.retryable]),
    [
      ['TruceError', 'network', 0, true],
      ['TruceError', 'overloaded', 200, true],
      ['TruceError', 'invalid_answer', 200, true],
    ],
  );
  assert.ok(reported.every((e) => e.url.includes('/_pull/stream')));
  // And it goes on: a server write arrives.
  await serverPut(server.url, 'items', 'x', { name: 'live' });
  await waitConverged([() => clientDocs(client.items)], { expect: [{ id: 'x', name: 'live' }] });
});
