// A replica that stayed away longer than the server keeps tombstones
// (`tombstones.keep_seconds`) is answered 410 `history_purged` on its next
// pull. truce-rxdb then pulls the whole collection again: the deletes it
// missed land locally, its own unpushed writes are kept and pushed, and the
// replication goes on — or, with `historyPurged: 'cancel'`, it stops and says
// why. Also here: the rest of truce-rxdb's failure handling against a real
// server (typed errors, request timeouts, an event stream read in tiny
// chunks, the stream's backoff).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { replicateTruce } from 'truce-rxdb';

import {
  clientDocs,
  closeAll,
  collectErrors,
  createClient,
  serverDocs,
  serverPut,
  startServer,
  waitConverged,
  waitUntil,
  within,
} from '../lib/harness.js';

async function send(url, method, path, body) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

/** The checkpoint of a whole pull from the start, as a replica that is up to date holds it. */
async function currentCheckpoint(url) {
  let checkpoint = null;
  for (;;) {
    const cp = checkpoint ? `&checkpoint=${encodeURIComponent(JSON.stringify(checkpoint))}` : '';
    const page = await send(url, 'GET', `/v1/c/items/_pull?primaryKey=id&limit=1000${cp}`);
    if (page.documents.length === 0) return checkpoint;
    checkpoint = page.checkpoint;
  }
}

/** A server and a client, both ended when the test is. */
async function serverAndClient(t) {
  const server = await startServer();
  const client = await createClient();
  t.after(async () => {
    await closeAll(client.db);
    await server.stop();
  });
  return { server, client };
}

/**
 * A server whose `items` keep tombstones 1 s, and a client that replicated
 * its four documents, then stopped replicating (its checkpoint stays in RxDB).
 */
async function replicaThatWentAway(t) {
  const { server, client } = await serverAndClient(t);
  await send(server.url, 'PUT', '/v1/c/items/_config', { tombstones: { keep_seconds: 1 } });
  for (const n of [1, 2, 3, 4]) await serverPut(server.url, 'items', `d${n}`, { name: `server ${n}`, count: n });
  const first = replicateTruce({ collection: client.items, url: server.url, retryTime: 250 });
  const errors = collectErrors(first, 'first');
  await within(15_000, first.awaitInitialReplication(), 'initial replication');
  await waitConverged([() => clientDocs(client.items), () => serverDocs(server.url)]);
  assert.equal((await clientDocs(client.items)).length, 4, errors.join('\n'));
  const checkpoint = await currentCheckpoint(server.url);
  await first.cancel();
  return { server, client, checkpoint };
}

/** Waits until the server refuses `checkpoint` (a delete after it was purged). */
async function waitPurged(url, checkpoint) {
  const path = `/v1/c/items/_pull?primaryKey=id&checkpoint=${encodeURIComponent(JSON.stringify(checkpoint))}`;
  await waitUntil(async () => (await fetch(`${url}${path}`)).status === 410, {
    timeout: 20_000,
    message: 'the tombstone purge (a 410 for the old checkpoint)',
  });
}

test('history purged while away: pulled again whole, server deletes land, local writes are kept', { timeout: 90_000 }, async (t) => {
  const { server, client, checkpoint } = await replicaThatWentAway(t);

  // While the client is away: the server deletes d1 and d4 and changes d2,
  // another client adds d5; this client edits d3 and d4 and adds d6,
  // unpushed (d4's edit meets the server's delete of it).
  await send(server.url, 'DELETE', '/v1/c/items/d1?version=-1');
  await send(server.url, 'DELETE', '/v1/c/items/d4?version=-1');
  await send(server.url, 'PATCH', '/v1/c/items/d2', { $set: { name: 'server 2, changed', count: 20 } });
  await serverPut(server.url, 'items', 'd5', { name: 'server 5', count: 5 });
  await (await client.items.findOne('d3').exec()).incrementalPatch({ name: 'edited offline' });
  await (await client.items.findOne('d4').exec()).incrementalPatch({ name: 'edited offline' });
  await client.items.insert({ id: 'd6', name: 'added offline', count: 6 });
  await waitPurged(server.url, checkpoint);

  // Pushes are held back until the pull from the start has read the feed to
  // its end, so that the local writes meet the deletes it sends.
  let pullingWhole = false;
  let holdPushes = true;
  const pulls = [];
  const fetchFn = async (url, init) => {
    const target = String(url);
    if (target.includes('/_pull?')) pulls.push(new URL(target).searchParams.get('limit'));
    if (target.includes('/_push') && holdPushes) throw new TypeError('push held back by the test');
    const res = await fetch(url, init);
    if (target.includes('/_pull?') && res.ok) {
      if (!target.includes('checkpoint=')) pullingWhole = true;
      else if (pullingWhole && (await res.clone().json()).documents.length === 0) holdPushes = false;
    }
    return res;
  };
  // Pages of 2: the whole pull takes several, at the replication's size.
  const again = replicateTruce({ collection: client.items, url: server.url, retryTime: 250, batchSize: 2, fetch: fetchFn });
  const reported = [];
  again.error$.subscribe((err) => reported.push(err));
  await within(30_000, again.awaitInitialReplication(), 'replication after the purge');
  const expected = [
    { id: 'd2', name: 'server 2, changed', count: 20 },
    { id: 'd3', name: 'edited offline', count: 3 },
    { id: 'd4', name: 'edited offline', count: 4 },
    { id: 'd5', name: 'server 5', count: 5 },
    { id: 'd6', name: 'added offline', count: 6 },
  ];
  await waitConverged([() => clientDocs(client.items), () => serverDocs(server.url)], { expect: expected });
  assert.equal(holdPushes, false, 'the pull from the start read the feed to its end');
  // In pages of the replication's size: a page of more could pass what the
  // server holds in memory for one, and be refused for ever.
  assert.ok(pulls.length > 3, `${pulls}`);
  assert.deepEqual(new Set(pulls), new Set(['2']));
  const unexpected = reported.filter((e) => !JSON.stringify(e.parameters ?? {}).includes('held back by the test'));
  assert.deepEqual(unexpected.map((e) => e.message), [], 'a purged history is recovered from, not reported as a failure');

  // And it goes on replicating live: a server delete arrives through the stream.
  await send(server.url, 'DELETE', '/v1/c/items/d5?version=-1');
  await waitConverged([() => clientDocs(client.items)], { expect: expected.filter((d) => d.id !== 'd5') });
});

test('history purged of every document: the local copy empties, and the next resync is not refused again', { timeout: 60_000 }, async (t) => {
  const { server, client, checkpoint } = await replicaThatWentAway(t);
  for (const n of [1, 2, 3, 4]) await send(server.url, 'DELETE', `/v1/c/items/d${n}?version=-1`);
  await waitPurged(server.url, checkpoint);
  let told = 0;
  const again = replicateTruce({
    collection: client.items,
    url: server.url,
    retryTime: 250,
    historyPurged: () => {
      told++;
      return 'resync';
    },
  });
  await within(30_000, again.awaitInitialReplication(), 'replication after the purge');
  await waitConverged([() => clientDocs(client.items)], { expect: [] });
  // The checkpoint it holds now is the start of an empty collection, not
  // the purged one: resyncing again is not refused.
  again.reSync();
  await sleep(1_000);
  await within(10_000, again.awaitInSync(), 'in sync after the resync');
  assert.equal(told, 1, 'refused once, not at every resync');
  await serverPut(server.url, 'items', 'd9', { name: 'after', count: 9 });
  await waitConverged([() => clientDocs(client.items)], { expect: [{ id: 'd9', name: 'after', count: 9 }] });
});

test('history purged when the server and the local copy are both empty: the start is stored, and a resync is not refused again', { timeout: 60_000 }, async (t) => {
  const { server, client } = await serverAndClient(t);
  await send(server.url, 'PUT', '/v1/c/items/_config', { tombstones: { keep_seconds: 1 } });
  await serverPut(server.url, 'items', 'd1', { name: 'soon gone' });
  const first = replicateTruce({ collection: client.items, url: server.url, retryTime: 250 });
  await within(15_000, first.awaitInitialReplication(), 'initial replication');
  await waitConverged([() => clientDocs(client.items)], { expect: [{ id: 'd1', name: 'soon gone' }] });
  // Deleted on the server while replicating: the local copy empties too.
  await send(server.url, 'DELETE', '/v1/c/items/d1?version=-1');
  await waitConverged([() => clientDocs(client.items)], { expect: [] });
  await within(10_000, first.awaitInSync(), 'in sync');
  const checkpoint = await currentCheckpoint(server.url);
  await first.cancel();
  // While away: a document written and deleted, its tombstone purged.
  await serverPut(server.url, 'items', 'd2', { name: 'brief' });
  await send(server.url, 'DELETE', '/v1/c/items/d2?version=-1');
  await waitPurged(server.url, checkpoint);

  let told = 0;
  let pulled = 0;
  const fetchFn = async (url, init) => {
    const res = await fetch(url, init);
    if (String(url).includes('/_pull?')) pulled++;
    return res;
  };
  const again = replicateTruce({
    collection: client.items,
    url: server.url,
    retryTime: 250,
    fetch: fetchFn,
    historyPurged: () => {
      told++;
      return 'resync';
    },
  });
  await within(30_000, again.awaitInitialReplication(), 'replication after the purge');
  await within(10_000, again.awaitInSync(), 'in sync after the purge');
  const before = pulled;
  again.reSync();
  await waitUntil(() => pulled > before, { message: 'the pull of the resync' });
  await within(10_000, again.awaitInSync(), 'in sync after the resync');
  assert.equal(told, 1, 'refused once, not at every resync');
  assert.deepEqual(await clientDocs(client.items), []);
});

test("history purged with historyPurged: a function answering 'cancel' stops and says why", { timeout: 60_000 }, async (t) => {
  const { server, client, checkpoint } = await replicaThatWentAway(t);
  await send(server.url, 'DELETE', '/v1/c/items/d1?version=-1');
  await waitPurged(server.url, checkpoint);

  const told = [];
  const again = replicateTruce({
    collection: client.items,
    url: server.url,
    retryTime: 250,
    historyPurged: (err) => {
      told.push(err);
      return 'cancel';
    },
  });
  const reported = [];
  again.error$.subscribe((err) => reported.push(err));
  // The initial replication never completes: awaiting it says why, rather
  // than waiting for ever.
  await assert.rejects(
    within(10_000, again.awaitInitialReplication(), 'awaitInitialReplication'),
    (err) => err.name === 'TruceError' && err.code === 'history_purged',
  );
  await assert.rejects(within(10_000, again.awaitInSync(), 'awaitInSync'), (err) => err.code === 'history_purged');
  await waitUntil(() => again.isStopped(), { message: 'the replication cancelled' });
  assert.equal(told.length, 1);
  assert.equal(told[0].name, 'TruceError');
  assert.equal(told[0].status, 410);
  assert.equal(told[0].code, 'history_purged');
  assert.equal(told[0].retryable, false);
  assert.ok(
    reported.some((e) => e.code === 'RC_PULL' && e.parameters?.errors?.[0]?.code === 'history_purged'),
    `error$ says why: ${reported.map((e) => e.message).join('; ')}`,
  );
  // Nothing was applied: d1 is still here, as it was.
  assert.deepEqual(
    (await clientDocs(client.items)).map((d) => d.id),
    ['d1', 'd2', 'd3', 'd4'],
  );
});

test('a pull that gets no answer fails after requestTimeout with a TruceError, and is retried', { timeout: 30_000 }, async (t) => {
  const { server, client } = await serverAndClient(t);
  let hang = true;
  // A fetch whose pulls hang (until aborted) while `hang` is set.
  const fetchFn = (url, init) => {
    if (hang && String(url).includes('/_pull?')) {
      return new Promise((_, reject) => {
        init.signal.addEventListener('abort', () => reject(init.signal.reason));
      });
    }
    return fetch(url, init);
  };
  const rep = replicateTruce({ collection: client.items, url: server.url, retryTime: 100, requestTimeout: 300, fetch: fetchFn, live: false });
  const reported = [];
  rep.error$.subscribe((err) => reported.push(err));
  await waitUntil(() => reported.length > 0, { timeout: 10_000, message: 'an error for the hanging pull' });
  const cause = reported[0].parameters?.errors?.[0];
  assert.equal(cause?.name, 'TruceError', JSON.stringify(cause));
  assert.equal(cause.code, 'timeout');
  hang = false;
  await serverPut(server.url, 'items', 'x', { name: 'after the hang' });
  await within(10_000, rep.awaitInitialReplication(), 'the retried pull');
  assert.deepEqual(await clientDocs(client.items), [{ id: 'x', name: 'after the hang' }]);
});

test('the event stream with CRLF line ends and many data lines per event, read in chunks of 0 to 7 bytes, delivers every change, multi-byte text and large events included', { timeout: 60_000 }, async (t) => {
  const { server, client } = await serverAndClient(t);
  // Every stream body with its line ends made "\r\n" (the server writes
  // "\n"; JSON has no raw line end inside an event), its events' data over
  // many lines, cut into tiny pieces,
  // empty ones among them, splitting lines, "\r\n" and UTF-8 sequences
  // wherever they fall.
  let streams = 0;
  const fetchFn = async (url, init) => {
    const res = await fetch(url, init);
    if (!String(url).includes('/_pull/stream')) return res;
    streams++;
    const reader = res.body.getReader();
    let seed = 7;
    const body = new ReadableStream({
      async pull(controller) {
        const { value, done } = await reader.read();
        if (done) return controller.close();
        // Each event's data also split over many `data:` lines (at `,"`,
        // which only JSON's structure holds: in a string it is `,\"`),
        // which the reader must join with "\n" into one event.
        const crlf = [];
        let previous = 0;
        for (const byte of value) {
          if (byte === 0x22 && previous === 0x2c) crlf.push(0x0d, 0x0a, ...new TextEncoder().encode('data: '));
          if (byte === 0x0a) crlf.push(0x0d);
          crlf.push(byte);
          previous = byte;
        }
        const bytes = Uint8Array.from(crlf);
        for (let i = 0; i < bytes.length; ) {
          seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
          const n = (seed >>> 16) % 8; // 0: an empty chunk
          controller.enqueue(bytes.subarray(i, i + n));
          i += n;
        }
      },
      cancel: (why) => reader.cancel(why),
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  const rep = replicateTruce({ collection: client.items, url: server.url, retryTime: 250, fetch: fetchFn });
  const errors = collectErrors(rep, 'chunked');
  await within(15_000, rep.awaitInitialReplication(), 'initial replication');
  await waitUntil(() => streams > 0, { message: 'the event stream opened' });
  await sleep(200); // the stream is listening before the writes start

  const large = 'é✓🚀 '.repeat(40_000); // ~440 KB of multi-byte text in one event
  const expected = [];
  for (let i = 0; i < 30; i++) {
    const doc = { name: i === 10 ? large : `naïve ☕ ${i}\r\nline two`, count: i };
    await serverPut(server.url, 'items', `s${String(i).padStart(2, '0')}`, doc);
    expected.push({ id: `s${String(i).padStart(2, '0')}`, ...doc });
  }
  await waitConverged([() => clientDocs(client.items)], { expect: expected });
  // A misread event would have been an error (and a reconnect that pulls).
  assert.deepEqual(errors, []);
  assert.equal(streams, 1, 'the stream never had to reconnect');
});

test('a stream answered 200 and closed at once is retried with a growing backoff', { timeout: 30_000 }, async (t) => {
  const { server, client } = await serverAndClient(t);
  const opened = [];
  const fetchFn = (url, init) => {
    if (!String(url).includes('/_pull/stream')) return fetch(url, init);
    opened.push(Date.now());
    return Promise.resolve(new Response('', { status: 200, headers: { 'content-type': 'text/event-stream' } }));
  };
  const rep = replicateTruce({ collection: client.items, url: server.url, retryTime: 250, fetch: fetchFn });
  await within(15_000, rep.awaitInitialReplication(), 'initial replication');
  await waitUntil(() => opened.length > 0, { message: 'the event stream opened' });
  const start = opened[0];
  await sleep(2_500);
  const within2500 = opened.filter((t0) => t0 - start < 2_500).length;
  await rep.cancel();
  // Waits of 125-250, 250-500, 500-1000, 1000-2000 ms: at most 5 tries in
  // 2.5 s. A backoff that starts over at every 200 tries every 125-250 ms.
  assert.ok(within2500 >= 2 && within2500 <= 5, `${within2500} connections in 2.5 s: ${opened.map((x) => x - start)}`);
});
