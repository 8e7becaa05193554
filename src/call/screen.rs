//! Screening an answered call around its agent: answering-machine
//! detection holds the agent until the verdict (and, to leave a message,
//! until the machine's greeting is over), and a campaign's opt-out key ends
//! the call.
//!
//! Owns: the [`Screen`] the call task reads its media events through, the
//! [`Detector`] run on the audio the agent does not hear meanwhile, and the
//! `answered_by` record. Must not: run the agent or touch SIP; it tells the
//! call task when to start the agent or why to end the call.
//!
//! The verdict is recorded on the call row as soon as it is known (a
//! spawned write, so that reading events stays cancel-safe inside the call
//! task's `select!`); a machine hung up on is recorded by the call's end
//! itself, so that `call.ended` surely carries it. (A call that ends within
//! the same instant as a human verdict could send `call.ended` before the
//! verdict's write; the row still gets it.)

use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use super::EndReason;
use super::events::Transitions;
use crate::media::amd::{AmdEvent, AmdMode, AnsweredBy, Detector};
use crate::media::{MediaEvent, MediaEvents};
use crate::metrics::CALL_AMD_VERDICTS_TOTAL;

/// What the call task does next.
#[derive(Debug)]
pub(super) enum Screened {
    /// Start the agent now.
    StartAgent,
    /// End the call.
    End(EndReason),
    /// A media event for the call task, as [`MediaEvents::recv`] gives it.
    Media(Option<MediaEvent>),
}

/// One call's screening.
pub(super) struct Screen {
    call_id: String,
    transitions: Transitions,
    /// Detection still running, with its mode.
    amd: Option<(Detector, AmdMode)>,
    /// The answer: the detector's deadlines count from here.
    answered: Instant,
    opt_out: Option<char>,
    agent_started: bool,
    /// The verdict, once detection gave one: the agent's context gets it.
    verdict: Option<AnsweredBy>,
}

impl Screen {
    /// Screening for a call answered now: `amd` off and no `opt_out` key
    /// start the agent at once and change nothing.
    pub fn new(
        call_id: &str,
        transitions: Transitions,
        amd: AmdMode,
        opt_out: Option<char>,
    ) -> Self {
        Self {
            call_id: call_id.to_owned(),
            transitions,
            amd: (amd != AmdMode::Off).then(|| (Detector::new(amd), amd)),
            answered: Instant::now(),
            opt_out,
            agent_started: false,
            verdict: None,
        }
    }

    /// The next thing the call task must act on. Cancel-safe: state changes
    /// only after an event has been taken, with no `.await` after it.
    pub async fn next(&mut self, events: &mut MediaEvents) -> Screened {
        if !self.agent_started && self.amd.is_none() {
            self.agent_started = true;
            return Screened::StartAgent;
        }
        // Bounded: each turn takes one event or passes a deadline, and there
        // are two at most (the verdict's, then the greeting's).
        loop {
            let Some((detector, _)) = self.amd.as_mut() else {
                return Screened::Media(events.recv().await);
            };
            let deadline = detector.deadline().map(|d| self.answered + d);
            let amd_event = tokio::select! {
                event = events.recv() => match event {
                    Some(MediaEvent::Audio(frame)) => detector.push(&frame.samples),
                    other => return Screened::Media(other),
                },
                () = sleep_until(deadline.unwrap_or(self.answered)), if deadline.is_some() => {
                    detector.expire(self.answered.elapsed())
                }
            };
            if let Some(next) = amd_event.and_then(|e| self.on_amd(e)) {
                return next;
            }
        }
    }

    fn on_amd(&mut self, event: AmdEvent) -> Option<Screened> {
        let mode = self.amd.as_ref().map(|(_, m)| *m)?;
        match event {
            AmdEvent::Verdict(v) => {
                self.verdict = Some(v);
                tracing::info!(answered_by = v.as_str(), "answering-machine detection");
                metrics::counter!(CALL_AMD_VERDICTS_TOTAL, "answered_by" => v.as_str())
                    .increment(1);
                if (v, mode) == (AnsweredBy::Machine, AmdMode::Hangup) {
                    // The end records it (`EndReason::answered_by`).
                    self.amd = None;
                    return Some(Screened::End(EndReason::MachineDetected));
                }
                let transitions = self.transitions.clone();
                let id = self.call_id.clone();
                tokio::spawn(
                    async move { transitions.answered_by(&id, v).await }.in_current_span(),
                );
                match v {
                    // The detector goes on until the greeting is over.
                    AnsweredBy::Machine => None,
                    AnsweredBy::Human | AnsweredBy::Unknown => Some(self.start_agent()),
                }
            }
            AmdEvent::GreetingOver => {
                tracing::info!("greeting over; the agent leaves its message");
                Some(self.start_agent())
            }
        }
    }

    fn start_agent(&mut self) -> Screened {
        self.amd = None;
        self.agent_started = true;
        Screened::StartAgent
    }

    /// The answering-machine verdict, once known.
    pub fn answered_by(&self) -> Option<AnsweredBy> {
        self.verdict
    }

    /// A key the callee pressed: the end of the call when it is the
    /// campaign's opt-out key.
    pub fn on_digit(&self, digit: char) -> Option<EndReason> {
        (self.opt_out == Some(digit)).then(|| {
            tracing::info!(%digit, "opt-out key pressed");
            EndReason::OptedOut
        })
    }
}
