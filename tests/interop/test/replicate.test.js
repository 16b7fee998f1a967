// Two RxDB clients replicate one collection: inserts, updates and deletes
// made on either side reach the other (and the server). First both through
// truce-rxdb, then one through truce-rxdb and one through rxdb's unmodified
// replicateCouchDB plugin (the `/couch/{coll}/` subset), on the same data.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { replicateCouchDB } from 'rxdb/plugins/replication-couchdb';
import { replicateTruce } from 'truce-rxdb';

import { clientDocs, closeAll, collectErrors, createClient, serverDocs, startServer, waitConverged, within } from '../lib/harness.js';

const viaTruce = (collection, url) => replicateTruce({ collection, url, retryTime: 500 });
const viaCouch = (collection, url) =>
  replicateCouchDB({
    replicationIdentifier: `couch:${url}`,
    collection,
    url: `${url}/couch/items/`,
    live: true,
    retryTime: 500,
    pull: { batchSize: 50 },
    push: { batchSize: 50 },
  });

test('two truce-rxdb clients: inserts, updates and deletes on either side reach the other', { timeout: 60_000 }, (t) =>
  scenario(t, viaTruce, viaTruce),
);

test('a truce-rxdb client and a replicateCouchDB client on the same collection', { timeout: 60_000 }, (t) =>
  scenario(t, viaTruce, viaCouch),
);

test('with API keys: truce-rxdb sends the Authorization header on pull, push and the stream', { timeout: 60_000 }, (t) =>
  scenario(
    t,
    (collection, url, server) =>
      replicateTruce({ collection, url, retryTime: 500, headers: { Authorization: `Bearer ${server.keys[0]}` } }),
    // A function is called before every request (e.g. to refresh a token);
    // it may answer a `Headers`, which a spread would have made `{}` (the
    // key silently dropped, every request refused 401).
    (collection, url, server) =>
      replicateTruce({
        collection,
        url,
        retryTime: 500,
        headers: async () => new Headers({ Authorization: `Bearer ${server.keys[1]}` }),
      }),
    { keys: ['write', 'write'] },
  ),
);

test('a batchSize the server cannot take is refused at once, not retried forever', async (t) => {
  const client = await createClient();
  t.after(() => closeAll(client.db));
  // A push of more than 1000 rows is answered 413, which rxdb would retry
  // every retryTime: replication would stall once that many changes waited.
  for (const batchSize of [0, 1001, 2.5, '100']) {
    assert.throws(
      () => replicateTruce({ collection: client.items, url: 'http://127.0.0.1:9', batchSize, autoStart: false }),
      (error) => error instanceof RangeError && /batchSize/.test(error.message),
      `batchSize ${batchSize}`,
    );
  }
  const state = replicateTruce({ collection: client.items, url: 'http://127.0.0.1:9', batchSize: 1000, autoStart: false });
  await state.cancel();
});

test("a streamTimeout the server's keep-alives cannot meet is refused at once", async (t) => {
  const client = await createClient();
  t.after(() => closeAll(client.db));
  // The server sends a keep-alive every 15 s: a shorter timeout would
  // reconnect an idle, healthy stream again and again.
  for (const streamTimeout of [0, 1000, 15_000, 19_999, 2.5, '60000']) {
    assert.throws(
      () => replicateTruce({ collection: client.items, url: 'http://127.0.0.1:9', streamTimeout, autoStart: false }),
      (error) => error instanceof RangeError && /streamTimeout/.test(error.message),
      `streamTimeout ${streamTimeout}`,
    );
  }
  const state = replicateTruce({ collection: client.items, url: 'http://127.0.0.1:9', streamTimeout: 20_000, autoStart: false });
  await state.cancel();
});

async function scenario(t, replicateA, replicateB, serverOptions = {}) {
  const server = await startServer(serverOptions);
  const a = await createClient();
  const b = await createClient();
  t.after(async () => {
    await closeAll(a.db, b.db);
    await server.stop();
  });

  const repA = replicateA(a.items, server.url, server);
  const repB = replicateB(b.items, server.url, server);
  const auth = server.keys.length ? { authorization: `Bearer ${server.keys[0]}` } : {};
  if (server.keys.length) {
    // The keys are really required: the same requests without one are refused.
    for (const path of ['_pull?primaryKey=id', '_pull/stream?primaryKey=id']) {
      const res = await fetch(`${server.url}/v1/c/items/${path}`);
      await res.body?.cancel();
      assert.equal(res.status, 401, `${path} without a key`);
    }
  }
  const errors = [...collectErrors(repA, 'A'), ...collectErrors(repB, 'B')];
  await within(15_000, Promise.all([repA.awaitInitialReplication(), repB.awaitInitialReplication()]), 'initial replication');

  const all = [() => clientDocs(a.items), () => clientDocs(b.items), () => serverDocs(server.url, 'items', auth)];

  // Inserts on both sides.
  await a.items.bulkInsert([
    { id: 'a1', name: 'from A', count: 1 },
    { id: 'a2', name: 'also from A', count: 2 },
  ]);
  await b.items.insert({ id: 'b1', name: 'from B', count: 10, tags: ['x'] });
  await waitConverged(all, {
    expect: [
      { id: 'a1', name: 'from A', count: 1 },
      { id: 'a2', name: 'also from A', count: 2 },
      { id: 'b1', name: 'from B', count: 10, tags: ['x'] },
    ],
  });

  // Updates: B edits A's document, A edits B's.
  const a1onB = await b.items.findOne('a1').exec();
  await a1onB.incrementalPatch({ name: 'edited by B', count: 100 });
  const b1onA = await a.items.findOne('b1').exec();
  await b1onA.incrementalModify((d) => ({ ...d, tags: [...d.tags, 'y'] }));
  await waitConverged(all, {
    expect: [
      { id: 'a1', name: 'edited by B', count: 100 },
      { id: 'a2', name: 'also from A', count: 2 },
      { id: 'b1', name: 'from B', count: 10, tags: ['x', 'y'] },
    ],
  });

  // Deletes on both sides.
  await (await a.items.findOne('b1').exec()).remove();
  await (await b.items.findOne('a2').exec()).remove();
  await waitConverged(all, { expect: [{ id: 'a1', name: 'edited by B', count: 100 }] });

  // A deleted id can be written again (over the tombstone) and reaches the other side.
  await b.items.insert({ id: 'a2', name: 'back again' });
  await waitConverged(all, {
    expect: [
      { id: 'a1', name: 'edited by B', count: 100 },
      { id: 'a2', name: 'back again' },
    ],
  });

  assert.deepEqual(errors, [], 'no replication errors');
}
