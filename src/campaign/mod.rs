//! Outbound campaigns: contacts called by an agent within each contact's
//! calling window, paced under every cap, retried per outcome, never to a
//! number on the do-not-call list.
//!
//! - [`window`]: calling windows in the contact's own zone (sans-IO).
//! - [`policy`]: retry policy per outcome (sans-IO).
//! - [`pacing`]: how many calls may start now under all caps (sans-IO).
//! - [`dialer`]: the runner: claims due contacts with leases via the store,
//!   places calls through the [`dialer::Dialer`] seam the call layer
//!   implements, and takes outcomes back in [`dialer::CampaignRunner::call_ended`].
//! - [`csv`]: streamed CSV parsing with per-row errors and line numbers.
//!
//! The campaign's documents (status, schedule, retry policy) are
//! [`crate::model::campaign`]'s; this module gives them their behaviour
//! (the actions allowed per status, compiling a schedule).
//!
//! Must not: speak SIP or HTTP, or hold SQL.

pub mod csv;
pub mod dialer;
pub mod pacing;
pub mod policy;
pub mod window;

use chrono::{NaiveTime, Weekday};
use chrono_tz::Tz;

use crate::model::campaign::{CampaignStatus, Day, Schedule};
use window::CallingWindow;

/// What an operator can do to a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Cancel,
}

impl Action {
    /// The statuses the action applies to.
    pub fn from(self) -> &'static [CampaignStatus] {
        match self {
            Action::Start => &[CampaignStatus::Draft],
            Action::Pause => &[CampaignStatus::Running],
            Action::Resume => &[CampaignStatus::Paused],
            Action::Cancel => &[
                CampaignStatus::Draft,
                CampaignStatus::Running,
                CampaignStatus::Paused,
            ],
        }
    }

    pub fn to(self) -> CampaignStatus {
        match self {
            Action::Start | Action::Resume => CampaignStatus::Running,
            Action::Pause => CampaignStatus::Paused,
            Action::Cancel => CampaignStatus::Canceled,
        }
    }
}

/// The contact states, as stored and listed.
pub const CONTACT_STATES: [&str; 8] = [
    "pending",
    "dialing",
    "completed",
    "exhausted",
    "opted_out",
    "dnc",
    "expired",
    "canceled",
];

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Mon,
            Day::Tue => Weekday::Tue,
            Day::Wed => Weekday::Wed,
            Day::Thu => Weekday::Thu,
            Day::Fri => Weekday::Fri,
            Day::Sat => Weekday::Sat,
            Day::Sun => Weekday::Sun,
        }
    }
}

/// A problem with one field of a campaign document: (dotted field, message).
pub type Problem = (String, String);

impl Schedule {
    /// The window and default zone, or every problem found.
    pub fn compile(&self) -> Result<(CallingWindow, Tz), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut time = |field: &str, s: &str| {
            NaiveTime::parse_from_str(s, "%H:%M")
                .map_err(|_| problems.push((format!("schedule.{field}"), "must be HH:MM".into())))
                .ok()
        };
        let start = time("start_time", &self.start_time);
        let end = time("end_time", &self.end_time);
        if let (Some(s), Some(e)) = (start, end)
            && e <= s
        {
            problems.push((
                "schedule.end_time".into(),
                "must be after start_time".into(),
            ));
        }
        if self.weekdays.is_empty() {
            problems.push((
                "schedule.weekdays".into(),
                "must name at least one day".into(),
            ));
        }
        if let (Some(a), Some(b)) = (self.start_date, self.end_date)
            && b < a
        {
            problems.push((
                "schedule.end_date".into(),
                "must not be before start_date".into(),
            ));
        }
        let zone = self.timezone.parse::<Tz>().map_err(|_| {
            problems.push((
                "schedule.timezone".into(),
                "must be an IANA time zone such as Europe/Paris".into(),
            ))
        });
        match (start, end, zone) {
            (Some(start), Some(end), Ok(zone)) if problems.is_empty() => {
                let mut weekdays = [false; 7];
                for d in &self.weekdays {
                    weekdays[d.weekday().num_days_from_monday() as usize] = true;
                }
                Ok((
                    CallingWindow {
                        weekdays,
                        start,
                        end,
                        start_date: self.start_date,
                        end_date: self.end_date,
                    },
                    zone,
                ))
            }
            _ => Err(problems),
        }
    }
}

/// The zone a contact is called in: its own, else its number's, else the
/// campaign's.
pub fn contact_zone(explicit: Option<&str>, default: Tz) -> Tz {
    explicit.and_then(|z| z.parse().ok()).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_defaults_and_problems() {
        let s: Schedule = serde_json::from_str("{}").unwrap();
        let (w, tz) = s.compile().unwrap();
        assert_eq!(w, CallingWindow::default_hours());
        assert_eq!(tz, chrono_tz::UTC);
        let bad = Schedule {
            start_time: "21:00".into(),
            timezone: "Mars/Olympus".into(),
            weekdays: vec![],
            ..Schedule::default()
        };
        let fields: Vec<String> = bad
            .compile()
            .unwrap_err()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            fields,
            [
                "schedule.end_time",
                "schedule.weekdays",
                "schedule.timezone"
            ]
        );
    }

    #[test]
    fn actions_follow_the_status_machine() {
        assert_eq!(Action::Start.from(), &[CampaignStatus::Draft]);
        assert_eq!(Action::Resume.to(), CampaignStatus::Running);
        assert!(!Action::Cancel.from().contains(&CampaignStatus::Completed));
    }
}
