//! The established call: one task owns the SIP dialog, the RTP session and
//! the agent, and waits on everything at once (BYE, re-INVITE, media
//! events read through the call's [`Screen`], commands, the duration limit)
//! until one [`EndReason`] ends it. The screen says when the agent starts.
//! Then it sends BYE unless the far end already did, and stops the media.
//!
//! The call's audio does not pass through here: a `voice` agent is
//! attached to the media session and runs on its clock, so nothing this
//! task awaits (a re-INVITE's ACK, a REFER's answer, a store write) holds
//! up a frame. The agent's requests come through here: hang up, or
//! transfer with SIP REFER (RFC 3515); the caller's keys go to it from
//! here (after the opt-out check), and its transcript is stored when the
//! call ends.
//!
//! Warm transfer ends here too: once the person heard the summary, either
//! the daemon bridges the two legs, or (attended, RFC 5589 §7) the caller's
//! side is sent REFER with a Replaces naming the consult dialog (RFC 3891
//! §3) so that it calls the person itself; its outcome comes as NOTIFY
//! sipfrag (RFC 3515 §2.4.5) or as the person's BYE of the replaced
//! consult leg. A refused REFER (405, 603, a failing sipfrag, no outcome in
//! time) falls back to the bridge: a carrier that refuses REFER still gets
//! the caller to the person.
//!
//! Must not: write the call row itself beyond the DTMF transition and the
//! transcript; the inbound and outbound lifecycles record the end with the
//! reason returned.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};

use super::end_reason::FailureCause;
use super::recording::Recorder;
use super::registry::CallCommand;
use super::replace;
use super::screen::{Screen, Screened};
use super::transfer::{self, Consult, Leg};
use super::{EndReason, Shared};
use crate::agent::analysis::Job;
use crate::agent::brain::Role;
use crate::agent::fork::{FORK_TAP_FRAMES, Forks};
use crate::agent::runner::{AgentRequest, AgentRun, Transcript};
use crate::agent::session::Said;
use crate::agent::stream::{ForkSettings, StreamCall};
use crate::media::bridge::Bridge;
use crate::media::{Digit, Direction, LocalSdp, MediaEvent, MediaHandle, MediaStats, RtpSession};
use crate::model::RecordingSettings;
use crate::sip::{Call, DialogEvent, ReInvite, SipError};
use crate::store::transcripts::NewTurn;

/// How long we wait for the answer to our BYE before giving up on it.
const BYE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a REFER may take to be answered before the call goes on.
const REFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an accepted attended-transfer REFER may take to report its
/// outcome (NOTIFY 2xx, or the person's side ending the consult leg)
/// before the daemon bridges the legs instead.
const REFER_OUTCOME_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the media task gets to publish its last counters.
const MEDIA_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past its own length a warm transfer's summary may take to
/// play to the person before the caller is joined anyway.
const SUMMARY_SLACK: Duration = Duration::from_secs(10);
/// The caller's lines a warm transfer's summary quotes when the agent
/// gave none.
const SUMMARY_LINES: usize = 3;
/// Longest summary spoken to the person.
const SUMMARY_CHARS: usize = 500;

/// Everything an answered call runs on.
pub(super) struct Established {
    pub id: String,
    pub inbound: bool,
    pub sip: Call,
    pub rtp: RtpSession,
    pub sdp: LocalSdp,
    pub agent: AgentRun,
    /// Whether and how the call is recorded (every level merged).
    pub recording: RecordingSettings,
    /// Listeners that get a copy of the call's audio.
    pub forks: Vec<ForkSettings>,
    pub max_duration: Duration,
    pub commands: mpsc::Receiver<CallCommand>,
    /// Says when the agent starts (after answering-machine detection) and
    /// ends the call on an opt-out key.
    pub screen: Screen,
}

/// Runs the call until it ends; returns why, the analysis to run once
/// the end is recorded (when the agent defines one), and the recording,
/// stopped, to complete after the end.
pub(super) async fn run(
    shared: &Arc<Shared>,
    call: Established,
) -> (EndReason, Option<Job>, Option<Recorder>) {
    let Established {
        id,
        inbound,
        mut sip,
        rtp,
        mut sdp,
        mut agent,
        recording,
        forks,
        max_duration,
        mut commands,
        mut screen,
    } = call;
    let RtpSession {
        handle: media,
        mut events,
        task: media_task,
    } = rtp;
    let deadline = Instant::now() + max_duration;
    // From the answer on, before the agent says anything.
    let mut recorder = match recording.is_enabled() {
        true => {
            shared
                .recordings
                .start(&id, &media, recording.channels.unwrap_or_default())
                .await
        }
        false => None,
    };
    let forks = start_forks(shared, &id, &media, forks).await;
    let mut announcement = recording
        .announcement
        .as_deref()
        .filter(|_| recorder.is_some());
    let far_hangup = if inbound {
        EndReason::CallerHangup
    } else {
        EndReason::CalleeHangup
    };

    // A voice agent's lines as they are said: a warm transfer's summary
    // quotes the caller when the agent gave none.
    let mut live = agent.live_transcript();
    let answered = Instant::now();
    // A warm transfer: the consult call being placed (with the summary the
    // agent gave), then the answered leg bridged with the caller, and the
    // agent's transcript taken when it left.
    let mut consult: Option<(Consult, Option<String>, bool)> = None;
    let mut bridged: Option<(Leg, Bridge)> = None;
    // An attended transfer done: the consult leg, which the person's side
    // ends once the caller's INVITE with Replaces took it over.
    let mut replaced: Option<Leg> = None;
    let mut handed_off: Option<(Option<Transcript>, NewTurn)> = None;
    // How the consult leg ends, when it ends before the caller's call.
    let mut leg_end: Option<EndReason> = None;
    // The transcript's notes of dialogs replaced (RFC 3891).
    let mut notes: Vec<NewTurn> = Vec::new();
    // An INVITE with Replaces finds the call by its dialog's Call-ID.
    shared.registry.set_sip_call_id(&id, sip.call_id());

    let mut reason = None;
    while reason.is_none() {
        reason = tokio::select! {
            outcome = consult_outcome(&mut consult) => {
                let (summary, attended) = consult
                    .take()
                    .map(|(_, summary, attended)| (summary, attended))
                    .unwrap_or_default();
                match outcome {
                    Ok(leg) => {
                        let said = drain_live(&mut live);
                        match hand_off(shared, &mut agent, leg, summary, &said).await {
                            Some((mut leg, transcript)) => {
                                let referred = match attended {
                                    true => Some(refer_replacing(&mut sip, &mut sdp, &media, &mut leg).await),
                                    false => None,
                                };
                                let note = match &referred {
                                    None => format!("[transferred: joined with call {}]", leg.id),
                                    Some(Referred::Completed) => format!(
                                        "[transferred: the caller's side called {} by REFER with Replaces]",
                                        leg.id
                                    ),
                                    Some(Referred::Refused(why)) => format!(
                                        "[transferred: joined with call {} (REFER with Replaces refused: {why})]",
                                        leg.id
                                    ),
                                };
                                handed_off = Some((transcript, note_turn(note, answered.elapsed())));
                                if let Some(Referred::Completed) = referred {
                                    tracing::info!(consult_call_id = %leg.id, "attended transfer completed by REFER with Replaces");
                                    replaced = Some(leg);
                                    Some(EndReason::Transferred)
                                } else {
                                    match Bridge::start(&media, &leg.rtp.handle).await {
                                        Ok(bridge) => {
                                            tracing::info!(consult_call_id = %leg.id, "warm transfer: the caller and the person are joined");
                                            bridged = Some((leg, bridge));
                                            None
                                        }
                                        Err(_) => {
                                            leg.end(EndReason::Failed(FailureCause::MediaClosed)).await;
                                            Some(EndReason::Failed(FailureCause::MediaClosed))
                                        }
                                    }
                                }
                            }
                            None => None,
                        }
                    }
                    Err(why) => {
                        tracing::info!(%why, "warm transfer not taken; the agent goes on");
                        agent.notify(format!(
                            "[Notice: the transfer did not go through: {why}. Tell the caller, \
                             and carry on helping them.]"
                        ));
                        None
                    }
                }
            }
            event = leg_event(&mut bridged) => {
                match on_leg(&mut bridged, &media, event).await {
                    Some(ended) => {
                        leg_end = Some(ended);
                        // The person left: the caller's call ends too, as
                        // handed off.
                        Some(EndReason::Transferred)
                    }
                    None => None,
                }
            }
            event = sip.next_event() => {
                on_dialog(shared, &id, &screen, &mut sip, &mut sdp, &media, &mut agent, event, &far_hangup).await
            }
            screened = screen.next(&mut events) => match screened {
                Screened::StartAgent => {
                    // The announcement is queued first: the agent's audio
                    // plays after it.
                    if let Some(text) = announcement.take() {
                        announce(shared, &media, text).await;
                    }
                    agent
                        .start(&media, screen.answered_by().map(|v| v.as_str()))
                        .await
                        .err()
                        .map(|_| EndReason::Failed(FailureCause::MediaClosed))
                }
                Screened::End(reason) => Some(reason),
                Screened::Media(event) => {
                    // Bridged: the caller's keys reach the person too.
                    if let (Some(MediaEvent::Digit(digit)), Some((leg, _))) = (&event, &bridged) {
                        let _ = leg.rtp.handle.send_digit(*digit).await;
                    }
                    on_media(shared, &id, &screen, &mut sip, &mut agent, event).await
                }
            },
            request = agent.next_request() => match request {
                Some(AgentRequest::Recording(paused)) => {
                    if let Some(recorder) = recorder.as_mut() {
                        recorder.set_paused(paused);
                    }
                    None
                }
                Some(AgentRequest::WarmTransfer { to, summary, headers, attended }) => {
                    if consult.is_some() || bridged.is_some() {
                        tracing::info!(%to, "a warm transfer is under way already");
                    } else {
                        tracing::info!(%to, attended, "warm transfer: placing the consult call");
                        let placing = transfer::start(shared, &id, &to, headers, recording.clone());
                        consult = Some((placing, summary, attended));
                    }
                    None
                }
                Some(request) => fulfil(&mut sip, request).await,
                None => Some(EndReason::Failed(FailureCause::AgentEnded)),
            },
            // A closed channel disables this branch (every handle gone).
            Some(command) = commands.recv() => match command {
                CallCommand::Hangup(reason) => Some(reason),
                // RFC 3891: a PBX moves the call onto a new dialog. Not
                // once the caller is bridged or handed over (dropped: 481).
                CallCommand::Replace(replacement) if bridged.is_none() && consult.is_none() => {
                    if let Some(note) = replace::take_over(shared, &id, &mut sip, &mut sdp, &media, replacement).await {
                        notes.push(note_turn(note, answered.elapsed()));
                    }
                    None
                }
                CallCommand::Replace(_) | CallCommand::Trickle(_) => None,
            },
            () = sleep_until(deadline) => Some(EndReason::MaxDuration),
        };
    }
    let reason = reason.unwrap_or(EndReason::Failed(FailureCause::NoReason));
    tracing::info!(reason = reason.label(), "call ending");

    if let Some(forks) = forks {
        forks.stop().await;
    }
    // The file ends with the call, not with the BYE's answer.
    if let Some(recorder) = recorder.as_mut() {
        recorder.stop();
    }
    // The person's leg goes with the caller's call (with our BYE, unless
    // the person hung up).
    let bridge_end = bridged.take().map(|(leg, bridge)| {
        drop(bridge);
        let leg_reason = leg_end.take().unwrap_or_else(|| match &reason {
            EndReason::CallerHangup | EndReason::CalleeHangup => EndReason::CallerHangup,
            other => other.clone(),
        });
        leg.end(leg_reason)
    });
    if !reason.far_end_hung_up() {
        bye(sip).await;
    }
    // Left to end on its own: the person's side hangs it up once replaced.
    if let Some(leg) = replaced {
        tokio::spawn(transfer::linger(leg));
    }
    if let Some(ending) = bridge_end {
        ending.await;
    }
    let (transcript, note) = match handed_off {
        Some((transcript, note)) => (transcript, Some(note)),
        None => (agent.finish().await, None),
    };
    notes.extend(note);
    let mut analysis = None;
    // An agent without a transcript (echo) still gets the daemon's notes.
    let (said, summary) = match transcript {
        Some(Transcript {
            said,
            summary,
            analysis: job,
        }) => {
            analysis = job;
            (Some(said), summary)
        }
        None => (None, None),
    };
    if said.is_some() || !notes.is_empty() {
        let mut turns: Vec<NewTurn> = said.unwrap_or_default().into_iter().map(turn_of).collect();
        if let Some(recorder) = &recorder {
            mark_paused(&mut turns, &recorder.paused_spans());
        }
        turns.append(&mut notes);
        turns.sort_by_key(|t| t.start_ms);
        shared
            .transitions
            .transcript(&id, &turns, summary.as_deref())
            .await;
    }
    drop(events);
    stop_media(media, media_task).await;
    (reason, analysis, recorder)
}

/// Taps the call's audio for each fork and starts them; `None` without
/// forks.
async fn start_forks(
    shared: &Shared,
    id: &str,
    media: &MediaHandle,
    forks: Vec<ForkSettings>,
) -> Option<Forks> {
    if forks.is_empty() {
        return None;
    }
    let mut tapped = Vec::with_capacity(forks.len());
    for fork in forks {
        match media.tap(FORK_TAP_FRAMES, "fork").await {
            Ok(tap) => tapped.push((fork, tap)),
            Err(_) => return None,
        }
    }
    let call = StreamCall {
        call_id: id.to_owned(),
        account: shared.node.clone(),
        context: Default::default(),
    };
    Some(Forks::start(tapped, &call, crate::net::outbound().guard()))
}

/// Plays the recording announcement: uploaded audio (`snd_...`) or text
/// spoken by the embedded synthesizer. A failure is logged; the call goes
/// on.
pub(super) async fn announce(shared: &Shared, media: &MediaHandle, announcement: &str) {
    let samples = if announcement
        .strip_prefix(crate::ids::AUDIO)
        .is_some_and(|rest| rest.starts_with('_'))
    {
        match shared.transitions.store().audio_samples(announcement).await {
            Ok(bytes) => bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "recording announcement audio not found");
                return;
            }
        }
    } else {
        match synthesize(shared, announcement).await {
            Some(samples) => samples,
            None => return,
        }
    };
    if media.play(samples).await.is_err() {
        tracing::debug!("media gone before the announcement");
    }
}

/// `text` spoken by the embedded synthesizer, 8 kHz; `None` (logged) when
/// it cannot be; cut short on an engine error.
async fn synthesize(shared: &Shared, text: &str) -> Option<Vec<i16>> {
    let spoken = match shared.speech.tts(None) {
        Ok(tts) => tts.speak(text).await,
        Err(e) => Err(e),
    };
    let mut audio = match spoken {
        Ok(audio) => audio,
        Err(e) => {
            tracing::warn!(error = %e, "speech not synthesized");
            return None;
        }
    };
    let mut samples = Vec::new();
    while let Some(frame) = audio.recv().await {
        match frame {
            Ok(frame) => samples.extend_from_slice(&frame),
            Err(e) => {
                tracing::warn!(error = %e, "speech cut short");
                break;
            }
        }
    }
    Some(samples)
}

/// Adds each paused span of the recording to the transcript, in order, as
/// an agent line `[recording paused]`.
pub(super) fn mark_paused(turns: &mut Vec<NewTurn>, spans: &[(Duration, Duration)]) {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    for (from, to) in spans {
        turns.push(NewTurn {
            speaker: "agent",
            text: "[recording paused]".to_owned(),
            start_ms: ms(*from),
            end_ms: ms(*to),
            interrupted: false,
            heard: None,
            stt_final_ms: None,
            llm_first_token_ms: None,
            tts_first_audio_ms: None,
            first_rtp_ms: None,
        });
    }
    turns.sort_by_key(|t| t.start_ms);
}

/// What one event of the SIP dialog means for the call: its end, or
/// nothing (a re-INVITE answered, a key sent by SIP INFO passed on).
#[allow(clippy::too_many_arguments)]
async fn on_dialog(
    shared: &Arc<Shared>,
    id: &str,
    screen: &Screen,
    sip: &mut Call,
    sdp: &mut LocalSdp,
    media: &MediaHandle,
    agent: &mut AgentRun,
    event: Result<DialogEvent, SipError>,
    far_hangup: &EndReason,
) -> Option<EndReason> {
    match event {
        Ok(DialogEvent::Bye) => Some(far_hangup.clone()),
        Ok(DialogEvent::ReInvite(re)) => {
            reinvite(sip, sdp, media, re).await;
            None
        }
        // INFO is answered 200 by the SIP layer; a key in it
        // (application/dtmf-relay) counts as one sent by RFC 4733.
        Ok(DialogEvent::Info { content_type, body }) => {
            match content_type
                .as_deref()
                .and_then(|ct| Digit::from_sip_info(ct, &body))
            {
                Some(digit) => on_digit(shared, id, screen, agent, digit, "SIP INFO").await,
                None => None,
            }
        }
        // RFC 4028 session expiry: the dialog is gone.
        Ok(DialogEvent::Terminated) => Some(far_hangup.clone()),
        // A blind transfer's progress, after the call took its REFER.
        Ok(DialogEvent::ReferProgress(_)) => None,
        // RFC 4028 §10: BYE already sent by the SIP layer.
        Ok(DialogEvent::SessionExpired) => Some(EndReason::SessionExpired),
        Err(e) => Some(EndReason::Failed(FailureCause::Sip(e.to_string()))),
    }
}

/// The outcome of the consult call being placed; pending without one.
async fn consult_outcome(
    consult: &mut Option<(Consult, Option<String>, bool)>,
) -> Result<Leg, String> {
    match consult {
        Some((placing, _, _)) => placing.outcome().await,
        None => std::future::pending().await,
    }
}

/// The agent's lines said so far (the live view's), for a summary.
fn drain_live(live: &mut Option<mpsc::UnboundedReceiver<Said>>) -> Vec<Said> {
    let mut said = Vec::new();
    if let Some(rx) = live {
        while let Ok(line) = rx.try_recv() {
            said.push(line);
        }
    }
    said
}

/// What the person hears before being joined: the agent's summary, or the
/// caller's last words.
fn summary_text(summary: Option<String>, said: &[Said]) -> String {
    let gist = summary.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| {
        let mut lines: Vec<&str> = said
            .iter()
            .rev()
            .filter(|s| s.role == Role::User && !s.text.starts_with("[DTMF"))
            .take(SUMMARY_LINES)
            .map(|s| s.text.as_str())
            .collect();
        lines.reverse();
        match lines.is_empty() {
            true => "The caller has not said why they are calling.".to_owned(),
            false => format!("The caller said: {}.", lines.join(". ")),
        }
    });
    let gist: String = gist.chars().take(SUMMARY_CHARS).collect();
    format!("Hello, this is the virtual assistant with a call for you. {gist} Connecting you now.")
}

/// Warm transfer, the person answered: they hear the summary (the agent
/// stays with the caller meanwhile), then the agent leaves and its
/// transcript is taken; the leg, to be bridged. `None`: the person left
/// before being joined; the leg is ended and the agent told.
async fn hand_off(
    shared: &Shared,
    agent: &mut AgentRun,
    mut leg: Leg,
    summary: Option<String>,
    said: &[Said],
) -> Option<(Leg, Option<Transcript>)> {
    let text = summary_text(summary, said);
    if let Some(samples) = synthesize(shared, &text).await {
        let length = Duration::from_millis(samples.len() as u64 / 8);
        if leg.rtp.handle.play(samples).await.is_ok()
            && let Err(reason) = transfer::played_out(&mut leg, length + SUMMARY_SLACK).await
        {
            tracing::info!(
                reason = reason.label(),
                "the person left before being joined"
            );
            leg.end(reason).await;
            agent.notify(
                "[Notice: the transfer did not go through: the person hung up before being \
                 connected. Tell the caller, and carry on helping them.]"
                    .to_owned(),
            );
            return None;
        }
    }
    let transcript = std::mem::replace(agent, AgentRun::Echo).finish().await;
    Some((leg, transcript))
}

/// How an attended transfer's REFER went.
enum Referred {
    /// The caller's side took the REFER and reached the person (NOTIFY
    /// 2xx, or the person's side ended the replaced consult leg), or left
    /// after taking it: nothing to bridge.
    Completed,
    /// Refused or failed (why): the daemon bridges the legs instead.
    Refused(String),
}

/// Attended transfer (RFC 5589 §7): REFER to the caller's side naming the
/// consult dialog in Replaces (RFC 3891 §3), then its outcome (RFC 3515
/// §2.4.5 NOTIFY sipfrag), bounded. Both dialogs' re-INVITEs are answered
/// meanwhile.
async fn refer_replacing(
    sip: &mut Call,
    sdp: &mut LocalSdp,
    media: &MediaHandle,
    leg: &mut Leg,
) -> Referred {
    let Some((target, replaces)) = leg.sip.replaced_by_peer() else {
        return Referred::Refused("the consult call cannot be named in a Replaces".to_owned());
    };
    match timeout(REFER_TIMEOUT, sip.refer_replacing(&target, &replaces)).await {
        Ok(Ok(code)) if (200..300).contains(&code) => {}
        Ok(Ok(code)) => return Referred::Refused(format!("REFER answered {code}")),
        Ok(Err(e)) => return Referred::Refused(format!("REFER failed: {e}")),
        Err(_) => return Referred::Refused("REFER not answered in time".to_owned()),
    }
    let deadline = Instant::now() + REFER_OUTCOME_TIMEOUT;
    loop {
        tokio::select! {
            event = sip.next_event() => match event {
                Ok(DialogEvent::ReferProgress(code)) if code < 200 => {}
                Ok(DialogEvent::ReferProgress(code)) if code < 300 => return Referred::Completed,
                Ok(DialogEvent::ReferProgress(code)) => {
                    return Referred::Refused(format!("the caller's side reported {code}"));
                }
                Ok(DialogEvent::ReInvite(re)) => reinvite(sip, sdp, media, re).await,
                Ok(DialogEvent::Info { .. }) => {}
                // The caller's side left after taking the REFER (some
                // transferees hang up themselves, RFC 5589 §6.1).
                Ok(DialogEvent::Bye | DialogEvent::Terminated | DialogEvent::SessionExpired)
                | Err(_) => return Referred::Completed,
            },
            event = leg.sip.next_event() => match event {
                Ok(DialogEvent::ReInvite(re)) => {
                    reinvite(&mut leg.sip, &mut leg.sdp, &leg.rtp.handle, re).await;
                }
                Ok(DialogEvent::Info { .. } | DialogEvent::ReferProgress(_)) => {}
                // RFC 3891 §3: the person's side ends the dialog the
                // caller's INVITE replaced.
                Ok(DialogEvent::Bye | DialogEvent::Terminated | DialogEvent::SessionExpired)
                | Err(_) => return Referred::Completed,
            },
            // The person's audio meanwhile goes nowhere.
            Some(_) = leg.rtp.events.recv() => {}
            () = sleep_until(deadline) => {
                return Referred::Refused("no outcome of the REFER in time".to_owned());
            }
        }
    }
}

/// A note of the daemon's in the transcript (`text`: a hand-off, a
/// replaced dialog), `at` from the answer.
fn note_turn(text: String, at: Duration) -> NewTurn {
    let ms = i64::try_from(at.as_millis()).unwrap_or(i64::MAX);
    NewTurn {
        speaker: "agent",
        text,
        start_ms: ms,
        end_ms: ms,
        interrupted: false,
        heard: None,
        stt_final_ms: None,
        llm_first_token_ms: None,
        tts_first_audio_ms: None,
        first_rtp_ms: None,
    }
}

/// Something on the bridged consult leg.
enum LegEvent {
    Dialog(Result<DialogEvent, SipError>),
    Media(Option<MediaEvent>),
}

/// The next event of the bridged consult leg; pending without one.
async fn leg_event(bridged: &mut Option<(Leg, Bridge)>) -> LegEvent {
    let Some((leg, _)) = bridged else {
        return std::future::pending().await;
    };
    tokio::select! {
        event = leg.sip.next_event() => LegEvent::Dialog(event),
        event = leg.rtp.events.recv() => LegEvent::Media(event),
    }
}

/// What an event of the bridged leg means: the leg's end, or nothing (a
/// re-INVITE answered, a key relayed to the caller).
async fn on_leg(
    bridged: &mut Option<(Leg, Bridge)>,
    caller: &MediaHandle,
    event: LegEvent,
) -> Option<EndReason> {
    let (leg, _) = bridged.as_mut()?;
    match event {
        LegEvent::Dialog(Ok(DialogEvent::Bye | DialogEvent::Terminated)) => {
            Some(EndReason::CalleeHangup)
        }
        LegEvent::Dialog(Ok(DialogEvent::SessionExpired)) => Some(EndReason::SessionExpired),
        LegEvent::Dialog(Ok(DialogEvent::ReferProgress(_))) => None,
        LegEvent::Dialog(Ok(DialogEvent::ReInvite(re))) => {
            reinvite(&mut leg.sip, &mut leg.sdp, &leg.rtp.handle, re).await;
            None
        }
        LegEvent::Dialog(Ok(DialogEvent::Info { content_type, body })) => {
            if let Some(digit) = content_type
                .as_deref()
                .and_then(|ct| Digit::from_sip_info(ct, &body))
            {
                let _ = caller.send_digit(digit).await;
            }
            None
        }
        LegEvent::Dialog(Err(e)) => Some(EndReason::Failed(FailureCause::Sip(e.to_string()))),
        // RFC 4733 from the person, on to the caller.
        LegEvent::Media(Some(MediaEvent::Digit(digit))) => {
            let _ = caller.send_digit(digit).await;
            None
        }
        LegEvent::Media(Some(MediaEvent::Timeout)) => Some(EndReason::MediaTimeout),
        LegEvent::Media(Some(_)) => None,
        LegEvent::Media(None) => Some(EndReason::Failed(FailureCause::MediaClosed)),
    }
}

/// RFC 3261 §15.1.1: BYE ends the dialog from our side, if it is still up;
/// its answer is waited for, bounded.
async fn bye(sip: Call) {
    if !sip.is_active() {
        return;
    }
    match timeout(BYE_TIMEOUT, sip.hangup()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(error = %e, "BYE not answered cleanly"),
        Err(_) => tracing::info!("BYE not answered in time"),
    }
}

/// Drops the call's last handle on its media session and waits (bounded)
/// for the session's last counters.
pub(super) async fn stop_media(media: MediaHandle, task: JoinHandle<MediaStats>) {
    drop(media);
    match timeout(MEDIA_STOP_TIMEOUT, task).await {
        Ok(Ok(stats)) => tracing::info!(
            packets_in = stats.packets_in,
            packets_out = stats.packets_out,
            lost = stats.lost,
            jitter_ms = stats.jitter.as_secs_f64() * 1000.0,
            "media stopped"
        ),
        _ => tracing::debug!("media task did not report"),
    }
}

/// A media event for the call (the audio itself goes to the agent).
async fn on_media(
    shared: &Shared,
    id: &str,
    screen: &Screen,
    sip: &mut Call,
    agent: &mut AgentRun,
    event: Option<MediaEvent>,
) -> Option<EndReason> {
    match event {
        Some(MediaEvent::Digit(digit)) => {
            on_digit(shared, id, screen, agent, digit, "RFC 4733").await
        }
        Some(MediaEvent::PlayoutDrained) => match agent.on_playout_drained() {
            Some(request) => fulfil(sip, request).await,
            None => None,
        },
        Some(MediaEvent::Timeout) => Some(EndReason::MediaTimeout),
        Some(MediaEvent::Latched(addr)) => {
            tracing::debug!(%addr, "RTP latched");
            None
        }
        // The caller's audio before the agent starts (a voice agent takes
        // it from the media session itself), and the prompt's playout
        // start: nothing to do.
        Some(MediaEvent::Audio(_) | MediaEvent::PlayoutStarted(_)) => None,
        None => Some(EndReason::Failed(FailureCause::MediaClosed)),
    }
}

/// A key the caller pressed: stored on the call; a campaign's opt-out key
/// ends the call, any other key is the agent's.
async fn on_digit(
    shared: &Shared,
    id: &str,
    screen: &Screen,
    agent: &mut AgentRun,
    digit: Digit,
    via: &'static str,
) -> Option<EndReason> {
    tracing::info!(digit = %digit.as_char(), via, "DTMF received");
    let opted_out = screen.on_digit(digit.as_char());
    if opted_out.is_none() {
        agent.on_digit(digit);
    }
    shared.transitions.dtmf(id, digit.as_char()).await;
    opted_out
}

/// Carries out what the agent asked: an end reason, or a blind transfer
/// (RFC 3515 REFER; RFC 5589 §6: once the peer accepts, we hang up). A
/// refused or unanswered REFER leaves the call up.
async fn fulfil(sip: &mut Call, request: AgentRequest) -> Option<EndReason> {
    match request {
        AgentRequest::Hangup => Some(EndReason::AgentHangup),
        // Taken by the call task before it gets here.
        AgentRequest::Recording(_) | AgentRequest::WarmTransfer { .. } => None,
        // A campaign's dialer puts the number on the do-not-call list for
        // this reason, as for the opt-out key.
        AgentRequest::OptOut => Some(EndReason::OptedOut),
        AgentRequest::Unreachable(e) => {
            tracing::warn!(error = %e, "the stream agent's bot is unreachable");
            Some(EndReason::AgentUnreachable)
        }
        AgentRequest::Transfer(to, headers) => {
            match timeout(REFER_TIMEOUT, sip.refer(&to, &headers)).await {
                Ok(Ok(code)) if (200..300).contains(&code) => Some(EndReason::Transferred),
                Ok(Ok(code)) => {
                    tracing::info!(code, %to, "transfer refused; the call goes on");
                    None
                }
                Ok(Err(e)) => {
                    tracing::info!(error = %e, %to, "transfer failed; the call goes on");
                    None
                }
                Err(_) => {
                    tracing::info!(%to, "REFER not answered in time; the call goes on");
                    None
                }
            }
        }
    }
}

/// One transcript line as stored: offsets and latencies in milliseconds.
pub(super) fn turn_of(said: Said) -> NewTurn {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let latency = said.latency.unwrap_or_default();
    NewTurn {
        speaker: match said.role {
            Role::User => "caller",
            _ => "agent",
        },
        text: said.text,
        start_ms: ms(said.start),
        end_ms: ms(said.end),
        interrupted: said.interrupted,
        heard: said.heard,
        stt_final_ms: latency.stt_final.map(ms),
        llm_first_token_ms: latency.llm_first_token.map(ms),
        tts_first_audio_ms: latency.tts_first_audio.map(ms),
        first_rtp_ms: latency.first_rtp.map(ms),
    }
}

/// RFC 3261 §14.2 / RFC 3264 §8: answer a re-INVITE. Hold (`sendonly`,
/// `inactive`) is answered `recvonly` / `inactive` and the call stays up;
/// an offer we cannot take gets 488 and the old session stays. A re-INVITE
/// without an offer gets our offer in the 200 (§14.2), and the answer in
/// its ACK is applied; without one the old session stays.
pub(super) async fn reinvite(
    sip: &mut Call,
    sdp: &mut LocalSdp,
    media: &crate::media::MediaHandle,
    re: Box<ReInvite>,
) {
    let offered = re.sdp_offer.is_none();
    let answer = match re.sdp_offer.as_deref() {
        Some(offer) => match sdp.answer(offer, Direction::SendRecv) {
            Ok((answer, negotiated)) => {
                tracing::info!(direction = ?negotiated.direction, "re-INVITE answered");
                if media.update(negotiated).await.is_err() {
                    tracing::warn!("media session gone while applying a re-INVITE");
                }
                answer
            }
            Err(e) => {
                tracing::info!(error = %e, "re-INVITE offer refused (488)");
                if let Err(e) = sip.reject_reinvite(re, 488).await {
                    tracing::info!(error = %e, "cannot refuse the re-INVITE");
                }
                return;
            }
        },
        None => sdp.offer(Direction::SendRecv),
    };
    let ack_sdp = match sip.answer_reinvite(re, Bytes::from(answer)).await {
        Ok(ack_sdp) => ack_sdp,
        Err(e) => {
            tracing::info!(error = %e, "re-INVITE answer failed");
            return;
        }
    };
    if !offered {
        return;
    }
    match ack_sdp.as_deref().map(|a| sdp.accept_answer(a)) {
        Some(Ok(negotiated)) => {
            tracing::info!(direction = ?negotiated.direction, "answer to our re-INVITE offer applied");
            if media.update(negotiated).await.is_err() {
                tracing::warn!("media session gone while applying a re-INVITE");
            }
        }
        Some(Err(e)) => tracing::info!(error = %e, "answer in the ACK refused; the session stays"),
        None => tracing::info!("no answer in the ACK; the session stays"),
    }
}
