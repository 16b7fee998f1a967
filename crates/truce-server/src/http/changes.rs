//! The change feed: `GET /v1/c/{coll}/_changes` and `GET /v1/_changes`, as one
//! answer (`feed=normal`), a long poll (`feed=longpoll`) or Server-Sent Events
//! (`feed=sse`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::Event;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use truce::budget::Holding;
use truce::record::StoredDoc;
use truce::{Change, Db};

use super::AppState;
use super::error::ApiError;
use super::extract::{LAST_EVENT_ID, Params, PathParams, Standing, Waited, authorize};
use crate::keys::{Principal, Role};

/// Default and largest long-poll wait, in ms (`/couch` has its own default).
const LONGPOLL_TIMEOUT_MS_DEFAULT: u64 = 30_000;
pub(super) const LONGPOLL_TIMEOUT_MS_MAX: u64 = 120_000;
/// Changes per answer unless `limit` says otherwise.
const CHANGES_LIMIT_DEFAULT: usize = 1000;
/// The `feed` parameter as documented. Deliberately not an enum in the schema:
/// `longpoll` and `sse` answers are meant to stay open, and a fuzzer that picked
/// them from the document would only measure its own timeout.
const FEED_DESCRIPTION: &str = "`normal` (default), `longpoll` (waits up to `timeout` ms, at most 120000, \
                                for a change) or `sse` (Server-Sent Events, one per change)";
const LAST_EVENT_ID_DESCRIPTION: &str = "`feed=sse` only: the `id` of the last event received (what a reconnecting \
                                         EventSource sends); the stream goes on after it, over `since`";

/// The `from` parameter of the feeds.
const EPOCH_DESCRIPTION: &str = "The database's history the reader's position is in: the `epoch` of its last \
    answer. A position of another history (the database was restored from a backup since) is 410 \
    `history_purged`; without it nothing is checked.";
const FROM_DESCRIPTION: &str = "Where this reader's history began: the `from` of the answer to its read from 0 \
                                (or `now`). With it, a `since` that could miss a delete whose tombstone was \
                                purged is refused (410); without it, not checked";

/// The 410 of every feed route.
pub const HISTORY_PURGED_DESCRIPTION: &str = "`history_purged`: a tombstone after this position, of a delete made \
                                              after the reader's history began (`from`), was purged \
                                              (`tombstones.keep_seconds` in a collection's `_config`; for the feed of \
                                              every collection, any collection's), so the reader may have missed \
                                              it; read the feed again from 0";

/// A page's document as the feeds show it (`doc`): as `GET` answers it.
trait FeedDoc {
    /// Appends document `id`'s JSON.
    fn write_doc(&self, id: &str, out: &mut Vec<u8>) -> truce::Result<()>;
}

/// Decoded: the tests' reference for the bytes the stored form writes (every
/// feed reads its pages as stored).
#[cfg(test)]
impl FeedDoc for truce::Document {
    fn write_doc(&self, _id: &str, out: &mut Vec<u8>) -> truce::Result<()> {
        self.write_json(out).map_err(super::unencodable)
    }
}

/// From its stored bytes, never decoded (the feeds read their pages so).
impl FeedDoc for StoredDoc {
    fn write_doc(&self, id: &str, out: &mut Vec<u8>) -> truce::Result<()> {
        Ok(self.write_json(id, out)?)
    }
}

/// Appends one change as the feeds show it, `{"seq", "id", "rev",
/// "deleted"}` with `"c"` (the feed of every collection) and `"doc"` when
/// asked for, its document written straight from the page (not copied into
/// values of its own first).
fn write_change<D: FeedDoc>(
    change: &Change<D>,
    with_collection: bool,
    out: &mut Vec<u8>,
) -> truce::Result<()> {
    out.extend_from_slice(b"{\"seq\":");
    serde_json::to_writer(&mut *out, &change.seq).map_err(super::unencodable)?;
    out.extend_from_slice(b",\"id\":");
    serde_json::to_writer(&mut *out, &change.id).map_err(super::unencodable)?;
    out.extend_from_slice(b",\"rev\":\"");
    out.extend_from_slice(change.rev.text().as_str().as_bytes());
    out.extend_from_slice(if change.deleted {
        b"\",\"deleted\":true"
    } else {
        b"\",\"deleted\":false"
    });
    if with_collection {
        out.extend_from_slice(b",\"c\":");
        serde_json::to_writer(&mut *out, &change.collection).map_err(super::unencodable)?;
    }
    if let Some(doc) = &change.doc {
        out.extend_from_slice(b",\"doc\":");
        doc.write_doc(&change.id, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// A page's answer, `{"results": [...], "last_seq", "from", "epoch"}`
/// (`from` when known; `epoch`, the database's history, `Db::epoch`), as
/// bytes.
fn page_answer<D: FeedDoc>(
    page: &truce::ChangesPage<D>,
    with_collection: bool,
    epoch: u64,
) -> truce::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"results\":[");
    for (i, change) in page.changes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_change(change, with_collection, &mut out)?;
    }
    out.extend_from_slice(b"],\"last_seq\":");
    out.extend_from_slice(page.last_seq.to_string().as_bytes());
    if let Some(from) = page.from {
        out.extend_from_slice(b",\"from\":");
        out.extend_from_slice(from.to_string().as_bytes());
    }
    out.extend_from_slice(b",\"epoch\":");
    out.extend_from_slice(epoch.to_string().as_bytes());
    out.push(b'}');
    Ok(out)
}

struct FeedRequest {
    collection: Option<String>,
    since: u64,
    /// Where the reader's history began (`from`), when it says or reads from
    /// now (`engine/purge.rs`).
    from: Option<u64>,
    limit: usize,
    include_docs: bool,
    /// How long a long poll waits for a change (read, and so checked, on
    /// every feed, as every other parameter is).
    timeout_ms: u64,
    /// The database's history (`Db::epoch`), which each page names.
    epoch: u64,
}

impl FeedRequest {
    /// A subscription from where the request stands, its pages read as
    /// stored.
    fn subscribe(&self, db: &Db) -> truce::Result<truce::Subscription<StoredDoc>> {
        Ok(db
            .subscribe_from(
                self.collection.as_deref(),
                self.since,
                self.from,
                self.include_docs,
            )?
            .stored())
    }
}

/// The `Last-Event-ID` a reconnecting `EventSource` sends: the `id:` of the
/// last event it received, which this feed sets to the `seq` of a commit whose
/// every change it has sent. `None` when absent.
/// Sent twice, it is refused: whichever were taken, the other position may
/// be the reader's.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = super::extract::single_header(headers, &LAST_EVENT_ID, "invalid_query")? else {
        return Ok(None);
    };
    value.trim().parse::<u64>().ok().map(Some).ok_or_else(|| {
        ApiError::BadRequest(
            "invalid_query",
            "Last-Event-ID must be the id of an event this feed sent (a sequence number)".into(),
        )
    })
}

fn feed_request(
    db: &Db,
    collection: Option<String>,
    params: &Params,
    resume_after: Option<u64>,
) -> Result<FeedRequest, ApiError> {
    params.only(&[
        "since",
        "from",
        "limit",
        "include_docs",
        "feed",
        "timeout",
        "epoch",
    ])?;
    let epoch = super::same_history(db, params.parse::<u64>("epoch", "invalid_query")?)?;
    // The URL's `since` is checked even when a reconnecting stream's last
    // event overrides it: a malformed URL is refused the same way every time.
    let given = params.parse::<u64>("from", "invalid_query")?;
    let (since, from) = match params.0.get("since").map(String::as_str) {
        None => (0, given),
        Some("now") => {
            // A reader from now holds nothing from before it.
            let now = db.durable_seq();
            (now, given.or(Some(now)))
        }
        Some(_) => (params.parse::<u64>("since", "invalid_query")?.unwrap_or(0), given),
    };
    // A reconnecting stream goes on from its last event, whatever `since` its
    // URL had (`now` would skip what committed while it was away). Where its
    // history began is not in the event id: unless the URL says, it is
    // checked by its position alone (start 0), as a `_pull` checkpoint
    // without `from` is, never as a reader starting now.
    let (since, from) = match resume_after {
        Some(after) => (after, given.or(Some(0))),
        None => (since, from),
    };
    let limit = params
        .parse::<usize>("limit", "invalid_query")?
        .unwrap_or(CHANGES_LIMIT_DEFAULT);

    Ok(FeedRequest {
        collection,
        since,
        from,
        limit,
        include_docs: params.flag("include_docs")?,
        timeout_ms: params
            .parse::<u64>("timeout", "invalid_query")?
            .unwrap_or(LONGPOLL_TIMEOUT_MS_DEFAULT)
            .min(LONGPOLL_TIMEOUT_MS_MAX),
        epoch,
    })
}

async fn feed(
    state: Arc<AppState>,
    who: &Principal,
    collection: Option<String>,
    params: Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let kind = params.0.get("feed").map(String::as_str).unwrap_or("normal");
    // Only an event stream has event ids; the other feeds resume by `since`.
    let resume_after = if kind == "sse" {
        last_event_id(headers)?
    } else {
        None
    };
    let request = feed_request(&state.db, collection, &params, resume_after)?;
    let with_collection = request.collection.is_none();
    let standing = || Standing::of(&state, who, headers, request.collection.as_deref());
    // Pages are written as JSON off the HTTP thread: one of large documents
    // takes a while, and every connection of that thread would wait for it.
    let page = match kind {
        "normal" => {
            let db = state.db.clone();
            let answer = super::blocking(move || {
                let page = db.changes_from_stored(
                    request.collection.as_deref(),
                    request.since,
                    request.from,
                    request.limit,
                    request.include_docs,
                )?;
                page_answer(&page, with_collection, request.epoch)
            })
            .await?;
            return Ok(super::json_bytes(answer));
        }
        "longpoll" => {
            let timeout = request.timeout_ms;
            let mut sub = request.subscribe(&state.db)?.page_limit(request.limit)?;
            standing()?
                .long_poll(&mut sub, Duration::from_millis(timeout))
                .await?
        }
        "sse" => {
            if params.0.contains_key("limit") {
                // A stream has no answer for it to bound.
                return Err(ApiError::BadRequest(
                    "invalid_query",
                    "limit bounds an answer of feed=normal or longpoll; a feed=sse stream sends every change"
                        .into(),
                ));
            }
            let standing = standing()?;
            let place = super::stream_permit(&state)?;
            let sub = request.subscribe(&state.db)?;
            return Ok(super::event_stream(
                sse_events(sub, with_collection, standing),
                place,
            ));
        }
        other => {
            return Err(ApiError::BadRequest(
                "invalid_query",
                format!("feed={other}: use normal, longpoll or sse"),
            ));
        }
    };
    let epoch = request.epoch;
    let answer = super::blocking(move || page_answer(&page, with_collection, epoch)).await?;
    Ok(super::json_bytes(answer))
}

/// One SSE event per change, until the engine fails or the caller's key may
/// no longer read the feed (`Standing`). The last change of each
/// commit carries `id:` its sequence, so that the `Last-Event-ID` a client
/// reconnects with always names a commit it has every change of (the changes
/// of one transaction share one sequence, and a connection can drop between
/// them); a page never splits a commit.
fn sse_events(
    sub: truce::Subscription<StoredDoc>,
    with_collection: bool,
    standing: Standing,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let standing = Arc::new(standing);
    // The last page's hold on the memory of the pages being read goes with
    // the state: given back when the next page is asked for, once its events
    // were taken by the connection, not when they were built.
    stream::unfold(Some((sub, Holding::default())), move |state| {
        let standing = Arc::clone(&standing);
        async move {
            let (mut sub, held) = state?;
            drop(held);
            let Waited::Page(page) = standing.next_page(&mut sub).await else {
                return None;
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    let event = super::replication::error_event(json!({"error": e.code()}));
                    return Some((stream::iter(vec![Ok(event)]), None));
                }
            };
            let changes = &page.changes;
            let mut events: Vec<Result<Event, Infallible>> = Vec::with_capacity(changes.len());
            for (i, c) in changes.iter().enumerate() {
                let mut data = Vec::new();
                // A stored document that cannot be written (its record
                // damaged) ends the stream as a page that cannot be read does.
                let data = match write_change(c, with_collection, &mut data)
                    .and_then(|()| super::event_text(data))
                {
                    Ok(data) => data,
                    Err(e) => {
                        events.push(Ok(super::replication::error_event(json!({"error": e.code()}))));
                        return Some((stream::iter(events), None));
                    }
                };
                let event = Event::default().data(data);
                let ends_commit = changes.get(i + 1).is_none_or(|next| next.seq != c.seq);
                events.push(Ok(if ends_commit {
                    event.id(c.seq.to_string())
                } else {
                    event
                }));
            }
            Some((stream::iter(events), Some((sub, page.memory))))
        }
    })
    .flatten()
}

/// Changes of one collection.
#[utoipa::path(get, path = "/v1/c/{coll}/_changes", tag = "changes",
    params(("coll" = String, Path), ("since" = Option<String>, Query, pattern = "^(0*[0-9]{1,19}|now)$"),
           ("from" = Option<u64>, Query, description = FROM_DESCRIPTION),
           ("epoch" = Option<u64>, Query, description = EPOCH_DESCRIPTION),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 10000),
           ("include_docs" = Option<bool>, Query), ("feed" = Option<String>, Query, description = FEED_DESCRIPTION), ("timeout" = Option<u64>, Query),
           ("Last-Event-ID" = Option<u64>, Header, description = LAST_EVENT_ID_DESCRIPTION)),
    responses((status = 200, description = "Changes after `since`, in commit order", body = super::openapi::ChangesPage),
              (status = 410, description = HISTORY_PURGED_DESCRIPTION, body = super::openapi::ErrorBody)))]
pub async fn collection_changes(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    PathParams(coll): PathParams<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, Some(&coll))?;
    truce::doc::validate_collection_name(&coll)?;
    feed(state, &who, Some(coll), params, &headers).await
}

/// Changes of every collection (each result names its collection in `c`).
#[utoipa::path(get, path = "/v1/_changes", tag = "changes",
    params(("since" = Option<String>, Query, pattern = "^(0*[0-9]{1,19}|now)$"),
           ("from" = Option<u64>, Query, description = FROM_DESCRIPTION),
           ("epoch" = Option<u64>, Query, description = EPOCH_DESCRIPTION),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 10000), ("include_docs" = Option<bool>, Query),
           ("feed" = Option<String>, Query, description = FEED_DESCRIPTION), ("timeout" = Option<u64>, Query),
           ("Last-Event-ID" = Option<u64>, Header, description = LAST_EVENT_ID_DESCRIPTION)),
    responses((status = 200, description = "Changes after `since`, in commit order", body = super::openapi::ChangesPage),
              (status = 410, description = HISTORY_PURGED_DESCRIPTION, body = super::openapi::ErrorBody)))]
pub async fn all_changes(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&who, Role::Read, None)?;
    if who.collections.is_some() {
        return Err(ApiError::Forbidden(
            "a key limited to collections cannot follow every collection".into(),
        ));
    }
    feed(state, &who, None, params, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed page written as bytes is the JSON the feed documents: each
    /// change's keys, `c` on the feed of every collection, the document as
    /// `Document::to_json` shows it, `from` when known; the same bytes from
    /// the documents as stored (what the feeds read) as from their values.
    #[test]
    fn a_page_is_written_as_the_feed_shows_it() {
        let body = json!({"x": [1, "é"], "Z\"": {"a": null}, "": 0})
            .as_object()
            .cloned()
            .unwrap();
        let hash = truce::doc::content_hash(&truce::doc::canonical_bytes(&body), false);
        let stored_rev = truce::doc::Rev { version: 2, hash };
        let doc = truce::Document {
            id: "\"a\n".into(),
            meta: truce::doc::Meta {
                rev: stored_rev,
                seq: 9,
                ts_ms: 1,
                deleted: false,
            },
            body,
        };
        let change = |doc: Option<truce::Document>, deleted| Change {
            seq: 9,
            collection: "c1".into(),
            id: "\"a\n".into(),
            rev: stored_rev,
            deleted,
            doc,
        };
        let page = truce::ChangesPage {
            changes: vec![change(Some(doc.clone()), false), change(None, true)],
            last_seq: 9,
            from: Some(3),
            memory: Default::default(),
        };
        let rev = doc.meta.rev.to_string();
        for with_collection in [true, false] {
            let stored = truce::ChangesPage {
                changes: crate::http::stored_changes(&page.changes),
                last_seq: page.last_seq,
                from: page.from,
                memory: Default::default(),
            };
            assert_eq!(
                String::from_utf8(page_answer(&stored, with_collection, 7).unwrap()).unwrap(),
                String::from_utf8(page_answer(&page, with_collection, 7).unwrap()).unwrap(),
            );
        }
        let written: serde_json::Value =
            serde_json::from_slice(&page_answer(&page, true, 7).unwrap()).unwrap();
        assert_eq!(
            written,
            json!({"results": [
                {"seq": 9, "id": "\"a\n", "rev": rev, "deleted": false, "c": "c1", "doc": doc.to_json()},
                {"seq": 9, "id": "\"a\n", "rev": rev, "deleted": true, "c": "c1"}],
                "last_seq": 9, "from": 3, "epoch": 7})
        );
        let page = truce::ChangesPage { from: None, ..page };
        let written: serde_json::Value =
            serde_json::from_slice(&page_answer(&page, false, 7).unwrap()).unwrap();
        assert!(
            written.get("from").is_none() && written["results"][0].get("c").is_none(),
            "{written}"
        );
    }

    /// A stored record whose body is not an object (damaged, though its
    /// checksum holds) is refused as storage corruption, not written.
    #[test]
    fn a_damaged_stored_document_is_refused_not_written() {
        let meta = truce::doc::Meta {
            rev: truce::doc::Rev {
                version: 1,
                hash: truce::doc::content_hash(b"[1]", false),
            },
            seq: 1,
            ts_ms: 1,
            deleted: false,
        };
        let record = truce::record::encode_document(&meta, b"[1]");
        let page = truce::ChangesPage {
            changes: vec![Change {
                seq: 1,
                collection: "c".into(),
                id: "a".into(),
                rev: meta.rev,
                deleted: false,
                doc: Some(StoredDoc::read("a", record).unwrap()),
            }],
            last_seq: 1,
            from: None,
            memory: Default::default(),
        };
        assert!(
            matches!(page_answer(&page, false, 7), Err(truce::Error::Storage(_))),
            "refused"
        );
    }
}
