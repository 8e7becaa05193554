//! Opaque, prefixed, time-ordered identifiers (`agt_01j...`), in the style of
//! the platforms our users know. The ULID body sorts by creation time, so
//! listing by id is listing by age, and ids never collide across nodes.
//!
//! Within one process ids are strictly increasing, even inside one
//! millisecond: contacts imported in one batch keep the file's order, which
//! is the order the dialer calls them in.

use std::sync::Mutex;

/// The process-wide monotonic ULID source.
// std Mutex: held only for one synchronous `generate`, never across `.await`
// (clippy's `await_holding_lock` checks it).
static GENERATOR: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());

/// The prefixes, one per kind of object.
pub const AGENT: &str = "agt";
pub const NUMBER: &str = "num";
pub const CALL: &str = "call";
pub const WEBHOOK_ENDPOINT: &str = "whk";
pub const API_KEY: &str = "key";
pub const EVENT: &str = "evt";
pub const DELIVERY: &str = "dlv";
pub const WEBHOOK_ATTEMPT: &str = "wha";
pub const REQUEST: &str = "req";
pub const CAMPAIGN: &str = "cmp";
pub const CONTACT: &str = "cnt";
pub const ATTEMPT: &str = "att";
pub const DNC: &str = "dnc";
pub const AUDIO: &str = "snd";
pub const CREDENTIAL: &str = "cred";
pub const CHAT_SESSION: &str = "chat";
pub const CHAT_MESSAGE: &str = "msg";
pub const PUBLISHABLE_KEY: &str = "pk";

/// A new id with the given prefix.
pub fn new(prefix: &str) -> String {
    let id = GENERATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .generate()
        // Overflow of the 80 random bits within one millisecond: still
        // unique, only that one id may sort out of order.
        .unwrap_or_else(|_| ulid::Ulid::new());
    format!("{prefix}_{}", id.to_string().to_lowercase())
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

    #[test]
    fn ids_made_in_one_burst_sort_in_creation_order() {
        let ids: Vec<String> = (0..2000).map(|_| super::new(super::CONTACT)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
}
