//! Templates: the call's variables in what the agent says and is told.
//!
//! Two spellings of one rule. Scripted replies, greetings and actions use
//! single braces, `{first_name}`, beside the dialogue's slots; an LLM
//! agent's instructions and greeting use double braces, `{{first_name}}`,
//! because instructions often hold literal JSON. Either may carry a
//! default after a bar: `{first_name|there}`, `{{first_name|there}}`.
//!
//! The missing-variable rule: a variable the call does not have renders
//! its default, or nothing when the template gives none. Nothing is
//! refused at agent create or campaign start.
//!
//! Values are data, never template syntax: the template is scanned once
//! and what is put in is not scanned again, so a caller whose name is
//! `{{call_id}}` is greeted as exactly that.
//!
//! Must not: know where the values come from (the call layer builds the
//! [`AgentContext`]) or render anything but the placeholders.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest variable name a placeholder may use.
const MAX_NAME: usize = 64;
/// The longest default a placeholder may give.
const MAX_DEFAULT: usize = 200;

/// What one call tells its agent: the call id, the template variables
/// and the whole context document (for tool requests). Built once per
/// call by the call layer; chat sessions have none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentContext {
    /// `call_...`: tool requests name it.
    pub call_id: String,
    /// Flat string values by name, for the templates.
    pub vars: BTreeMap<String, String>,
    /// The call's context as stored on the call (a JSON object).
    pub document: serde_json::Value,
    /// The call's trunk's destination policy, which a transfer must pass
    /// besides the agent's own `transfer_targets`; none for chat.
    #[serde(skip)]
    pub transfer_check: TransferCheck,
}

/// A destination check the call layer hands its agent: `Err` says why the
/// number is refused. The agent never knows the policy, only the answer.
#[derive(Clone, Default)]
pub struct TransferCheck(Option<Arc<CheckFn>>);

/// `Err` with why `to` is refused.
type CheckFn = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl TransferCheck {
    pub fn new(check: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(check)))
    }

    /// Whether `to` (E.164) may be transferred to; anything without a
    /// check may.
    pub fn check(&self, to: &str) -> Result<(), String> {
        match &self.0 {
            Some(check) => check(to),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for TransferCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TransferCheck(set)"
        } else {
            "TransferCheck(none)"
        })
    }
}

/// Contexts compare by what they say; the check is not data.
impl PartialEq for TransferCheck {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl AgentContext {
    /// The context with one more fact known (the answering-machine
    /// verdict arrives after the agent was built): a template variable
    /// and a field of the document.
    pub fn with_fact(&self, name: &str, value: &str) -> Self {
        let mut next = self.clone();
        next.vars.insert(name.to_owned(), value.to_owned());
        if let Some(doc) = next.document.as_object_mut() {
            doc.insert(name.to_owned(), serde_json::Value::from(value));
        }
        next
    }
}

/// How placeholders are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Braces {
    /// `{name}` (scripted dialogues).
    Single,
    /// `{{name}}` (LLM instructions and greetings).
    Double,
}

impl Braces {
    fn delimiters(self) -> (&'static str, &'static str) {
        match self {
            Braces::Single => ("{", "}"),
            Braces::Double => ("{{", "}}"),
        }
    }
}

/// One placeholder found in a template: its name and default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder<'a> {
    pub name: &'a str,
    pub default: Option<&'a str>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses the inside of a placeholder (`name` or `name|default`).
fn parse_inner(inner: &str) -> Option<Placeholder<'_>> {
    let (name, default) = match inner.split_once('|') {
        Some((name, default)) => (name.trim(), Some(default)),
        None => (inner.trim(), None),
    };
    let default_ok = default
        .is_none_or(|d| d.chars().count() <= MAX_DEFAULT && !d.contains('{') && !d.contains('}'));
    (valid_name(name) && default_ok).then_some(Placeholder { name, default })
}

/// A piece of a template: text as it is, or a placeholder.
enum Piece<'a> {
    Text(&'a str),
    Hole(Placeholder<'a>),
}

/// Cuts `template` once into text and placeholders. Anything that is not
/// a well-formed placeholder is text.
fn scan(template: &str, braces: Braces) -> Vec<Piece<'_>> {
    let (open, close) = braces.delimiters();
    let mut out = Vec::new();
    let mut rest = template;
    // Bounded: every turn consumes at least one byte of `rest`.
    while let Some(at) = rest.find(open) {
        let after = &rest[at + open.len()..];
        // With single braces, `{{...}}` is the other spelling: text.
        if braces == Braces::Single && after.starts_with('{') {
            let step = at + after.find("}}").map_or(2, |end| open.len() + end + 2);
            out.push(Piece::Text(&rest[..step]));
            rest = &rest[step..];
            continue;
        }
        let parsed = after
            .find(close)
            .and_then(|end| parse_inner(&after[..end]).map(|p| (p, end)));
        match parsed {
            Some((p, end)) => {
                out.push(Piece::Text(&rest[..at]));
                out.push(Piece::Hole(p));
                rest = &after[end + close.len()..];
            }
            None => {
                let step = at + open.len();
                out.push(Piece::Text(&rest[..step]));
                rest = &rest[step..];
            }
        }
    }
    out.push(Piece::Text(rest));
    out
}

/// The placeholders of `template`, in order.
pub fn placeholders(template: &str, braces: Braces) -> Vec<Placeholder<'_>> {
    scan(template, braces)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Hole(h) => Some(h),
            Piece::Text(_) => None,
        })
        .collect()
}

/// Renders `template`: each placeholder is replaced by `lookup(name)`,
/// else its default, else nothing. One pass; values are not rescanned.
pub fn render<'v>(
    template: &str,
    braces: Braces,
    lookup: impl Fn(&str) -> Option<&'v str>,
) -> String {
    let mut out = String::with_capacity(template.len());
    for piece in scan(template, braces) {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Hole(p) => out.push_str(lookup(p.name).or(p.default).unwrap_or("")),
        }
    }
    out
}

/// Renders `template` with the variables of `context` (none: every
/// placeholder takes its default).
pub fn render_with(template: &str, braces: Braces, context: Option<&AgentContext>) -> String {
    render(template, braces, |name| {
        context.and_then(|c| c.vars.get(name)).map(String::as_str)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn placeholders_take_values_then_defaults_then_nothing() {
        let v = vars(&[("first_name", "Ada")]);
        let get = |n: &str| v.get(n).map(String::as_str);
        assert_eq!(
            render("Hi {first_name}, {x|friend}{y}!", Braces::Single, get),
            "Hi Ada, friend!"
        );
        assert_eq!(
            render("Hi {{first_name}} {{ last | there }}", Braces::Double, get),
            "Hi Ada  there "
        );
        // Single braces inside double ones are left alone, and vice versa.
        assert_eq!(
            render("{\"a\": 1} {{first_name}}", Braces::Single, get),
            "{\"a\": 1} {{first_name}}"
        );
        assert_eq!(
            render("{first_name} {\"a\": {{first_name}}}", Braces::Double, get),
            "{first_name} {\"a\": Ada}"
        );
    }

    #[test]
    fn values_are_never_expanded_again() {
        let v = vars(&[("first_name", "{{call_id}}"), ("call_id", "call_1")]);
        let get = |n: &str| v.get(n).map(String::as_str);
        assert_eq!(
            render("Hello {{first_name}}", Braces::Double, get),
            "Hello {{call_id}}"
        );
        let v = vars(&[("a", "{b}"), ("b", "secret")]);
        let get = |n: &str| v.get(n).map(String::as_str);
        assert_eq!(render("{a}", Braces::Single, get), "{b}");
    }

    #[test]
    fn malformed_placeholders_are_text() {
        let get = |_: &str| Some("X");
        for t in ["{", "}", "{ }", "{1a}", "{a b}", "{a|{b}}", "{{}}", "x{{y"] {
            let single = render(t, Braces::Single, get);
            assert!(!single.is_empty(), "{t}");
        }
        assert_eq!(render("{1a} {a-b}", Braces::Single, get), "{1a} {a-b}");
        let long = format!("{{{}}}", "n".repeat(MAX_NAME + 1));
        assert_eq!(render(&long, Braces::Single, get), long);
        assert_eq!(
            placeholders("{a|b} {c}", Braces::Single),
            vec![
                Placeholder {
                    name: "a",
                    default: Some("b")
                },
                Placeholder {
                    name: "c",
                    default: None
                }
            ]
        );
    }

    #[test]
    fn a_late_fact_joins_vars_and_document() {
        let c = AgentContext {
            call_id: "call_1".into(),
            vars: BTreeMap::new(),
            document: serde_json::json!({"call_id": "call_1"}),
            transfer_check: Default::default(),
        };
        let c = c.with_fact("answered_by", "human");
        assert_eq!(c.vars["answered_by"], "human");
        assert_eq!(c.document["answered_by"], "human");
    }
}
