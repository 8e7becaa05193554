//! The brain: what the agent says and does in answer to the caller.
//!
//! A [`Brain`] takes a [`Conversation`] (the history plus the brain's own
//! state, both serializable so a chat session or a call can be stored and
//! resumed) and one [`Input`] (the caller's words after end of turn, or DTMF
//! digits), streams its reply as [`BrainEvent`]s (text deltas as they come,
//! then [`Action`]s for the call layer) and records the turn in the history.
//!
//! Two brains: [`scripted::ScriptedBrain`] (a dialogue defined in the agent's
//! config, no account needed) and [`LlmBrain`] (any [`Llm`], with HTTP tools
//! and the built-in actions offered as tools). Cancelling is dropping the
//! future: a barge-in drops the reply in flight (and with it the LLM's HTTP
//! stream and any tool request) and calls
//! [`Conversation::record_interrupted`] with what the caller heard.
//!
//! Must not: import `call`, `store` or `api`.

pub mod llm;
pub mod openai;
pub mod scripted;
pub mod template;
pub mod tools;

pub use llm::{ChatRequest, Llm, LlmBrain, LlmError, LlmReply, ToolSpec};
pub use template::{AgentContext, TransferCheck};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    /// The result of a tool call, fed back to the LLM.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A tool call an LLM asked for; `arguments` is JSON text as the LLM wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// One message of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Tool calls of an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An assistant message cut short by a barge-in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            interrupted: false,
        }
    }
}

/// The history of a conversation and the brain's own state (for the
/// scripted brain: the dialogue state and the slots).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
    #[serde(default)]
    pub state: serde_json::Value,
    /// The call this conversation is on (its variables fill the
    /// templates, tool requests carry it); `None` for a chat session.
    /// Not stored: the call's context is on the call.
    #[serde(skip)]
    pub context: Option<std::sync::Arc<AgentContext>>,
}

impl Conversation {
    /// A barge-in cut the reply in flight: keep what the caller heard of it
    /// as the agent's last message, marked interrupted. A reply the brain
    /// had already recorded whole is cut down instead.
    pub fn record_interrupted(&mut self, heard: &str) {
        match self.messages.last_mut() {
            Some(last) if last.role == Role::Assistant && last.tool_calls.is_empty() => {
                last.content = heard.to_string();
                last.interrupted = true;
            }
            _ => {
                let mut m = Message::assistant(heard);
                m.interrupted = true;
                self.messages.push(m);
            }
        }
    }
}

/// What the caller gave the brain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Input {
    /// A finished turn's transcript (or a chat message).
    Text(String),
    /// DTMF digits, in the order pressed.
    Dtmf(String),
}

impl Input {
    /// How the input reads in the history.
    pub fn as_history(&self) -> String {
        match self {
            Input::Text(t) => t.clone(),
            Input::Dtmf(d) => format!("[DTMF {d}]"),
        }
    }
}

/// What the brain asks the call layer to do, after the reply text is spoken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Hang up once the goodbye has played.
    Hangup,
    /// Transfer the call to a number (E.164).
    Transfer { to: String },
    /// Warm transfer: call `to` on a second leg, tell the person there
    /// `summary` (or the transcript's gist), then join them with the
    /// caller; if they do not take the call the agent goes on. `attended`:
    /// join them by asking the caller's side to call the person with SIP
    /// REFER and Replaces (RFC 5589 §7), the daemon's bridge only when that
    /// is refused.
    WarmTransfer {
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        attended: bool,
    },
    /// Send DTMF digits to the far end.
    SendDtmf { digits: String },
    /// The end-of-call summary, stored with the call.
    Summary { text: String },
    /// The callee asked not to be called again: once the goodbye has played
    /// the call ends as `opted_out`, and a campaign puts the number on the
    /// do-not-call list.
    OptOut,
    /// Stop recording the call until `resume_recording` (a payment step):
    /// the span is silent in the file and marked in the transcript.
    PauseRecording,
    /// Record the call again after `pause_recording`.
    ResumeRecording,
}

/// One piece of a reply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrainEvent {
    /// More reply text; feed it to a [`crate::agent::chunker::Chunker`].
    Delta(String),
    Action(Action),
}

/// A whole reply, as also streamed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub actions: Vec<Action>,
}

/// Why a reply failed.
#[derive(Debug, thiserror::Error)]
pub enum BrainError {
    #[error("llm: {0}")]
    Llm(#[from] LlmError),
    /// The brain's configuration cannot work (a missing secret, say).
    #[error("configuration: {0}")]
    Config(String),
    /// The stored state does not belong to this brain.
    #[error("state: {0}")]
    State(String),
}

/// Where a brain streams its reply. The receiver may be gone (a chat client
/// that hung up); sending then does nothing.
pub type Sink = UnboundedSender<BrainEvent>;

/// A dialogue engine. Stateless itself: everything that changes lives in the
/// [`Conversation`], so one brain serves many calls.
#[async_trait::async_trait]
pub trait Brain: Send + Sync {
    /// The opening line, recorded as the first assistant message.
    async fn greet(&self, conv: &mut Conversation, out: &Sink) -> Result<Reply, BrainError>;

    /// Answers one input; records the input and the reply in `conv`.
    async fn respond(
        &self,
        conv: &mut Conversation,
        input: Input,
        out: &Sink,
    ) -> Result<Reply, BrainError>;
}

/// Streams a whole text and actions, for brains that do not stream.
pub(crate) fn emit(out: &Sink, reply: &Reply) {
    if !reply.text.is_empty() {
        let _ = out.send(BrainEvent::Delta(reply.text.clone()));
    }
    for a in &reply.actions {
        let _ = out.send(BrainEvent::Action(a.clone()));
    }
}

pub use crate::secrets::Secret;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_replies_keep_what_was_heard() {
        let mut conv = Conversation::default();
        conv.messages.push(Message::user("hi"));
        conv.messages
            .push(Message::assistant("Hello, how can I help you today?"));
        conv.record_interrupted("Hello, how");
        assert_eq!(conv.messages.len(), 2);
        assert_eq!(conv.messages[1].content, "Hello, how");
        assert!(conv.messages[1].interrupted);
        conv.messages.push(Message::user("stop"));
        conv.record_interrupted("Ok");
        assert_eq!(conv.messages.len(), 4);
    }
}
