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

import { setCheckpoint } from 'rxdb';
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
// The server sends a keep-alive comment every 15 s on an idle stream
// (SSE_KEEPALIVE_MS); a streamTimeout near that would reconnect an idle,
// healthy stream over and over, so it must leave 5 s for a slow network.
const MIN_STREAM_TIMEOUT = 20000;
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
  // `retryable` defaults to what `status` says; the event stream passes it
  // for an `error` event, which comes in a 200 answer and is reconnected from.
  constructor({ method, url, status, code, message, body = null, retryable }) {
    super(`truce: ${method} ${url} ${status ? `answered ${status} ${code}` : `failed (${code})`}: ${message}`);
    this.name = 'TruceError';
    this.method = method;
    this.url = url;
    this.status = status;
    this.code = code;
    this.body = body;
    this.retryable = retryable ?? (status === 0 || status === 408 || status === 429 || status >= 500);
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
  if (!Number.isInteger(streamTimeout) || streamTimeout < MIN_STREAM_TIMEOUT) {
    throw new RangeError(
      `replicateTruce: streamTimeout must be an integer of at least ${MIN_STREAM_TIMEOUT} ms ` +
        `(the server sends a keep-alive every 15 s), not ${streamTimeout}`,
    );
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
    const extra = await headersOf(headers);
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

  // A tombstone travels as `{id, _deleted: true}`: the server keeps no
  // fields of a deleted document. RxDB validates a pulled document like any
  // write, so with a schema that requires other fields (and a validating
  // storage) it refuses that, and the pull's checkpoint never moves again.
  // A tombstone of a document held here is therefore that document with
  // `_deleted: true` (as repullWhole sends its deletes); rxdb applies it only
  // if the local state is the server's last one, as any pulled change. One of
  // a document not held here deletes nothing: it is left out, rather than
  // stored as a local tombstone no schema may accept. (A local write of that
  // id later is pushed as new, which a tombstone on the server allows.)
  async function completeTombstones(docs) {
    const ids = docs.filter((d) => d._deleted).map((d) => d[primaryKey]);
    if (ids.length === 0) return docs;
    const held = await collection.findByIds(ids).exec(); // live documents only
    return docs.flatMap((doc) => {
      if (!doc._deleted) return [doc];
      const local = held.get(doc[primaryKey]);
      return local ? [{ ...local.toJSON(), ...doc }] : [];
    });
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
        for (const doc of page.documents) seen.add(doc[primaryKey]);
        documents.push(...(await completeTombstones(page.documents)));
        checkpoint = page.checkpoint;
      }
    };
    await readToEnd();
    const local = await collection.find().exec(); // live documents only
    await readToEnd();
    for (const doc of local) {
      if (!seen.has(doc.primary)) documents.push({ ...doc.toJSON(), _deleted: true });
    }
    if (documents.length === 0) {
      // Nothing to apply on either side. rxdb stores the checkpoint of a
      // page only with its documents, and stops at an empty one: without
      // this, every later resync would start from the purged checkpoint, be
      // refused 410 and pull everything again. The start is safe to store
      // whatever rxdb is still writing: it can only make a later pull longer.
      await setCheckpoint(replicationState.internalReplicationState, 'down', START_CHECKPOINT);
      return { documents, checkpoint: START_CHECKPOINT };
    }
    return { documents, checkpoint: checkpoint ?? START_CHECKPOINT };
  }

  // A push, split in halves (and those in halves, …) while the server
  // refuses it as larger than its body limit (`--max-body-bytes`): rxdb
  // retries a refused push as it is, for ever, and every later change waits
  // behind it. Rows are independent on the server, so the parts may go one
  // after the other; their conflicts are the push's. A single row too large
  // stays an error (reported on error$, retried until changed locally).
  async function pushRows(rows) {
    try {
      return await request(`/_push?primaryKey=${pk}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(rows),
      });
    } catch (err) {
      if (!(err instanceof TruceError && err.code === 'payload_too_large' && rows.length > 1)) throw err;
      const half = Math.ceil(rows.length / 2);
      const first = await pushRows(rows.slice(0, half));
      return first.concat(await pushRows(rows.slice(half)));
    }
  }

  const pk = encodeURIComponent(primaryKey);
  // The live stream: fed by the SSE reader below once replication starts.
  const stream$ = new Subject();

  // Whether a stream event may go to rxdb as it is. An event's checkpoint
  // is stored once it is applied, and the next pull starts there: so an
  // event may only be applied once every change before it is applied too.
  // After the stream (re)connects, the changes made while it was down come
  // only from a pull; after a pause, those made while paused too. `epoch`
  // counts connections and pauses; a pull that started in the current epoch
  // and reached the head of the feed (a page short of `limit`) sets
  // `caughtUp`. Until then an event is turned into a 'RESYNC': its changes
  // are pulled from the stored checkpoint, with whatever came before them.
  // (A resync that a pause cuts short answers rxdb nothing; an event applied
  // after it would have stored a checkpoint past the changes it never
  // pulled, and they were lost for good.)
  let epoch = 0;
  let caughtUp = false;
  const resync = () => {
    // Twice: see the comment at onOpen.
    stream$.next('RESYNC');
    stream$.next('RESYNC');
  };
  // So that awaitInitialReplication() settles when a purged history cancels
  // the replication (rxdb leaves it pending for ever then).
  let refuseInitial;
  const purgeCancelled = new Promise((_, reject) => {
    refuseInitial = reject;
  });
  purgeCancelled.catch(() => {}); // only a rejection someone awaits is reported

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
        const startedIn = epoch;
        let body;
        try {
          body = await pullPage(checkpoint, limit);
        } catch (err) {
          if (!(err instanceof TruceError && err.code === 'history_purged' && checkpoint)) throw err;
          const choice = typeof historyPurged === 'function' ? await historyPurged(err) : historyPurged;
          // Another answer is reported on error$, and asked again at the next retry.
          historyPurgedChoice(choice, 'answered');
          if (choice === 'cancel') {
            refuseInitial(err);
            // Not awaited: cancel() waits for the pull that is running this.
            setTimeout(() => replicationState.cancel(), 0);
            throw err; // reported on error$ (RC_PULL, parameters.errors[0].code)
          }
          const whole = await repullWhole(limit); // read to the feed's end
          if (epoch === startedIn) caughtUp = true;
          return whole;
        }
        // The server answers the checkpoint it was given when nothing
        // follows; keep ours if it ever answers null.
        let last = body.checkpoint ?? checkpoint ?? null;
        const documents = await completeTombstones(body.documents);
        let atHead = body.documents.length < limit;
        // rxdb takes a page short of `limit` for the feed's end: one that
        // lost tombstones above is filled from the next pages first.
        while (!atHead && documents.length < limit) {
          body = await pullPage(last, limit);
          last = body.checkpoint ?? last;
          documents.push(...(await completeTombstones(body.documents)));
          atHead = body.documents.length < limit;
        }
        if (atHead && epoch === startedIn) caughtUp = true;
        return { documents, checkpoint: last };
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
        // The master state of each conflicting row. A tombstone is given
        // the fields of the row's own document (see completeTombstones):
        // rxdb writes the resolved state locally, and validates it.
        const conflicts = await pushRows(body);
        const sent = new Map(rows.map((r) => [r.newDocumentState[primaryKey], r.newDocumentState]));
        return conflicts.map((master) => {
          const mine = master?._deleted ? sent.get(master[primaryKey]) : undefined;
          return mine ? { ...mine, ...master } : master;
        });
      },
    },
  });

  // awaitInitialReplication() and awaitInSync() reject with the TruceError
  // once a purged history has cancelled the replication.
  for (const name of ['awaitInitialReplication', 'awaitInSync']) {
    const wait = replicationState[name].bind(replicationState);
    replicationState[name] = () => Promise.race([wait(), purgeCancelled]);
  }

  if (live) {
    const abort = new AbortController();
    replicationState.onCancel.push(() => abort.abort());
    // Stream events go to rxdb in their order, each once the tombstones
    // in it are completed (which reads the local collection).
    let forwarding = Promise.resolve();
    const forward = (body) => {
      forwarding = forwarding
        .then(async () => {
          // While paused, rxdb would still apply stream events; drop them:
          // start() resyncs from the checkpoint anyway.
          if (replicationState.isStoppedOrPaused()) return;
          if (!caughtUp) return resync();
          const documents = await completeTombstones(body.documents);
          if (replicationState.isStoppedOrPaused()) return;
          if (!caughtUp) return resync();
          if (documents.length > 0) stream$.next({ ...body, documents });
        })
        .catch((err) => {
          // The local collection could not be read (it is closing, say):
          // a pull fetches the event's changes again.
          replicationState.subjects.error.next(err);
          resync();
        });
    };
    // Open the stream once rxdb has started (after leader election), so
    // no event can arrive before rxdb listens.
    const streamUrl = `${base}/_pull/stream?primaryKey=${pk}`;
    replicationState.startPromise.then(() => {
      if (abort.signal.aborted) return;
      // A pause may cut short the pull that would have caught up, or end
      // rxdb's resync without the answer of one that did: what follows
      // waits for a pull after start().
      const paused = replicationState.internalReplicationState?.events.paused.subscribe((isPaused) => {
        if (!isPaused) return;
        epoch++;
        caughtUp = false;
      });
      if (paused) replicationState.onCancel.push(() => paused.unsubscribe());
      followEvents({
        url: streamUrl,
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
          epoch++;
          caughtUp = false;
          resync();
        },
        onEvent: (type, data) => {
          // `event: error` (e.g. this reader fell too far behind): the
          // server ends the stream; the reconnect's RESYNC catches up.
          let body = null;
          try {
            body = JSON.parse(data);
          } catch {
            // said below as it came
          }
          if (type !== 'message') {
            const code = typeof body?.error === 'string' ? body.error : 'stream_error';
            const message = `the event stream ended with an error event: ${data}`;
            throw new TruceError({ method: 'GET', url: streamUrl, status: 200, code, message, body, retryable: true });
          }
          if (!Array.isArray(body?.documents)) {
            const message = `an event is not a page of documents: ${data.slice(0, 200)}`;
            throw new TruceError({ method: 'GET', url: streamUrl, status: 200, code: 'invalid_answer', message, body, retryable: true });
          }
          forward(body);
        },
        onError: (err) => replicationState.subjects.error.next(err),
      });
    });
  }
  return replicationState;
}

/**
 * The caller's extra headers as a plain object: given as one, as a
 * `Headers` or a list of pairs (spread as they were, a `Headers` gave `{}`
 * and its Authorization was silently dropped), or by a function returning
 * any of them.
 */
async function headersOf(headers) {
  const given = typeof headers === 'function' ? await headers() : headers;
  if (given == null) return {};
  if (typeof Headers !== 'undefined' && given instanceof Headers) return Object.fromEntries(given.entries());
  if (Array.isArray(given)) return Object.fromEntries(given);
  return given;
}

/**
 * Follows a Server-Sent Events stream with fetch (Node 20 has no global
 * EventSource, and EventSource cannot send an Authorization header).
 * Reconnects forever with exponential backoff and jitter until `signal`
 * aborts; a connection silent for `timeout` ms is treated as dead. Each
 * failure is given to `onError` as a TruceError: the answer's own, one
 * `onEvent` threw, or code `network` (no answer, or the connection broke)
 * or `timeout` (silent), both of status 0.
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
    let silent = false;
    const feed = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        silent = true;
        conn.abort();
      }, timeout);
    };
    try {
      feed();
      const extra = await headersOf(headers);
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
      if (signal.aborted) {
        // cancelled: nothing to report
      } else if (err instanceof TruceError) {
        onError(err);
      } else if (silent) {
        const message = `the event stream was silent (no event, no keep-alive) for ${timeout} ms`;
        onError(new TruceError({ method: 'GET', url, status: 0, code: 'timeout', message }));
      } else {
        const message = String(err?.cause?.message ?? err?.message ?? err);
        onError(new TruceError({ method: 'GET', url, status: 0, code: 'network', message }));
      }
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
