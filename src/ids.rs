//! Opaque, prefixed, time-ordered identifiers (`agt_01j...`), in the style of
//! the platforms our users know. The ULID body sorts by creation time, so
//! listing by id is listing by age, and ids never collide across nodes.

/// The prefixes, one per kind of object.
pub const AGENT: &str = "agt";
pub const NUMBER: &str = "num";
pub const CALL: &str = "call";
pub const WEBHOOK_ENDPOINT: &str = "whk";
pub const API_KEY: &str = "key";
pub const EVENT: &str = "evt";
pub const DELIVERY: &str = "dlv";
pub const ATTEMPT: &str = "att";
pub const REQUEST: &str = "req";

/// A new id with the given prefix.
pub fn new(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Whether `id` looks like an id of the given kind (used to answer 404 early
/// for ids that cannot exist).
pub fn has_prefix(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|body| {
            !body.is_empty() && body.len() <= 64 && body.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_prefixed_unique_and_ordered() {
        let a = super::new(super::AGENT);
        let b = super::new(super::AGENT);
        assert!(a.starts_with("agt_"));
        assert_ne!(a, b);
        assert!(super::has_prefix(&a, super::AGENT));
        assert!(!super::has_prefix(&a, super::NUMBER));
    }
}
