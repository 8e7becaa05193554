//! Text chat with an agent, no phone needed: the same brain and tools as on
//! a call.
//!
//! `POST /v1/agents/{id}/chat-sessions` starts a session (the brain's
//! greeting is its first message); `POST /v1/chat-sessions/{id}/messages`
//! sends a message and answers with the reply, as JSON or, with
//! `"stream": true`, as Server-Sent Events: `data: {"id": "msg_...",
//! "delta": "..."}` for each piece of text as the brain makes it,
//! `data: {"id", "action": {...}}` for each action, `data: {"id", "error"}`
//! if the brain fails, and `data: [DONE]` last. Sessions and messages are
//! stored, so the history survives restarts; one turn at a time per session
//! (a turn racing another is refused with 409).
//!
//! The turn runs in its own task: a client that disconnects mid-stream does
//! not lose the reply from the history.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses};
use super::extract::ApiJson;
use crate::agent::brain::{Action, Brain, BrainError, BrainEvent, Conversation, Input, Message};
use crate::ids;
use crate::store::StoreError;
use crate::store::chat::{ChatMessageRecord, ChatSessionRecord, MAX_MESSAGES, NewChatMessage};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_session))
        .routes(routes!(get_session))
        .routes(routes!(post_message))
}

/// A tool call the LLM made.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// One message of a chat session.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatMessage {
    #[schema(example = "msg_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    /// `user`, `assistant` or `tool` (a tool's result).
    pub role: String,
    pub content: String,
    /// What the agent did after this message (hang up, transfer, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A chat session and its messages, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatSession {
    #[schema(example = "chat_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub agent_id: String,
    pub messages: Vec<ChatMessage>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The body of `POST /v1/chat-sessions/{id}/messages`: `content` or `dtmf`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessageCreate {
    /// What the user says.
    #[schema(max_length = 4000)]
    pub content: Option<String>,
    /// Keypad digits, as a caller would press them.
    #[schema(max_length = 32)]
    pub dtmf: Option<String>,
    /// Answer as Server-Sent Events instead of one JSON object.
    #[serde(default)]
    pub stream: bool,
}

/// The agent's answer to one message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatReply {
    /// The id of the reply message (the same id as in the stream).
    pub id: String,
    pub session_id: String,
    pub role: String,
    /// The whole text of the reply.
    pub content: String,
    pub actions: Vec<Action>,
    pub created_at: DateTime<Utc>,
}

/// A message as stored: the brain's message and the actions after it.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    message: Message,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    actions: Vec<Action>,
}

fn to_message(r: ChatMessageRecord) -> Result<ChatMessage, ApiError> {
    let s: Stored = serde_json::from_str(&r.data)
        .map_err(|e| ApiError::internal(format!("chat message {}: {e}", r.id)))?;
    Ok(ChatMessage {
        id: r.id,
        role: r.role,
        content: r.content,
        actions: s.actions,
        tool_calls: s
            .message
            .tool_calls
            .into_iter()
            .map(|c| ChatToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        tool_call_id: s.message.tool_call_id,
        created_at: r.created_at,
    })
}

/// The new messages of a turn, the last one (the reply) with `reply_id`
/// and the actions.
fn new_messages(
    messages: &[Message],
    reply_id: &str,
    actions: &[Action],
) -> Result<Vec<NewChatMessage>, ApiError> {
    let last = messages.len().saturating_sub(1);
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let is_reply = i == last && m.role == crate::agent::brain::Role::Assistant;
            let stored = Stored {
                message: m.clone(),
                actions: if is_reply {
                    actions.to_vec()
                } else {
                    Vec::new()
                },
            };
            Ok(NewChatMessage {
                id: if is_reply {
                    reply_id.to_string()
                } else {
                    ids::new(ids::CHAT_MESSAGE)
                },
                role: m.role.as_str().to_string(),
                content: m.content.clone(),
                data: serde_json::to_string(&stored).map_err(ApiError::internal)?,
            })
        })
        .collect()
}

fn brain_error(e: BrainError) -> ApiError {
    match e {
        BrainError::Config(m) => ApiError::new(
            StatusCode::CONFLICT,
            "agent_misconfigured",
            format!("the agent cannot chat: {m}"),
        ),
        BrainError::Llm(e) => {
            tracing::warn!(error = %e, "LLM failed");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "llm_failed",
                "the agent's LLM failed; see the daemon log",
            )
        }
        BrainError::State(m) => ApiError::internal(format!("chat state: {m}")),
    }
}

async fn brain_for(
    state: &AppState,
    agent_id: &str,
) -> Result<std::sync::Arc<dyn Brain>, ApiError> {
    let agent = super::agents::fetch(state, agent_id).await?;
    let mut config = super::agents::brain_config(&agent)?;
    config.resolve_credentials().await.map_err(brain_error)?;
    crate::agent::build_brain(&config).map_err(brain_error)
}

async fn session(state: &AppState, id: &str) -> Result<ChatSessionRecord, ApiError> {
    super::find(
        id,
        ids::CHAT_SESSION,
        "chat session",
        state.store.get_chat_session(id),
    )
    .await
}

async fn render_session(state: &AppState, r: ChatSessionRecord) -> Result<ChatSession, ApiError> {
    let mut messages = Vec::new();
    for m in state.store.list_chat_messages(&r.id).await? {
        messages.push(to_message(m)?);
    }
    Ok(ChatSession {
        id: r.id,
        agent_id: r.agent_id,
        messages,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

/// Start a chat session with an agent; its greeting is the first message.
#[utoipa::path(post, path = "/v1/agents/{id}/chat-sessions", tag = "chat",
    params(("id" = String, Path, description = "The agent")),
    responses((status = 201, description = "Created", body = ChatSession), ErrorResponses))]
async fn create_session(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<(StatusCode, Json<ChatSession>), ApiError> {
    let brain = brain_for(&state, &agent_id).await?;
    let mut conv = Conversation::default();
    let (tx, _rx) = mpsc::unbounded_channel();
    brain.greet(&mut conv, &tx).await.map_err(brain_error)?;
    let messages = new_messages(&conv.messages, &ids::new(ids::CHAT_MESSAGE), &[])?;
    let state_json = serde_json::to_string(&conv.state).map_err(ApiError::internal)?;
    let id = ids::new(ids::CHAT_SESSION);
    let record = state
        .store
        .insert_chat_session(&id, &agent_id, &state_json, &messages)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(render_session(&state, record).await?),
    ))
}

/// Get a chat session with its messages.
#[utoipa::path(get, path = "/v1/chat-sessions/{id}", tag = "chat",
    params(("id" = String, Path)),
    responses((status = 200, description = "The session", body = ChatSession), ErrorResponses))]
async fn get_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ChatSession>, ApiError> {
    let record = session(&state, &id).await?;
    Ok(Json(render_session(&state, record).await?))
}

/// What a running turn reports, in order.
enum TurnOut {
    Event(BrainEvent),
    /// The turn is stored; the reply is complete.
    Done(chrono::DateTime<Utc>),
    Failed(ApiError),
}

/// Send a message; the answer is the agent's reply, as JSON or as
/// Server-Sent Events (`"stream": true`).
#[utoipa::path(post, path = "/v1/chat-sessions/{id}/messages", tag = "chat",
    params(("id" = String, Path)), request_body = ChatMessageCreate,
    responses(
        (status = 200, description = "The reply; with `stream`, `text/event-stream` of \
            `data: {\"id\", \"delta\"}` events ending with `data: [DONE]`",
            content((ChatReply = "application/json"), (String = "text/event-stream"))),
        (status = 502, description = "The agent's LLM failed", body = super::error::ErrorBody),
        ErrorResponses))]
async fn post_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ChatMessageCreate>,
) -> Result<Response, ApiError> {
    let input = match (body.content, body.dtmf) {
        (Some(text), None) if !text.trim().is_empty() && text.chars().count() <= 4000 => {
            Input::Text(text)
        }
        (Some(_), None) => return Err(ApiError::field("content", "must be 1 to 4000 characters")),
        (None, Some(d))
            if !d.is_empty()
                && d.len() <= 32
                && d.chars()
                    .all(|c| c.is_ascii_digit() || "*#ABCD".contains(c)) =>
        {
            Input::Dtmf(d)
        }
        (None, Some(_)) => return Err(ApiError::field("dtmf", "must be 1 to 32 DTMF digits")),
        _ => {
            return Err(ApiError::field(
                "content",
                "give exactly one of content and dtmf",
            ));
        }
    };
    let record = session(&state, &id).await?;
    let brain = brain_for(&state, &record.agent_id).await?;
    let history = state.store.list_chat_messages(&id).await?;
    if history.len() as i64 >= MAX_MESSAGES - 20 {
        return Err(ApiError::conflict(
            "the chat session is full; start a new one",
        ));
    }
    let mut conv = Conversation {
        messages: Vec::with_capacity(history.len()),
        state: serde_json::from_str(&record.state)
            .map_err(|e| ApiError::internal(format!("chat session {id} state: {e}")))?,
        context: None,
    };
    for m in &history {
        let s: Stored = serde_json::from_str(&m.data)
            .map_err(|e| ApiError::internal(format!("chat message {}: {e}", m.id)))?;
        conv.messages.push(s.message);
    }
    let reply_id = ids::new(ids::CHAT_MESSAGE);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    tokio::spawn(run_turn(
        state.clone(),
        brain,
        conv,
        input,
        id.clone(),
        reply_id.clone(),
        out_tx,
    ));

    if body.stream {
        let stream = futures_util::stream::unfold(
            (out_rx, reply_id, false),
            |(mut rx, reply_id, finished)| async move {
                if finished {
                    return None;
                }
                let (data, finished) = match rx.recv().await {
                    Some(TurnOut::Event(BrainEvent::Delta(d))) => (
                        serde_json::json!({"id": reply_id, "delta": d}).to_string(),
                        false,
                    ),
                    Some(TurnOut::Event(BrainEvent::Action(a))) => (
                        serde_json::json!({"id": reply_id, "action": a}).to_string(),
                        false,
                    ),
                    Some(TurnOut::Failed(e)) => (
                        serde_json::json!({"id": reply_id, "error": e.message()}).to_string(),
                        false,
                    ),
                    Some(TurnOut::Done(_)) | None => ("[DONE]".to_string(), true),
                };
                Some((
                    Ok::<_, Infallible>(Event::default().data(data)),
                    (rx, reply_id, finished),
                ))
            },
        );
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }

    let mut content = String::new();
    let mut actions = Vec::new();
    // Bounded: the turn task sends a finite sequence and then Done or Failed.
    while let Some(out) = out_rx.recv().await {
        match out {
            TurnOut::Event(BrainEvent::Delta(d)) => content.push_str(&d),
            TurnOut::Event(BrainEvent::Action(a)) => actions.push(a),
            TurnOut::Failed(e) => return Err(e),
            TurnOut::Done(created_at) => {
                return Ok(Json(ChatReply {
                    id: reply_id,
                    session_id: id,
                    role: "assistant".into(),
                    content,
                    actions,
                    created_at,
                })
                .into_response());
            }
        }
    }
    Err(ApiError::internal("the chat turn ended without an answer"))
}

/// Runs one turn: the brain streams into `out`, then the turn is stored.
async fn run_turn(
    state: AppState,
    brain: std::sync::Arc<dyn Brain>,
    mut conv: Conversation,
    input: Input,
    session_id: String,
    reply_id: String,
    out: mpsc::UnboundedSender<TurnOut>,
) {
    let first = conv.messages.len();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = {
        let out = out.clone();
        async move {
            while let Some(e) = rx.recv().await {
                let _ = out.send(TurnOut::Event(e));
            }
        }
    };
    let respond = async {
        let result = brain.respond(&mut conv, input, &tx).await;
        drop(tx);
        result
    };
    let (result, ()) = tokio::join!(respond, forward);
    let outcome = async {
        let reply = result.map_err(brain_error)?;
        let messages = new_messages(&conv.messages[first..], &reply_id, &reply.actions)?;
        let state_json = serde_json::to_string(&conv.state).map_err(ApiError::internal)?;
        state
            .store
            .append_chat_turn(&session_id, first as i64, &state_json, &messages)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    ApiError::conflict("another message was answered in this session meanwhile")
                }
                e => e.into(),
            })
    }
    .await;
    let _ = out.send(match outcome {
        Ok(at) => TurnOut::Done(at),
        Err(e) => TurnOut::Failed(e),
    });
}
