//! Metric names of the SIP layer, recorded through the `metrics` crate.
//!
//! The daemon installs the exporter; these constants are the only place the
//! names are spelled.

/// Counter: requests received outside any transaction, label `method`.
pub const SIP_REQUESTS_TOTAL: &str = "agentline_sip_requests_total";

/// Counter: requests answered with an error by the guard layer or dropped,
/// label `reason` (`not_admitted`, `bad_request`, `unsupported_media_type`,
/// `bad_extension`).
pub const SIP_REQUESTS_REJECTED_TOTAL: &str = "agentline_sip_requests_rejected_total";

/// Gauge: 1 when the trunk is registered, 0 otherwise, label `trunk`.
pub const SIP_REGISTRATION_STATE: &str = "agentline_sip_registration_state";

/// Counter: failed REGISTER attempts, labels `trunk` and `status`.
pub const SIP_REGISTRATION_FAILURES_TOTAL: &str = "agentline_sip_registration_failures_total";

/// Counter: final outcomes of outbound INVITEs, label `status` (the SIP code,
/// `canceled` or `timeout`).
pub const SIP_OUTBOUND_RESULTS_TOTAL: &str = "agentline_sip_outbound_results_total";
