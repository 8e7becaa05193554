//! The Replaces header (RFC 3891 §6.1): the dialog an INVITE takes over,
//! named by Call-ID and both tags. Parsed from an INVITE we receive and
//! printed into the Refer-To URI of an attended transfer's REFER (RFC 3891
//! §3 / RFC 5589 §7), where [`super::call`] escapes it as a URI header
//! field (RFC 3261 §19.1.1).
//!
//! ezk-sip-types has no Replaces header; this one is small and strict
//! rather than a general parameter parser: a value that does not fit the
//! grammar is refused (the caller answers 400), never guessed at.
//!
//! Must not: decide whether a Replaces matches a dialog (the call layer
//! does, with the trunk that sent it).

/// Longest Replaces value we read: a Call-ID and two tags, generously.
const MAX_LEN: usize = 512;

/// The dialog named by a Replaces header, as the party receiving the
/// INVITE sees it (§3): `to_tag` is compared to its local tag, `from_tag`
/// to its remote tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    pub to_tag: String,
    pub from_tag: String,
    /// `early-only` (§6.1): take over the dialog only while it is early.
    pub early_only: bool,
}

impl Replaces {
    /// Reads a Replaces header value (§6.1: `callid *(SEMI
    /// replaces-param)` with `to-tag` and `from-tag` both required).
    /// `None` when it does not fit.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        if value.is_empty() || value.len() > MAX_LEN || value.contains(',') {
            return None;
        }
        let mut parts = value.split(';');
        let call_id = parts.next()?.trim();
        if call_id.is_empty() || !call_id.bytes().all(is_word_byte) {
            return None;
        }
        let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
        for param in parts {
            let (name, value) = match param.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (param.trim(), None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("to-tag", Some(tag)) if is_token(tag) && to_tag.is_none() => {
                    to_tag = Some(tag.to_owned());
                }
                ("from-tag", Some(tag)) if is_token(tag) && from_tag.is_none() => {
                    from_tag = Some(tag.to_owned());
                }
                ("early-only", None) => early_only = true,
                // §6.1: generic parameters are allowed and ignored; a
                // repeated or malformed tag is not.
                ("to-tag" | "from-tag" | "early-only", _) => return None,
                (other, _) if is_token(other) => {}
                _ => return None,
            }
        }
        Some(Self {
            call_id: call_id.to_owned(),
            to_tag: to_tag?,
            from_tag: from_tag?,
            early_only,
        })
    }
}

/// §6.1 as printed: `callid;to-tag=..;from-tag=..` (unescaped; a URI
/// header field escapes it).
impl std::fmt::Display for Replaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{};to-tag={};from-tag={}",
            self.call_id, self.to_tag, self.from_tag
        )?;
        if self.early_only {
            f.write_str(";early-only")?;
        }
        Ok(())
    }
}

/// RFC 3261 §25.1 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// RFC 3261 §25.1 `word` (a Call-ID is `word [ "@" word ]`).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~()<>:\\\"/[]?{}@".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::Replaces;

    #[test]
    fn rfc_3891_examples_parse_and_print_back() {
        // §6.1's example, with its spacing.
        let r =
            Replaces::parse("98732@sip.example.com ;from-tag=r33th4x0r ;to-tag=ff87ff").unwrap();
        assert_eq!(r.call_id, "98732@sip.example.com");
        assert_eq!(r.from_tag, "r33th4x0r");
        assert_eq!(r.to_tag, "ff87ff");
        assert!(!r.early_only);
        assert_eq!(
            r.to_string(),
            "98732@sip.example.com;to-tag=ff87ff;from-tag=r33th4x0r"
        );
        let r =
            Replaces::parse("12adf2f34456gs5;to-tag=12345;from-tag=54321;early-only;x=1").unwrap();
        assert!(r.early_only);
        assert_eq!(Replaces::parse(&r.to_string()), Some(r));
    }

    #[test]
    fn what_does_not_fit_the_grammar_is_refused() {
        for bad in [
            "",
            "abc",
            "abc;to-tag=1",
            "abc;from-tag=1",
            ";to-tag=1;from-tag=2",
            "abc;to-tag=1;from-tag=2;to-tag=3",
            "abc;to-tag=;from-tag=2",
            "abc;to-tag=1;from-tag=2, def;to-tag=1;from-tag=2",
            "a b;to-tag=1;from-tag=2",
            "abc;to-tag=1\r\nVia: x;from-tag=2",
            "abc;to-tag=1;from-tag=2;early-only=yes",
        ] {
            assert_eq!(Replaces::parse(bad), None, "{bad:?}");
        }
        let long = format!("{};to-tag=1;from-tag=2", "a".repeat(600));
        assert_eq!(Replaces::parse(&long), None);
    }
}
