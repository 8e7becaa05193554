//! A headless WebRTC web-call client, no browser: `str0m` (ICE, DTLS-SRTP,
//! the data channel) and libopus, on one UDP socket on loopback. It starts
//! a web call (`POST /v1/web-calls` with a publishable key), sends its SDP
//! offer to the WHIP URL, optionally trickles its ICE candidate late by
//! `PATCH` (RFC 9725 §4.3.1), sends 20 ms Opus frames for a while, counts
//! the agent's Opus packets and the ones lost (by RTP sequence), and hangs
//! up with `DELETE`.
//!
//! Used by `bench/web-calls.sh` (through `main.rs`) and by the web-call
//! tests (`#[path]`), so both drive the daemon the same way.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, RtcConfig};
use tokio::net::UdpSocket;

/// A web call the daemon created: what `POST /v1/web-calls` answered.
#[derive(Debug, Clone)]
pub struct Created {
    pub call_id: String,
    pub token: String,
    pub whip_url: String,
}

/// How the client runs one call.
#[derive(Debug, Clone)]
pub struct Options {
    /// The daemon's base URL, `http://127.0.0.1:8080`.
    pub base: String,
    /// The page's origin the key lists, sent as `Origin`.
    pub origin: String,
    /// Withhold our candidate from the offer and send it by `PATCH` after
    /// `trickle_delay`; also ignore the answer's candidates, so only the
    /// trickled candidate can connect the call.
    pub trickle: bool,
    pub trickle_delay: Duration,
    /// How long media flows once connected.
    pub talk: Duration,
    /// The longest ICE and DTLS may take.
    pub connect_timeout: Duration,
}

/// What one call saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub call_id: String,
    /// From the answer to ICE and DTLS up; `None`: never connected.
    pub connected_after: Option<Duration>,
    /// The trickle `PATCH`'s status, when trickling.
    pub patch_status: Option<u16>,
    pub opus_out: u64,
    pub opus_in: u64,
    /// Agent packets missing by RTP sequence number.
    pub lost: u64,
    /// The hangup `DELETE`'s status.
    pub delete_status: Option<u16>,
}

/// `POST /v1/web-calls` with a publishable key.
pub async fn create(
    http: &reqwest::Client,
    opts: &Options,
    key: &str,
    agent_id: &str,
) -> Result<Created, String> {
    let r = http
        .post(format!("{}/v1/web-calls", opts.base))
        .bearer_auth(key)
        .header("origin", &opts.origin)
        .json(&serde_json::json!({"agent_id": agent_id, "caller_name": "bench"}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    if status != reqwest::StatusCode::CREATED {
        return Err(format!("POST /v1/web-calls: {status} {body}"));
    }
    let s = |k: &str| body[k].as_str().map(str::to_owned).ok_or(format!("no {k}"));
    Ok(Created {
        call_id: s("call_id")?,
        token: s("token")?,
        whip_url: s("whip_url")?,
    })
}

/// One call: offer, (trickle), media for `talk`, hang up.
pub async fn run(
    http: &reqwest::Client,
    opts: &Options,
    call: &Created,
) -> Result<Outcome, String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut rtc = RtcConfig::new()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .clear_codecs()
        .enable_opus(true, false)
        .build(Instant::now());
    let candidate = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
    if !opts.trickle {
        rtc.add_local_candidate(candidate.clone());
    }
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    api.add_channel("agentline".into());
    let (offer, pending) = api.apply().ok_or("no offer")?;
    let offer = offer.to_sdp_string();
    let r = http
        .post(format!("{}{}", opts.base, call.whip_url))
        .bearer_auth(&call.token)
        .header("origin", &opts.origin)
        .header("content-type", "application/sdp")
        .body(offer.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut answer = r.text().await.map_err(|e| e.to_string())?;
    if status != reqwest::StatusCode::CREATED {
        return Err(format!("WHIP offer: {status} {answer}"));
    }
    let location = location.ok_or("no Location")?;
    if opts.trickle {
        // Only the daemon, told our address by the PATCH, can start ICE.
        answer = answer
            .split("\r\n")
            .filter(|l| !l.starts_with("a=candidate:"))
            .collect::<Vec<_>>()
            .join("\r\n");
    }
    let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| e.to_string())?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())?;
    if opts.trickle {
        rtc.add_local_candidate(candidate.clone());
    }
    let answered = Instant::now();
    let mut out = Outcome {
        call_id: call.call_id.clone(),
        ..Outcome::default()
    };
    let frag = opts.trickle.then(|| {
        let line = |p: &str| {
            offer
                .lines()
                .find_map(|l| l.strip_prefix(p))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{mid}\r\na={}\r\n",
            line("a=ice-ufrag:"),
            line("a=ice-pwd:"),
            candidate.to_sdp_string()
        )
    });
    let mut patch_at = frag.as_ref().map(|_| answered + opts.trickle_delay);
    let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
        .map_err(|e| e.to_string())?;
    let silence = [0i16; 960];
    let mut frame = [0u8; 1500];
    let mut rtp_time: u64 = 0;
    let mut seq: Option<(u64, u64)> = None;
    let mut next_frame = Instant::now();
    let mut end = answered + opts.connect_timeout;
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(at) = patch_at
            && now >= at
        {
            patch_at = None;
            let r = http
                .patch(format!("{}{location}", opts.base))
                .bearer_auth(&call.token)
                .header("origin", &opts.origin)
                .header("content-type", "application/trickle-ice-sdpfrag")
                .body(frag.clone().unwrap_or_default())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            out.patch_status = Some(r.status().as_u16());
        }
        if out.connected_after.is_some() && now >= next_frame {
            next_frame += Duration::from_millis(20);
            let n = encoder
                .encode(&silence, &mut frame)
                .map_err(|e| e.to_string())?;
            if let Some(w) = rtc.writer(mid) {
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::Opus)
                    .map(|p| p.pt());
                if let Some(pt) = pt {
                    let t = MediaTime::new(rtp_time, str0m::media::Frequency::FORTY_EIGHT_KHZ);
                    if w.write(pt, now, t, frame[..n].to_vec()).is_ok() {
                        out.opus_out += 1;
                    }
                }
            }
            rtp_time += 960;
        }
        // Drive str0m until it waits.
        let wake = loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(e) => match e {
                    Event::Connected => {
                        out.connected_after = Some(answered.elapsed());
                        end = Instant::now() + opts.talk;
                        next_frame = Instant::now();
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        return Err(format!("ICE disconnected: {out:?}"));
                    }
                    Event::MediaData(d) => {
                        out.opus_in += 1;
                        let (lo, hi) = (**d.seq_range.start(), **d.seq_range.end());
                        seq = Some(match seq {
                            None => (lo, hi),
                            Some((a, b)) => (a.min(lo), b.max(hi)),
                        });
                    }
                    _ => {}
                },
            }
        };
        let mut wake = wake.min(end);
        if out.connected_after.is_some() {
            wake = wake.min(next_frame);
        }
        if let Some(at) = patch_at {
            wake = wake.min(at);
        }
        let sleep = wake.saturating_duration_since(Instant::now());
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, source)) = r
                    && let Ok(contents) = buf[..n].try_into()
                {
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    });
                    let _ = rtc.handle_input(input);
                }
            }
            () = tokio::time::sleep(sleep) => {
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
    if let Some((lo, hi)) = seq {
        out.lost = (hi - lo + 1).saturating_sub(out.opus_in);
    }
    // A hang-up that does not get through leaves `delete_status` unset;
    // the call was still made (the daemon ends it when the peer goes).
    let r = http
        .delete(format!("{}{location}", opts.base))
        .bearer_auth(&call.token)
        .header("origin", &opts.origin)
        .send()
        .await;
    out.delete_status = r.ok().map(|r| r.status().as_u16());
    Ok(out)
}
