//! Every metric name in one place, their descriptions, and the Prometheus
//! recorder. Modules record with the `metrics` macros and these constants.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "agentline_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "agentline_http_request_duration_seconds";
pub const TRUNKS_CONFIGURED: &str = "agentline_trunks_configured";
pub const BUILD_INFO: &str = "agentline_build_info";
pub const WEBHOOK_ATTEMPTS: &str = "agentline_webhook_attempts_total";
pub const WEBHOOK_DELIVERIES: &str = "agentline_webhook_deliveries_total";
pub const WEBHOOK_ATTEMPT_DURATION: &str = "agentline_webhook_attempt_duration_seconds";
pub const WEBHOOK_OUTBOX_DEPTH: &str = "agentline_webhook_outbox_depth";
pub const WEBHOOK_OUTBOX_OLDEST_AGE: &str = "agentline_webhook_outbox_oldest_age_seconds";

// SIP signalling (`crate::sip`).

/// Counter: requests received outside any transaction, label `method`.
pub const SIP_REQUESTS_TOTAL: &str = "agentline_sip_requests_total";

/// Counter: messages the edge dropped before the parser, or requests the
/// guard layer answered with an error, label `reason`: `not_admitted` (no
/// trunk allows the source), `banned`, `rate_limited` (a stranger over its
/// limit, now banned), `throttled` (a trunk source over its limit),
/// `scanner`, `overload` (an INVITE refused, with a 503 or dropped: too
/// many INVITEs in progress or messages queued, or the source table full),
/// `tcp_refused` (a TCP or TLS connection closed at accept), `tcp_timeout`,
/// `tls_handshake` (a TLS handshake failed or stalled), `too_large`, `bad_request`, `unsupported_media_type`, `bad_extension`.
pub const SIP_REQUESTS_REJECTED_TOTAL: &str = "agentline_sip_requests_rejected_total";

/// Gauge: sources the SIP edge has banned now.
pub const SIP_BANNED_SOURCES: &str = "agentline_sip_banned_sources";

/// Gauge: messages the SIP stack was handed and the daemon's runtime has
/// not started on yet (its queue of tasks woken from outside); new INVITEs
/// are refused beyond `sip.flood.max_receive_backlog`.
pub const SIP_RECEIVE_BACKLOG: &str = "agentline_sip_receive_backlog";

/// Gauge: inbound INVITEs in progress (received, not yet answered or
/// ACKed); new ones are refused beyond `sip.flood.max_server_transactions`.
pub const SIP_INVITES_IN_PROGRESS: &str = "agentline_sip_invites_in_progress";

/// Gauge: SIP TCP connections open now (accepted at the edge).
pub const SIP_TCP_CONNECTIONS: &str = "agentline_sip_tcp_connections";

/// Gauge: SIP TLS connections open now (accepted at the edge).
pub const SIP_TLS_CONNECTIONS: &str = "agentline_sip_tls_connections";

/// Gauge: 1 when the trunk is registered, 0 otherwise, label `trunk`.
pub const SIP_REGISTRATION_STATE: &str = "agentline_sip_registration_state";

/// Gauge: 1 when the last OPTIONS probe to the trunk's proxy got a final
/// answer below 500 other than 408, 0 otherwise, label `trunk`; only for
/// trunks with `ping_seconds`.
pub const TRUNK_UP: &str = "agentline_trunk_up";

/// Histogram: OPTIONS probe round trip to an answer, label `trunk`.
pub const TRUNK_PING_SECONDS: &str = "agentline_trunk_ping_seconds";

/// Counter: failed REGISTER attempts, labels `trunk` and `status`.
pub const SIP_REGISTRATION_FAILURES_TOTAL: &str = "agentline_sip_registration_failures_total";

/// Counter: final outcomes of outbound INVITEs, label `status` (the SIP code,
/// `canceled` or `timeout`).
pub const SIP_OUTBOUND_RESULTS_TOTAL: &str = "agentline_sip_outbound_results_total";

// RTP media (`crate::media::session`).

/// RTP packets, label `direction` = `in` | `out`.
pub const RTP_PACKETS_TOTAL: &str = "agentline_rtp_packets_total";
/// RTP bytes (UDP payload), label `direction` = `in` | `out`.
pub const RTP_BYTES_TOTAL: &str = "agentline_rtp_bytes_total";
/// Inbound packets lost (RFC 3550 A.3).
pub const RTP_PACKETS_LOST_TOTAL: &str = "agentline_rtp_packets_lost_total";
/// Inbound datagrams dropped, label `reason` = `malformed` |
/// `unknown_payload_type` | `consumer_slow`.
pub const RTP_PACKETS_DROPPED_TOTAL: &str = "agentline_rtp_packets_dropped_total";
/// Inbound RTP refused by source pinning (`crate::media::latch`), never
/// played or echoed, label `reason` = `source` (not the pinned address and
/// port, or not allowed to latch) | `ssrc` (the pinned source with a
/// foreign SSRC and no marker).
pub const RTP_PACKETS_REJECTED_TOTAL: &str = "agentline_rtp_packets_rejected_total";
/// RFC 3550 A.8 interarrival jitter, one sample per session when it ends.
/// Frames of a call's audio a media tap consumer (`recorder`, `fork`)
/// lost because it was not reading; label `consumer`.
pub const MEDIA_TAP_DROPPED_TOTAL: &str = "agentline_media_tap_dropped_frames_total";
pub const RTP_JITTER_SECONDS: &str = "agentline_rtp_jitter_seconds";
/// Sessions that reported an RTP inactivity timeout.
pub const RTP_TIMEOUTS_TOTAL: &str = "agentline_rtp_timeouts_total";
/// Inbound SRTP packets dropped (`crate::media::srtp`), label `reason` =
/// `auth` (too short, or the tag does not verify: forged, damaged, plain
/// RTP) | `replay` (already received or behind the replay window).
pub const SRTP_AUTH_FAILURES_TOTAL: &str = "agentline_srtp_auth_failures_total";

// Calls (`crate::call`).

/// Gauge: calls set up or up right now, label `direction`.
pub const CALLS_ACTIVE: &str = "agentline_calls_active";
/// Counter: calls started (ringing or dialled), label `direction`.
pub const CALLS_STARTED_TOTAL: &str = "agentline_calls_started_total";
/// Counter: calls ended or refused, labels `direction` and `reason` (the
/// `EndReason` label).
pub const CALLS_ENDED_TOTAL: &str = "agentline_calls_ended_total";
/// Histogram: seconds from INVITE to 200 OK, label `direction`.
pub const CALL_SETUP_SECONDS: &str = "agentline_call_setup_seconds";
/// Counter: answering-machine detection verdicts, label `answered_by` =
/// `human` | `machine` | `unknown`.
pub const CALL_AMD_VERDICTS_TOTAL: &str = "agentline_call_amd_verdicts_total";
/// Counter: outbound call attempts per trunk (trunk failover), label
/// `outcome` = `answered` | `failed` | `skipped`.
pub const CALL_ATTEMPTS: &str = "agentline_call_attempts_total";

// The agent (`crate::agent`).

/// Counter: LLM completions, label `outcome` = `ok` | `error`.
pub const AGENT_LLM_REQUESTS_TOTAL: &str = "agentline_agent_llm_requests_total";
/// Histogram: seconds from an LLM request to its first streamed chunk.
pub const AGENT_LLM_FIRST_CHUNK_SECONDS: &str = "agentline_agent_llm_first_chunk_seconds";
/// Counter: HTTP tool calls, label `outcome` = `ok` | `refused` | `timeout`
/// | `unreachable` | `bad_arguments`.
pub const AGENT_TOOL_CALLS_TOTAL: &str = "agentline_agent_tool_calls_total";
/// Counter: replies cut short by the caller talking over them.
pub const AGENT_BARGE_INS_TOTAL: &str = "agentline_agent_barge_ins_total";
/// Histogram: seconds from the end of the caller's speech (or a key press)
/// to each step of the reply, label `stage` = `stt_final` |
/// `llm_first_token` | `tts_first_audio` | `first_frame_out` | `first_rtp`.
pub const AGENT_TURN_LATENCY_SECONDS: &str = "agentline_agent_turn_latency_seconds";
/// Histogram: the daemon's own share of a turn, label `path` =
/// `rtp_in_to_stt` (a caller frame from the call task, after the jitter
/// buffer, to the STT push) | `tts_to_rtp_out` (a reply's first TTS frame
/// to its first RTP packet).
pub const AGENT_PIPELINE_OVERHEAD_SECONDS: &str = "agentline_agent_pipeline_overhead_seconds";

/// Installs the process-wide recorder and starts its upkeep. Called once by
/// the daemon, inside the runtime; a second call is refused by `metrics`.
///
/// `install_recorder` runs no upkeep of its own: histogram samples pile up
/// until something drains them, which without a scrape is a leak of a few
/// kilobytes per call. A task drains them every few seconds.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(HTTP_REQUEST_DURATION.into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full(CALL_SETUP_SECONDS.into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0],
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full(AGENT_LLM_FIRST_CHUNK_SECONDS.into()),
            &[
                0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full(AGENT_TURN_LATENCY_SECONDS.into()),
            &[
                0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full(AGENT_PIPELINE_OVERHEAD_SECONDS.into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1,
            ],
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full(TRUNK_PING_SECONDS.into()),
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full(WEBHOOK_ATTEMPT_DURATION.into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "Admin API requests by route, method and status."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Admin API latency by route and method."
    );
    metrics::describe_gauge!(TRUNKS_CONFIGURED, "SIP trunks loaded from the profiles.");
    metrics::describe_counter!(
        WEBHOOK_ATTEMPTS,
        "Webhook requests by outcome: success, retry or fail."
    );
    metrics::describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook deliveries finished: delivered or dead_lettered."
    );
    metrics::describe_histogram!(
        WEBHOOK_ATTEMPT_DURATION,
        metrics::Unit::Seconds,
        "Latency of one webhook request, send to last byte."
    );
    metrics::describe_gauge!(
        WEBHOOK_OUTBOX_DEPTH,
        "Webhook deliveries waiting (pending, endpoint enabled)."
    );
    metrics::describe_gauge!(
        WEBHOOK_OUTBOX_OLDEST_AGE,
        metrics::Unit::Seconds,
        "Age of the oldest undelivered webhook delivery."
    );
    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
    metrics::describe_gauge!(CALLS_ACTIVE, "Calls ringing or up, by direction.");
    metrics::describe_counter!(CALLS_STARTED_TOTAL, "Calls started, by direction.");
    metrics::describe_counter!(
        CALLS_ENDED_TOTAL,
        "Calls ended or refused, by direction and end reason."
    );
    metrics::describe_histogram!(
        CALL_SETUP_SECONDS,
        metrics::Unit::Seconds,
        "Time from INVITE to 200 OK, by direction."
    );
    metrics::describe_counter!(
        CALL_AMD_VERDICTS_TOTAL,
        "Answering-machine detection verdicts, by what answered."
    );
    metrics::describe_counter!(
        CALL_ATTEMPTS,
        "Outbound call attempts on a trunk (failover), by outcome."
    );
    metrics::describe_counter!(
        SIP_REQUESTS_REJECTED_TOTAL,
        "SIP messages dropped at the edge or refused by the guard layer, by reason."
    );
    metrics::describe_gauge!(
        SIP_BANNED_SOURCES,
        "SIP sources banned now by the flood guard."
    );
    metrics::describe_gauge!(
        SIP_RECEIVE_BACKLOG,
        "SIP messages queued for the daemon's runtime, not yet started."
    );
    metrics::describe_gauge!(
        SIP_INVITES_IN_PROGRESS,
        "Inbound INVITEs received and not yet answered or acknowledged."
    );
    metrics::describe_gauge!(SIP_TCP_CONNECTIONS, "SIP TCP connections open now.");
    metrics::describe_gauge!(SIP_TLS_CONNECTIONS, "SIP TLS connections open now.");
    metrics::describe_gauge!(
        SIP_REGISTRATION_STATE,
        "1 when the trunk is registered, 0 otherwise."
    );
    metrics::describe_gauge!(
        TRUNK_UP,
        "1 when the trunk's proxy answered the last OPTIONS probe below 500 (not 408), 0 otherwise."
    );
    metrics::describe_histogram!(
        TRUNK_PING_SECONDS,
        metrics::Unit::Seconds,
        "OPTIONS probe round trip to the trunk's proxy."
    );
    metrics::describe_counter!(RTP_PACKETS_TOTAL, "RTP packets by direction.");
    metrics::describe_counter!(RTP_BYTES_TOTAL, "RTP bytes by direction.");
    metrics::describe_counter!(RTP_PACKETS_LOST_TOTAL, "Inbound RTP packets lost.");
    metrics::describe_counter!(
        SRTP_AUTH_FAILURES_TOTAL,
        "Inbound SRTP packets dropped: failed authentication or replayed."
    );
    metrics::describe_histogram!(
        RTP_JITTER_SECONDS,
        metrics::Unit::Seconds,
        "RFC 3550 interarrival jitter per session."
    );
    metrics::describe_counter!(AGENT_LLM_REQUESTS_TOTAL, "LLM completions by outcome.");
    metrics::describe_histogram!(
        AGENT_LLM_FIRST_CHUNK_SECONDS,
        metrics::Unit::Seconds,
        "Time from an LLM request to its first streamed chunk."
    );
    metrics::describe_counter!(AGENT_TOOL_CALLS_TOTAL, "HTTP tool calls by outcome.");
    metrics::describe_counter!(
        AGENT_BARGE_INS_TOTAL,
        "Agent replies cut short by the caller."
    );
    metrics::describe_histogram!(
        AGENT_TURN_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "From the end of the caller's speech to each step of the reply, by stage."
    );
    metrics::describe_histogram!(
        AGENT_PIPELINE_OVERHEAD_SECONDS,
        metrics::Unit::Seconds,
        "The daemon's own share of a turn: RTP in to STT, TTS out to RTP."
    );
    metrics::describe_counter!(
        crate::agent::stream::STREAM_BAD_FRAMES,
        "Frames from stream agents' bots that could not be read, by kind; ignored."
    );
    metrics::describe_counter!(
        crate::agent::stream::STREAM_DROPPED_SAMPLES,
        "Stream bots' audio dropped past the queue's bound, in 8 kHz samples."
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
