// truce-rxdb: replicate an RxDB collection with a Truce server.
//
// Truce speaks RxDB's replication protocol (see API.md, "Change feed and
// replication"):
//   GET  /v1/c/{coll}/_pull?checkpoint=JSON&limit=N&primaryKey=F
//        -> {"documents": [...], "checkpoint": {"seq", "id"} | null}
//   POST /v1/c/{coll}/_push?primaryKey=F   [{assumedMasterState, newDocumentState}]
//        -> [current master state of every row that conflicted]
//   GET  /v1/c/{coll}/_pull/stream?primaryKey=F   (Server-Sent Events)
//        data: {"documents": [...], "checkpoint": {...}}
// This module turns those three routes into the pull/push handlers and the
// pull.stream$ that rxdb's `replicateRxCollection` wants, so an application
// writes one call instead of three handlers.

import { Subject } from 'rxjs';
import { replicateRxCollection } from 'rxdb/plugins/replication';

/** Defaults; every one can be overridden through the options. */
const DEFAULT_BATCH_SIZE = 100;
// The server takes at most 1000 rows per push (TX_OPS_MAX) and answers a
// larger one 413, which rxdb would retry forever: replication would stall as
// soon as more than this many changes were waiting.
const MAX_BATCH_SIZE = 1000;
const DEFAULT_RETRY_TIME = 5000; // ms between failed pull/push attempts (rxdb's default)
const STREAM_BACKOFF_MIN = 250; // ms before the first reconnect of the event stream
const STREAM_BACKOFF_MAX = 10000; // ms, the longest wait between reconnects
const DEFAULT_STREAM_TIMEOUT = 60000; // ms of silence (no event, no keep-alive) before reconnecting

/**
 * Starts replicating `collection` with the Truce server at `url`.
 * Returns rxdb's RxReplicationState (await `awaitInitialReplication()`,
 * watch `error$`, `pause()`, `start()`, `cancel()` as usual).
 *
 * @param {import('./index.d.ts').ReplicateTruceOptions} options
 */
export function replicateTruce(options) {
  if (!options?.collection || !options.url) {
    throw new TypeError('replicateTruce: `collection` and `url` are required');
  }
  const {
    collection,
    url,
    remoteCollection = collection.name,
    primaryKey = collection.schema.primaryPath,
    live = true,
    batchSize = DEFAULT_BATCH_SIZE,
    headers,
    retryTime = DEFAULT_RETRY_TIME,
    waitForLeadership,
    autoStart,
    streamTimeout = DEFAULT_STREAM_TIMEOUT,
  } = options;
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_BATCH_SIZE) {
    throw new RangeError(
      `replicateTruce: batchSize must be an integer from 1 to ${MAX_BATCH_SIZE} ` +
        `(a push carries at most ${MAX_BATCH_SIZE} rows), not ${batchSize}`,
    );
  }
  const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
  const base = `${String(url).replace(/\/+$/, '')}/v1/c/${encodeURIComponent(remoteCollection)}`;
  const replicationIdentifier = options.replicationIdentifier ?? `truce:${base}`;

  // One request with the caller's headers (a function may refresh a token
  // per request); a non-2xx answer is an error, which rxdb reports on
  // error$ and retries after `retryTime`.
  async function request(path, init = {}) {
    const extra = typeof headers === 'function' ? await headers() : headers;
    const res = await fetchFn(base + path, {
      ...init,
      headers: { accept: 'application/json', ...init.headers, ...extra },
    });
    if (!res.ok) {
      const text = await res.text().catch(() => '');
      throw new Error(`truce: ${init.method ?? 'GET'} ${base + path} answered ${res.status}: ${text}`);
    }
    return res;
  }

  const pk = encodeURIComponent(primaryKey);
  // The live stream: fed by the SSE reader below once replication starts.
  const stream$ = new Subject();

  const replicationState = replicateRxCollection({
    collection,
    replicationIdentifier,
    live,
    retryTime,
    waitForLeadership,
    autoStart,
    pull: {
      batchSize,
      stream$: stream$.asObservable(),
      async handler(checkpoint, limit) {
        const cp = checkpoint ? `&checkpoint=${encodeURIComponent(JSON.stringify(checkpoint))}` : '';
        const res = await request(`/_pull?limit=${limit}&primaryKey=${pk}${cp}`);
        const body = await res.json();
        // The server answers the checkpoint it was given when nothing
        // follows; keep ours if it ever answers null.
        return { documents: body.documents, checkpoint: body.checkpoint ?? checkpoint ?? null };
      },
    },
    push: {
      batchSize,
      async handler(rows) {
        // rxdb leaves assumedMasterState undefined for a document the
        // client believes is new; the protocol says null ("must not exist").
        const body = rows.map((r) => ({
          assumedMasterState: r.assumedMasterState ?? null,
          newDocumentState: r.newDocumentState,
        }));
        const res = await request(`/_push?primaryKey=${pk}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
        return res.json(); // the master state of each conflicting row
      },
    },
  });

  if (live) {
    const abort = new AbortController();
    replicationState.onCancel.push(() => abort.abort());
    // Open the stream once rxdb has started (after leader election), so
    // no event can arrive before rxdb listens.
    replicationState.startPromise.then(() => {
      if (abort.signal.aborted) return;
      followEvents({
        url: `${base}/_pull/stream?primaryKey=${pk}`,
        fetchFn,
        headers,
        signal: abort.signal,
        timeout: streamTimeout,
        // Events missed while disconnected are recovered by a resync from
        // the last checkpoint, which rxdb runs when it sees 'RESYNC'.
        // Sent twice on purpose: rxdb 17's downstream queue drops a 'RESYNC'
        // that comes right after an ordinary event in the same drain (it
        // shifts it out of the queue, then breaks without putting it back;
        // replication-protocol/downstream.js, addNewTask). Events that arrived
        // before a disconnect and are still waiting behind a running push
        // hit exactly that case. The second 'RESYNC' survives it, and is
        // skipped cheaply when the first one already ran.
        onOpen: () => {
          stream$.next('RESYNC');
          stream$.next('RESYNC');
        },
        onEvent: (type, data) => {
          // `event: error` (e.g. this reader fell too far behind): the
          // server ends the stream; the reconnect's RESYNC catches up. Its
          // data is said as it came, JSON or not.
          const body = type === 'message' ? JSON.parse(data) : null;
          if (!Array.isArray(body?.documents)) {
            throw new Error(`truce: event stream ${type}: ${data}`);
          }
          // While paused, rxdb would still apply stream events; drop them:
          // start() resyncs from the checkpoint anyway.
          if (replicationState.isPaused()) return;
          stream$.next(body);
        },
        onError: (err) => replicationState.subjects.error.next(err),
      });
    });
  }
  return replicationState;
}

/**
 * Follows a Server-Sent Events stream with fetch (Node 20 has no global
 * EventSource, and EventSource cannot send an Authorization header).
 * Reconnects forever with exponential backoff and jitter until `signal`
 * aborts; a connection silent for `timeout` ms is treated as dead.
 */
async function followEvents({ url, fetchFn, headers, signal, timeout, onOpen, onEvent, onError }) {
  let backoff = STREAM_BACKOFF_MIN;
  while (!signal.aborted) {
    // Each connection gets its own controller so the silence watchdog can
    // end it without ending the whole stream.
    const conn = new AbortController();
    const stop = () => conn.abort();
    signal.addEventListener('abort', stop);
    let watchdog;
    const feed = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => conn.abort(new Error('truce: event stream silent')), timeout);
    };
    try {
      feed();
      const extra = typeof headers === 'function' ? await headers() : headers;
      const res = await fetchFn(url, {
        headers: { accept: 'text/event-stream', 'cache-control': 'no-cache', ...extra },
        signal: conn.signal,
      });
      if (!res.ok || !res.body) {
        throw new Error(`truce: GET ${url} answered ${res.status}`);
      }
      backoff = STREAM_BACKOFF_MIN; // connected: the next failure starts over
      onOpen();
      await readEvents(res.body, (type, data) => {
        feed();
        if (type !== null) onEvent(type, data);
      });
      // The server closed the stream (e.g. shutting down): reconnect.
    } catch (err) {
      if (!signal.aborted) onError(err);
    } finally {
      clearTimeout(watchdog);
      signal.removeEventListener('abort', stop);
      conn.abort(); // release the connection whatever ended this one
    }
    if (signal.aborted) return;
    const wait = backoff / 2 + Math.random() * (backoff / 2);
    backoff = Math.min(backoff * 2, STREAM_BACKOFF_MAX);
    await new Promise((resolve) => {
      const t = setTimeout(done, wait);
      function done() {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        resolve();
      }
      signal.addEventListener('abort', done);
    });
  }
}

/**
 * Parses an SSE body (the `text/event-stream` format of the HTML spec, the
 * parts Truce uses): `data:` lines of one event are joined with "\n" and
 * delivered with the event's type (`event:`, default "message") at the blank
 * line that ends it; lines starting with `:` are keep-alive comments
 * (delivered as type `null`, so the caller sees the stream is alive);
 * `id:` and `retry:` are ignored.
 */
async function readEvents(body, deliver) {
  const decoder = new TextDecoder();
  let buffer = '';
  let data = [];
  let type = 'message';
  // getReader() rather than `for await`: Safari's streams are not iterable.
  const reader = body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      // A lone "\r" at the end of a chunk may be the first half of "\r\n".
      if (buffer[nl] === '\r' && nl === buffer.length - 1) break;
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (line === '') {
        const joined = data.join('\n');
        if (joined !== '') deliver(type, joined); // the spec skips empty events
        data = [];
        type = 'message';
      } else if (colon === 0) {
        deliver(null, value);
      } else if (field === 'data') {
        data.push(value);
      } else if (field === 'event') {
        type = value || 'message';
      }
    }
  }
}
