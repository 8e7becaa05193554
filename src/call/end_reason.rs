//! Why a call ended, or why it was never set up. One value per call decides
//! the SIP answer (a final response before answer, a BYE after), the status
//! stored and sent in webhooks, and the metric label. A failure on our side
//! is classified once, where it happens, into a [`FailureCause`]; every
//! cause is stored and counted as `error`, and logged with its own
//! [`FailureCause::kind`].

use std::time::Duration;

use crate::model::{AnsweredBy, CallStatus};
use crate::sip::Rejection;

/// Seconds a refused caller is asked to wait before trying again
/// (Retry-After, RFC 3261 §20.33).
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What failed on our side: each cause is one kind of fault, with the
/// error text to log where there is one. The stored `end_reason` and the
/// metric label of every cause is `error` (wire format kept); the status
/// is `completed` after the answer and `failed` before, and an inbound
/// INVITE refused for one gets 500 (RFC 3261 §21.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureCause {
    /// A store read or write the call could not go on without (routing
    /// the number, recording the call).
    Store(String),
    /// The number's agent is missing, or its settings do not parse.
    AgentConfig(String),
    /// The agent cannot run (a sound that cannot be read, a speech engine
    /// or brain that cannot be built).
    AgentUnavailable(String),
    /// No RTP port or socket, or the media session would not start.
    Rtp(String),
    /// A SIP transaction or transport error on the call.
    Sip(String),
    /// The SIP stack is not running.
    SipNotRunning,
    /// The trunk lost its `[outbound]` table between placing and dialing.
    TrunkNotOutbound,
    /// The INVITE transaction ended without any final response.
    NoFinalResponse,
    /// Trunk failover: every trunk the call could go to was skipped
    /// (down by its OPTIONS probe or registration, or full) before any
    /// INVITE was sent.
    NoTrunkUp,
    /// The media session closed under the call.
    MediaClosed,
    /// The agent session ended before the call did.
    AgentEnded,
    /// The call task stopped without a reason: a bug, logged as such.
    NoReason,
}

impl FailureCause {
    /// The log label of the cause (the `cause` field of "call ended").
    pub fn kind(&self) -> &'static str {
        match self {
            FailureCause::Store(_) => "store",
            FailureCause::AgentConfig(_) => "agent_config",
            FailureCause::AgentUnavailable(_) => "agent_unavailable",
            FailureCause::Rtp(_) => "rtp",
            FailureCause::Sip(_) => "sip",
            FailureCause::SipNotRunning => "sip_not_running",
            FailureCause::TrunkNotOutbound => "trunk_not_outbound",
            FailureCause::NoFinalResponse => "no_final_response",
            FailureCause::NoTrunkUp => "no_trunk_up",
            FailureCause::MediaClosed => "media_closed",
            FailureCause::AgentEnded => "agent_ended",
            FailureCause::NoReason => "no_reason",
        }
    }

    /// The error text behind the cause, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            FailureCause::Store(d)
            | FailureCause::AgentConfig(d)
            | FailureCause::AgentUnavailable(d)
            | FailureCause::Rtp(d)
            | FailureCause::Sip(d) => Some(d),
            _ => None,
        }
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.detail() {
            Some(detail) => write!(f, "{}: {detail}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

/// The one reason a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The caller hung up (BYE on an inbound call).
    CallerHangup,
    /// The called party hung up (BYE on an outbound call).
    CalleeHangup,
    /// The agent finished (the `prompt` agent after its sound).
    AgentHangup,
    /// The agent handed the call over with SIP REFER (RFC 3515) and the
    /// far end accepted.
    Transferred,
    /// `POST /v1/calls/{id}/hangup`.
    ApiHangup,
    /// The callee pressed the campaign's opt-out key: the number goes on
    /// the do-not-call list.
    OptedOut,
    /// Answering-machine detection heard a machine and the call's `amd`
    /// mode is `hangup`.
    MachineDetected,
    /// The agent's `max_duration_seconds` passed.
    MaxDuration,
    /// No RTP within the inactivity timeout.
    MediaTimeout,
    /// The daemon stopped (drain deadline or a second signal).
    Shutdown,
    /// The caller sent CANCEL before the answer (RFC 3261 §9.2).
    Canceled,
    /// The callee answered busy (486, 600).
    Busy { code: u16, reason: String },
    /// Nobody answered within the ring timeout (or 408/480).
    NoAnswer { code: Option<u16> },
    /// The callee refused with another final response.
    Declined { code: u16, reason: String },
    /// Our 200 OK was never acknowledged (RFC 3261 §13.3.1.4).
    NoAck,
    /// RFC 4028: the peer's session refresh was overdue (or ours failed);
    /// we sent BYE.
    SessionExpired,
    /// Inbound: the To number is not provisioned or bound to no agent.
    UnknownNumber,
    /// Inbound: no trunk's `[inbound] allow` covers the source.
    SourceNotAllowed,
    /// The trunk is at its `max_calls`.
    TrunkFull,
    /// The trunk's `cps` (new calls per second) is used up.
    TrunkRate,
    /// The daemon is draining and takes no new calls.
    Draining,
    /// The offer has no codec we speak (488, RFC 3264 §6).
    NotAcceptable,
    /// The `stream` agent's bot could not be reached at answer (refused,
    /// not allowed by the outbound guard, or no WebSocket within the
    /// connect timeout); the reason is logged.
    AgentUnreachable,
    /// Something on our side failed (store, RTP port, SIP transport...).
    Failed(FailureCause),
    /// The daemon stopped without ending the call (it crashed or was
    /// killed); the next start of the same node ended its record.
    Lost,
}

impl EndReason {
    /// The metric label and the stored `end_reason`.
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::CallerHangup => "caller_hangup",
            EndReason::CalleeHangup => "callee_hangup",
            EndReason::AgentHangup => "agent_hangup",
            EndReason::Transferred => "transferred",
            EndReason::ApiHangup => "api_hangup",
            EndReason::OptedOut => "opted_out",
            EndReason::MachineDetected => "machine_detected",
            EndReason::MaxDuration => "max_duration",
            EndReason::MediaTimeout => "media_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::Canceled => "canceled",
            EndReason::Busy { .. } => "busy",
            EndReason::NoAnswer { .. } => "no_answer",
            EndReason::Declined { .. } => "declined",
            EndReason::NoAck => "no_ack",
            EndReason::SessionExpired => "session_expired",
            EndReason::UnknownNumber => "unknown_number",
            EndReason::SourceNotAllowed => "source_not_allowed",
            EndReason::TrunkFull => "trunk_full",
            EndReason::TrunkRate => "trunk_cps",
            EndReason::Draining => "draining",
            EndReason::NotAcceptable => "not_acceptable",
            EndReason::AgentUnreachable => "agent_unreachable",
            EndReason::Failed(_) => "error",
            EndReason::Lost => "lost",
        }
    }

    /// The call's final status, given whether the call was answered.
    pub fn status(&self, answered: bool) -> CallStatus {
        if answered {
            return CallStatus::Completed;
        }
        match self {
            EndReason::Canceled | EndReason::ApiHangup | EndReason::Shutdown => {
                CallStatus::Canceled
            }
            EndReason::Busy { .. } | EndReason::TrunkFull => CallStatus::Busy,
            EndReason::NoAnswer { .. } => CallStatus::NoAnswer,
            _ => CallStatus::Failed,
        }
    }

    /// The final response to an inbound INVITE that this reason refuses
    /// before the answer (RFC 3261 §21.4, §21.5).
    pub fn rejection(&self) -> Rejection {
        let (code, retry_after) = match self {
            EndReason::UnknownNumber => (404, None),
            EndReason::SourceNotAllowed => (403, None),
            EndReason::TrunkFull => (486, Some(RETRY_AFTER)),
            // RFC 3261 §21.5.4: overloaded for now; the rate frees up
            // within a second.
            EndReason::TrunkRate => (503, Some(Duration::from_secs(1))),
            EndReason::Draining | EndReason::Shutdown => (503, Some(RETRY_AFTER)),
            EndReason::NotAcceptable => (488, None),
            EndReason::ApiHangup | EndReason::AgentHangup => (480, None),
            EndReason::Busy { code, .. } | EndReason::Declined { code, .. } => (*code, None),
            _ => (500, None),
        };
        Rejection {
            code,
            reason: None,
            retry_after,
        }
    }

    /// The SIP status and reason to store for an unanswered call, if any.
    pub fn sip_status(&self) -> Option<(u16, String)> {
        match self {
            EndReason::Busy { code, reason } | EndReason::Declined { code, reason } => {
                Some((*code, reason.clone()))
            }
            EndReason::NoAnswer { code: Some(code) } => Some((*code, String::new())),
            EndReason::Canceled => Some((487, "Request Terminated".to_owned())),
            _ => None,
        }
    }

    /// Classifies an outbound INVITE's final error response.
    pub fn from_failure(code: u16, reason: String) -> Self {
        match code {
            486 | 600 => EndReason::Busy { code, reason },
            408 | 480 => EndReason::NoAnswer { code: Some(code) },
            _ => EndReason::Declined { code, reason },
        }
    }

    /// What answered, when the reason itself tells.
    pub fn answered_by(&self) -> Option<AnsweredBy> {
        match self {
            EndReason::MachineDetected => Some(AnsweredBy::Machine),
            _ => None,
        }
    }

    /// What failed on our side, when something did.
    pub fn failure(&self) -> Option<&FailureCause> {
        match self {
            EndReason::Failed(cause) => Some(cause),
            _ => None,
        }
    }

    /// Whether the far end already ended the dialog (no BYE to send).
    pub fn far_end_hung_up(&self) -> bool {
        matches!(self, EndReason::CallerHangup | EndReason::CalleeHangup)
    }
}

#[cfg(test)]
mod tests {
    use super::{EndReason, FailureCause};
    use crate::model::CallStatus;

    #[test]
    fn one_reason_decides_status_label_and_answer() {
        let busy = EndReason::from_failure(486, "Busy Here".into());
        assert_eq!(
            (busy.label(), busy.status(false)),
            ("busy", CallStatus::Busy)
        );
        assert_eq!(
            EndReason::from_failure(480, String::new()).status(false),
            CallStatus::NoAnswer
        );
        assert_eq!(
            EndReason::from_failure(403, String::new()).status(false),
            CallStatus::Failed
        );
        assert_eq!(EndReason::MaxDuration.status(true), CallStatus::Completed);
        assert_eq!(EndReason::Canceled.status(false), CallStatus::Canceled);
        assert_eq!(EndReason::UnknownNumber.rejection().code, 404);
        assert_eq!(EndReason::SourceNotAllowed.rejection().code, 403);
        let full = EndReason::TrunkFull.rejection();
        assert_eq!(full.code, 486);
        assert!(full.retry_after.is_some());
        assert_eq!(EndReason::Draining.rejection().code, 503);
    }

    #[test]
    fn every_failure_cause_is_stored_and_counted_as_error() {
        for cause in [
            FailureCause::Store("db locked".into()),
            FailureCause::Rtp("no port".into()),
            FailureCause::MediaClosed,
            FailureCause::AgentEnded,
        ] {
            let reason = EndReason::Failed(cause.clone());
            assert_eq!(reason.label(), "error");
            assert_eq!(reason.status(false), CallStatus::Failed);
            assert_eq!(reason.status(true), CallStatus::Completed);
            assert_eq!(reason.rejection().code, 500);
            assert_eq!(reason.failure(), Some(&cause));
        }
        assert_eq!(
            FailureCause::Store("db locked".into()).to_string(),
            "store: db locked"
        );
        assert_eq!(FailureCause::MediaClosed.to_string(), "media_closed");
    }
}
