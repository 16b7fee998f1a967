// 1,000 documents written on each of two clients while they replicate: all
// 2,000 end up on both clients and on the server, identical.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { replicateTruce } from 'truce-rxdb';

import { clientDocs, closeAll, collectErrors, createClient, serverDocs, startServer, waitConverged, within } from '../lib/harness.js';

const PER_CLIENT = 1000;

/** Writes `PER_CLIENT` documents: mostly in small bulk inserts, some one by one. */
async function writeMany(collection, prefix) {
  let i = 0;
  while (i < PER_CLIENT) {
    if (i % 100 < 90) {
      const docs = [];
      for (let j = 0; j < 15 && i < PER_CLIENT && i % 100 < 90; j++, i++) docs.push(makeDoc(prefix, i));
      const res = await collection.bulkInsert(docs);
      assert.equal(res.error.length, 0, JSON.stringify(res.error));
    } else {
      await collection.insert(makeDoc(prefix, i++));
    }
  }
}

function makeDoc(prefix, i) {
  return { id: `${prefix}-${String(i).padStart(5, '0')}`, name: `${prefix} #${i}`, count: i, tags: [prefix, `t${i % 7}`] };
}

test('1,000 documents written on each of two clients while they replicate end up everywhere, identical', { timeout: 90_000 }, async (t) => {
  const server = await startServer();
  const a = await createClient();
  const b = await createClient();
  t.after(async () => {
    await closeAll(a.db, b.db);
    await server.stop();
  });
  const repA = replicateTruce({ collection: a.items, url: server.url, retryTime: 500, batchSize: 200 });
  const repB = replicateTruce({ collection: b.items, url: server.url, retryTime: 500, batchSize: 200 });
  const errors = [...collectErrors(repA, 'A'), ...collectErrors(repB, 'B')];
  await within(15_000, Promise.all([repA.awaitInitialReplication(), repB.awaitInitialReplication()]), 'initial replication');

  const started = Date.now();
  await Promise.all([writeMany(a.items, 'a'), writeMany(b.items, 'b')]);
  const docs = await waitConverged([() => clientDocs(a.items), () => clientDocs(b.items), () => serverDocs(server.url)], {
    timeout: 60_000,
  });
  const elapsed = Date.now() - started;

  assert.equal(docs.length, 2 * PER_CLIENT);
  const expected = [];
  for (const prefix of ['a', 'b']) for (let i = 0; i < PER_CLIENT; i++) expected.push(makeDoc(prefix, i));
  assert.deepEqual(docs, expected);
  assert.deepEqual(errors, [], 'no replication errors');
  t.diagnostic(`2,000 documents written and replicated to both clients in ${elapsed} ms`);
});
