//! OpenAI-compatible chat completions with `stream: true` and tools: OpenAI
//! itself, vLLM, Ollama and llama.cpp's server all speak it.
//!
//! Wire format: `POST {base_url}/chat/completions` with a bearer key; the
//! answer is Server-Sent Events, `data: {json}` lines with
//! `choices[0].delta.content` (text) or `choices[0].delta.tool_calls`
//! (`index`, then `id`, `function.name` and `function.arguments` in pieces to
//! concatenate), ending with `data: [DONE]`.
//!
//! The key is a [`Secret`] read from the environment variable the agent
//! names; it is sent, never logged. A stream that stays silent for
//! `stall_timeout` or grows past [`MAX_STREAM_BYTES`] is abandoned.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::llm::{ChatRequest, Llm, LlmError, LlmReply};
use super::{Message, Role, Secret, ToolCall};

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";
/// The most a single completion may stream.
pub const MAX_STREAM_BYTES: usize = 4 * 1024 * 1024;

/// A client for one OpenAI-compatible endpoint and model.
#[derive(Debug, Clone)]
pub struct OpenAiLlm {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<Secret>,
    /// Longest wait for the first or the next chunk.
    pub stall_timeout: Duration,
}

impl OpenAiLlm {
    pub fn new(
        http: reqwest::Client,
        base_url: Option<&str>,
        model: Option<&str>,
        api_key: Option<Secret>,
    ) -> Self {
        let base = base_url.unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        Self {
            http,
            url: format!("{base}/chat/completions"),
            model: model.unwrap_or(DEFAULT_MODEL).to_string(),
            api_key,
            stall_timeout: Duration::from_secs(30),
        }
    }

    fn body(&self, request: &ChatRequest<'_>) -> Value {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if let Some(system) = request.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.extend(request.messages.iter().map(wire_message));
        let mut body = json!({"model": self.model, "stream": true, "messages": messages});
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}})
                })
                .collect();
        }
        body
    }
}

fn wire_message(m: &Message) -> Value {
    match m.role {
        Role::User => json!({"role": "user", "content": m.content}),
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": m.tool_call_id.as_deref().unwrap_or_default(),
            "content": m.content,
        }),
        Role::Assistant if m.tool_calls.is_empty() => {
            json!({"role": "assistant", "content": m.content})
        }
        Role::Assistant => json!({
            "role": "assistant",
            "content": if m.content.is_empty() { Value::Null } else { Value::from(m.content.as_str()) },
            "tool_calls": m.tool_calls.iter().map(|c| json!({
                "id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.arguments}})).collect::<Vec<_>>(),
        }),
    }
}

/// Accumulates a streamed completion, chunk by chunk.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    text: String,
    calls: Vec<ToolCall>,
    done: bool,
}

impl Assembler {
    /// Takes one SSE line; returns the text delta it carried, if any.
    pub(crate) fn line(&mut self, line: &str) -> Result<Option<String>, LlmError> {
        let Some(data) = line.strip_prefix("data:") else {
            return Ok(None);
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        if data.is_empty() {
            return Ok(None);
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| LlmError::Protocol(e.to_string()))?;
        if let Some(err) = chunk.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error in stream");
            return Err(LlmError::Protocol(message.to_string()));
        }
        let Some(delta) = chunk.pointer("/choices/0/delta") else {
            return Ok(None);
        };
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if index > 64 {
                    return Err(LlmError::Protocol("tool call index out of range".into()));
                }
                while self.calls.len() <= index {
                    self.calls.push(ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                }
                let call = &mut self.calls[index];
                if let Some(id) = c.get("id").and_then(Value::as_str) {
                    call.id = id.to_string();
                }
                if let Some(name) = c.pointer("/function/name").and_then(Value::as_str) {
                    call.name.push_str(name);
                }
                if let Some(args) = c.pointer("/function/arguments").and_then(Value::as_str) {
                    call.arguments.push_str(args);
                }
            }
        }
        match delta.get("content").and_then(Value::as_str) {
            Some(text) if !text.is_empty() => {
                self.text.push_str(text);
                Ok(Some(text.to_string()))
            }
            _ => Ok(None),
        }
    }

    pub(crate) fn finish(mut self) -> Result<LlmReply, LlmError> {
        if !self.done {
            return Err(LlmError::Protocol("the stream ended before [DONE]".into()));
        }
        for (i, c) in self.calls.iter_mut().enumerate() {
            if c.id.is_empty() {
                c.id = format!("call_{i}");
            }
        }
        self.calls.retain(|c| !c.name.is_empty());
        Ok(LlmReply {
            text: self.text,
            tool_calls: self.calls,
        })
    }
}

#[async_trait::async_trait]
impl Llm for OpenAiLlm {
    async fn chat(
        &self,
        request: ChatRequest<'_>,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<LlmReply, LlmError> {
        let result = self.stream(request, on_delta).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics::AGENT_LLM_REQUESTS_TOTAL, "outcome" => outcome)
            .increment(1);
        result
    }
}

impl OpenAiLlm {
    async fn stream(
        &self,
        request: ChatRequest<'_>,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<LlmReply, LlmError> {
        let started = std::time::Instant::now();
        let mut first = true;
        let mut builder = self
            .http
            .post(&self.url)
            .header("accept", "text/event-stream")
            .json(&self.body(&request));
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        let stall = self.stall_timeout;
        let response = tokio::time::timeout(stall, builder.send())
            .await
            .map_err(|_| LlmError::Stalled(stall.as_secs()))?
            .map_err(|e| LlmError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            // An error body is read capped and within the stall timeout: a
            // server that never ends it cannot hold the call.
            let body = crate::net::error_text(response, 16 * 1024, stall).await;
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| body.chars().take(200).collect());
            return Err(LlmError::Status {
                status: status.as_u16(),
                message,
            });
        }
        let mut stream = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        let mut total = 0usize;
        let mut assembler = Assembler::default();
        // Bounded: every round reads a chunk within `stall` and the total
        // is capped at MAX_STREAM_BYTES.
        while !assembler.done {
            let next = tokio::time::timeout(stall, stream.next())
                .await
                .map_err(|_| LlmError::Stalled(stall.as_secs()))?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| LlmError::Unreachable(e.without_url().to_string()))?;
            if first {
                first = false;
                metrics::histogram!(crate::metrics::AGENT_LLM_FIRST_CHUNK_SECONDS)
                    .record(started.elapsed().as_secs_f64());
            }
            total += chunk.len();
            if total > MAX_STREAM_BYTES {
                return Err(LlmError::Protocol("the stream is too long".into()));
            }
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(delta) = assembler.line(line.trim_end_matches(['\r', '\n']))? {
                    on_delta(&delta);
                }
            }
        }
        if !buffer.is_empty() {
            let line = String::from_utf8_lossy(&buffer).into_owned();
            if let Some(delta) = assembler.line(line.trim_end())? {
                on_delta(&delta);
            }
        }
        assembler.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_tool_calls_are_assembled_from_chunks() {
        let mut a = Assembler::default();
        let lines = [
            r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"content":"Let me "}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"content":"check."}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Oslo\"}"}}]}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "",
            ": keep-alive comment",
            "data: [DONE]",
        ];
        let mut deltas = Vec::new();
        for l in lines {
            if let Some(d) = a.line(l).unwrap() {
                deltas.push(d);
            }
        }
        assert_eq!(deltas, vec!["Let me ", "check."]);
        let reply = a.finish().unwrap();
        assert_eq!(reply.text, "Let me check.");
        assert_eq!(
            reply.tool_calls,
            vec![ToolCall {
                id: "call_abc".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into()
            }]
        );
    }

    #[test]
    fn a_stream_without_done_or_with_an_error_fails() {
        let mut a = Assembler::default();
        a.line(r#"data: {"choices":[{"delta":{"content":"hi"}}]}"#)
            .unwrap();
        assert!(a.finish().is_err());
        let mut a = Assembler::default();
        assert!(
            a.line(r#"data: {"error":{"message":"overloaded"}}"#)
                .is_err()
        );
    }

    #[test]
    fn the_request_body_carries_history_and_tools() {
        let llm = OpenAiLlm::new(
            reqwest::Client::new(),
            Some("http://127.0.0.1:1/v1/"),
            None,
            None,
        );
        assert_eq!(llm.url, "http://127.0.0.1:1/v1/chat/completions");
        let mut call = Message::assistant("");
        call.tool_calls = vec![ToolCall {
            id: "c1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        }];
        let mut result = Message::new(Role::Tool, "42");
        result.tool_call_id = Some("c1".into());
        let messages = [Message::user("hi"), call, result];
        let tools = [super::super::ToolSpec {
            name: "f".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        }];
        let body = llm.body(&ChatRequest {
            system: Some("be brief"),
            messages: &messages,
            tools: &tools,
        });
        assert_eq!(body["stream"], true);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][2]["content"], Value::Null);
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");
        assert_eq!(body["tools"][0]["function"]["name"], "f");
    }
}
