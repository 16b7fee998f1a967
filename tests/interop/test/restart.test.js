// The server is SIGKILLed (by PID) while two clients are writing and
// replicating, then started again on the same data directory and port: both
// clients finish in sync with the server, and nothing is lost — neither what
// the server had acknowledged before the kill nor what the clients wrote while
// it was down.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { replicateTruce } from 'truce-rxdb';

import { clientDocs, closeAll, createClient, serverDocs, startServer, waitConverged, within } from '../lib/harness.js';

const PER_PHASE = 100; // documents per client per phase (before / during / after the outage)

/** Writes `n` documents in small batches, interleaved with the replication. */
async function writeBatches(collection, prefix, from, n) {
  for (let i = from; i < from + n; i += 10) {
    const docs = [];
    for (let j = i; j < Math.min(i + 10, from + n); j++) {
      docs.push({ id: `${prefix}-${String(j).padStart(4, '0')}`, name: `${prefix} ${j}`, count: j });
    }
    const res = await collection.bulkInsert(docs);
    assert.equal(res.error.length, 0, JSON.stringify(res.error));
    await sleep(5);
  }
}

test('SIGKILL mid-sync and restart on the same data and port: both clients finish in sync, nothing lost', { timeout: 90_000 }, async (t) => {
  const server = await startServer();
  const a = await createClient();
  const b = await createClient();
  t.after(async () => {
    await closeAll(a.db, b.db);
    await server.stop();
  });
  const repA = replicateTruce({ collection: a.items, url: server.url, retryTime: 250 });
  const repB = replicateTruce({ collection: b.items, url: server.url, retryTime: 250 });
  await within(15_000, Promise.all([repA.awaitInitialReplication(), repB.awaitInitialReplication()]), 'initial replication');

  // Phase 1: both clients write; kill the server while they are still at it.
  const phase1 = Promise.all([writeBatches(a.items, 'a', 0, PER_PHASE), writeBatches(b.items, 'b', 0, PER_PHASE)]);
  await sleep(40);
  const acknowledged = await serverDocs(server.url); // what the server has answered for, before the kill
  const killedPid = server.pid;
  await server.kill9();
  assert.throws(() => process.kill(killedPid, 0), 'the server process is gone');
  await phase1;

  // Phase 2: the clients keep writing while the server is down.
  await Promise.all([writeBatches(a.items, 'a', PER_PHASE, PER_PHASE), writeBatches(b.items, 'b', PER_PHASE, PER_PHASE)]);
  // And they edit and delete some documents of the other side they have seen.
  const seenByA = (await clientDocs(a.items)).filter((d) => d.id.startsWith('b-'));
  for (const d of seenByA.slice(0, 5)) {
    await (await a.items.findOne(d.id).exec()).incrementalPatch({ name: `${d.name} (edited by A offline)` });
  }

  await server.restart(); // same port, same data directory

  // Phase 3: writes after the restart.
  await Promise.all([writeBatches(a.items, 'a', 2 * PER_PHASE, PER_PHASE), writeBatches(b.items, 'b', 2 * PER_PHASE, PER_PHASE)]);

  const docs = await waitConverged([() => clientDocs(a.items), () => clientDocs(b.items), () => serverDocs(server.url)], {
    timeout: 40_000,
  });
  assert.equal(docs.length, 6 * PER_PHASE, 'every document written by either client is everywhere');
  for (const prefix of ['a', 'b']) {
    for (let j = 0; j < 3 * PER_PHASE; j++) {
      assert.ok(docs.some((d) => d.id === `${prefix}-${String(j).padStart(4, '0')}`), `${prefix}-${j} present`);
    }
  }
  for (const d of seenByA.slice(0, 5)) {
    assert.equal(docs.find((x) => x.id === d.id).name, `${d.name} (edited by A offline)`);
  }
  // Everything the server had acknowledged before the kill survived it.
  const after = new Map(docs.map((d) => [d.id, d]));
  for (const d of acknowledged) assert.ok(after.has(d.id), `${d.id} survived the SIGKILL`);
});
