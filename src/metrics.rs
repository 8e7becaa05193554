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

/// Installs the process-wide recorder. Called once by the daemon; a second
/// call (tests that build two apps in one process) is refused by `metrics`.
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
            Matcher::Full(WEBHOOK_ATTEMPT_DURATION.into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
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
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
