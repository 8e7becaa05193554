//! A call's structured result, made after the call from what was said: the
//! agent's `analysis` settings (a JSON Schema of the fields to extract and
//! an optional success criterion), their validation, and the extraction
//! itself. With the scripted brain the result is the dialogue's filled
//! slots and its final state (no model is asked); with an LLM agent the
//! agent's OpenAI-compatible model is asked once, for a JSON object
//! (`response_format: json_object`), with the transcript.
//!
//! [`analyze`] never fails: a model that errs, times out or answers
//! something else gives a result with `status: "failed"` and the `error`,
//! so the call still gets its result and its `call.analyzed` event.
//!
//! Must not: import `call`, `store` or `api` (the call layer runs it off
//! the call's path and stores the result); log the API key or the
//! transcript.

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::brain::Role;
use super::session::Said;
use super::{BrainConfig, LlmConfig, LlmKind};

/// Largest `schema`, as JSON text.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// Most fields a schema may ask for.
pub const MAX_FIELDS: usize = 50;
/// Deepest nesting of a schema.
const MAX_DEPTH: usize = 6;
/// Longest success criterion.
pub const MAX_CRITERION_CHARS: usize = 2000;
/// How long the model may take to answer, whole.
const LLM_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of the model's answer read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Largest result kept (its JSON text): it goes on the call and in the
/// event.
const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Most of the transcript sent (its end: the outcome is there).
const MAX_TRANSCRIPT_CHARS: usize = 60_000;

/// An agent's `analysis`: what to extract from each call once it ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSettings {
    /// A JSON Schema object of the fields to extract: `{"type": "object",
    /// "properties": {"day": {"type": "string", "description": "..."}},
    /// "required": ["day"]}`. At most 50 fields and 16 KiB. The scripted
    /// brain fills it from its slots of the same names (all its slots when
    /// left out).
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// What makes a call a success, in words, judged by the LLM (`success`
    /// in the result). The scripted brain's success is every `required`
    /// field filled.
    #[schema(max_length = 2000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_criterion: Option<String>,
}

impl AnalysisSettings {
    /// What is wrong, as (field under `analysis`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |f: &str, m: &str| out.push((f.to_string(), m.to_string()));
        if let Some(c) = &self.success_criterion {
            let n = c.chars().count();
            if c.trim().is_empty() || n > MAX_CRITERION_CHARS {
                bad(
                    "success_criterion",
                    &format!("must be 1 to {MAX_CRITERION_CHARS} characters"),
                );
            }
        }
        let Some(schema) = &self.schema else {
            return out;
        };
        if serde_json::to_string(schema).map_or(usize::MAX, |s| s.len()) > MAX_SCHEMA_BYTES {
            bad(
                "schema",
                &format!("must be at most {MAX_SCHEMA_BYTES} bytes of JSON"),
            );
            return out;
        }
        if depth(schema) > MAX_DEPTH {
            bad(
                "schema",
                &format!("must be nested at most {MAX_DEPTH} levels deep"),
            );
            return out;
        }
        let Some(obj) = schema.as_object() else {
            bad("schema", "must be a JSON Schema object");
            return out;
        };
        if obj.get("type").is_some_and(|t| t != "object") {
            bad("schema.type", "must be \"object\"");
        }
        let props = match obj.get("properties").and_then(Value::as_object) {
            Some(p) if !p.is_empty() && p.len() <= MAX_FIELDS => p,
            _ => {
                bad(
                    "schema.properties",
                    &format!("must be an object of 1 to {MAX_FIELDS} fields"),
                );
                return out;
            }
        };
        for (name, prop) in props {
            let field = format!("schema.properties.{name}");
            let ok_name = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok_name {
                bad(&field, "names must be 1 to 64 letters, digits or '_'");
            }
            match prop.get("type").and_then(Value::as_str) {
                Some("string" | "number" | "integer" | "boolean" | "array" | "object") => {}
                _ if prop.get("enum").is_some_and(Value::is_array) => {}
                _ => bad(
                    &format!("{field}.type"),
                    "must be string, number, integer, boolean, array or object (or give an enum)",
                ),
            }
        }
        match obj.get("required") {
            None => {}
            Some(Value::Array(names)) => {
                for (i, n) in names.iter().enumerate() {
                    if !n.as_str().is_some_and(|n| props.contains_key(n)) {
                        bad(&format!("schema.required[{i}]"), "must name a property");
                    }
                }
            }
            Some(_) => bad("schema.required", "must be an array of property names"),
        }
        out
    }

    fn properties(&self) -> Option<&Map<String, Value>> {
        self.schema
            .as_ref()
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
    }

    fn required(&self) -> Vec<&str> {
        self.schema
            .as_ref()
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// How a call of one agent is analyzed: its settings and, for an LLM
/// agent, the model to ask.
#[derive(Debug, Clone)]
pub struct Plan {
    settings: AnalysisSettings,
    llm: Option<LlmConfig>,
}

impl Plan {
    /// The plan for an agent with `settings` and the brain `brain`.
    pub fn new(settings: AnalysisSettings, brain: &BrainConfig) -> Self {
        let llm = brain.llm.clone().filter(|l| l.kind == LlmKind::OpenAi);
        Plan { settings, llm }
    }
}

/// One ended call to analyze: the plan, the transcript and the brain's
/// final state (the scripted dialogue's state and slots).
#[derive(Debug, Clone)]
pub struct Job {
    pub plan: Plan,
    pub said: Vec<Said>,
    pub state: Value,
}

/// The call's result, as stored and shown (`analysis` on the call).
pub async fn analyze(job: &Job) -> Value {
    match &job.plan.llm {
        None => scripted(&job.plan.settings, &job.state),
        Some(llm) => match ask(llm, &job.plan.settings, &job.said).await {
            Ok((data, _)) if data.to_string().len() > MAX_RESULT_BYTES => failed(
                "llm",
                &format!("the model's fields are over {MAX_RESULT_BYTES} bytes"),
            ),
            Ok((data, success)) => result("llm", "completed", data, success, None),
            Err(e) => failed("llm", &e),
        },
    }
}

/// A result the call could not be analyzed into (the queue was full, the
/// task failed): stored like any other so the event is not lost.
pub fn failed(source: &str, error: &str) -> Value {
    result(source, "failed", Value::Null, None, Some(error))
}

fn result(
    source: &str,
    status: &str,
    data: Value,
    success: Option<bool>,
    error: Option<&str>,
) -> Value {
    json!({
        "status": status,
        "source": source,
        "data": data,
        "success": success,
        "error": error,
        "analyzed_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// The scripted brain's slots, as the schema's fields (all of them when
/// it names none), and its final state.
fn scripted(settings: &AnalysisSettings, state: &Value) -> Value {
    let slots = state.get("slots").and_then(Value::as_object);
    let mut data = Map::new();
    match settings.properties() {
        Some(props) => {
            for (name, prop) in props {
                let value = slots
                    .and_then(|s| s.get(name))
                    .and_then(Value::as_str)
                    .map_or(Value::Null, |v| typed(v, prop));
                data.insert(name.clone(), value);
            }
        }
        None => {
            if let Some(slots) = slots {
                data.extend(slots.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }
    let required = settings.required();
    let success = (!required.is_empty()).then(|| {
        required
            .iter()
            .all(|r| data.get(*r).is_some_and(|v| !v.is_null()))
    });
    let mut out = result("script", "completed", Value::Object(data), success, None);
    out["state"] = state.get("state").cloned().unwrap_or(Value::Null);
    out
}

/// A slot's text as the type its property declares (text when it does not
/// read as that type).
fn typed(text: &str, prop: &Value) -> Value {
    let parsed = match prop.get("type").and_then(Value::as_str) {
        Some("integer") => text.trim().parse::<i64>().ok().map(Value::from),
        Some("number") => text.trim().parse::<f64>().ok().map(Value::from),
        Some("boolean") => match text.trim().to_ascii_lowercase().as_str() {
            "yes" | "true" => Some(Value::Bool(true)),
            "no" | "false" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(text.to_string()))
}

/// The transcript as the model reads it, its end kept when too long.
fn transcript_text(said: &[Said]) -> String {
    let lines: Vec<String> = said
        .iter()
        .map(|s| {
            let who = if s.role == Role::User {
                "caller"
            } else {
                "agent"
            };
            let text = s.heard.as_deref().unwrap_or(&s.text);
            format!("{who}: {text}")
        })
        .collect();
    let all = lines.join("\n");
    let n = all.chars().count();
    if n <= MAX_TRANSCRIPT_CHARS {
        all
    } else {
        all.chars().skip(n - MAX_TRANSCRIPT_CHARS).collect()
    }
}

fn instructions(settings: &AnalysisSettings) -> String {
    let schema = settings
        .schema
        .as_ref()
        .map_or_else(|| "{}".to_string(), Value::to_string);
    let mut text = format!(
        "You read the transcript of a phone call between an agent and a caller and extract \
         structured data from it. Answer with one JSON object and nothing else: \
         {{\"data\": {{...}}, \"success\": true or false}}. \"data\" follows this JSON Schema: \
         {schema}. Use null for anything the call did not establish; never invent values."
    );
    match &settings.success_criterion {
        Some(c) => text.push_str(&format!(
            " \"success\" says whether the call met this criterion: {c}"
        )),
        None => text.push_str(" \"success\" is null."),
    }
    text
}

/// Asks the agent's model for the fields and the success.
async fn ask(
    llm: &LlmConfig,
    settings: &AnalysisSettings,
    said: &[Said],
) -> Result<(Value, Option<bool>), String> {
    let base = llm
        .base_url
        .as_deref()
        .unwrap_or(super::brain::openai::DEFAULT_BASE_URL)
        .trim_end_matches('/');
    // The same outbound policy as the call's LLM: the address guard, and a
    // key only toward the hosts the operator bound it to.
    let url = super::checked_url("llm.base_url", base).map_err(|e| e.to_string())?;
    let key = match (&llm.api_key, llm.api_key_env.as_deref()) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(name)) => {
            Some(super::bound_secret("llm.api_key_env", name, &url).map_err(|e| e.to_string())?)
        }
        (None, None) => None,
    };
    let model = llm
        .model
        .as_deref()
        .unwrap_or(super::brain::openai::DEFAULT_MODEL);
    let body = json!({
        "model": model,
        "stream": false,
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": instructions(settings)},
            {"role": "user", "content": transcript_text(said)},
        ],
    });
    let http = super::http().map_err(|e| e.to_string())?;
    let mut request = http
        .post(format!("{base}/chat/completions"))
        .timeout(LLM_TIMEOUT)
        .json(&body);
    if let Some(k) = &key {
        request = request.bearer_auth(k.expose());
    }
    let scrub = |e: String| super::vendors::scrub(&e, key.as_ref());
    let answer = tokio::time::timeout(LLM_TIMEOUT, async {
        let response = request.send().await.map_err(|e| scrub(e.to_string()))?;
        let status = response.status();
        let mut bytes = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| scrub(e.to_string()))?;
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!("the answer is over {MAX_ANSWER_BYTES} bytes"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(format!("the model answered {status}"));
        }
        Ok(bytes)
    })
    .await
    .map_err(|_| format!("the model did not answer within {LLM_TIMEOUT:?}"))??;
    read_answer(&answer, settings)
}

/// The fields and the success from a chat completion's body.
fn read_answer(body: &[u8], settings: &AnalysisSettings) -> Result<(Value, Option<bool>), String> {
    let completion: Value =
        serde_json::from_slice(body).map_err(|e| format!("not a chat completion: {e}"))?;
    let content = completion
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or("the completion has no message content")?;
    let answer: Value = serde_json::from_str(content.trim())
        .map_err(|e| format!("the model did not answer JSON: {e}"))?;
    let Value::Object(mut answer) = answer else {
        return Err("the model did not answer a JSON object".into());
    };
    let success = settings
        .success_criterion
        .as_ref()
        .and(answer.get("success"))
        .and_then(Value::as_bool);
    let fields = match answer.remove("data") {
        Some(Value::Object(data)) => data,
        _ => {
            answer.remove("success");
            answer
        }
    };
    // Only the fields asked for, each of its declared type (else null).
    let data = match settings.properties() {
        Some(props) => props
            .iter()
            .map(|(name, prop)| {
                let v = fields.get(name).cloned().unwrap_or(Value::Null);
                let fits = match prop.get("type").and_then(Value::as_str) {
                    _ if v.is_null() => true,
                    Some("string") => v.is_string(),
                    Some("number") => v.is_number(),
                    Some("integer") => v.is_i64() || v.is_u64(),
                    Some("boolean") => v.is_boolean(),
                    Some("array") => v.is_array(),
                    Some("object") => v.is_object(),
                    _ => prop
                        .get("enum")
                        .and_then(Value::as_array)
                        .is_none_or(|e| e.contains(&v)),
                };
                (name.clone(), if fits { v } else { Value::Null })
            })
            .collect(),
        None => fields,
    };
    Ok((Value::Object(data), success))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking() -> AnalysisSettings {
        serde_json::from_value(json!({
            "schema": {"type": "object", "properties": {
                "day": {"type": "string"}, "party": {"type": "integer"}},
                "required": ["day"]},
            "success_criterion": "A table was booked"
        }))
        .unwrap()
    }

    #[test]
    fn settings_are_bounded_and_named() {
        assert!(booking().problems().is_empty());
        let bad: AnalysisSettings = serde_json::from_value(json!({
            "schema": {"type": "array", "properties": {"a b": {"type": "date"}}, "required": ["x"]},
            "success_criterion": ""
        }))
        .unwrap();
        let fields: Vec<String> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "success_criterion",
                "schema.type",
                "schema.properties.a b",
                "schema.properties.a b.type",
                "schema.required[0]"
            ]
        );
        let big = AnalysisSettings {
            schema: Some(
                json!({"properties": {"a": {"type": "string", "description": "x".repeat(20_000)}}}),
            ),
            success_criterion: None,
        };
        assert_eq!(big.problems()[0].0, "schema");
        let mut deep = json!({"type": "string"});
        for _ in 0..10 {
            deep = json!({"items": deep});
        }
        let deep = AnalysisSettings {
            schema: Some(json!({"properties": {"a": deep}})),
            success_criterion: None,
        };
        assert_eq!(deep.problems()[0].0, "schema");
    }

    #[test]
    fn the_script_gives_its_slots_and_state() {
        let state = json!({"state": "done", "slots": {"day": "tuesday", "party": "4", "x": "y"}});
        let r = scripted(&booking(), &state);
        assert_eq!(r["data"], json!({"day": "tuesday", "party": 4}));
        assert_eq!(r["success"], true);
        assert_eq!(r["state"], "done");
        assert_eq!(r["source"], "script");
        let r = scripted(
            &AnalysisSettings::default(),
            &json!({"state": "main", "slots": {}}),
        );
        assert_eq!(r["data"], json!({}));
        assert_eq!(r["success"], Value::Null);
        let r = scripted(&booking(), &json!({"state": "main", "slots": {}}));
        assert_eq!(r["success"], false);
    }

    #[test]
    fn the_models_answer_is_held_to_the_schema() {
        let body = json!({"choices": [{"message": {"content":
            "{\"data\": {\"day\": \"friday\", \"party\": \"four\", \"extra\": 1}, \"success\": true}"}}]});
        let (data, success) = read_answer(body.to_string().as_bytes(), &booking()).unwrap();
        assert_eq!(data, json!({"day": "friday", "party": null}));
        assert_eq!(success, Some(true));
        let bad = json!({"choices": [{"message": {"content": "sure!"}}]});
        assert!(read_answer(bad.to_string().as_bytes(), &booking()).is_err());
    }
}
