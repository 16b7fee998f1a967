//! Collection configuration: TTL, counter caches and how long tombstones are
//! kept, as API.md's `_config` body describes them. Validated here; stored durably in the meta space by the
//! committer, which applies it in commit order.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::doc;
use crate::error::{Error, Result};
use crate::limits::{
    CONFIG_BYTES_MAX, COUNTERS_PER_COLLECTION_MAX, TOMBSTONE_KEEP_SECONDS_MAX, TTL_SECONDS_MAX,
};
use crate::update::{Filter, Path};

/// Documents expire `seconds` after the time (ms since the epoch) in `field`.
#[derive(Clone, Debug, PartialEq)]
pub struct TtlConfig {
    /// The field holding a time in ms, as `$currentDate` writes it.
    pub field: String,
    /// Parsed `field`.
    pub path: Path,
    /// Lifetime after that time.
    pub seconds: u64,
}

/// TTL field values that are times in seconds of this era (2001 to 2286)
/// written by mistake, not times in ms (as ms, January to April 1970): a
/// document holding one never expires. Taken as ms, a collection of them
/// expired whole, for good, the moment its TTL was declared.
pub const TTL_SECONDS_LIKE: std::ops::Range<f64> = 1e9..1e10;

impl TtlConfig {
    /// The time in ms a document's life counts from: its field's number,
    /// unless that reads as seconds ([`TTL_SECONDS_LIKE`]); `None` when the
    /// document does not expire.
    pub fn time_of(&self, body: &crate::doc::Body) -> Option<f64> {
        self.number_in(body).filter(|t| !TTL_SECONDS_LIKE.contains(t))
    }

    /// Whether a document whose life counts from `time` (ms) has expired at
    /// `now_ms`.
    pub fn expired_at(&self, time: f64, now_ms: u64) -> bool {
        time + (self.seconds as f64) * 1000.0 < now_ms as f64
    }

    /// The number in `body`'s TTL field, if it holds one (a time in ms, or
    /// in seconds by mistake: [`TTL_SECONDS_LIKE`]).
    pub(crate) fn number_in(&self, body: &crate::doc::Body) -> Option<f64> {
        crate::update::path::get(body, &self.path).and_then(Value::as_f64)
    }
}

/// Tombstones older than `keep_seconds` are purged: the document record and
/// its change-log entry are removed, and a feed reader that could have
/// missed one of their deletes is refused (`Error::HistoryPurged`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TombstonesConfig {
    /// How long a tombstone is kept after its delete committed.
    pub keep_seconds: u64,
}

/// When a counter's deltas reach its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterMode {
    /// In the same commit as the source write, as commutative increments: exact at
    /// every commit, never a conflict, never a lock.
    InCommit,
    /// Through a durable outbox written in the same commit, applied shortly after
    /// in short commits of their own, coalesced per target.
    AfterCommit,
}

impl CounterMode {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            CounterMode::InCommit => "in_commit",
            CounterMode::AfterCommit => "after_commit",
        }
    }
}

/// A counter cache: per group of source documents matching `filter`, their count
/// (or the sum of `sum`), kept in `{target_collection}/{group value}` field `target_field`.
#[derive(Clone, Debug)]
pub struct CounterDef {
    /// Unique within the collection.
    pub name: String,
    /// The field whose value names the group (and the target document).
    pub group_by: Path,
    /// Which source documents count; `None` = all.
    pub filter: Option<Filter>,
    /// The filter as given, to store and show it again.
    pub filter_json: Value,
    /// Sum this field instead of counting; `None` = count.
    pub sum: Option<Path>,
    /// The target collection.
    pub target_collection: String,
    /// The target field (a dotted path).
    pub target_field: String,
    /// In the same commit, or after it.
    pub mode: CounterMode,
}

impl CounterDef {
    /// Whether its `where` uses `$ago` anywhere: what it counts then
    /// depends on when each write came (`check` skips such a counter, and a
    /// new declaration of one is refused).
    pub fn is_time_relative(&self) -> bool {
        fn mentions_ago(filter: &Value) -> bool {
            match filter {
                Value::Object(map) => map.iter().any(|(k, v)| k == "$ago" || mentions_ago(v)),
                Value::Array(items) => items.iter().any(mentions_ago),
                _ => false,
            }
        }
        mentions_ago(&self.filter_json)
    }
}

/// The configuration of one collection.
#[derive(Clone, Debug, Default)]
pub struct CollectionConfig {
    /// Expiry, if any.
    pub ttl: Option<TtlConfig>,
    /// Counter caches fed by this collection.
    pub counters: Vec<CounterDef>,
    /// How long tombstones are kept; `None`: for ever.
    pub tombstones: Option<TombstonesConfig>,
    /// Counters declared (or defined anew) whose backfill — a recount of the
    /// documents already there — has not committed yet, by name, each with
    /// the generation of its declaration: a recount of an earlier definition
    /// does not end a later one's wait. Stored under their own meta keys
    /// ([`backfill_key`]) in the commit that declares them, so that a backfill
    /// a crash interrupted runs again on the next open; not part of the
    /// `_config` body.
    pub backfilling: BTreeMap<String, u64>,
}

fn invalid(message: String) -> Error {
    Error::InvalidConfig(message)
}

fn text<'a>(object: &'a Map<String, Value>, key: &str, what: &str) -> Result<&'a str> {
    object
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{what}.{key} must be a string")))
}

/// Refuses a key of `object` (`what`) that is not one of `allowed`: a
/// misspelt `where` would otherwise count every document, a misspelt `mode`
/// pick the other one.
fn only(object: &serde_json::Map<String, Value>, allowed: &[&str], what: &str) -> Result<()> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(invalid(format!(
            "{what} takes {}, not {key:?}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A duration in whole seconds, from 1 to `max`, at `key` of `object` (`what`).
fn seconds(object: &Map<String, Value>, key: &str, what: &str, max: u64) -> Result<u64> {
    object
        .get(key)
        .and_then(Value::as_u64)
        .filter(|s| (1..=max).contains(s))
        .ok_or_else(|| invalid(format!("{what}.{key} must be an integer from 1 to {max}")))
}

fn parse_ttl(value: &Value) -> Result<Option<TtlConfig>> {
    let ttl = match value {
        Value::Null => return Ok(None),
        Value::Object(ttl) => ttl,
        _ => return Err(invalid("ttl must be {\"field\", \"seconds\"} or null".into())),
    };
    only(ttl, &["field", "seconds"], "ttl")?;
    let field = text(ttl, "field", "ttl")?;
    let path = Path::parse(field).map_err(|e| e.unless_limit(|e| invalid(format!("ttl.field: {e}"))))?;
    let seconds = seconds(ttl, "seconds", "ttl", TTL_SECONDS_MAX)?;
    Ok(Some(TtlConfig {
        field: field.to_string(),
        path,
        seconds,
    }))
}

fn parse_tombstones(value: &Value) -> Result<Option<TombstonesConfig>> {
    let tombstones = match value {
        Value::Null => return Ok(None),
        Value::Object(t) => t,
        _ => return Err(invalid("tombstones must be {\"keep_seconds\"} or null".into())),
    };
    only(tombstones, &["keep_seconds"], "tombstones")?;
    let keep_seconds = seconds(
        tombstones,
        "keep_seconds",
        "tombstones",
        TOMBSTONE_KEEP_SECONDS_MAX,
    )?;
    Ok(Some(TombstonesConfig { keep_seconds }))
}

fn parse_counter(value: &Value, index: usize) -> Result<CounterDef> {
    let what = format!("counters[{index}]");
    let Value::Object(c) = value else {
        return Err(invalid(format!("{what} must be an object")));
    };
    only(c, &["name", "group_by", "where", "sum", "target", "mode"], &what)?;
    let name = text(c, "name", &what)?;
    doc::validate_collection_name(name)
        .map_err(|_| invalid(format!("{what}.name {name:?} is not a valid name")))?;
    let group_by = Path::parse_filter(text(c, "group_by", &what)?)
        .map_err(|e| e.unless_limit(|e| invalid(format!("{what}.group_by: {e}"))))?;
    let filter_json = c.get("where").cloned().unwrap_or(Value::Null);
    let filter = match &filter_json {
        Value::Null => None,
        f => Some(Filter::parse(f)?),
    };
    let sum = match c.get("sum") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(Path::parse_filter(s).map_err(|e| e.unless_limit(|e| invalid(format!("{what}.sum: {e}"))))?)
        }
        Some(_) => return Err(invalid(format!("{what}.sum must be a field name or null"))),
    };
    let Some(Value::Object(target)) = c.get("target") else {
        return Err(invalid(format!("{what}.target must be {{\"c\", \"field\"}}")));
    };
    only(target, &["c", "field"], &format!("{what}.target"))?;
    let target_collection = text(target, "c", &format!("{what}.target"))?;
    doc::validate_collection_name(target_collection)?;
    let target_field = text(target, "field", &format!("{what}.target"))?;
    Path::parse(target_field)
        .map_err(|e| e.unless_limit(|e| invalid(format!("{what}.target.field: {e}"))))?;
    let mode = match c.get("mode") {
        None | Some(Value::Null) => CounterMode::InCommit,
        Some(Value::String(mode)) if mode == "in_commit" => CounterMode::InCommit,
        Some(Value::String(mode)) if mode == "after_commit" => CounterMode::AfterCommit,
        Some(other) => {
            return Err(invalid(format!(
                "{what}.mode {other}: use \"in_commit\" or \"after_commit\""
            )));
        }
    };
    Ok(CounterDef {
        name: name.to_string(),
        group_by,
        filter,
        filter_json,
        sum,
        target_collection: target_collection.to_string(),
        target_field: target_field.to_string(),
        mode,
    })
}

impl CollectionConfig {
    /// Parses and validates a `_config` body.
    pub fn from_json(value: &Value) -> Result<CollectionConfig> {
        let Value::Object(body) = value else {
            return Err(invalid("a config is a JSON object".into()));
        };
        only(body, &["ttl", "counters", "tombstones"], "a config")?;
        let ttl = parse_ttl(body.get("ttl").unwrap_or(&Value::Null))?;
        let tombstones = parse_tombstones(body.get("tombstones").unwrap_or(&Value::Null))?;
        let counters = match body.get("counters") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, c)| parse_counter(c, i))
                .collect::<Result<_>>()?,
            Some(_) => return Err(invalid("counters must be an array".into())),
        };
        if counters.len() > COUNTERS_PER_COLLECTION_MAX {
            return Err(Error::LimitExceeded {
                what: "COUNTERS_PER_COLLECTION_MAX",
                limit: COUNTERS_PER_COLLECTION_MAX as u64,
            });
        }
        let mut names: Vec<&str> = counters.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("counter names must be unique".into()));
        }
        Ok(CollectionConfig {
            ttl,
            counters,
            tombstones,
            backfilling: BTreeMap::new(),
        })
    }

    /// Refuses a counter of this configuration of `collection` that is new or
    /// defined anew (against `before`) and would not count alone among
    /// `others`, every other collection's counters as `(collection, def)`:
    /// one writing a target field another counter writes (each recount would
    /// undo the other's counts), one counting into a collection that has
    /// counters, or one counting a collection other counters write into
    /// (counters do not cascade: the chained one would miss every increment,
    /// and a recount would count what the counter never saw).
    pub fn check_alone(
        &self,
        collection: &str,
        before: &CollectionConfig,
        others: &[(&str, &CounterDef)],
    ) -> Result<()> {
        let all: Vec<(&str, &CounterDef)> = others
            .iter()
            .copied()
            .chain(self.counters.iter().map(|d| (collection, d)))
            .collect();
        for (index, def) in self.counters.iter().enumerate() {
            if !self.defines_anew(&def.name, before) {
                continue;
            }
            let what = format!("counters[{index}]");
            for &(other_collection, other) in &all {
                if other_collection == collection && other.name == def.name {
                    continue;
                }
                let name = format!("{other_collection}/{}", other.name);
                if other.target_collection == def.target_collection
                    && overlap(&other.target_field, &def.target_field)
                {
                    return Err(invalid(format!(
                        "{what}.target {}.{} is counter {name}'s target field {} too, or holds it, or is held by \
                         it: two counters in one field would each undo the other's recount (and `x` with `x.y` \
                         could not both be numbers); give each its own field",
                        def.target_collection, def.target_field, other.target_field
                    )));
                }
                if other_collection == def.target_collection {
                    return Err(invalid(format!(
                        "{what}.target is in {}, which counter {name} counts: counters do not cascade, so that \
                         counter would miss every increment of this one",
                        def.target_collection
                    )));
                }
                if other.target_collection == collection {
                    return Err(invalid(format!(
                        "{collection} is counter {name}'s target: counters do not cascade, so counting its \
                         documents would miss every increment of that counter"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Refuses a counter, new or defined anew against `before`, whose target
    /// field a unique index of its target collection (in `catalog`) covers:
    /// increments are not checked against unique indexes, and two targets
    /// could come to hold one value.
    pub fn check_targets_not_unique(
        &self,
        before: &CollectionConfig,
        catalog: &std::collections::HashMap<String, Vec<crate::index::IndexDef>>,
    ) -> Result<()> {
        for (index, def) in self.counters.iter().enumerate() {
            if !self.defines_anew(&def.name, before) {
                continue;
            }
            let covering = catalog.get(&def.target_collection).and_then(|indexes| {
                indexes
                    .iter()
                    .find(|d| d.state != crate::index::IndexState::Failed && unique_covers(&d.spec, def))
            });
            if let Some(unique) = covering {
                return Err(invalid(format!(
                    "counters[{index}].target {}.{} is covered by unique index {}: counters' increments are not \
                     checked against unique indexes, and two targets could come to hold one value",
                    def.target_collection, def.target_field, unique.name
                )));
            }
        }
        Ok(())
    }

    /// Refuses, against `before`, a counter new or defined anew whose target
    /// field is its target collection's TTL field (`ttl_of`), holds it or is
    /// held by it, and a TTL new or changed on a field of `collection` that
    /// a counter (of `others`, as `(collection, def)`, or its own) counts
    /// into: a count read as a time in ms expires its document at
    /// once, and each recount's fix is swept again.
    pub fn check_ttl_apart<'a>(
        &self,
        collection: &str,
        before: &CollectionConfig,
        ttl_of: impl Fn(&str) -> Option<&'a TtlConfig>,
        others: &[(&str, &CounterDef)],
    ) -> Result<()> {
        for (index, def) in self.counters.iter().enumerate() {
            if let Some(ttl) = ttl_of(&def.target_collection)
                && self.defines_anew(&def.name, before)
                && overlap(&ttl.field, &def.target_field)
            {
                return Err(invalid(format!(
                    "counters[{index}].target {}.{} is that collection's TTL field {}, or holds it, or is held \
                     by it: a count read as a time would expire its document at once; give the counter \
                     another field",
                    def.target_collection, def.target_field, ttl.field
                )));
            }
        }
        if let Some(ttl) = &self.ttl
            && before.ttl.as_ref().is_none_or(|b| b.field != ttl.field)
            && let Some((source, def)) = others
                .iter()
                .copied()
                // Its own, too: one counting into its own collection is
                // refused now, but one stored before that rule loads.
                .chain(self.counters.iter().map(|d| (collection, d)))
                .find(|(_, d)| d.target_collection == collection && overlap(&ttl.field, &d.target_field))
        {
            return Err(invalid(format!(
                "ttl.field {} is counter {source}/{}'s target field {}, or holds it, or is held by it: a count \
                 read as a time would expire its document at once; give the TTL another field",
                ttl.field, def.name, def.target_field
            )));
        }
        Ok(())
    }

    /// Whether counter `name` is new here, or defined otherwise, against
    /// `before`.
    pub fn defines_anew(&self, name: &str, before: &CollectionConfig) -> bool {
        before.counter_json(name) != self.counter_json(name)
    }

    /// Counter `name`'s definition as `_config` shows it, if there is one.
    pub fn counter_json(&self, name: &str) -> Option<Value> {
        let index = self.counters.iter().position(|c| c.name == name)?;
        Some(self.to_json()["counters"][index].clone())
    }

    /// Refuses what a new declaration of counters on `collection` may not say,
    /// beyond what a stored configuration is checked for ([`Self::from_json`],
    /// which configurations stored before these rules still pass): a
    /// `where` that uses `$ago` (a document is counted by how old it was
    /// when it was written, and a delete judges it by how old it is then:
    /// one that stopped matching since is never taken out, and the count
    /// drifts for good), a
    /// `group_by`, `sum` or `where` naming a `_` field (bodies have none: the
    /// counter would count nothing, or a condition be about nothing), and a target in `collection` itself (a target is
    /// then also a source: deleting it would bring it back as its own count).
    /// A counter as it already is in `before` passes as it is.
    pub fn check_declared(&self, collection: &str, before: &CollectionConfig) -> Result<()> {
        for (index, def) in self.counters.iter().enumerate() {
            if !self.defines_anew(&def.name, before) {
                continue;
            }
            let what = format!("counters[{index}]");
            for (key, path) in [("group_by", Some(&def.group_by)), ("sum", def.sum.as_ref())] {
                if let Some(path) = path
                    && path.segments()[0].starts_with('_')
                {
                    return Err(invalid(format!(
                        "{what}.{key} {:?} names a `_` field, which documents' bodies never hold: the counter \
                         would count nothing",
                        path.to_string()
                    )));
                }
            }
            if def.is_time_relative() {
                return Err(invalid(format!(
                    "{what}.where uses $ago: a document would be counted by how old it was when written, \
                     and one that stopped matching since would never be taken out; count by fields that \
                     writes change (a flag a write sets, or a day bucket)"
                )));
            }
            if let Some(path) = def.filter.as_ref().and_then(Filter::reserved_path) {
                return Err(invalid(format!(
                    "{what}.where names {path}, a `_` field, which documents' bodies never hold: the condition \
                     would be about nothing it sees"
                )));
            }
            if def.target_collection == collection {
                return Err(invalid(format!(
                    "{what}.target is in {collection} itself: a counter's target must be in another collection \
                     (its increments would be writes of the documents it counts)"
                )));
            }
        }
        Ok(())
    }

    /// Refuses a configuration whose JSON passes [`CONFIG_BYTES_MAX`],
    /// unless it is `before` as it was (stored before the bound). Checked by
    /// the caller's thread: encoding a configuration near the body limit
    /// would hold the committer.
    pub fn check_size(&self, before: &CollectionConfig) -> Result<()> {
        let json = self.to_json();
        if json.to_string().len() > CONFIG_BYTES_MAX && json != before.to_json() {
            return Err(Error::LimitExceeded {
                what: "CONFIG_BYTES_MAX",
                limit: CONFIG_BYTES_MAX as u64,
            });
        }
        Ok(())
    }

    /// The JSON form, as stored and shown.
    pub fn to_json(&self) -> Value {
        let ttl = self
            .ttl
            .as_ref()
            .map_or(Value::Null, |t| json!({"field": t.field, "seconds": t.seconds}));
        let counters: Vec<Value> = self
            .counters
            .iter()
            .map(|c| {
                json!({"name": c.name, "group_by": c.group_by.to_string(), "where": c.filter_json,
                       "sum": c.sum.as_ref().map(|s| s.to_string()),
                       "target": {"c": c.target_collection, "field": c.target_field}, "mode": c.mode.name()})
            })
            .collect();
        let mut config = json!({"ttl": ttl, "counters": counters});
        // Only when set: a configuration stored without it can still be read
        // by a server from before the setting (which refuses unknown keys).
        if let Some(t) = self.tombstones {
            config["tombstones"] = json!({"keep_seconds": t.keep_seconds});
        }
        config
    }

    /// Whether the configuration asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.ttl.is_none() && self.counters.is_empty() && self.tombstones.is_none()
    }
}

/// Meta-space prefix of the counters waiting for their backfill:
/// `counter_backfill 0x00 collection 0x00 name` → the declaration's
/// generation (a counter record).
pub const BACKFILL_PREFIX: &[u8] = b"counter_backfill\0";

/// The meta-space key of counter `name` of `collection` waiting for its backfill.
pub fn backfill_key(collection: &str, name: &str) -> Vec<u8> {
    [BACKFILL_PREFIX, collection.as_bytes(), b"\0", name.as_bytes()].concat()
}

/// Adds to `configs` the counters of theirs waiting for a backfill in `view`;
/// a mark whose counter is gone (it cannot be, but a hand-edited directory
/// may hold one) is left out. Returns the highest generation.
pub fn read_backfills(
    view: &dyn crate::storage::StorageRead,
    configs: &mut std::collections::HashMap<String, CollectionConfig>,
) -> Result<u64> {
    let mut highest = 0;
    let prefix_end = crate::index::keys::prefix_end(BACKFILL_PREFIX);
    let marks = view.scan(
        crate::storage::Space::Meta,
        std::ops::Bound::Included(BACKFILL_PREFIX),
        prefix_end
            .as_deref()
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
        crate::storage::Direction::Forward,
        usize::MAX,
    )?;
    for (key, value) in marks {
        let generation = crate::record::decode_counter(&value)?;
        highest = highest.max(generation);
        if let Some((collection, name)) = backfill_of(&key)
            && let Some(config) = configs.get_mut(&collection)
            && config.counters.iter().any(|c| c.name == name)
        {
            config.backfilling.insert(name, generation);
        }
    }
    Ok(highest)
}

/// The collection and counter a [`backfill_key`] names.
pub fn backfill_of(key: &[u8]) -> Option<(String, String)> {
    let rest = key.strip_prefix(BACKFILL_PREFIX)?;
    let at = rest.iter().position(|&b| b == 0)?;
    Some((
        String::from_utf8(rest[..at].to_vec()).ok()?,
        String::from_utf8(rest[at + 1..].to_vec()).ok()?,
    ))
}

/// The meta-space key of `collection`'s configuration.
pub fn meta_key(collection: &str) -> Vec<u8> {
    format!("config\0{collection}").into_bytes()
}

/// The meta-space prefix of every configuration.
pub const META_PREFIX: &[u8] = b"config\0";

/// Whether a unique index of `spec` covers `counter`'s target field (in the
/// target's collection): the rule that refuses either being declared over
/// the other, as counters' increments are not checked against unique indexes.
pub(crate) fn unique_covers(spec: &crate::index::IndexSpec, counter: &CounterDef) -> bool {
    spec.unique && spec.fields.iter().any(|f| overlap(f, &counter.target_field))
}

/// Whether two dotted field paths are one field, or one holds the other.
pub(crate) fn overlap(a: &str, b: &str) -> bool {
    let holds = |outer: &str, inner: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    a == b || holds(a, b) || holds(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TTL declared over the field of a counter that counts into its own
    /// collection (stored before such counters were refused) is refused as
    /// one over another collection's counter is.
    #[test]
    fn a_ttl_over_an_own_counters_field_is_refused() {
        let stored = CollectionConfig::from_json(&json!({"counters": [{"name": "self", "group_by": "g",
            "target": {"c": "c", "field": "n"}}]}))
        .unwrap();
        let mut declared = stored.clone();
        declared.ttl = CollectionConfig::from_json(&json!({"ttl": {"field": "n", "seconds": 60}}))
            .unwrap()
            .ttl;
        let e = declared.check_ttl_apart("c", &stored, |_| None, &[]).unwrap_err();
        assert!(e.to_string().contains("counter c/self"), "{e}");
    }

    /// A misspelt key anywhere in a configuration is refused, not read as
    /// absent: a misspelt `where` would count every document.
    #[test]
    fn unknown_keys_are_refused_at_every_level() {
        let counter = json!({"name": "conf", "group_by": "camp", "where": {"status": "confirmed"},
                             "target": {"c": "metrics", "field": "conf"}, "mode": "in_commit"});
        CollectionConfig::from_json(&json!({"counters": [counter.clone()]})).unwrap();
        let mut misspelt = counter.clone();
        let filter = misspelt.as_object_mut().unwrap().remove("where").unwrap();
        misspelt["wehre"] = filter;
        let mut target = counter.clone();
        target["target"]["x"] = json!(1);
        let mut mode = counter.clone();
        mode["mode"] = json!(5);
        for (config, says) in [
            (json!({"counters": [misspelt]}), "\"wehre\""),
            (json!({"counters": [target]}), "\"x\""),
            (json!({"counters": [mode]}), "mode 5"),
            (json!({"ttl": {"field": "t", "seconds": 5, "x": 1}}), "\"x\""),
            (json!({"ttls": null}), "\"ttls\""),
            (json!({"tombstones": {"keep_seconds": 5, "x": 1}}), "\"x\""),
            (json!({"tombstones": {"keep": 5}}), "\"keep\""),
        ] {
            let error = CollectionConfig::from_json(&config).unwrap_err();
            assert_eq!(error.code(), "invalid_config", "{config}");
            assert!(error.to_string().contains(says), "{config}: {error}");
        }
    }

    /// A declaration is bounded by its JSON, whatever holds the bytes; one
    /// stored as it is passes again.
    #[test]
    fn a_declared_configuration_is_bounded() {
        let with = |filler: usize| {
            CollectionConfig::from_json(&json!({"ttl": {"field": "t", "seconds": 5},
                "counters": [{"name": "n", "group_by": "g", "where": {"s": "x".repeat(filler)},
                              "target": {"c": "metrics", "field": "n"}}]}))
            .unwrap()
        };
        let overhead = with(0).to_json().to_string().len();
        let largest = with(CONFIG_BYTES_MAX - overhead);
        assert_eq!(largest.to_json().to_string().len(), CONFIG_BYTES_MAX);
        let none = CollectionConfig::default();
        largest.check_size(&none).unwrap();
        let larger = with(CONFIG_BYTES_MAX - overhead + 1);
        match larger.check_size(&none) {
            Err(Error::LimitExceeded { what, limit }) => {
                assert_eq!((what, limit), ("CONFIG_BYTES_MAX", CONFIG_BYTES_MAX as u64));
            }
            other => panic!("{other:?}"),
        }
        let long_ttl = CollectionConfig::from_json(
            &json!({"ttl": {"field": "t".repeat(CONFIG_BYTES_MAX), "seconds": 5}}),
        )
        .unwrap();
        assert!(matches!(
            long_ttl.check_size(&none),
            Err(Error::LimitExceeded {
                what: "CONFIG_BYTES_MAX",
                ..
            })
        ));
        // Stored before the bound: declared again as it is, it passes.
        larger.check_size(&larger).unwrap();
        long_ttl.check_size(&long_ttl).unwrap();
    }

    #[test]
    fn api_md_example_round_trips() {
        let body = json!({"ttl": {"field": "lastSeen", "seconds": 30},
            "counters": [{"name": "confirmed", "group_by": "campaign_id",
                          "where": {"status": "confirmed"}, "sum": null,
                          "target": {"c": "campaign_metrics", "field": "confirmed_subscribers_count"},
                          "mode": "in_commit"}]});
        let config = CollectionConfig::from_json(&body).unwrap();
        // `tombstones` is left out when not set (kept for ever).
        assert_eq!(config.to_json(), body);
        assert_eq!(
            CollectionConfig::from_json(&config.to_json()).unwrap().to_json(),
            body
        );
        let purging = json!({"ttl": null, "counters": [], "tombstones": {"keep_seconds": 2_592_000}});
        let config = CollectionConfig::from_json(&purging).unwrap();
        assert_eq!(
            config.tombstones,
            Some(TombstonesConfig {
                keep_seconds: 2_592_000
            })
        );
        assert!(!config.is_empty());
        assert_eq!(config.to_json(), purging);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let bad = [
            json!([]),
            json!({"ttl": {"field": "t", "seconds": 0}}),
            json!({"ttl": {"field": "_t", "seconds": 5}}),
            json!({"counters": [{"name": "c", "group_by": "g", "target": {"c": "t"}}]}),
            json!({"counters": [{"name": "c", "group_by": "g", "target": {"c": "t", "field": "f"}, "mode": "later"}]}),
            json!({"counters": [{"name": "c", "group_by": "g", "target": {"c": "t", "field": "f"}},
                                {"name": "c", "group_by": "g", "target": {"c": "t", "field": "f"}}]}),
            json!({"indexes": []}),
            json!({"tombstones": {"keep_seconds": 0}}),
            json!({"tombstones": {"keep_seconds": TOMBSTONE_KEEP_SECONDS_MAX + 1}}),
            json!({"tombstones": {"keep_seconds": "30d"}}),
            json!({"tombstones": {}}),
            json!({"tombstones": 30}),
        ];
        for body in bad {
            assert!(
                matches!(CollectionConfig::from_json(&body), Err(Error::InvalidConfig(_))),
                "{body}"
            );
        }
    }
}
