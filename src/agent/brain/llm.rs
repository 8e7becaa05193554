//! The LLM seam and the brain built on it.
//!
//! [`Llm`] is one streaming chat completion: the history and the tools go
//! in, text deltas come out as they arrive, and the call ends with the whole
//! text and the tool calls. [`LlmBrain`] runs the tool loop on top: it calls
//! the LLM, runs the tools it asked for (HTTP tools through
//! [`super::tools::invoke`], built-in actions by emitting [`Action`]s),
//! feeds the results back and calls again, at most `max_rounds` times.
//!
//! The instructions and the greeting are templates of the call's
//! variables (`{{first_name}}`, see [`super::template`]).
//!
//! Built-in tools offered to every LLM: `end_call` (optional `summary`),
//! `transfer_call` (`to`), `send_dtmf` (`digits`), `opt_out` (the callee
//! asks not to be called again), `pause_recording` and `resume_recording`
//! (a payment step kept out of the call's recording). Their actions are emitted after the
//! reply's text, so a hang-up follows the goodbye.
//!
//! Toll fraud: a caller can talk an LLM into anything, so `transfer_call`
//! goes only to the agent's `transfer_targets` (exact E.164 numbers, or
//! prefixes written `+44*`); none by default. A number outside the list is
//! refused: no action, and the LLM reads the refusal as the tool's result,
//! so it can tell the caller.

use std::sync::Arc;

use serde_json::json;

use super::template::{self, AgentContext, Braces};
use super::tools::{self, HttpTool};
use super::{
    Action, Brain, BrainError, BrainEvent, Conversation, Input, Message, Reply, Role, Sink,
    ToolCall,
};

/// A tool as the LLM sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// One chat completion request.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// The system prompt (the agent's instructions).
    pub system: Option<&'a str>,
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
}

/// A completed chat completion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmReply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
}

/// Why an LLM call failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("cannot reach the LLM: {0}")]
    Unreachable(String),
    #[error("the LLM answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the LLM sent nothing for {0} s")]
    Stalled(u64),
    #[error("the LLM's stream is malformed: {0}")]
    Protocol(String),
}

/// A streaming chat-completion engine.
#[async_trait::async_trait]
pub trait Llm: Send + Sync {
    /// Runs one completion, calling `on_delta` with each piece of text as it
    /// arrives. Dropping the future cancels the request.
    async fn chat(
        &self,
        request: ChatRequest<'_>,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<LlmReply, LlmError>;
}

/// How many LLM calls one reply may take (tool rounds plus the answer).
pub const DEFAULT_MAX_ROUNDS: usize = 5;

/// A brain that asks an LLM.
pub struct LlmBrain {
    llm: Arc<dyn Llm>,
    instructions: Option<String>,
    greeting: Option<String>,
    tools: Vec<HttpTool>,
    specs: Vec<ToolSpec>,
    http: reqwest::Client,
    max_rounds: usize,
    /// Where `transfer_call` may go (see [`transfer_allowed`]).
    transfer_targets: Vec<String>,
}

/// Whether `to` (E.164) is one of `targets`: an exact number, or a prefix
/// ending in `*`.
pub fn transfer_allowed(targets: &[String], to: &str) -> bool {
    targets.iter().any(|t| match t.strip_suffix('*') {
        Some(prefix) => to.starts_with(prefix),
        None => t == to,
    })
}

/// The tool result of a refused transfer: what the LLM reads.
pub const TRANSFER_REFUSED: &str =
    "transfer refused: this number is not one this agent may transfer to";

/// The tool result of a transfer the trunk's destination policy refuses.
pub const TRANSFER_DENIED: &str =
    "transfer refused: the trunk does not allow calls to this destination";

const END_CALL: &str = "end_call";
const TRANSFER_CALL: &str = "transfer_call";
/// Longest warm-transfer summary spoken to the person called.
const MAX_SUMMARY_CHARS: usize = 500;
const SEND_DTMF: &str = "send_dtmf";
const OPT_OUT: &str = "opt_out";
const PAUSE_RECORDING: &str = "pause_recording";
const RESUME_RECORDING: &str = "resume_recording";

fn builtin_specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: END_CALL.into(),
            description: "End the call after your reply. Say goodbye in the reply.".into(),
            parameters: json!({"type": "object", "properties": {
                "summary": {"type": "string", "description": "A short summary of the call"}}}),
        },
        ToolSpec {
            name: TRANSFER_CALL.into(),
            description: "Transfer the caller to a phone number after your reply. \
                Mode `blind` (the default) hands the call over at once; `warm` first \
                calls the person, tells them `summary`, then joins them with the \
                caller (tell the caller to hold on in your reply); `attended` is \
                `warm` where the caller's phone system is asked to connect the \
                two itself; if the person does not take the call you are told so \
                and the call stays with you."
                .into(),
            parameters: json!({"type": "object", "required": ["to"], "properties": {
                "to": {"type": "string", "description": "E.164 number, e.g. +14155550100"},
                "mode": {"type": "string", "enum": ["blind", "warm", "attended"]},
                "summary": {"type": "string",
                    "description": "Warm and attended modes: what to tell the person before joining the caller"}}}),
        },
        ToolSpec {
            name: SEND_DTMF.into(),
            description: "Send DTMF digits (0-9, *, #) on the call.".into(),
            parameters: json!({"type": "object", "required": ["digits"], "properties": {
                "digits": {"type": "string"}}}),
        },
        ToolSpec {
            name: OPT_OUT.into(),
            description: "The person asked not to be called again: confirm politely \
                in your reply that they will not be called; the call then ends and \
                the number is added to the do-not-call list."
                .into(),
            parameters: json!({"type": "object", "properties": {}}),
        },
        ToolSpec {
            name: PAUSE_RECORDING.into(),
            description: "Pause the call's recording after your reply, before the caller \
                gives sensitive details such as a card number. Resume it afterwards."
                .into(),
            parameters: json!({"type": "object", "properties": {}}),
        },
        ToolSpec {
            name: RESUME_RECORDING.into(),
            description: "Resume the call's recording after your reply.".into(),
            parameters: json!({"type": "object", "properties": {}}),
        },
    ]
}

impl LlmBrain {
    pub fn new(
        llm: Arc<dyn Llm>,
        instructions: Option<String>,
        greeting: Option<String>,
        tools: Vec<HttpTool>,
        http: reqwest::Client,
    ) -> Self {
        let mut specs = builtin_specs();
        specs.extend(tools.iter().map(HttpTool::spec));
        Self {
            llm,
            instructions,
            greeting,
            tools,
            specs,
            http,
            max_rounds: DEFAULT_MAX_ROUNDS,
            transfer_targets: Vec::new(),
        }
    }

    /// The numbers (or `+prefix*`) `transfer_call` may reach; none by default.
    pub fn with_transfer_targets(mut self, targets: Vec<String>) -> Self {
        self.transfer_targets = targets;
        self
    }

    /// Whether `name` is a tool this brain offers (built-in or HTTP).
    pub fn offers(&self, name: &str) -> bool {
        self.specs.iter().any(|s| s.name == name)
    }

    /// Runs one tool call: the text fed back and the action, if built in.
    async fn run_tool(
        &self,
        call: &ToolCall,
        context: Option<&AgentContext>,
    ) -> (String, Option<Action>) {
        let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
        let arg = |k: &str| args.get(k).and_then(|v| v.as_str()).map(str::to_string);
        match call.name.as_str() {
            END_CALL => {
                let summary = arg("summary").filter(|s| !s.trim().is_empty());
                (
                    "ok: the call ends after your reply".into(),
                    Some(match summary {
                        Some(text) => Action::Summary { text },
                        None => Action::Hangup,
                    }),
                )
            }
            TRANSFER_CALL => match arg("to").and_then(|t| crate::e164::normalize(&t).ok()) {
                Some(to) if !transfer_allowed(&self.transfer_targets, &to) => {
                    tracing::info!(to = %to, "LLM transfer refused: not in transfer_targets");
                    metrics::counter!(crate::metrics::AGENT_TOOL_CALLS_TOTAL, "outcome" => "transfer_refused")
                        .increment(1);
                    (json!({ "error": TRANSFER_REFUSED }).to_string(), None)
                }
                // The call's trunk refuses premium-rate and high-risk
                // destinations for a REFER as for an INVITE.
                Some(to)
                    if context
                        .map(|c| c.transfer_check.check(&to))
                        .is_some_and(|r| r.is_err()) =>
                {
                    tracing::info!(to = %to, "LLM transfer refused: the trunk's destination policy");
                    metrics::counter!(crate::metrics::AGENT_TOOL_CALLS_TOTAL, "outcome" => "transfer_refused")
                        .increment(1);
                    (json!({ "error": TRANSFER_DENIED }).to_string(), None)
                }
                Some(to) if matches!(arg("mode").as_deref(), Some("warm" | "attended")) => (
                    "ok: after your reply the person is called; the caller waits".into(),
                    Some(Action::WarmTransfer {
                        to,
                        summary: arg("summary")
                            .map(|s| s.chars().take(MAX_SUMMARY_CHARS).collect::<String>())
                            .filter(|s| !s.trim().is_empty()),
                        attended: arg("mode").as_deref() == Some("attended"),
                    }),
                ),
                Some(to) => (
                    "ok: the caller is transferred after your reply".into(),
                    Some(Action::Transfer { to }),
                ),
                None => (r#"{"error": "to must be an E.164 number"}"#.into(), None),
            },
            SEND_DTMF => match arg("digits").filter(|d| {
                !d.is_empty()
                    && d.chars()
                        .all(|c| c.is_ascii_digit() || "*#ABCD".contains(c))
            }) {
                Some(digits) => ("ok".into(), Some(Action::SendDtmf { digits })),
                None => (r#"{"error": "digits must be 0-9, *, #"}"#.into(), None),
            },
            PAUSE_RECORDING => (
                "ok: the recording pauses after your reply".into(),
                Some(Action::PauseRecording),
            ),
            RESUME_RECORDING => (
                "ok: the recording resumes after your reply".into(),
                Some(Action::ResumeRecording),
            ),
            OPT_OUT => (
                "ok: the call ends after your reply and the number is not called again".into(),
                Some(Action::OptOut),
            ),
            name => match self.tools.iter().find(|t| t.name == name) {
                Some(tool) => (
                    tools::invoke(&self.http, tool, &call.arguments, context).await,
                    None,
                ),
                None => (
                    json!({"error": format!("no tool named {name}")}).to_string(),
                    None,
                ),
            },
        }
    }
}

#[async_trait::async_trait]
impl Brain for LlmBrain {
    async fn greet(&self, conv: &mut Conversation, out: &Sink) -> Result<Reply, BrainError> {
        let text = self
            .greeting
            .as_deref()
            .map(|g| template::render_with(g, Braces::Double, conv.context.as_deref()))
            .unwrap_or_default();
        let reply = Reply {
            text,
            actions: Vec::new(),
        };
        if !reply.text.is_empty() {
            conv.messages.push(Message::assistant(reply.text.clone()));
        }
        super::emit(out, &reply);
        Ok(reply)
    }

    async fn respond(
        &self,
        conv: &mut Conversation,
        input: Input,
        out: &Sink,
    ) -> Result<Reply, BrainError> {
        conv.messages.push(Message::user(input.as_history()));
        let mut text = String::new();
        let mut actions = Vec::new();
        let on_delta = |d: &str| {
            let _ = out.send(BrainEvent::Delta(d.to_string()));
        };
        // The call's variables in the instructions, rendered per reply so
        // that a fact learnt after the start (the AMD verdict) is in.
        let context = conv.context.clone();
        let system = self
            .instructions
            .as_deref()
            .map(|i| template::render_with(i, Braces::Double, context.as_deref()));
        for round in 0..self.max_rounds {
            // The last round offers no tools, so it must answer in words.
            let tools: &[ToolSpec] = if round + 1 == self.max_rounds {
                &[]
            } else {
                &self.specs
            };
            let request = ChatRequest {
                system: system.as_deref(),
                messages: &conv.messages,
                tools,
            };
            let reply = self.llm.chat(request, &on_delta).await?;
            text.push_str(&reply.text);
            if reply.tool_calls.is_empty() {
                conv.messages.push(Message::assistant(reply.text));
                break;
            }
            let mut m = Message::assistant(reply.text);
            m.tool_calls = reply.tool_calls.clone();
            conv.messages.push(m);
            for call in &reply.tool_calls {
                let (result, action) = self.run_tool(call, context.as_deref()).await;
                if let Some(Action::Summary { text }) = &action {
                    actions.push(Action::Summary { text: text.clone() });
                    actions.push(Action::Hangup);
                } else if let Some(a) = action {
                    actions.push(a);
                }
                let mut m = Message::new(Role::Tool, result);
                m.tool_call_id = Some(call.id.clone());
                conv.messages.push(m);
            }
        }
        for a in &actions {
            let _ = out.send(BrainEvent::Action(a.clone()));
        }
        Ok(Reply { text, actions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An LLM that plays back canned replies and records what it was sent.
    struct Canned {
        replies: Mutex<Vec<LlmReply>>,
        seen: Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl Llm for Canned {
        async fn chat(
            &self,
            request: ChatRequest<'_>,
            on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
        ) -> Result<LlmReply, LlmError> {
            self.seen.lock().unwrap().push(request.tools.len());
            let mut replies = self.replies.lock().unwrap();
            let reply = if replies.is_empty() {
                LlmReply {
                    text: "done".into(),
                    tool_calls: Vec::new(),
                }
            } else {
                replies.remove(0)
            };
            on_delta(&reply.text);
            Ok(reply)
        }
    }

    fn call(name: &str, args: &str) -> LlmReply {
        LlmReply {
            text: String::new(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: name.into(),
                arguments: args.into(),
            }],
        }
    }

    #[tokio::test]
    async fn builtin_tools_become_actions_after_the_text() {
        let llm = Arc::new(Canned {
            replies: Mutex::new(vec![
                call(END_CALL, r#"{"summary": "booked"}"#),
                LlmReply {
                    text: "Goodbye!".into(),
                    tool_calls: Vec::new(),
                },
            ]),
            seen: Mutex::new(Vec::new()),
        });
        let brain = LlmBrain::new(llm, None, None, Vec::new(), reqwest::Client::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut conv = Conversation::default();
        let reply = brain
            .respond(&mut conv, Input::Text("bye".into()), &tx)
            .await
            .unwrap();
        assert_eq!(reply.text, "Goodbye!");
        assert_eq!(
            reply.actions,
            vec![
                Action::Summary {
                    text: "booked".into()
                },
                Action::Hangup
            ]
        );
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        assert_eq!(events.last(), Some(&BrainEvent::Action(Action::Hangup)));
        // user, assistant (tool call), tool result, assistant.
        assert_eq!(conv.messages.len(), 4);
        assert_eq!(conv.messages[2].tool_call_id.as_deref(), Some("c1"));
    }

    #[tokio::test]
    async fn transfers_go_only_to_the_agents_targets() {
        let replies = || {
            Mutex::new(vec![
                call(TRANSFER_CALL, r#"{"to": "+19005550100"}"#),
                LlmReply {
                    text: "I cannot transfer you there.".into(),
                    tool_calls: Vec::new(),
                },
                call(TRANSFER_CALL, r#"{"to": "+442071234567"}"#),
                LlmReply {
                    text: "Transferring.".into(),
                    tool_calls: Vec::new(),
                },
            ])
        };
        let llm = Arc::new(Canned {
            replies: replies(),
            seen: Mutex::new(Vec::new()),
        });
        let brain = LlmBrain::new(llm, None, None, Vec::new(), reqwest::Client::new())
            .with_transfer_targets(vec!["+44207*".into(), "+14155550100".into()]);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut conv = Conversation::default();
        let reply = brain
            .respond(&mut conv, Input::Text("premium please".into()), &tx)
            .await
            .unwrap();
        assert!(reply.actions.is_empty(), "{:?}", reply.actions);
        assert!(conv.messages[2].content.contains("transfer refused"));
        let reply = brain
            .respond(&mut conv, Input::Text("London please".into()), &tx)
            .await
            .unwrap();
        assert_eq!(
            reply.actions,
            vec![Action::Transfer {
                to: "+442071234567".into()
            }]
        );
        // No targets: every LLM transfer is refused.
        let llm = Arc::new(Canned {
            replies: replies(),
            seen: Mutex::new(Vec::new()),
        });
        let brain = LlmBrain::new(llm, None, None, Vec::new(), reqwest::Client::new());
        let mut conv = Conversation::default();
        for _ in 0..2 {
            let reply = brain
                .respond(&mut conv, Input::Text("x".into()), &tx)
                .await
                .unwrap();
            assert!(reply.actions.is_empty());
        }
        assert!(transfer_allowed(&["+1415*".into()], "+14155550100"));
        assert!(!transfer_allowed(&["+1415*".into()], "+1900"));
        assert!(!transfer_allowed(&["+14155550100".into()], "+141555501001"));
    }

    #[tokio::test]
    async fn a_warm_transfer_is_bound_by_the_same_targets_and_carries_its_summary() {
        let llm = Arc::new(Canned {
            replies: Mutex::new(vec![
                call(
                    TRANSFER_CALL,
                    r#"{"to": "+19005550100", "mode": "warm", "summary": "x"}"#,
                ),
                LlmReply {
                    text: "I cannot.".into(),
                    tool_calls: Vec::new(),
                },
                call(
                    TRANSFER_CALL,
                    r#"{"to": "+14155550100", "mode": "warm", "summary": "Billing question."}"#,
                ),
                LlmReply {
                    text: "One moment.".into(),
                    tool_calls: Vec::new(),
                },
                call(
                    TRANSFER_CALL,
                    r#"{"to": "+14155550100", "mode": "attended"}"#,
                ),
                LlmReply {
                    text: "One moment.".into(),
                    tool_calls: Vec::new(),
                },
            ]),
            seen: Mutex::new(Vec::new()),
        });
        let brain = LlmBrain::new(llm, None, None, Vec::new(), reqwest::Client::new())
            .with_transfer_targets(vec!["+14155550100".into()]);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut conv = Conversation::default();
        let reply = brain
            .respond(&mut conv, Input::Text("premium".into()), &tx)
            .await
            .unwrap();
        assert!(reply.actions.is_empty(), "{:?}", reply.actions);
        let reply = brain
            .respond(&mut conv, Input::Text("a person please".into()), &tx)
            .await
            .unwrap();
        assert_eq!(
            reply.actions,
            vec![Action::WarmTransfer {
                to: "+14155550100".into(),
                summary: Some("Billing question.".into()),
                attended: false,
            }]
        );
        let reply = brain
            .respond(&mut conv, Input::Text("and again".into()), &tx)
            .await
            .unwrap();
        assert_eq!(
            reply.actions,
            vec![Action::WarmTransfer {
                to: "+14155550100".into(),
                summary: None,
                attended: true,
            }]
        );
    }

    #[tokio::test]
    async fn opt_out_is_an_action_after_the_goodbye() {
        let llm = Arc::new(Canned {
            replies: Mutex::new(vec![
                call(OPT_OUT, "{}"),
                LlmReply {
                    text: "Understood, we won't call you again.".into(),
                    tool_calls: Vec::new(),
                },
            ]),
            seen: Mutex::new(Vec::new()),
        });
        let brain = LlmBrain::new(llm, None, None, Vec::new(), reqwest::Client::new());
        assert!(brain.offers(OPT_OUT));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut conv = Conversation::default();
        let reply = brain
            .respond(&mut conv, Input::Text("stop calling me".into()), &tx)
            .await
            .unwrap();
        assert_eq!(reply.actions, vec![Action::OptOut]);
    }

    #[tokio::test]
    async fn the_tool_loop_is_bounded() {
        let llm = Arc::new(Canned {
            replies: Mutex::new(
                (0..20)
                    .map(|_| call(SEND_DTMF, r#"{"digits": "1"}"#))
                    .collect(),
            ),
            seen: Mutex::new(Vec::new()),
        });
        let brain = LlmBrain::new(llm.clone(), None, None, Vec::new(), reqwest::Client::new());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut conv = Conversation::default();
        brain
            .respond(&mut conv, Input::Text("go".into()), &tx)
            .await
            .unwrap();
        let seen = llm.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), DEFAULT_MAX_ROUNDS);
        assert_eq!(seen.last(), Some(&0), "the last round offers no tools");
    }
}
