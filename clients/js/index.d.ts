import type { RxCollection } from 'rxdb';
import type { RxReplicationState } from 'rxdb/plugins/replication';

/**
 * Truce's replication checkpoint: the commit sequence and id of the last
 * document pulled, and where this replica's history began (`from`).
 */
export interface TruceCheckpoint {
  seq: number;
  id: string;
  from?: number;
}

/** What `new TruceError(…)` takes (the module builds them; tests and wrappers may too). */
export interface TruceErrorInit {
  method: string;
  url: string;
  /** The HTTP status; 0 when there was no answer. */
  status: number;
  code: string;
  /** The message's last part, after the method, URL, status and code. */
  message: string;
  /** The parsed error body, when it was JSON. Default: null. */
  body?: unknown;
  /** Default: true for status 0, 408, 429 and 5xx, false otherwise. */
  retryable?: boolean;
}

/**
 * A request Truce answered with an error, or that got no answer. RxDB's
 * `error$` carries it as an `RC_PULL`/`RC_PUSH` error whose
 * `parameters.errors[0]` has the same `name`, `code` and `url`; a failure
 * of the event stream is on `error$` as the TruceError itself.
 */
export class TruceError extends Error {
  constructor(init: TruceErrorInit);
  name: 'TruceError';
  method: string;
  url: string;
  /** The HTTP status; 0 when there was no answer (network error, timeout). */
  status: number;
  /**
   * The body's stable `error` code (API.md), `http_{status}` for a body
   * without one, `'network'` / `'timeout'` when no answer came (for the
   * event stream: it could not connect or broke, or was silent for
   * `streamTimeout`), `'invalid_answer'` for a 2xx that is not JSON (or a
   * stream event that is not a page of documents); an `error` event of the
   * stream gives its own `error` field (`'stream_error'` when it has none).
   */
  code: string;
  /** The parsed error body, when it was JSON. */
  body: unknown;
  /** Whether the same request can succeed later (no answer, 408, 429, 5xx; the event stream's `error` event); false for other 4xx. */
  retryable: boolean;
}

/** What to do when the server no longer holds every delete since the checkpoint (410 `history_purged`). */
export type HistoryPurgedChoice = 'resync' | 'cancel';

export interface ReplicateTruceOptions<RxDocType = any> {
  /** The RxDB collection to replicate. */
  collection: RxCollection<RxDocType, any, any, any>;
  /** The server's base URL, e.g. `http://127.0.0.1:7070` (no `/v1`). */
  url: string;
  /** The collection's name on the server. Default: `collection.name`. */
  remoteCollection?: string;
  /** The field that holds the document id. Default: the schema's primary key. */
  primaryKey?: string;
  /** Identifies this replication's checkpoints in RxDB. Default: `truce:{url}/v1/c/{remoteCollection}`. */
  replicationIdentifier?: string;
  /** Keep following the server's event stream. Default: true. */
  live?: boolean;
  /**
   * Documents per pull request and rows per push request, 1 to 1000 (the
   * server takes at most 1000 rows per push); another value throws a
   * RangeError. Default: 100.
   */
  batchSize?: number;
  /**
   * Extra request headers, e.g. `{ Authorization: 'Bearer …' }` (or a
   * `Headers`, or a list of pairs), or a function returning them, called
   * before every request (to refresh a token).
   */
  headers?: HeadersInit | (() => HeadersInit | Promise<HeadersInit>);
  /** The fetch to use. Default: `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Milliseconds before a failed pull or push is retried. Default: 5000. */
  retryTime?: number;
  /** Passed to RxDB (replicate only in the leader tab). Default: true. */
  waitForLeadership?: boolean;
  /** Passed to RxDB. Default: true. */
  autoStart?: boolean;
  /**
   * Milliseconds of silence on the event stream (no event, no keep-alive)
   * before reconnecting, an integer of at least 20000 (the server sends a
   * keep-alive every 15 s); another value throws a RangeError. Default: 60000.
   */
  streamTimeout?: number;
  /**
   * Milliseconds a pull or push may take, answer body included, before it
   * fails with a TruceError of code `'timeout'` (and is retried). Default: 30000.
   */
  requestTimeout?: number;
  /**
   * On a 410 `history_purged` (this replica was away longer than the
   * collection keeps tombstones): `'resync'` pulls the whole collection
   * again, deleting local documents the server no longer has, except those
   * with local writes not yet pushed; `'cancel'` cancels the replication
   * and reports the error on `error$`, and `awaitInitialReplication()` and
   * `awaitInSync()` reject with it. A function is called with the
   * TruceError and answers one of the two. Default: `'resync'`.
   */
  historyPurged?: HistoryPurgedChoice | ((error: TruceError) => HistoryPurgedChoice | Promise<HistoryPurgedChoice>);
}

/**
 * Replicates `collection` with a Truce server through `/v1/c/{coll}/_pull`,
 * `_push` and `_pull/stream`. Conflicts are resolved by the collection's
 * conflict handler, as with any RxDB replication.
 */
export function replicateTruce<RxDocType = any>(
  options: ReplicateTruceOptions<RxDocType>,
): RxReplicationState<RxDocType, TruceCheckpoint>;
