//! The call's context, built once per call, and the agent webhook that
//! may choose the call's agent.
//!
//! Owns: picking the inbound SIP headers that join the context (names
//! matching `[calls] context_headers`, bounded in count and length: the
//! caller controls them), the template variables the agent gets from the
//! context ([`agent_context`]), and the agent webhook ([`Hooks::ask`]): a
//! POST of the context signed as webhooks are (Standard Webhooks, through
//! the same address guard), whose answer, read bounded and validated like
//! an API body, names an agent or overrides for this call.
//!
//! Must not: write the call row (the phases record the context with the
//! call), or let a value a caller controls become template syntax, a SIP
//! header name, or a secret in the context.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::phase::AgentSpec;
use crate::agent::brain::AgentContext;
use crate::agent::speech::Speech;
use crate::agent::{BrainConfig, CallSettings, build_brain};
use crate::config::{CallsConfig, WebhooksConfig};
use crate::model::CallContext;
use crate::signing;
use crate::store::{Store, StoreError};

/// At most this many SIP headers join a context.
pub const MAX_SIP_HEADERS: usize = 20;
/// A SIP header value is cut to this many characters.
pub const MAX_SIP_HEADER_VALUE: usize = 256;
/// The longest SIP header name kept.
const MAX_SIP_HEADER_NAME: usize = 64;
/// Headers that never join a context, whatever the patterns say: they
/// carry credentials.
const NEVER: &[&str] = &["authorization", "proxy-authorization"];
/// The most of an agent webhook's answer read.
pub const MAX_HOOK_RESPONSE: usize = 64 * 1024;
/// The most variables an agent webhook may add.
const MAX_HOOK_VARIABLES: usize = 100;
/// The longest string value of a variable an agent webhook adds.
const MAX_VARIABLE_VALUE: usize = 1000;

/// Whether header `name` matches `pattern`: case-insensitive, `*` at the
/// end matches any rest (`X-*`), else the whole name.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            name.len() >= prefix.len()
                && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

/// A SIP header name as RFC 3261 §25.1 spells a token.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SIP_HEADER_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
}

/// The headers of an INVITE that join its context: names matching one of
/// `patterns` (never the credentials), first occurrence each, at most
/// [`MAX_SIP_HEADERS`], values without control characters and cut to
/// [`MAX_SIP_HEADER_VALUE`] characters.
pub fn sip_headers(patterns: &[String], headers: &[(String, String)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        if out.len() >= MAX_SIP_HEADERS {
            break;
        }
        if !is_token(name)
            || NEVER.iter().any(|n| name.eq_ignore_ascii_case(n))
            || !patterns.iter().any(|p| matches(p, name))
            || out.keys().any(|k: &String| k.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let value: String = value
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_SIP_HEADER_VALUE)
            .collect();
        out.insert(name.clone(), value);
    }
    out
}

/// A header's template variable: lowercase, `-` as `_` (`X-Customer-Id`
/// is `x_customer_id`).
fn header_var(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A variable's value as template text: strings as they are, numbers and
/// booleans written out; objects, arrays and null are not templates.
fn as_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The template variables of a context. Precedence, lowest first: the SIP
/// headers (`x_customer_id`), the variables (`first_name`), then the
/// call's own facts (`call_id`, `from`, `to`, `caller_name`, `direction`,
/// `trunk_id`, `number_id`, `agent_id`, `campaign_id`, `contact_id`,
/// `answered_by`), which nobody outside can overwrite.
pub fn vars(c: &CallContext) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (name, value) in &c.sip_headers {
        vars.insert(header_var(name), value.clone());
    }
    for (name, value) in &c.variables {
        if let Some(text) = as_text(value) {
            vars.insert(name.clone(), text);
        }
    }
    let facts = [
        ("call_id", Some(c.call_id.as_str())),
        ("direction", c.direction.map(|d| d.as_str())),
        ("from", Some(c.from.as_str())),
        ("to", Some(c.to.as_str())),
        ("caller_name", c.caller_name.as_deref()),
        ("trunk_id", c.trunk_id.as_deref()),
        ("number_id", c.number_id.as_deref()),
        ("agent_id", c.agent_id.as_deref()),
        ("campaign_id", c.campaign_id.as_deref()),
        ("contact_id", c.contact_id.as_deref()),
        ("answered_by", c.answered_by.map(|a| a.as_str())),
    ];
    for (name, value) in facts {
        if let Some(value) = value {
            vars.insert(name.to_owned(), value.to_owned());
        }
    }
    vars
}

/// What the agent of the call gets: the id, the variables and the whole
/// context document.
pub fn agent_context(c: &CallContext) -> AgentContext {
    AgentContext {
        call_id: c.call_id.clone(),
        vars: vars(c),
        document: serde_json::to_value(c).unwrap_or_default(),
        transfer_check: Default::default(),
    }
}

/// An agent webhook: where to ask, and the secret that signs the asking.
#[derive(Debug, Clone)]
pub struct AgentWebhook {
    pub url: String,
    /// `whsec_...`.
    pub secret: String,
}

/// What an agent webhook may answer: all optional; an empty object keeps
/// the number's (or campaign's) agent as it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookAnswer {
    /// Another agent for this call (`agt_...`).
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The greeting for this call (a template of the call's variables).
    #[serde(default)]
    pub greeting: Option<String>,
    /// The LLM instructions for this call (a template).
    #[serde(default)]
    pub instructions: Option<String>,
    /// The TTS voice for this call.
    #[serde(default)]
    pub voice: Option<String>,
    /// More template variables for this call; they win over the contact's.
    #[serde(default)]
    pub variables: BTreeMap<String, serde_json::Value>,
}

impl HookAnswer {
    /// The problems of an answer, as an API body's are named.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(id) = &self.agent_id
            && !crate::ids::has_prefix(id, crate::ids::AGENT)
        {
            out.push("agent_id: must be an agent id (agt_...)".to_owned());
        }
        if self
            .greeting
            .as_ref()
            .is_some_and(|g| g.chars().count() > 2000)
        {
            out.push("greeting: must be at most 2000 characters".to_owned());
        }
        if self
            .instructions
            .as_ref()
            .is_some_and(|i| i.chars().count() > 100_000)
        {
            out.push("instructions: must be at most 100000 characters".to_owned());
        }
        if let Some(voice) = &self.voice {
            let ok = !voice.is_empty()
                && voice.len() <= 100
                && voice
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
            if !ok {
                out.push("voice: must be a voice name (letters, digits, '-_.:')".to_owned());
            }
        }
        if self.variables.len() > MAX_HOOK_VARIABLES {
            out.push(format!("variables: at most {MAX_HOOK_VARIABLES} variables"));
        }
        for (name, value) in &self.variables {
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok {
                out.push(format!("variables.{name}: names are letters, digits and _"));
            }
            let value_ok = match value {
                serde_json::Value::String(s) => s.chars().count() <= MAX_VARIABLE_VALUE,
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => true,
                _ => false,
            };
            if !value_ok {
                out.push(format!(
                    "variables.{name}: must be a string of at most {MAX_VARIABLE_VALUE} characters, a number or a boolean"
                ));
            }
        }
        out
    }

    /// The agent's settings document with this answer's overrides: the
    /// greeting (also the script's own, which would win over the agent's),
    /// the instructions, the TTS voice.
    pub fn apply(&self, settings_json: &str) -> Result<String, String> {
        let mut doc: serde_json::Value =
            serde_json::from_str(settings_json).map_err(|e| e.to_string())?;
        let Some(obj) = doc.as_object_mut() else {
            return Err("agent settings are not an object".into());
        };
        if let Some(greeting) = &self.greeting {
            obj.insert("greeting".into(), greeting.clone().into());
            if let Some(script) = obj.get_mut("script").and_then(|s| s.as_object_mut())
                && script.contains_key("greeting")
            {
                script.insert("greeting".into(), greeting.clone().into());
            }
        }
        if let Some(instructions) = &self.instructions {
            obj.insert("instructions".into(), instructions.clone().into());
        }
        if let Some(voice) = &self.voice {
            match obj.get_mut("tts").and_then(|t| t.as_object_mut()) {
                Some(tts) => {
                    tts.insert("voice".into(), voice.clone().into());
                }
                None => {
                    obj.insert(
                        "tts".into(),
                        serde_json::json!({"provider": "embedded", "voice": voice}),
                    );
                }
            }
        }
        Ok(doc.to_string())
    }
}

/// Follows an agent webhook's answer: its agent (which must exist and be
/// readable) with its overrides, and its variables. On an error nothing
/// of the answer is taken: the call keeps `agent` and `context`.
pub(super) async fn follow(
    store: &Store,
    speech: &Speech,
    agent: &mut AgentSpec,
    context: &mut CallContext,
    answer: HookAnswer,
) -> Result<(), String> {
    let (id, kind, settings_json) = match &answer.agent_id {
        Some(id) => {
            let record = store.get_agent(id).await.map_err(|e| match e {
                StoreError::NotFound => format!("agent {id} not found"),
                e => format!("agent {id}: {e}"),
            })?;
            (id.clone(), record.kind, record.settings)
        }
        None => (
            agent.id.clone(),
            agent.kind.clone(),
            agent.settings_json.clone(),
        ),
    };
    let settings_json = answer.apply(&settings_json)?;
    let settings =
        CallSettings::from_json(&settings_json).map_err(|e| format!("overrides: {e}"))?;
    // An answer the agent cannot run with (a voice flite does not have,
    // a brain that cannot be built) falls back here, rather than failing
    // the call when the agent is built.
    if kind == "voice" {
        speech
            .check_tts(settings.tts.as_ref())
            .await
            .map_err(|e| format!("voice: {e}"))?;
        let brain = BrainConfig::from_settings(&settings_json).map_err(|e| e.to_string())?;
        build_brain(&brain).map_err(|e| format!("agent: {e}"))?;
    }
    *agent = AgentSpec {
        id,
        kind,
        settings,
        settings_json,
    };
    context.agent_id = Some(agent.id.clone());
    context.variables.extend(answer.variables);
    Ok(())
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // Bounded: error chains are short, and this stops at 8.
    for _ in 0..8 {
        let Some(s) = source else { break };
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The agent webhook's client: names resolve only through the address
/// guard (as webhook deliveries do), no redirects, one deadline.
pub(crate) struct Hooks {
    /// Built at the first call, from the process's outbound policy
    /// (installed at start, after the call layer is made).
    client: std::sync::OnceLock<Option<reqwest::Client>>,
    /// `[webhooks]`: the deliveries' client settings, shared.
    webhooks: WebhooksConfig,
    /// The whole exchange, connect to last byte.
    pub timeout: Duration,
    /// `[calls] context_headers`.
    pub header_patterns: Vec<String>,
}

impl Hooks {
    pub fn new(calls: &CallsConfig, webhooks: &WebhooksConfig) -> Self {
        Self {
            client: std::sync::OnceLock::new(),
            webhooks: webhooks.clone(),
            timeout: Duration::from_millis(calls.agent_webhook_timeout_ms),
            header_patterns: calls.context_headers.clone(),
        }
    }

    fn client(&self) -> Option<&reqwest::Client> {
        self.client
            .get_or_init(|| {
                crate::webhook::worker::http_client(&self.webhooks, crate::net::outbound())
                    .map_err(|e| tracing::warn!(error = %e, "no agent webhook client"))
                    .ok()
            })
            .as_ref()
    }

    /// Asks `hook` for the agent of the call of `context`; the answer, or
    /// why there is none (the caller falls back to its own agent).
    pub async fn ask(
        &self,
        hook: &AgentWebhook,
        context: &CallContext,
    ) -> Result<HookAnswer, String> {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.exchange(hook, context))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", self.timeout.as_millis())));
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &answer {
            Ok(_) => tracing::info!(elapsed_ms, "agent webhook answered"),
            Err(e) => {
                tracing::info!(elapsed_ms, error = %e, "agent webhook failed; the call keeps its agent")
            }
        }
        answer
    }

    async fn exchange(
        &self,
        hook: &AgentWebhook,
        context: &CallContext,
    ) -> Result<HookAnswer, String> {
        let late = || format!("no answer within {} ms", self.timeout.as_millis());
        let client = self.client().ok_or("no HTTP client")?;
        let url = reqwest::Url::parse(&hook.url).map_err(|_| "bad url".to_owned())?;
        crate::net::outbound()
            .guard()
            .check_literal(&url)
            .map_err(|e| e.to_string())?;
        let body = serde_json::json!({"type": "call.agent_request", "data": {"context": context}})
            .to_string();
        let id = crate::ids::new("msg");
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signing::sign(&hook.secret, &id, timestamp, body.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut response = client
            .post(url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    late()
                } else {
                    format!("request failed: {}", chain(&e.without_url()))
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered HTTP {}", status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_HOOK_RESPONSE as u64)
        {
            return Err(format!("answer over {MAX_HOOK_RESPONSE} bytes"));
        }
        let mut bytes = Vec::new();
        // Bounded: the body stops counting at the limit.
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("answer not read: {}", e.without_url()))?
        {
            if bytes.len() + chunk.len() > MAX_HOOK_RESPONSE {
                return Err(format!("answer over {MAX_HOOK_RESPONSE} bytes"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(HookAnswer::default());
        }
        let answer: HookAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| format!("answer is not a valid JSON object: {e}"))?;
        let problems = answer.problems();
        if problems.is_empty() {
            Ok(answer)
        } else {
            Err(format!("invalid answer: {}", problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Direction;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_matching_headers_join_bounded() {
        let patterns = vec!["X-*".to_owned(), "P-Asserted-Identity".to_owned()];
        let got = sip_headers(
            &patterns,
            &h(&[
                ("X-Customer-Id", "42"),
                ("x-customer-id", "43"),
                ("Via", "SIP/2.0/UDP 1.2.3.4"),
                ("P-Asserted-Identity", "<sip:+1@x>"),
                ("X-Bad\r\nInjected", "1"),
                ("X-Long", &"a\u{7}".repeat(1000)),
            ]),
        );
        assert_eq!(got["X-Customer-Id"], "42");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got["X-Long"].chars().count(), MAX_SIP_HEADER_VALUE);
        assert!(!got["X-Long"].contains('\u{7}'));
        let many: Vec<(String, String)> =
            (0..100).map(|i| (format!("X-H{i}"), "v".into())).collect();
        assert_eq!(sip_headers(&patterns, &many).len(), MAX_SIP_HEADERS);
        let star = vec!["*".to_owned()];
        let creds = sip_headers(&star, &h(&[("Authorization", "Digest x"), ("X-A", "1")]));
        assert_eq!(creds.len(), 1);
    }

    #[test]
    fn the_calls_own_facts_win_over_variables_and_headers() {
        let mut c = CallContext {
            call_id: "call_1".into(),
            direction: Some(Direction::Inbound),
            from: "+14155550100".into(),
            to: "+14155550199".into(),
            ..CallContext::default()
        };
        c.sip_headers.insert("X-Customer-Id".into(), "42".into());
        c.variables.insert("first_name".into(), "Ada".into());
        c.variables.insert("call_id".into(), "forged".into());
        c.variables.insert("age".into(), 36.into());
        c.variables
            .insert("nested".into(), serde_json::json!({"a": 1}));
        let v = vars(&c);
        assert_eq!(v["x_customer_id"], "42");
        assert_eq!(v["first_name"], "Ada");
        assert_eq!(v["call_id"], "call_1");
        assert_eq!(v["age"], "36");
        assert_eq!(v["direction"], "inbound");
        assert!(!v.contains_key("nested"));
    }

    #[test]
    fn hook_answers_are_validated_and_applied() {
        let bad: HookAnswer = serde_json::from_value(serde_json::json!({
            "agent_id": "nope", "voice": "a b", "variables": {"x y": 1, "o": {"a": 1}}
        }))
        .unwrap();
        assert_eq!(bad.problems().len(), 4, "{:?}", bad.problems());
        assert!(serde_json::from_str::<HookAnswer>(r#"{"agent": "agt_1"}"#).is_err());
        let good: HookAnswer = serde_json::from_value(serde_json::json!({
            "greeting": "Hi {first_name}", "voice": "kal", "instructions": "Be brief"
        }))
        .unwrap();
        assert!(good.problems().is_empty());
        let settings = good
            .apply(r#"{"script": {"greeting": "old", "start": "a"}, "tts": {"provider": "embedded", "voice": "slt"}}"#)
            .unwrap();
        let s: serde_json::Value = serde_json::from_str(&settings).unwrap();
        assert_eq!(s["greeting"], "Hi {first_name}");
        assert_eq!(s["script"]["greeting"], "Hi {first_name}");
        assert_eq!(s["tts"]["voice"], "kal");
        assert_eq!(s["instructions"], "Be brief");
    }
}
