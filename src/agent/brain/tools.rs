//! HTTP tools: when the LLM calls one, the daemon POSTs the arguments (JSON)
//! to the tool's URL, signed the way webhooks are (Standard Webhooks v1:
//! `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256 of "id.timestamp.body">` keyed with the decoded `whsec_`
//! secret), waits at most the tool's timeout, and feeds the answer back to
//! the LLM as the tool's result. On a call the body also carries the call
//! under `_call` (`{"id": "call_...", "context": {...}}`), signed with the
//! arguments; an argument the LLM names `_call` is replaced by it.
//!
//! A tool that fails (timeout, refused, non-2xx, arguments that are not a
//! JSON object or lack a `required` field) does not fail the reply: the LLM
//! gets `{"error": "..."}` and can say so. Secrets are never logged.
//!
//! The request goes through the outbound policy's client ([`crate::net`]):
//! the address guard at connect time, no redirects; the answer is read
//! within the tool's timeout and cut off past [`MAX_BODY_BYTES`].

use std::time::Duration;

use super::{AgentContext, Secret, ToolSpec};
use crate::signing::sign;

/// The longest tool answer fed back to the LLM.
const MAX_RESULT_BYTES: usize = 16 * 1024;
/// The most of a tool's answer read at all: a larger one is an error, not
/// a memory cost.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// An HTTP tool of an agent.
#[derive(Debug, Clone)]
pub struct HttpTool {
    pub name: String,
    pub description: String,
    pub url: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
    pub timeout: Duration,
    /// `whsec_...`: signs the request; `None` sends it unsigned.
    pub secret: Option<Secret>,
}

impl HttpTool {
    pub fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: self.parameters.clone(),
        }
    }
}

/// Checks `arguments` against the parts of the schema that matter most: an
/// object with the `required` properties present.
fn check_arguments(schema: &serde_json::Value, arguments: &str) -> Result<String, String> {
    let value: serde_json::Value = if arguments.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(arguments).map_err(|e| format!("arguments are not JSON: {e}"))?
    };
    let object = value.as_object().ok_or("arguments must be a JSON object")?;
    if let Some(required) = schema.get("required").and_then(|r| r.as_array()) {
        for name in required.iter().filter_map(|r| r.as_str()) {
            if !object.contains_key(name) {
                return Err(format!("missing required argument {name:?}"));
            }
        }
    }
    serde_json::to_string(&value).map_err(|e| e.to_string())
}

fn error_result(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// The key of a tool request's body that carries the call: the daemon's,
/// never the LLM's (an argument of that name is replaced).
pub const CALL_KEY: &str = "_call";

/// The request body: the arguments, and on a call the call under
/// [`CALL_KEY`] (its id and its context, signed with the rest), so that
/// the tool knows which call asks and what is known about it.
fn with_call(arguments: String, context: Option<&AgentContext>) -> String {
    let Some(context) = context else {
        return arguments;
    };
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(&arguments) else {
        return arguments;
    };
    object.insert(
        CALL_KEY.to_owned(),
        serde_json::json!({"id": context.call_id, "context": context.document}),
    );
    serde_json::Value::Object(object).to_string()
}

/// Calls `tool` with `arguments` on the call of `context` (none: a chat
/// session); the result is what the LLM reads.
pub async fn invoke(
    http: &reqwest::Client,
    tool: &HttpTool,
    arguments: &str,
    context: Option<&AgentContext>,
) -> String {
    let count = |outcome: &'static str| {
        metrics::counter!(crate::metrics::AGENT_TOOL_CALLS_TOTAL, "outcome" => outcome)
            .increment(1);
    };
    let body = match check_arguments(&tool.parameters, arguments) {
        Ok(b) => with_call(b, context),
        Err(e) => {
            count("bad_arguments");
            return error_result(&e);
        }
    };
    let id = crate::ids::new("tool");
    let timestamp = chrono::Utc::now().timestamp();
    let mut request = http
        .post(&tool.url)
        .timeout(tool.timeout)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(context) = context {
        // Also signed in the body; the header lets a proxy route by call.
        request = request.header("agentline-call-id", &context.call_id);
    }
    if let Some(secret) = &tool.secret {
        match sign(secret.expose(), &id, timestamp, body.as_bytes()) {
            Ok(sig) => request = request.header("webhook-signature", sig),
            Err(e) => {
                tracing::warn!(tool = %tool.name, error = %e, "tool not called");
                return error_result("the tool is misconfigured");
            }
        }
    }
    let started = std::time::Instant::now();
    let response = match request.body(body).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            count("timeout");
            tracing::info!(tool = %tool.name, "tool timed out");
            return error_result("the tool did not answer in time");
        }
        Err(e) => {
            count("unreachable");
            // The chain may name a resolved address; the LLM (and so the
            // caller) gets a generic message, the log the reason.
            tracing::info!(tool = %tool.name, error = %e.without_url(), "tool unreachable");
            return error_result("the tool could not be reached");
        }
    };
    let status = response.status();
    let left = tool.timeout.saturating_sub(started.elapsed());
    let result = crate::net::read_limited(response, MAX_BODY_BYTES, left)
        .await
        .map(|bytes| (status, bytes));
    match result {
        Ok((status, bytes)) if status.is_success() => {
            count("ok");
            tracing::debug!(tool = %tool.name, %status, elapsed_ms = started.elapsed().as_millis() as u64, "tool answered");
            let mut end = bytes.len().min(MAX_RESULT_BYTES);
            // Cut on a character boundary, not inside one.
            while end > 0 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
                end -= 1;
            }
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        }
        Ok((status, _)) => {
            count("refused");
            tracing::info!(tool = %tool.name, %status, "tool refused");
            error_result(&format!("the tool answered HTTP {}", status.as_u16()))
        }
        Err(crate::net::ReadError::Timeout) => {
            count("timeout");
            tracing::info!(tool = %tool.name, "tool answer timed out");
            error_result("the tool did not answer in time")
        }
        Err(e) => {
            count("unreachable");
            tracing::info!(tool = %tool.name, error = %e, "tool answer unreadable");
            error_result(&format!("the tool's answer was refused: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_against_required() {
        let schema = serde_json::json!({"type": "object", "required": ["city"]});
        assert!(check_arguments(&schema, r#"{"city": "Oslo"}"#).is_ok());
        assert!(check_arguments(&schema, r#"{}"#).is_err());
        assert!(check_arguments(&schema, "[1]").is_err());
        assert!(check_arguments(&schema, "{not json").is_err());
    }

    #[test]
    fn the_call_rides_with_the_arguments_and_the_llm_cannot_forge_it() {
        let context = AgentContext {
            call_id: "call_1".into(),
            vars: Default::default(),
            document: serde_json::json!({"sip_headers": {"X-Customer-Id": "42"}}),
            transfer_check: Default::default(),
        };
        let body = with_call(
            r#"{"city":"Oslo","_call":{"id":"call_x"}}"#.into(),
            Some(&context),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["city"], "Oslo");
        assert_eq!(v["_call"]["id"], "call_1");
        assert_eq!(v["_call"]["context"]["sip_headers"]["X-Customer-Id"], "42");
        assert_eq!(with_call("{}".into(), None), "{}");
    }

    #[tokio::test]
    async fn an_unreachable_tool_gives_an_error_result() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tool = HttpTool {
            name: "t".into(),
            description: String::new(),
            url: format!("http://127.0.0.1:{port}/"),
            parameters: serde_json::json!({"type": "object"}),
            timeout: Duration::from_millis(500),
            secret: None,
        };
        let out = invoke(&reqwest::Client::new(), &tool, "{}", None).await;
        assert!(out.contains("error"), "{out}");
    }
}
