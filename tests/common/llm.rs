//! Pieces of the local stand-in for an OpenAI-compatible LLM and for HTTP
//! tool servers: the streaming chat completion wire format (SSE chunks of
//! `chat.completion.chunk`, ending with `[DONE]`), serving a router on a
//! free port, and checking a Standard Webhooks signature. The stand-ins'
//! behaviour lives in the tests that use them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use base64::Engine;
use serde_json::{Value, json};

/// A streaming body that sends `chunks`, each after its delay, and notes in
/// `sent_at` when each one was handed to the connection.
pub fn sse_body(chunks: Vec<(Duration, String)>, sent_at: Arc<Mutex<Vec<SystemTime>>>) -> Body {
    let stream = futures_util::stream::unfold(chunks.into_iter(), move |mut it| {
        let sent_at = sent_at.clone();
        async move {
            let (delay, text) = it.next()?;
            tokio::time::sleep(delay).await;
            sent_at.lock().unwrap().push(SystemTime::now());
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(text)), it))
        }
    });
    Body::from_stream(stream)
}

/// One `data:` event of a streamed chat completion carrying `delta`.
pub fn chunk(delta: Value) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": "stand-in", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
    )
}

/// The end of a streamed chat completion: the `stop` chunk, then `[DONE]`.
pub fn finish() -> [String; 2] {
    [
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        ),
        "data: [DONE]\n\n".into(),
    ]
}

/// The streamed chunks asking for a call `id` of tool `name` with
/// `arguments` (a JSON text), split in two as real servers do.
pub fn tool_call_chunks(id: &str, name: &str, arguments: &str) -> Vec<String> {
    let (head, tail) = arguments.split_at(arguments.len() / 2);
    vec![
        chunk(
            json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                                     "function": {"name": name, "arguments": ""}}]}),
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": head}}]})),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": tail}}]})),
    ]
}

/// Serves `router` on a free port of 127.0.0.1; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// Whether `headers` carry a valid Standard Webhooks signature of `body`
/// with `secret` (`whsec_` + base64 key): HMAC-SHA256 over
/// `{id}.{timestamp}.{body}`.
pub fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let id = headers["webhook-id"].to_str().unwrap();
    let ts = headers["webhook-timestamp"].to_str().unwrap();
    let sig = headers["webhook-signature"].to_str().unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    sig.split(' ').any(|s| s == expected)
}
