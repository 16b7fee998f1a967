//! Collections taking turns at one of the committer's bounded background
//! jobs (the TTL sweep, the tombstone purge): each job has a budget per
//! pass over all its collections, and each collection goes on where its
//! last turn stopped, so a large collection does not hold up the others and
//! many small ones do not cost a step each every pass.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use super::super::config::CollectionConfig;

/// The collections one background job works on, and where each stands.
pub(super) struct Turns {
    /// Whether a configuration asks for the job.
    wants: fn(&CollectionConfig) -> bool,
    /// The collections whose configuration asks for it, in turn order.
    collections: BTreeSet<String>,
    /// The collection whose turn came last: the next pass starts after it.
    last: Option<String>,
    /// Where each collection's next turn goes on (a storage key it stopped
    /// at), once it has had one.
    cursors: HashMap<String, Vec<u8>>,
}

impl Turns {
    /// The job `wants` of the collections of `configs`.
    pub(super) fn new(
        configs: &HashMap<String, CollectionConfig>,
        wants: fn(&CollectionConfig) -> bool,
    ) -> Turns {
        Turns {
            wants,
            collections: configs
                .iter()
                .filter(|(_, c)| wants(c))
                .map(|(name, _)| name.clone())
                .collect(),
            last: None,
            cursors: HashMap::new(),
        }
    }

    /// Follows `collection`'s new configuration: a collection that no longer
    /// asks for the job leaves it, and one that asks again starts over.
    pub(super) fn configured(&mut self, collection: &str, config: &CollectionConfig) {
        if (self.wants)(config) {
            self.collections.insert(collection.to_string());
        } else {
            self.collections.remove(collection);
            self.cursors.remove(collection);
        }
    }

    /// Whether no collection asks for the job.
    pub(super) fn is_empty(&self) -> bool {
        self.collections.is_empty()
    }

    /// Up to `max` collections, in the order of this pass's turns: from the
    /// one after the last whose turn came, round to it.
    pub(super) fn order(&self, max: usize) -> Vec<String> {
        let start = self.last.clone().unwrap_or_default();
        let after = (Bound::Excluded(start.clone()), Bound::Unbounded);
        self.collections
            .range(after)
            .chain(self.collections.range(..=start))
            .take(max)
            .cloned()
            .collect()
    }

    /// Records that `collection`'s turn came.
    pub(super) fn took(&mut self, collection: String) {
        self.last = Some(collection);
    }

    /// Where `collection`'s turn goes on, if it has had one.
    pub(super) fn cursor(&self, collection: &str) -> Option<&[u8]> {
        self.cursors.get(collection).map(Vec::as_slice)
    }

    /// Sets where `collection`'s next turn goes on (`None`: from its start).
    pub(super) fn set_cursor(&mut self, collection: &str, key: Option<Vec<u8>>) {
        match key {
            Some(key) => self.cursors.insert(collection.to_string(), key),
            None => self.cursors.remove(collection),
        };
    }
}
