// A forced replication conflict, resolved by a custom conflict handler, first
// through truce-rxdb and then through rxdb's unmodified replicateCouchDB.
//
// Client A goes offline (replication paused, and its fetch fails), the same
// document is changed on the server (a plain HTTP PUT) and on A; A comes back;
// the server answers A's push with its own state; A's handler merges (union of
// tags, max of count, both sides' other fields); A, B and the server converge
// to the merged document.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { replicateCouchDB } from 'rxdb/plugins/replication-couchdb';
import { deepEqual } from 'rxdb/plugins/utils';
import { replicateTruce } from 'truce-rxdb';

import {
  clientDocs,
  closeAll,
  collectErrors,
  createClient,
  serverDocs,
  serverGet,
  serverPut,
  startServer,
  waitConverged,
  waitUntil,
  within,
} from '../lib/harness.js';

/** What both sides wrote, merged: a deterministic function of the two states. */
const mergingHandler = (resolved) => ({
  isEqual(a, b) {
    // Compare content only (rxdb hands over states without _meta/_rev).
    return deepEqual(strip(a), strip(b));
  },
  resolve({ newDocumentState: mine, realMasterState: theirs }) {
    resolved.push({ mine, theirs });
    return {
      ...theirs,
      ...mine,
      by: [mine.by, theirs.by].filter(Boolean).sort().join('+'),
      tags: [...new Set([...(theirs.tags ?? []), ...(mine.tags ?? [])])].sort(),
      count: Math.max(mine.count ?? 0, theirs.count ?? 0),
      _deleted: false,
    };
  },
});

function strip(doc) {
  const { _meta, _rev, _attachments, ...rest } = doc;
  return { ...rest, _deleted: !!rest._deleted };
}

/**
 * A fetch that can be switched off, to make a client really offline: the
 * longpoll/stream of the live replication cannot deliver while it is off.
 */
function switchableFetch() {
  const f = async (input, init) => {
    if (!f.online) throw new TypeError('fetch failed (offline for the test)');
    return fetch(input, init);
  };
  f.online = true;
  return f;
}

const BASE = { id: 'doc1', name: 'shared', count: 1, tags: ['base'] };
const SERVER_VERSION = { name: 'shared', count: 7, tags: ['base', 'server'], by: 'server' };
const CLIENT_VERSION = { count: 3, tags: ['base', 'client'], by: 'clientA' };
const MERGED = { id: 'doc1', name: 'shared', count: 7, tags: ['base', 'client', 'server'], by: 'clientA+server' };

async function conflictScenario(t, replicate) {
  const server = await startServer();
  const resolvedA = [];
  const a = await createClient({ conflictHandler: mergingHandler(resolvedA) });
  const b = await createClient({ conflictHandler: mergingHandler([]) });
  t.after(async () => {
    await closeAll(a.db, b.db);
    await server.stop();
  });
  const fetchA = switchableFetch();
  const repA = replicate(a.items, server.url, fetchA);
  const repB = replicate(b.items, server.url, fetch);
  collectErrors(repA, 'A'); // A's errors while offline are expected
  const errorsB = collectErrors(repB, 'B');
  await within(15_000, Promise.all([repA.awaitInitialReplication(), repB.awaitInitialReplication()]), 'initial replication');
  const all = [() => clientDocs(a.items), () => clientDocs(b.items), () => serverDocs(server.url)];

  await a.items.insert(BASE);
  await waitConverged(all, { expect: [BASE] });

  // A goes offline.
  await repA.pause();
  fetchA.online = false;

  // The server's copy changes (through the native API, on its current revision).
  const current = await serverGet(server.url, 'items', 'doc1');
  await serverPut(server.url, 'items', 'doc1', { ...SERVER_VERSION, _rev: current._rev });
  // B sees the server's change; A does not.
  await waitUntil(async () => (await clientDocs(b.items))[0]?.count === 7, { message: 'B to see the server write' });
  // A changes the same document while offline.
  await (await a.items.findOne('doc1').exec()).incrementalPatch(CLIENT_VERSION);
  assert.deepEqual(await clientDocs(a.items), [{ ...BASE, ...CLIENT_VERSION }]);

  // A comes back: its push conflicts, the handler merges, everyone converges.
  fetchA.online = true;
  await repA.start();
  await waitConverged(all, { expect: [MERGED], timeout: 20_000 });

  assert.ok(resolvedA.length >= 1, 'A resolved a conflict');
  assert.equal(resolvedA[0].theirs.count, 7, "the server answered with its own state");
  assert.equal(resolvedA[0].mine.count, 3);
  const doc = await serverGet(server.url, 'items', 'doc1');
  assert.deepEqual(doc.tags, MERGED.tags);
  assert.deepEqual(errorsB, [], 'no replication errors on B');
}

test('forced conflict through truce-rxdb: the handler merges and all three copies converge', { timeout: 60_000 }, (t) =>
  conflictScenario(t, (collection, url, fetchFn) =>
    replicateTruce({ collection, url, fetch: fetchFn, retryTime: 300 }),
  ),
);

test('forced conflict through the unmodified replicateCouchDB plugin', { timeout: 60_000 }, (t) =>
  conflictScenario(t, (collection, url, fetchFn) =>
    replicateCouchDB({
      replicationIdentifier: `couch:${url}`,
      collection,
      url: `${url}/couch/items/`,
      fetch: fetchFn,
      live: true,
      retryTime: 300,
      pull: { batchSize: 50 },
      push: { batchSize: 50 },
    }),
  ),
);
