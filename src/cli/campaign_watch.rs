//! `agentline campaign watch ID`: a campaign's live progress in the
//! terminal, read from the store once a second until the campaign is
//! completed or canceled, Ctrl-C, or the `--timeout`.
//!
//! [`render`] draws one frame from the numbers `GET /v1/campaigns/{id}/stats`
//! answers (pure, so it is unit-tested); [`watch`] polls and redraws it in
//! place with plain ANSI on a terminal, or prints each changed frame when
//! the output is a pipe or a file.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::pin::pin;
use std::time::Duration;

use crate::api::CampaignStats;
use crate::model::CampaignStatus as Status;
use crate::store::Store;

/// Width of the progress bar, in characters.
const BAR: usize = 30;

/// Seconds between looks at the store.
const POLL: Duration = Duration::from_secs(1);

/// Why watching ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The campaign is completed or canceled.
    Finished,
    Interrupted,
    TimedOut,
}

/// Polls the campaign once a second and draws its progress on stdout until
/// it finishes, Ctrl-C, or `timeout`.
pub async fn watch(
    store: &Store,
    id: &str,
    timeout: Duration,
) -> Result<Ended, crate::store::StoreError> {
    let tty = std::io::stdout().is_terminal();
    let mut interrupt = pin!(async {
        // Without a handler only the timeout or the campaign's end stops us.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let mut drawn = 0;
    let mut last = String::new();
    // Bounded: one frame per poll, and the timeout ends the polls.
    let polls = timeout.as_secs().max(1);
    for _ in 0..polls {
        let stats = crate::api::read_campaign_stats(store, id).await?;
        let frame = render(&stats);
        if frame != last {
            let mut out = std::io::stdout().lock();
            if tty && drawn > 0 {
                // Back to the first line of the last frame, then clear below.
                let _ = write!(out, "\x1b[{drawn}F\x1b[J");
            }
            let _ = write!(out, "{frame}");
            let _ = out.flush();
            drawn = frame.lines().count();
            last = frame;
        }
        if matches!(stats.status, Status::Completed | Status::Canceled) {
            return Ok(Ended::Finished);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut interrupt => return Ok(Ended::Interrupted),
        }
    }
    Ok(Ended::TimedOut)
}

/// One frame: status, progress bar, contacts by state, attempts by outcome,
/// answer rate, mean call length and ETA. Ends with a newline.
pub fn render(s: &CampaignStats) -> String {
    let open = s.contacts.get("pending").copied().unwrap_or(0)
        + s.contacts.get("dialing").copied().unwrap_or(0);
    let done = s.contacts_total - open;
    let ratio = if s.contacts_total > 0 {
        done as f64 / s.contacts_total as f64
    } else {
        1.0
    };
    let filled = ((ratio * BAR as f64).round() as usize).min(BAR);
    let mut f = String::new();
    let _ = writeln!(f, "campaign {}  {}", s.campaign_id, s.status.as_str());
    let _ = writeln!(
        f,
        "[{}{}] {:>3.0}%  {done}/{} contacts done",
        "#".repeat(filled),
        "-".repeat(BAR - filled),
        ratio * 100.0,
        s.contacts_total
    );
    let _ = writeln!(f, "contacts  {}", counts(&s.contacts));
    let finished: i64 = s.attempts.values().sum();
    let _ = writeln!(
        f,
        "attempts  {finished} finished, {} in flight  ({})",
        s.calls_active,
        counts(&s.attempts)
    );
    let rate = s
        .answer_rate
        .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
    let avg = s
        .average_duration_seconds
        .map_or("-".to_string(), |d| format!("{d:.1} s"));
    let eta = s.estimated_seconds_remaining.map_or("-".to_string(), eta);
    let _ = writeln!(f, "answer rate {rate}  avg call {avg}  ETA {eta}");
    f
}

/// `pending 3  completed 2`: the non-zero entries, or `none`.
fn counts(m: &std::collections::BTreeMap<String, i64>) -> String {
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join("  ")
    }
}

/// `1h 02m`, `3m 05s` or `42s`.
fn eta(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn stats(status: Status, contacts: &[(&str, i64)], attempts: &[(&str, i64)]) -> CampaignStats {
        let map = |v: &[(&str, i64)]| -> BTreeMap<String, i64> {
            v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        };
        CampaignStats {
            campaign_id: "cmp_1".into(),
            status,
            contacts_total: contacts.iter().map(|(_, n)| n).sum(),
            contacts: map(contacts),
            attempts: map(attempts),
            calls_active: 2,
            answer_rate: Some(0.625),
            average_duration_seconds: Some(31.4),
            estimated_seconds_remaining: Some(3725.0),
        }
    }

    #[test]
    fn a_frame_shows_progress_counts_rate_and_eta() {
        let s = stats(
            Status::Running,
            &[
                ("pending", 4),
                ("dialing", 2),
                ("completed", 5),
                ("dnc", 1),
                ("expired", 0),
            ],
            &[("answered", 5), ("busy", 3), ("failed", 0)],
        );
        let f = render(&s);
        let lines: Vec<&str> = f.lines().collect();
        assert_eq!(lines[0], "campaign cmp_1  running");
        assert_eq!(
            lines[1],
            format!(
                "[{}{}]  50%  6/12 contacts done",
                "#".repeat(15),
                "-".repeat(15)
            )
        );
        assert_eq!(
            lines[2],
            "contacts  completed 5  dialing 2  dnc 1  pending 4"
        );
        assert_eq!(
            lines[3],
            "attempts  8 finished, 2 in flight  (answered 5  busy 3)"
        );
        assert_eq!(lines[4], "answer rate 62.5%  avg call 31.4 s  ETA 1h 02m");
    }

    #[test]
    fn an_empty_campaign_is_done_and_unknowns_are_dashes() {
        let mut s = stats(Status::Completed, &[], &[]);
        s.answer_rate = None;
        s.average_duration_seconds = None;
        s.estimated_seconds_remaining = None;
        let f = render(&s);
        assert!(
            f.contains(&format!("[{}] 100%  0/0 contacts done", "#".repeat(BAR))),
            "{f}"
        );
        assert!(f.contains("contacts  none"), "{f}");
        assert!(f.contains("answer rate -  avg call -  ETA -"), "{f}");
    }

    #[test]
    fn eta_reads_in_the_largest_units() {
        assert_eq!(eta(42.4), "42s");
        assert_eq!(eta(185.0), "3m 05s");
        assert_eq!(eta(7260.0), "2h 01m");
        assert_eq!(eta(-3.0), "0s");
    }
}
