//! The OpenAPI 3 document served at `GET /openapi.json`, generated from the
//! handlers' annotations and the schemas below (which describe the JSON the
//! handlers write).

#![allow(dead_code)] // The schema types exist to be described, not constructed.

use serde_json::{Map, Value};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder,
    Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Header, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// A document: user fields plus `_id`, `_rev`, `_version`, `_seq`, `_ts` (and
/// `_deleted` on a tombstone).
#[derive(ToSchema)]
pub struct Doc {
    _id: String,
    _rev: String,
    _version: u64,
    _seq: u64,
    _ts: u64,
}

/// Every error: a stable code and a message; conflicts add `reason`, `current`
/// or `conflicts`.
#[derive(ToSchema)]
pub struct ErrorBody {
    error: String,
    message: String,
}

/// The answer to a write.
#[derive(ToSchema)]
pub struct WriteAnswer {
    id: String,
    rev: String,
    version: u64,
    seq: u64,
    created: bool,
    noop: bool,
    skipped: bool,
    doc: Doc,
}

/// Collection names.
#[derive(ToSchema)]
pub struct Collections {
    collections: Vec<String>,
    /// Pass as `after` for the next page; null when this page is the last.
    next: Option<String>,
}

/// An index and its state.
#[derive(ToSchema)]
pub struct Index {
    name: String,
    fields: Vec<String>,
    unique: bool,
    /// `building`, `ready` or `failed`; `dropping` in the answer to a drop.
    state: String,
    backfilled: u64,
    failure: Option<String>,
}

/// A collection's indexes.
#[derive(ToSchema)]
pub struct Indexes {
    indexes: Vec<Index>,
}

/// An index declaration: `{"fields": [1 to 8 dotted paths], "unique": bool}`.
pub struct IndexBody;

impl utoipa::PartialSchema for IndexBody {
    fn schema() -> RefOr<Schema> {
        // The fields a document body can hold: no top-level `_` field.
        let fields = ArrayBuilder::new()
            .items(string_with_pattern(WRITE_PATH_PATTERN))
            .min_items(Some(1))
            .max_items(Some(truce::limits::INDEX_FIELDS_MAX))
            .unique_items(true);
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("fields", fields)
            .required("fields")
            .property(
                "unique",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some("Default false")),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for IndexBody {}

/// One page of a query.
#[derive(ToSchema)]
pub struct QueryPage {
    docs: Vec<Doc>,
    next: Option<String>,
}

/// One change.
#[derive(ToSchema)]
pub struct ChangeItem {
    seq: u64,
    id: String,
    rev: String,
    deleted: bool,
    c: Option<String>,
    doc: Option<Doc>,
}

/// A page of the change feed.
#[derive(ToSchema)]
pub struct ChangesPage {
    results: Vec<ChangeItem>,
    last_seq: u64,
    /// Where the reader's history began (a read from 0 or `now`, or the
    /// `from` it sent): send it back with `since` to be refused, rather than
    /// miss a delete, after the collection purges tombstones.
    from: Option<u64>,
    /// The database's history: send it back as `epoch` to be refused (410),
    /// rather than skip changes, after the database is restored from a backup.
    epoch: u64,
}

/// One op of a transaction, by kind: each takes `op`, `c`, `id`, at most one
/// of `version` and `rev`, and its own payload (`doc` for a put, `update` for
/// a patch), and nothing else; a delete needs `version` or `rev`.
pub struct TxOpBody;

impl utoipa::PartialSchema for TxOpBody {
    fn schema() -> RefOr<Schema> {
        let kind = |name: &str, payload: Option<(&str, RefOr<Schema>)>| {
            let mut op = ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(
                    "op",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([name])),
                )
                .required("op")
                .property("c", string_with_pattern(NAME_PATTERN))
                .required("c")
                .property("id", id_schema())
                .required("id")
                .property("version", version_precondition())
                .property("rev", string_with_pattern(REV_PATTERN));
            if let Some((field, schema)) = payload {
                op = op.property(field, schema).required(field);
            }
            op.additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        let doc = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("The new content; no top-level `_` field"))
            .property_names(Some(string_with_pattern(TX_DOC_FIELD_PATTERN)))
            .additional_properties(Some(AdditionalProperties::FreeForm(true)));
        let some_precondition = AnyOfBuilder::new()
            .item(ObjectBuilder::new().required("version"))
            .item(ObjectBuilder::new().required("rev"));
        OneOfBuilder::new()
            .item(kind("check", None))
            .item(kind("put", Some(("doc", doc.into()))))
            .item(kind("patch", Some(("update", update_schema(false)))))
            .item(
                AllOfBuilder::new()
                    .item(kind("delete", None))
                    .item(some_precondition),
            )
            .into()
    }
}

impl ToSchema for TxOpBody {}

/// A transaction: up to 1,000 ops, all or nothing.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxBody {
    /// The caller's label (as `Truce-Source`).
    #[schema(nullable = false)]
    source: Option<String>,
    #[schema(max_items = 1000)]
    ops: Vec<TxOpBody>,
}

/// A committed transaction: one answer per op (`null` for a check of an absent document).
#[derive(ToSchema)]
pub struct TxAnswer {
    seq: u64,
    results: Vec<Option<WriteAnswer>>,
}

/// An answer of `_pull`: documents as RxDB sees them (user fields, the id under
/// the primary key, `_deleted`) and the checkpoint of the last one.
#[derive(ToSchema)]
pub struct PullAnswer {
    documents: Vec<Object>,
    checkpoint: Option<Checkpoint>,
}

/// An RxDB checkpoint: the position of the last document pulled.
#[derive(ToSchema)]
pub struct Checkpoint {
    seq: u64,
    id: String,
    /// Where the client's history began (checked against purged tombstones).
    from: Option<u64>,
    /// The database's history the position is in: a checkpoint of another
    /// (the database was restored from a backup since) is 410 `history_purged`.
    epoch: Option<u64>,
}

/// One row of `_push`.
#[derive(ToSchema)]
#[allow(non_snake_case)] // RxDB's field names.
pub struct PushRow {
    assumedMasterState: Option<Object>,
    newDocumentState: Object,
}

/// Any JSON object.
pub type Object = Map<String, Value>;

/// Where to write a backup: a new directory, by its absolute path on the
/// server's machine, outside the data directory.
#[derive(ToSchema)]
pub struct BackupBody {
    path: String,
}

/// The running or last backup: `state` is `running`, `done`, `failed` or
/// `stopped` (by `DELETE /v1/_backup` or the server's shutdown: nothing of
/// it is left); `seq` is the commit it holds everything up to (every write
/// acknowledged before the backup was started, none after); `error` (once
/// failed or stopped) is an error body (`backup_stopped` once stopped).
#[derive(ToSchema)]
pub struct BackupStatus {
    state: String,
    path: String,
    started_ms: u64,
    finished_ms: Option<u64>,
    space: String,
    entries: u64,
    bytes: u64,
    seq: u64,
    error: Option<ErrorBody>,
}

/// Health. On a server with API keys, a request without a valid key gets
/// `status` alone.
#[derive(ToSchema)]
pub struct Health {
    /// `ok`, or `insufficient_storage` while writes that add data are refused.
    status: String,
    /// The last durable commit (absent without a valid key on a server with keys).
    durable_seq: Option<u64>,
    /// The data directory's filesystem (absent without a valid key on a server with keys).
    disk: Option<DiskHealth>,
}

/// The data directory's filesystem as last looked at (at most a second ago).
#[derive(ToSchema)]
pub struct DiskHealth {
    /// Bytes free to the server; `null` when the storage cannot say.
    free_bytes: Option<u64>,
    /// The space kept free (`--min-free-disk-mib`, and room for compactions as large
    /// as the database) below which writes that add data are refused.
    reserve_bytes: u64,
    /// Whether such writes are being refused (507 `insufficient_storage`).
    refusing_writes: bool,
}

/// A duration in whole seconds, from 1 to `max`.
fn seconds_schema(max: u64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .maximum(Some(max as f64))
}

/// The TTL of a collection: documents expire `seconds` after the time (ms since
/// the epoch, as `$currentDate` writes it) in `field`.
fn ttl_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(
            "Expiry: documents whose `field` (a time in ms) is older than `seconds` are hidden from reads \
             and deleted by the sweeper. `null`: no TTL.",
        ))
        .property("field", string_with_pattern(WRITE_PATH_PATTERN))
        .required("field")
        .property("seconds", seconds_schema(truce::limits::TTL_SECONDS_MAX))
        .required("seconds")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

/// How long a collection keeps its tombstones before they are purged.
fn tombstones_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(
            "Tombstones (deleted documents) older than `keep_seconds` are purged; a change-feed reader that \
             could have missed one of their deletes is then refused with 410 `history_purged`. `null`: kept \
             for ever.",
        ))
        .property(
            "keep_seconds",
            seconds_schema(truce::limits::TOMBSTONE_KEEP_SECONDS_MAX),
        )
        .required("keep_seconds")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

/// One counter cache. `stored` is the shape the server answers (every key
/// present); otherwise the shape it accepts (`where`, `sum`, `mode` optional).
fn counter_schema(stored: bool) -> ObjectBuilder {
    let nullable = |t: Type| ObjectBuilder::new().schema_type(SchemaType::from_iter([t, Type::Null]));
    let target = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("c", string_with_pattern(NAME_PATTERN))
        .required("c")
        .property("field", string_with_pattern(WRITE_PATH_PATTERN))
        .required("field")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let mode = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["in_commit", "after_commit"]))
        .description(Some(
            "`in_commit` (default): in the same commit as the source write, exact at every commit. \
             `after_commit`: through a durable outbox, applied shortly after, coalesced.",
        ));
    let mut counter = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Keeps, in document `{target.c}/{value of group_by}` field `target.field`, the number of \
             documents of the collection in that group matching `where` (or the sum of field `sum`).",
        ))
        .property("name", string_with_pattern(NAME_PATTERN))
        .required("name")
        .property("group_by", string_with_pattern(READ_PATH_PATTERN))
        .required("group_by")
        .property(
            "where",
            nullable(Type::Object).description(Some("A filter (API.md, \"Filters\"); null: every document")),
        )
        .property(
            "sum",
            nullable(Type::String)
                .pattern(Some(READ_PATH_PATTERN))
                .description(Some("Sum this numeric field instead of counting; null: count")),
        )
        .property("target", target)
        .required("target")
        .property("mode", mode)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    if stored {
        counter = counter.required("where").required("sum").required("mode");
    }
    counter
}

/// The body of `PUT /v1/c/{coll}/_config` (API.md, "Collection configuration").
pub struct ConfigBody;

impl utoipa::PartialSchema for ConfigBody {
    fn schema() -> RefOr<Schema> {
        let counters = ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(counter_schema(false))
            .max_items(Some(truce::limits::COUNTERS_PER_COLLECTION_MAX));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Replaces the whole configuration: an absent or null key is removed. Counter names are \
                 unique; a counter that is new or defined anew is backfilled from the documents already there.",
            ))
            .property("ttl", ttl_schema())
            .property("counters", counters)
            .property("tombstones", tombstones_schema())
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for ConfigBody {}

fn config_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("ttl", ttl_schema())
        .required("ttl")
        .property("counters", ArrayBuilder::new().items(counter_schema(true)))
        .required("counters")
        .property("tombstones", tombstones_schema())
}

/// A collection's configuration as stored (`ttl` null and `counters` empty
/// when none; `tombstones` only when set).
pub struct Config;

impl utoipa::PartialSchema for Config {
    fn schema() -> RefOr<Schema> {
        config_schema().into()
    }
}

impl ToSchema for Config {}

/// The answer of `PUT /v1/c/{coll}/_config`: the stored configuration and, for
/// each counter that is new, defined anew or still waiting for its backfill,
/// the report of that backfill (a recount).
pub struct ConfigAnswer;

impl utoipa::PartialSchema for ConfigAnswer {
    fn schema() -> RefOr<Schema> {
        let backfill = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Counter name → the report of its backfill"))
            .additional_properties(Some(Ref::from_schema_name("RecountAnswer")));
        config_schema()
            .property("backfill", backfill)
            .required("backfill")
            .into()
    }
}

impl ToSchema for ConfigAnswer {}

/// A group whose counter was wrong, and is now fixed.
#[derive(ToSchema)]
pub struct RecountFix {
    /// The group: the id of the target document.
    group: String,
    /// What the target held (plus increments still in the outbox).
    was: f64,
    /// What the source documents say.
    now: f64,
}

/// What a recount checked and fixed.
#[derive(ToSchema)]
pub struct RecountAnswer {
    /// Groups compared.
    checked: u64,
    /// Groups that were wrong, now fixed.
    fixed: Vec<RecountFix>,
    /// Groups whose target field holds something other than a number: no
    /// increment can fix them (put a number back, then recount).
    unfixable: Vec<RecountUnfixable>,
    /// The commit of the corrections (the snapshot's, when nothing was wrong).
    seq: u64,
}

/// A group whose target field holds something other than a number.
#[derive(ToSchema)]
pub struct RecountUnfixable {
    /// The group: the id of the target document.
    group: String,
    /// What the target field holds (any JSON value but a number).
    holds: serde_json::Value,
}

/// The `after_commit` counter outbox: increments not yet applied, and the age of the oldest.
#[derive(ToSchema)]
pub struct OutboxStatus {
    entries: u64,
    oldest_age_ms: Option<u64>,
}

/// Hot spots over a window, with totals since the server started (docs/insights.md).
#[derive(ToSchema)]
pub struct Insights {
    window_s: u64,
    covered_s: f64,
    totals: Object,
    hot_spots: Vec<Object>,
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Truce HTTP API", version = "1", description = "Concurrent writes, safe, fast and unsurprising."),
    paths(
        super::documents::get_doc, super::documents::put_doc, super::documents::patch_doc,
        super::documents::delete_doc, super::queries::list_collections, super::queries::query,
        super::queries::list_indexes, super::queries::put_index, super::queries::delete_index,
        super::tx::transaction,
        super::changes::collection_changes, super::changes::all_changes, super::healthz,
        super::replication::pull, super::replication::push, super::replication::pull_stream,
        super::config::get_config, super::config::put_config, super::config::recount, super::config::outbox,
        super::insights::insights, super::insights::dashboard, super::metrics::metrics,
        super::backup::start, super::backup::status, super::backup::stop,
    ),
    components(schemas(Doc, ErrorBody, WriteAnswer, Collections, Index, Indexes, IndexBody, QueryPage,
                       ChangeItem, ChangesPage, TxOpBody, TxBody, TxAnswer, Health, DocBody, UpdateBody,
                       PullAnswer, PushRow, ConfigBody, Config, ConfigAnswer, RecountFix, RecountUnfixable, RecountAnswer,
                       OutboxStatus, Insights, BackupBody, BackupStatus)),
    modifiers(&Conventions)
)]
pub struct ApiDoc;

/// Collection and index names (API.md, "Conventions").
const NAME_PATTERN: &str = "^[A-Za-z][A-Za-z0-9_-]{0,63}$";
/// Document ids: not starting with `_`, no control characters, not `.` or `..`
/// (and 1–512 bytes, which a JSON Schema length in characters cannot say
/// exactly). Without lookahead: a first character other than `_` and `.`, or
/// `.` and a second other than `.`, or `..` and at least one more.
const ID_PATTERN: &str = "^([^_.\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*\
                          |\\.[^.\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*\
                          |\\.\\.[^\\u0000-\\u001f\\u007f-\\u009f]+)$";
/// A revision, `{version}-{hash}`: a version from 1 to below 10^19 (a u64),
/// and a hash of 32 lowercase hex digits.
const REV_PATTERN: &str = "^0*[1-9][0-9]{0,18}-[0-9a-f]{32}$";
/// `If-Match`: `*` or a revision, optionally quoted as an ETag.
const IF_MATCH_PATTERN: &str = "^(\\*|\"?0*[1-9][0-9]{0,18}-[0-9a-f]{32}\"?)$";
/// A dotted field path that a write may touch: non-empty segments not starting
/// with `$`, the first not starting with `_` either, at most 32 segments.
const WRITE_PATH_PATTERN: &str = "^[^_$.][^.]*(\\.[^$.][^.]*){0,31}$";
/// A dotted field path that a filter or an index reads (`_` fields allowed).
const READ_PATH_PATTERN: &str = "^[^$.][^.]*(\\.[^$.][^.]*){0,31}$";
/// An idempotency key: visible ASCII and spaces (what an HTTP header value
/// reads as text, less the tab, a control character).
const IDEMPOTENCY_KEY_PATTERN: &str = "^[ -~]+$";
/// Top-level fields of a PUT body: user fields, or the `_version` / `_rev` precondition.
const DOC_FIELD_PATTERN: &str = "^([^_][\\s\\S]*|_version|_rev)?$";
/// Top-level fields of a transaction's `doc`: user fields only.
const TX_DOC_FIELD_PATTERN: &str = "^([^_][\\s\\S]*)?$";

/// A document id.
fn id_schema() -> ObjectBuilder {
    // maxLength counts characters, the server bytes: a necessary bound only.
    string_with_pattern(ID_PATTERN)
        .min_length(Some(1))
        .max_length(Some(truce::limits::ID_BYTES_MAX))
}

fn string_with_pattern(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// `_version` as a precondition: 0 create only, N exactly N, -1 anything.
fn version_precondition() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(-1))
}

/// The body of a PUT: the document's new content, which may carry a `_version`
/// or `_rev` precondition; no other top-level `_` field (`reserved_field`).
/// Documents nest at most 32 levels and encode to at most 1 MiB.
pub struct DocBody;

impl utoipa::PartialSchema for DocBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The new content. `_version` or `_rev` (not both) is a precondition; other top-level `_` \
                 fields are refused. At most 32 levels deep and 1 MiB.",
            ))
            .property("_version", version_precondition())
            .property("_rev", string_with_pattern(REV_PATTERN))
            .property_names(Some(string_with_pattern(DOC_FIELD_PATTERN)))
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl ToSchema for DocBody {}

/// The body of a PATCH: update operators (each an object of dotted paths to
/// operands), control keys, and optionally a `_version` / `_rev` precondition.
pub struct UpdateBody;

impl utoipa::PartialSchema for UpdateBody {
    fn schema() -> RefOr<Schema> {
        update_schema(true)
    }
}

impl ToSchema for UpdateBody {}

/// Update operators and control keys, with the `_version` / `_rev`
/// precondition keys where the update is a PATCH's body (a transaction's
/// `patch` op gives them as the op's `version` / `rev`).
fn update_schema(with_precondition: bool) -> RefOr<Schema> {
    let any = || ObjectBuilder::new().schema_type(SchemaType::AnyValue);
    let number = || ObjectBuilder::new().schema_type(Type::Number);
    let paths_to = |operand: RefOr<Schema>| {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(string_with_pattern(WRITE_PATH_PATTERN)))
            .additional_properties(Some(operand))
    };
    let date_type = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "$type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["date", "timestamp"])),
        )
        .required("$type")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let current_date: RefOr<Schema> = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([true])),
        )
        .item(date_type)
        .into();
    let mut update = ObjectBuilder::new().schema_type(Type::Object);
    for operator in [
        "$set",
        "$unset",
        "$min",
        "$max",
        "$push",
        "$addToSet",
        "$pull",
        "$setOnInsert",
    ] {
        update = update.property(operator, paths_to(any().into()));
    }
    for operator in ["$inc", "$mul"] {
        update = update.property(operator, paths_to(number().into()));
    }
    let update = update
        .property("$currentDate", paths_to(current_date))
        .property("$upsert", ObjectBuilder::new().schema_type(Type::Boolean))
        .property(
            "$if",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some("A filter")),
        )
        .property(
            "$else",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["conflict", "skip"])),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let update = if with_precondition {
        update
            .property("_version", version_precondition())
            .property("_rev", string_with_pattern(REV_PATTERN))
    } else {
        update
    };
    // "At least one path in all": some operator names at least one path.
    let some_path = truce::update::OPERATORS
        .iter()
        .fold(AnyOfBuilder::new(), |any_of, operator| {
            any_of.item(
                ObjectBuilder::new()
                    .property(*operator, ObjectBuilder::new().min_properties(Some(1)))
                    .required(*operator),
            )
        });
    AllOfBuilder::new()
        .description(Some(
            "MongoDB-style update operators over dotted paths, at least one path in all, at most 256; \
                 `$upsert`, `$if`, `$else` control it. Operators must not touch the same path twice.",
        ))
        .item(update)
        .item(some_path)
        .into()
}

/// What holds for every route, said once here rather than on each annotation:
/// the shape of common parameters, and the answers that layers shared by all
/// routes (authentication, concurrency limit, timeout, body limit) or input
/// validation can give. Without them the document would not list statuses the
/// server really answers (docs/http.md, "Error codes and statuses").
struct Conventions;

/// The documented routes that serve anyone, keys or not (so does
/// `/openapi.json`, which does not describe itself).
const OPEN_PATHS: [&str; 2] = ["/healthz", "/dashboard"];

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // Every other route needs an API key (`Authorization: Bearer`) once
        // the server has keys.
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("An API key from `truce keys create`"))
                        .build(),
                ),
            );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
        for (path, item) in openapi.paths.paths.iter_mut() {
            if OPEN_PATHS.contains(&path.as_str()) {
                for operation in [&mut item.get].into_iter().flatten() {
                    operation.security = Some(vec![SecurityRequirement::default()]);
                }
            }
            let operations = [
                (false, &mut item.get),
                (true, &mut item.put),
                (true, &mut item.post),
                (true, &mut item.patch),
                (true, &mut item.delete),
            ];
            for (writes, operation) in operations {
                let Some(operation) = operation else { continue };
                constrain_parameters(path, writes, operation);
                add_shared_responses(path, operation);
            }
        }
    }
}

/// Gives the parameters every route shares the shape the server checks.
fn constrain_parameters(path: &str, writes: bool, operation: &mut Operation) {
    let name = if path.contains("/_counters/") {
        "Counter name"
    } else {
        "Index name"
    };
    for parameter in operation.parameters.iter_mut().flatten() {
        let (schema, description) = match (&parameter.parameter_in, parameter.name.as_str()) {
            (ParameterIn::Path, "coll") => (string_with_pattern(NAME_PATTERN), "Collection name"),
            (ParameterIn::Path, "name") => (string_with_pattern(NAME_PATTERN), name),
            (ParameterIn::Path, "id") => (
                id_schema(),
                "Document id: 1–512 bytes of UTF-8, no control characters, not starting with `_`, \
                 not `.` or `..`",
            ),
            // On a read, a precondition of its answer: any list of ETags.
            (ParameterIn::Header, "If-Match") if !writes => (
                ObjectBuilder::new().schema_type(Type::String),
                "Answer only if the document's revision is one of these ETags (or `*`), strongly \
                 compared; else 412 `precondition_failed`.",
            ),
            (ParameterIn::Header, "If-Match") => (
                string_with_pattern(IF_MATCH_PATTERN),
                "Precondition: `*` (must exist) or a revision. One precondition per request (header, \
                 `_version`/`_rev` field or query parameter); two are 400 `invalid_precondition`.",
            ),
            // On a write, only "must not exist"; on a read, any list of ETags.
            (ParameterIn::Header, "If-None-Match") if writes => (
                string_with_pattern("^\\*$"),
                "Precondition: `*` (must not exist). One precondition per request.",
            ),
            (ParameterIn::Header, "Idempotency-Key") => (
                string_with_pattern(IDEMPOTENCY_KEY_PATTERN)
                    .min_length(Some(1))
                    .max_length(Some(truce::limits::IDEMPOTENCY_KEY_BYTES_MAX)),
                "Makes the write safe to retry: the same key with the same request answers as the first \
                 time; with another request, 422 `idempotency_key_reused`. 1–255 visible ASCII characters or spaces.",
            ),
            (ParameterIn::Query, "rev") => (
                string_with_pattern(REV_PATTERN),
                "Precondition: exactly this revision",
            ),
            (ParameterIn::Query, "version") => (
                version_precondition(),
                "Precondition: exactly this version (≥ 1), or -1 for any",
            ),
            _ => continue,
        };
        parameter.schema = Some(schema.into());
        parameter.description = Some(description.into());
    }
}

fn error_response(description: &str, retry_after: bool) -> ResponseBuilder {
    let body = Content::new(Some(Ref::from_schema_name("ErrorBody")));
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/json", body);
    if retry_after {
        let seconds = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
        response.header("Retry-After", seconds)
    } else {
        response
    }
}

fn add_shared_responses(path: &str, operation: &mut Operation) {
    // The concurrency limit is in front of every route.
    let mut shared = vec![(
        "429",
        error_response("`overloaded`: too many requests at once", true),
    )];
    // `/metrics` needs a key too.
    if path == "/metrics" {
        shared.push(("401", unauthorized_response()));
    }
    // The rest only for the API v1: `/healthz` is not authenticated and documents
    // its own 503, and CouchDB-compatible routes answer errors in CouchDB's shape.
    if path.starts_with("/v1") {
        // Every route can answer 400: a query parameter it does not take, if
        // nothing else (replication routes: a malformed one).
        let invalid = "Invalid input: a stable `invalid_…` code says which";
        shared.push(("400", error_response(invalid, false)));
        if operation.request_body.is_some() {
            shared.push((
                "413",
                error_response("`payload_too_large` or `limit_exceeded`", false),
            ));
            let compressed = "`unsupported_media_type`: a `Content-Encoding` other than identity";
            shared.push(("415", error_response(compressed, false)));
            let coded = "`not_implemented`: a `Transfer-Encoding` besides chunked";
            shared.push(("501", error_response(coded, false)));
        }
        shared.push(("401", unauthorized_response()));
        let forbidden = "`forbidden`: this key's role or collections do not allow it";
        shared.push(("403", error_response(forbidden, false)));
        let unavailable = "`unavailable` (storage failed), `timeout`, `index_building` or `index_dropping` \
                           (a dropped index of that name is still being deleted)";
        shared.push(("503", error_response(unavailable, true)));
        if adds_data(path, operation) {
            let short = "`insufficient_storage`: less than the reserve (`--min-free-disk-mib` and room \
                         for compactions, as much as the database takes) is free on the data directory's \
                         filesystem; nothing was written";
            shared.push(("507", error_response(short, true)));
        }
    }
    for (status, response) in shared {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(response.build()));
    }
}

/// Whether an API route's write may add data, and so be refused while the
/// disk is short: those with a body, but for `_config` (allowed then: a TTL
/// frees space) and `_backup` (written elsewhere).
fn adds_data(path: &str, operation: &Operation) -> bool {
    operation.request_body.is_some() && !matches!(path, "/v1/c/{coll}/_config" | "/v1/_backup")
}

/// A 401, with the challenge every 401 carries.
fn unauthorized_response() -> ResponseBuilder {
    let unauthorized = "`unauthorized`: the key is missing or invalid, or the server has no keys and \
                        does not serve without them (beyond loopback, or after its last key was revoked)";
    let challenge = Header::new(ObjectBuilder::new().schema_type(Type::String));
    error_response(unauthorized, false).header("WWW-Authenticate", challenge)
}

/// The document as JSON.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    one_precondition_per_body(&mut doc);
    doc
}

/// A PUT or PATCH body carries at most one of `_version` and `_rev`, a
/// transaction op at most one of `version` and `rev` (two preconditions are
/// 400). JSON Schema says that with
/// `not`, which utoipa's builders lack, so it is added to the JSON.
fn one_precondition_per_body(doc: &mut Value) {
    for (body, keys) in [
        ("DocBody", ["_version", "_rev"]),
        ("UpdateBody", ["_version", "_rev"]),
        ("TxOpBody", ["version", "rev"]),
    ] {
        let schema = doc.pointer_mut(&format!("/components/schemas/{body}"));
        if let Some(schema) = schema.and_then(Value::as_object_mut) {
            schema.insert("not".into(), serde_json::json!({ "required": keys }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use truce::limits;

    fn parameter<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
        let parameters = doc["paths"][path][method]["parameters"]
            .as_array()
            .expect("parameters");
        let found = parameters.iter().find(|p| p["name"] == name);
        &found.unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))["schema"]
    }

    /// The bounds the document states are the engine's, so a changed limit
    /// cannot leave the document (and API fuzzing) behind.
    #[test]
    fn documented_bounds_are_the_engines() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["IndexBody"]["properties"]["fields"]["maxItems"],
            limits::INDEX_FIELDS_MAX
        );
        assert_eq!(
            schemas["TxBody"]["properties"]["ops"]["maxItems"],
            limits::TX_OPS_MAX
        );
        assert_eq!(
            parameter(&doc, "/v1/c/{coll}", "get", "limit")["maximum"],
            limits::QUERY_LIMIT_MAX
        );
        assert_eq!(
            parameter(&doc, "/v1/_changes", "get", "limit")["maximum"],
            limits::CHANGES_LIMIT_MAX
        );
        let window = parameter(&doc, "/v1/insights", "get", "window");
        assert_eq!(window["minimum"], 1);
        assert_eq!(window["maximum"], limits::HOT_SPOT_MINUTES * 60);
        let hot_spots = parameter(&doc, "/v1/insights", "get", "limit");
        assert_eq!(hot_spots["minimum"], 1);
        assert_eq!(hot_spots["maximum"], limits::HOT_SPOTS_LIMIT_MAX);
        let id = parameter(&doc, "/v1/c/{coll}/{id}", "get", "id");
        assert_eq!(id["maxLength"], limits::ID_BYTES_MAX);
        let key = parameter(&doc, "/v1/tx", "post", "Idempotency-Key");
        assert_eq!(key["maxLength"], limits::IDEMPOTENCY_KEY_BYTES_MAX);
        let segments = format!("{{0,{}}}", limits::PATH_SEGMENTS_MAX - 1);
        assert!(WRITE_PATH_PATTERN.contains(&segments) && READ_PATH_PATTERN.contains(&segments));
        let name = format!("{{0,{}}}", limits::COLLECTION_NAME_BYTES_MAX - 1);
        assert!(NAME_PATTERN.contains(&name));
    }

    /// Keys are documented as the server asks for them: a bearer scheme for
    /// every route but the open ones, and a 401 with its challenge where a
    /// key is needed; a 503 that can be `index_dropping` says `Retry-After`.
    #[test]
    fn the_document_says_which_routes_need_a_key() {
        let doc = document();
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        assert_eq!(doc["security"], json!([{"bearer": []}]));
        for open in OPEN_PATHS {
            assert_eq!(doc["paths"][open]["get"]["security"], json!([{}]), "{open}");
        }
        for (path, method) in [("/metrics", "get"), ("/v1/c/{coll}/_indexes/{name}", "delete")] {
            let operation = &doc["paths"][path][method];
            assert!(operation.get("security").is_none(), "{path}");
            assert!(
                operation["responses"]["401"]["headers"]["WWW-Authenticate"].is_object(),
                "{path}"
            );
        }
        let put_index = &doc["paths"]["/v1/c/{coll}/_indexes/{name}"]["put"]["responses"]["503"];
        assert!(
            put_index["description"]
                .as_str()
                .unwrap()
                .contains("index_dropping")
        );
        assert!(put_index["headers"]["Retry-After"].is_object(), "{put_index}");
    }

    /// The PATCH body's schema knows every operator the engine applies, and
    /// requires a path under one of them, as the engine does.
    #[test]
    fn the_update_body_is_the_engines() {
        let doc = document();
        let parts = doc["components"]["schemas"]["UpdateBody"]["allOf"]
            .as_array()
            .expect("UpdateBody is allOf");
        let properties = parts[0]["properties"].as_object().expect("operators");
        let some_path = parts[1]["anyOf"].as_array().expect("anyOf");
        assert_eq!(some_path.len(), truce::update::OPERATORS.len());
        for (operator, alternative) in truce::update::OPERATORS.iter().zip(some_path) {
            assert!(properties.contains_key(*operator), "{operator} is not documented");
            assert_eq!(alternative["required"], serde_json::json!([operator]));
            assert_eq!(alternative["properties"][operator]["minProperties"], 1);
        }
    }

    /// Each kind of transaction op takes in the document exactly the keys the
    /// server takes, nothing else, and a delete needs a precondition.
    #[test]
    fn tx_ops_are_the_servers() {
        let doc = document();
        let op = &doc["components"]["schemas"]["TxOpBody"];
        assert_eq!(op["not"], serde_json::json!({"required": ["version", "rev"]}));
        let kinds = op["oneOf"].as_array().expect("oneOf");
        assert_eq!(kinds.len(), super::super::tx::OP_KEYS.len());
        for (kind, (name, keys)) in kinds.iter().zip(super::super::tx::OP_KEYS) {
            let object = kind.get("allOf").map_or(kind, |all| &all[0]);
            assert_eq!(object["properties"]["op"]["enum"], serde_json::json!([name]));
            assert_eq!(object["additionalProperties"], false, "{name}");
            let mut documented: Vec<&str> = object["properties"]
                .as_object()
                .expect("properties")
                .keys()
                .map(String::as_str)
                .collect();
            let mut taken = keys.to_vec();
            documented.sort_unstable();
            taken.sort_unstable();
            assert_eq!(documented, taken, "{name}");
            if name == "delete" {
                assert_eq!(kind["allOf"][1]["anyOf"].as_array().map(Vec::len), Some(2));
            }
        }
    }

    /// A write's body may carry one precondition, not two.
    #[test]
    fn bodies_carry_at_most_one_precondition() {
        let doc = document();
        for body in ["DocBody", "UpdateBody"] {
            let schema = &doc["components"]["schemas"][body];
            assert_eq!(
                schema["not"],
                serde_json::json!({"required": ["_version", "_rev"]}),
                "{body}"
            );
        }
        let key = parameter(&doc, "/v1/c/{coll}/{id}", "patch", "Idempotency-Key");
        assert_eq!(key["pattern"], IDEMPOTENCY_KEY_PATTERN);
    }

    /// Every feed that takes a position documents its refusal of one from
    /// before a purged tombstone.
    #[test]
    fn feeds_document_history_purged() {
        let doc = document();
        for path in ["/v1/_changes", "/v1/c/{coll}/_changes", "/v1/c/{coll}/_pull"] {
            let answer = &doc["paths"][path]["get"]["responses"]["410"];
            assert!(
                answer["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("history_purged")),
                "{path}: {answer}"
            );
        }
    }

    /// Every API route lists the answers of the layers in front of all handlers.
    #[test]
    fn every_route_documents_the_shared_answers() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let responses = operation["responses"].as_object().expect("responses");
                let mut expected = vec!["429"];
                if path.starts_with("/v1") {
                    expected.extend(["401", "403", "503"]);
                    if operation.get("requestBody").is_some() {
                        expected.extend(["400", "413"]);
                    }
                    let adds_data = [
                        ("/v1/c/{coll}/{id}", "put"),
                        ("/v1/c/{coll}/{id}", "patch"),
                        ("/v1/tx", "post"),
                        ("/v1/c/{coll}/_push", "post"),
                        ("/v1/c/{coll}/_indexes/{name}", "put"),
                    ]
                    .contains(&(path.as_str(), method.as_str()));
                    // Exactly those: a 507 documented elsewhere is wrong.
                    assert_eq!(
                        responses.contains_key("507"),
                        adds_data,
                        "{method} {path}: 507 documented exactly where data is added"
                    );
                }
                for status in expected {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} does not document {status}"
                    );
                }
            }
        }
    }
}
