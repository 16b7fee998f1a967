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
const DEFAULT_REQUEST_TIMEOUT = 30000; // ms a pull or push may take before it counts as failed
// The checkpoint of a replica that has pulled everything of a collection
// that holds nothing: a pull from it is a pull from the start, which no purge
// can refuse. (rxdb keeps its old checkpoint when a pull answers null.)
const START_CHECKPOINT = Object.freeze({ seq: 0, id: '', from: 0 });

/**
 * A request Truce answered with an error (or that never got an answer).
 * `status` is the HTTP status (0 when there was no answer: network error,
 * timeout); `code` is the stable code of the body's `error` field (API.md),
 * or `'network'`/`'timeout'`; `retryable` says whether the same request can
 * succeed later (429, 503, 5xx, no answer) or never will as sent (other 4xx).
 * RxDB's `error$` carries it as an `RC_PULL`/`RC_PUSH` error whose
 * `parameters.errors[0]` has the same `name` ('TruceError'), `code` and `url`.
 */
export class TruceError extends Error {
  constructor({ method, url, status, code, message, body }) {
    super(`truce: ${method} ${url} ${status ? `answered ${status} ${code}` : `failed (${code})`}: ${message}`);
    this.name = 'TruceError';
    this.method = method;
    this.url = url;
    this.status = status;
    this.code = code;
    this.body = body;
    this.retryable = status === 0 || status === 408 || status === 429 || status >= 500;
  }
}

/** `choice` if it is one `historyPurged` may be or answer, else a TypeError. */
function historyPurgedChoice(choice, how) {
  if (choice === 'resync' || choice === 'cancel') return choice;
  throw new TypeError(`replicateTruce: historyPurged ${how} 'resync' or 'cancel' (or a function answering one), not ${choice}`);
}

/** The TruceError for an answer that is not a 2xx. */
async function errorOf(method, url, res) {
  const text = await res.text().catch(() => '');
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON (a proxy's page, say): its text is the message
  }
  const code = typeof body?.error === 'string' ? body.error : `http_${res.status}`;
  return new TruceError({ method, url, status: res.status, code, message: body?.message ?? text, body });
}

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
    requestTimeout = DEFAULT_REQUEST_TIMEOUT,
    historyPurged = 'resync',
  } = options;
  if (!Number.isInteger(requestTimeout) || requestTimeout < 1) {
    throw new RangeError(`replicateTruce: requestTimeout must be a positive integer of milliseconds, not ${requestTimeout}`);
  }
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_BATCH_SIZE) {
    throw new RangeError(
      `replicateTruce: batchSize must be an integer from 1 to ${MAX_BATCH_SIZE} ` +
        `(a push carries at most ${MAX_BATCH_SIZE} rows), not ${batchSize}`,
    );
  }
  if (typeof historyPurged !== 'function') historyPurgedChoice(historyPurged, 'must be');
  const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
  const base = `${String(url).replace(/\/+$/, '')}/v1/c/${encodeURIComponent(remoteCollection)}`;
  const replicationIdentifier = options.replicationIdentifier ?? `truce:${base}`;

  // One request with the caller's headers (a function may refresh a token
  // per request), answered within `requestTimeout` ms, body included; a
  // non-2xx answer, no answer or a late one is a TruceError, which rxdb
  // reports on error$ and retries after `retryTime`.
  async function request(path, init = {}) {
    const method = init.method ?? 'GET';
    const url = base + path;
    const extra = typeof headers === 'function' ? await headers() : headers;
    const signal = AbortSignal.timeout(requestTimeout);
    try {
      const res = await fetchFn(url, {
        ...init,
        signal,
        headers: { accept: 'application/json', ...init.headers, ...extra },
      });
      if (!res.ok) throw await errorOf(method, url, res);
      const text = await res.text();
      try {
        return JSON.parse(text);
      } catch {
        const message = `the answer is not JSON: ${text.slice(0, 200)}`;
        throw new TruceError({ method, url, status: res.status, code: 'invalid_answer', message, body: null });
      }
    } catch (err) {
      if (err instanceof TruceError) throw err;
      const code = signal.aborted ? 'timeout' : 'network';
      const message = signal.aborted ? `no answer within ${requestTimeout} ms` : String(err?.cause?.message ?? err?.message ?? err);
      throw new TruceError({ method, url, status: 0, code, message, body: null });
    }
  }

  // One page of the collection's changes after `checkpoint` (null: from the start).
  function pullPage(checkpoint, limit) {
    const cp = checkpoint ? `&checkpoint=${encodeURIComponent(JSON.stringify(checkpoint))}` : '';
    return request(`/_pull?limit=${limit}&primaryKey=${pk}${cp}`);
  }

  // After a 410 `history_purged`: the server no longer holds every delete
  // since our checkpoint, so pull the whole collection again, in pages of
  // the replication's own size (a page is refused, not cut, past the
  // server's page memory), and give it to rxdb in one answer, so that its
  // checkpoint moves only once all of it is here. Local documents the server
  // no longer has were deleted there (their tombstones purged): they come
  // back as deletes. Each is the local document with `_deleted: true`, which
  // rxdb applies only to a document whose local state is the server's last
  // one; a document written locally and not yet pushed is kept, and pushed
  // (rxdb's own rule for a pulled change of a document with local changes).
  // The feed is read to its end (an empty page) once more after the local
  // documents are listed: a document pushed meanwhile is on the server, not
  // a delete. (One pushed in the moment between that read and rxdb applying
  // the answer is deleted locally, and back with the stream's next event.)
  async function repullWhole(limit) {
    const documents = [];
    const seen = new Set();
    let checkpoint = null;
    const readToEnd = async () => {
      for (;;) {
        const page = await pullPage(checkpoint, limit);
        if (page.documents.length === 0) return;
        for (const doc of page.documents) {
          seen.add(doc[primaryKey]);
          documents.push(doc);
        }
        checkpoint = page.checkpoint;
      }
    };
    await readToEnd();
    const local = await collection.find().exec(); // live documents only
    await readToEnd();
    for (const doc of local) {
      if (!seen.has(doc.primary)) documents.push({ ...doc.toJSON(), _deleted: true });
    }
    return { documents, checkpoint: checkpoint ?? START_CHECKPOINT };
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
        let body;
        try {
          body = await pullPage(checkpoint, limit);
        } catch (err) {
          if (!(err instanceof TruceError && err.code === 'history_purged' && checkpoint)) throw err;
          const choice = typeof historyPurged === 'function' ? await historyPurged(err) : historyPurged;
          // Another answer is reported on error$, and asked again at the next retry.
          historyPurgedChoice(choice, 'answered');
          if (choice === 'cancel') {
            // Not awaited: cancel() waits for the pull that is running this.
            setTimeout(() => replicationState.cancel(), 0);
            throw err; // reported on error$ (RC_PULL, parameters.errors[0].code)
          }
          return repullWhole(limit);
        }
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
        // The master state of each conflicting row.
        return request(`/_push?primaryKey=${pk}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
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
      if (!res.ok || !res.body) throw await errorOf('GET', url, res);
      onOpen();
      await readEvents(res.body, (type, data) => {
        // The stream delivered something (an event or a keep-alive): only
        // then does the next failure start the backoff over. A server or
        // proxy that answers 200 and hangs up at once keeps backing off.
        backoff = STREAM_BACKOFF_MIN;
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
  // What has arrived of the line being read: its earlier chunks, and the
  // rest of the last chunk. Each chunk is scanned once, so a large event
  // that arrives in many chunks costs its length, not its length squared.
  let partial = [];
  let data = [];
  let type = 'message';
  let pendingCr = false; // the last chunk ended in "\r", maybe half of "\r\n"
  // getReader() rather than `for await`: Safari's streams are not iterable.
  const reader = body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const chunk = decoder.decode(value, { stream: true });
    // An empty chunk (a proxy's, or bytes of a character yet to end) says
    // nothing, not even whether a "\r" before it was half of "\r\n".
    if (chunk === '') continue;
    let start = 0;
    if (pendingCr && chunk.startsWith('\n')) start = 1;
    pendingCr = false;
    const eol = /\r\n|\r|\n/g;
    eol.lastIndex = start;
    let m;
    while ((m = eol.exec(chunk)) !== null) {
      partial.push(chunk.slice(start, m.index));
      start = m.index + m[0].length;
      if (m[0] === '\r' && start === chunk.length) pendingCr = true;
      const line = partial.join('');
      partial = [];
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
    if (start < chunk.length) partial.push(chunk.slice(start));
  }
}
