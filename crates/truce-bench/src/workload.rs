//! What the two workloads share on both sides: the data set and its documents.

use rand::Rng;

/// Documents in the spread-writes data set.
pub const SPREAD_DOCS: u64 = 100_000;

/// About 100 bytes of filler that every spread-writes document carries.
pub const PAYLOAD: &str = "the quick brown fox jumps over the lazy dog; \
pack my box with five dozen liquor jugs; sphinx of black quartz";

/// The body of a spread-writes document at write number `v`.
pub fn spread_body(v: u64) -> serde_json::Value {
    serde_json::json!({ "v": v, "payload": PAYLOAD })
}

/// A uniformly random document number of the spread-writes data set.
pub fn random_doc(rng: &mut impl Rng) -> u64 {
    rng.random_range(0..SPREAD_DOCS)
}

/// The Truce id of document number `n`.
pub fn doc_id(n: u64) -> String {
    format!("d{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_about_100_bytes() {
        assert!((90..=130).contains(&PAYLOAD.len()), "{}", PAYLOAD.len());
        assert_eq!(spread_body(3)["v"], 3);
    }
}
