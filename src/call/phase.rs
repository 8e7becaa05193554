//! The phases of a call, shared by inbound and outbound calls, as types:
//! each step consumes one phase and returns the next, as ezk's
//! `respond_success(self) -> (Session, ack)` does.
//!
//! ```text
//! Routed::admit ──> Routed ──prepare──> Prepared ──(ringing: inbound::Ringing
//!   │ TrunkRate,      │ AgentUnavailable,   │       or outbound::Dialing)
//!   │ TrunkFull       │ Rtp                 │ into_session + record_answered
//!   v                 v                     v
//! refused          Finished <──────────── Answered ──run──> Finished ──record
//! ```
//!
//! [`Routed`] holds the call's trunk slot from admission to the end;
//! [`Prepared`] adds the agent, the RTP port and our side of the SDP;
//! [`Answered`] is recorded `answered` with its media running and hands
//! the call to the call task; [`Finished`] carries the one [`EndReason`]
//! and records it. Every failure edge of a phase returns [`Finished`] with
//! the reason decided in that phase's step; the direction's own ringing
//! phase decides its SIP answer.
//!
//! Must not: send SIP beyond a BYE after a failed answer (the directions
//! own their INVITE), or write the call row except through
//! [`super::events::Transitions`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::end_reason::FailureCause;
use super::registry::{CallCommand, CallHandle, TrunkSlot};
use super::screen::Screen;
use super::task::{self, Established};
use super::{EndReason, Shared, count_ended};
use crate::agent::CallSettings;
use crate::agent::brain::{AgentContext, TransferCheck};
use crate::agent::runner::{AgentRun, StreamEnv};
use crate::agent::stream::{ForkSettings, StreamCall};
use crate::config::Profile;
use crate::media::{Direction, LocalSdp, PortPermit, RtpSession, bind_rtp};
use crate::metrics::CALL_SETUP_SECONDS;
use crate::model::RecordingSettings;
use crate::sip::{Call, DialogState};

/// How long we wait for the answer to our BYE when a call answered
/// without a session it can run.
const BYE_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent a call runs, as its record stores it.
pub(super) struct AgentSpec {
    /// The agent's id (`agt_...`), stored on the call.
    pub id: String,
    /// `echo`, `prompt` or `voice`.
    pub kind: String,
    /// The part of the settings the call layer reads (duration limit,
    /// prompt, turn-taking, opening).
    pub settings: CallSettings,
    /// The agent's whole settings document (the brain reads it).
    pub settings_json: String,
}

/// A call admitted on its trunk. Every later phase carries it.
pub(super) struct Routed {
    /// What every call shares (store, live calls, media config).
    pub shared: Arc<Shared>,
    /// Shared, not owned: keeps every phase's failure edge small.
    pub id: Arc<str>,
    /// The call's direction: whose BYE is a caller's or a callee's
    /// hangup, and the metric label.
    pub inbound: bool,
    /// Hangups asked by the API and the drain, read by each phase.
    pub commands: mpsc::Receiver<CallCommand>,
    /// The call's place among the live calls and on its trunk; dropped
    /// with the last phase, which frees the slot and wakes the drain.
    _slot: TrunkSlot,
}

impl Routed {
    /// Admits call `id` onto `trunk`: its `cps` first, then a slot under
    /// its `max_calls` (the one place a trunk's calls are counted).
    pub fn admit(
        shared: &Arc<Shared>,
        id: &str,
        trunk: &Profile,
        inbound: bool,
    ) -> Result<Self, EndReason> {
        if !shared.registry.admit_rate(&trunk.name, trunk.limits.cps) {
            return Err(EndReason::TrunkRate);
        }
        let (handle, commands) = CallHandle::new();
        let slot = shared
            .registry
            .try_insert(
                id,
                &trunk.name,
                direction(inbound),
                trunk.limits.max_calls,
                handle,
            )
            .ok_or(EndReason::TrunkFull)?;
        Ok(Self {
            shared: Arc::clone(shared),
            id: Arc::from(id),
            inbound,
            commands,
            _slot: slot,
        })
    }

    /// Trunk failover: moves the call's slot onto `trunk`, under its `cps`
    /// and `max_calls` like [`Routed::admit`].
    pub fn move_to(&self, trunk: &Profile) -> Result<(), EndReason> {
        if self.shared.registry.trunk_of(&self.id).as_deref() == Some(trunk.name.as_str()) {
            // Admitted there already (the call's first trunk): no second
            // cps token, and its own slot is not "full".
            return Ok(());
        }
        if !self
            .shared
            .registry
            .admit_rate(&trunk.name, trunk.limits.cps)
        {
            return Err(EndReason::TrunkRate);
        }
        if !self
            .shared
            .registry
            .move_call(&self.id, &trunk.name, trunk.limits.max_calls)
        {
            return Err(EndReason::TrunkFull);
        }
        Ok(())
    }

    /// The end of the call, before it was answered.
    pub fn end(self, reason: EndReason) -> Finished {
        Finished {
            call: self,
            reason,
            answered_for: None,
        }
    }

    /// Builds the agent (on the call of `context`) and binds the RTP port
    /// our SDP will name. `recording`: the call's recording settings (the
    /// call's, a campaign's and the number's, merged), over the agent's.
    pub async fn prepare(
        self,
        agent: &AgentSpec,
        trunk: &Profile,
        mut context: AgentContext,
        recording: Option<&RecordingSettings>,
    ) -> Result<Prepared, Finished> {
        let shared = Arc::clone(&self.shared);
        // Toll fraud: a transfer passes the trunk's destination policy as
        // an INVITE through it would.
        let policy = trunk.clone();
        context.transfer_check = TransferCheck::new(move |to| policy.transfer_allowed(to));
        let run = AgentRun::new(
            &agent.kind,
            &agent.settings,
            &agent.settings_json,
            &shared.speech,
            self.inbound,
            StreamEnv {
                call: StreamCall {
                    call_id: self.id.to_string(),
                    account: shared.node.clone(),
                    context: std::collections::BTreeMap::from([
                        (
                            "agentline_direction".to_owned(),
                            direction(self.inbound).to_owned(),
                        ),
                        ("agentline_trunk".to_owned(), trunk.name.clone()),
                    ]),
                },
                // The process's one outbound policy (`[net]`), read at
                // the call so a reload is seen.
                guard: crate::net::outbound().guard().clone(),
            },
            Some(context),
        )
        .await;
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                tracing::warn!(error = %e, agent_id = %agent.id, "the agent cannot run");
                return Err(self.end(EndReason::Failed(FailureCause::AgentUnavailable(e))));
            }
        };
        let (socket, permit) = match bind_rtp(&shared.ports, shared.media_ip()).await {
            Ok(bound) => bound,
            Err(e) => return Err(self.end(EndReason::Failed(FailureCause::Rtp(e.to_string())))),
        };
        let sdp = LocalSdp::new(shared.media_ip(), permit.port(), super::codecs(trunk))
            .with_srtp(super::srtp(trunk));
        let recording = super::recording::merged(&[agent.settings.recording.as_ref(), recording]);
        Ok(Prepared {
            call: self,
            recording,
            forks: agent.settings.streams.clone(),
            agent: run,
            sdp,
            media: Media::Bound(socket, permit),
        })
    }

    /// Records the answer (`call.answered`) with `dialog`, what a survivor
    /// needs to end the carrier's leg if this node dies (one write: the
    /// call is never answered in the store without it), and the setup
    /// time counted from `setup_started`; returns the instant of the
    /// answer.
    pub async fn record_answered(
        &self,
        setup_started: Instant,
        dialog: Option<DialogState>,
    ) -> Instant {
        let answered_at = Instant::now();
        metrics::histogram!(CALL_SETUP_SECONDS, "direction" => direction(self.inbound))
            .record(answered_at.duration_since(setup_started).as_secs_f64());
        let dialog = super::orphans::dialog_text(&self.id, dialog);
        self.shared
            .transitions
            .answered(&self.id, dialog.as_deref())
            .await;
        answered_at
    }
}

/// The metric and log label of a call's direction.
pub(super) fn direction(inbound: bool) -> &'static str {
    if inbound { "inbound" } else { "outbound" }
}

/// The media of a call being set up.
enum Media {
    /// The port is bound; the session starts with the answer to our offer.
    Bound(UdpSocket, PortPermit),
    /// Negotiated from the far end's offer and running.
    Running(RtpSession),
}

/// A routed call with its agent built and its RTP port bound.
pub(super) struct Prepared {
    /// The admitted call, with its trunk slot.
    pub call: Routed,
    /// The agent built for the call, not started yet.
    agent: AgentRun,
    /// Whether and how the call is recorded, every level merged.
    recording: RecordingSettings,
    /// Listeners that get a copy of the call's audio.
    forks: Vec<ForkSettings>,
    /// Our side of the SDP: the port, the address and the trunk's codecs.
    sdp: LocalSdp,
    /// The bound port, or the session already running.
    media: Media,
}

impl Prepared {
    /// RFC 3264 §6: our answer to the far end's offer; the media starts
    /// now. Ends `NotAcceptable` when no codec is shared.
    pub fn answer(mut self, offer: &[u8]) -> Result<(Self, Bytes), Finished> {
        let (answer, negotiated) = match self.sdp.answer(offer, Direction::SendRecv) {
            Ok(answered) => answered,
            Err(e) => {
                tracing::info!(error = %e, "offer not acceptable");
                return Err(self.call.end(EndReason::NotAcceptable));
            }
        };
        let Media::Bound(socket, permit) = self.media else {
            // Answered twice: the media already runs on the first answer.
            return Ok((self, Bytes::from(answer)));
        };
        match RtpSession::start(
            socket,
            Some(permit),
            negotiated,
            self.call.shared.media.clone(),
        ) {
            Ok(rtp) => {
                self.media = Media::Running(rtp);
                Ok((self, Bytes::from(answer)))
            }
            Err(e) => Err(self.call.end(rtp_failed(&e))),
        }
    }

    /// Trunk failover: the next offer names `trunk`'s codecs, on the same
    /// port (the media has not started: no answer was accepted yet).
    pub fn use_trunk(&mut self, trunk: &Profile) {
        if let Media::Bound(_, permit) = &self.media {
            self.sdp = LocalSdp::new(
                self.call.shared.media_ip(),
                permit.port(),
                super::codecs(trunk),
            )
            .with_srtp(super::srtp(trunk));
        }
    }

    /// Our offer (RFC 3264 §5); the media waits for the answer.
    pub fn offer(&mut self) -> Bytes {
        Bytes::from(self.sdp.offer(Direction::SendRecv))
    }

    /// The session of the answered call: the media already running, or
    /// started now with `answer`, the far end's answer to our offer (RFC
    /// 3264 §6; RFC 3261 §13.2.2.4 for one in an ACK). Without a usable
    /// answer the call ends `NotAcceptable`.
    pub fn into_session(self, answer: Option<&[u8]>) -> (Routed, Result<Session, EndReason>) {
        let Prepared {
            call,
            agent,
            recording,
            forks,
            sdp,
            media,
        } = self;
        let rtp = match media {
            Media::Running(rtp) => Ok(rtp),
            Media::Bound(socket, permit) => match answer.map(|a| sdp.accept_answer(a)) {
                Some(Ok(negotiated)) => {
                    RtpSession::start(socket, Some(permit), negotiated, call.shared.media.clone())
                        .map_err(|e| rtp_failed(&e))
                }
                Some(Err(e)) => {
                    tracing::info!(error = %e, "answer to our offer not acceptable");
                    Err(EndReason::NotAcceptable)
                }
                None => {
                    tracing::info!("no answer to our offer");
                    Err(EndReason::NotAcceptable)
                }
            },
        };
        let session = rtp.map(|rtp| Session {
            agent,
            recording,
            forks,
            sdp,
            rtp,
        });
        (call, session)
    }
}

fn rtp_failed(e: &impl std::fmt::Display) -> EndReason {
    EndReason::Failed(FailureCause::Rtp(e.to_string()))
}

/// The agent, our SDP side and the running media of an answered call.
pub(super) struct Session {
    /// The agent, started by the call task when its screen says so.
    agent: AgentRun,
    /// Whether and how the call is recorded.
    recording: RecordingSettings,
    /// Listeners that get a copy of the call's audio.
    forks: Vec<ForkSettings>,
    /// Kept to answer re-INVITEs with the same origin and codecs.
    sdp: LocalSdp,
    /// The running media task's handle and events; the port is freed when
    /// the task ends.
    rtp: RtpSession,
}

/// An answered call, recorded `answered`, whose media runs.
pub(super) struct Answered {
    /// The admitted call, with its trunk slot.
    call: Routed,
    /// The confirmed dialog; the call task owns it from here.
    sip: Call,
    /// The agent and the running media.
    session: Session,
    /// The answer: the call's duration counts from here.
    at: Instant,
}

impl Answered {
    /// The call answered at `at` (see [`Routed::record_answered`]).
    pub fn new(call: Routed, sip: Call, session: Session, at: Instant) -> Self {
        Self {
            call,
            sip,
            session,
            at,
        }
    }

    /// Runs the call task until the call ends, for at most `max_duration`,
    /// with `screen` deciding when the agent starts.
    pub async fn run(self, max_duration: Duration, screen: Screen) -> Finished {
        let Answered {
            mut call,
            sip,
            session,
            at,
        } = self;
        let (_, placeholder) = mpsc::channel(1);
        let commands = std::mem::replace(&mut call.commands, placeholder);
        let (reason, analysis, recorder) = task::run(
            &call.shared,
            Established {
                id: call.id.to_string(),
                inbound: call.inbound,
                sip,
                rtp: session.rtp,
                sdp: session.sdp,
                agent: session.agent,
                recording: session.recording,
                forks: session.forks,
                max_duration,
                commands,
                screen,
            },
        )
        .await;
        // The file was closed with the call; its row and
        // `recording.completed` go before `call.ended`.
        if let Some(recorder) = recorder {
            recorder.finish(call.shared.transitions.outbox()).await;
        }
        // Held until Finished::record has recorded the end, so that
        // call.analyzed follows call.ended.
        if let Some(job) = analysis {
            call.shared.analyzer.hold(&call.id, job);
        }
        Finished {
            call,
            reason,
            answered_for: Some(at.elapsed()),
        }
    }
}

/// Ends a call answered at `answered_at` that has no session it can run:
/// the dialog ends with our BYE (RFC 3261 §15.1.1).
pub(super) async fn hang_up_unanswerable(
    call: Routed,
    sip: Call,
    reason: EndReason,
    answered_at: Instant,
) -> Finished {
    match tokio::time::timeout(BYE_TIMEOUT, sip.hangup()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(error = %e, "BYE not answered cleanly"),
        Err(_) => tracing::info!("BYE not answered in time"),
    }
    Finished {
        call,
        reason,
        answered_for: Some(answered_at.elapsed()),
    }
}

/// The end of a call, with its one reason.
pub(super) struct Finished {
    pub call: Routed,
    pub reason: EndReason,
    /// How long the call was up; `None`: never answered.
    answered_for: Option<Duration>,
}

impl Finished {
    /// The end of a call that was up for `answered_for` (a warm transfer's
    /// consult leg, ended by its own owner).
    pub fn answered(call: Routed, reason: EndReason, answered_for: Duration) -> Self {
        Finished {
            call,
            reason,
            answered_for: Some(answered_for),
        }
    }

    /// Logs and counts the end and records it (`call.ended`). The trunk
    /// slot is freed after the record, so the drain waits for it.
    pub async fn record(self) {
        let Finished {
            call,
            reason,
            answered_for,
        } = self;
        match reason.failure() {
            Some(cause) => tracing::info!(reason = reason.label(), %cause, "call ended"),
            None => tracing::info!(reason = reason.label(), "call ended"),
        }
        count_ended(direction(call.inbound), &reason);
        call.shared
            .transitions
            .ended(&call.id, &reason, answered_for)
            .await;
        // The call's analysis, if its agent has one, starts now; the call
        // task does not wait for it.
        call.shared.analyzer.release(&call.id);
    }
}
