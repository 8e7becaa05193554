//! Calling windows: whether a contact may be called at an instant, and the
//! next instant it may, evaluated in the contact's own time zone.
//!
//! The zone of a contact is, in order: the zone given with the contact; the
//! zone derived from its number where the number says it unambiguously; the
//! campaign's default zone. What [`zone_for_number`] derives:
//! - countries that keep one zone for every number (most of Europe, Japan,
//!   India, China, South Africa, ... see `SINGLE_ZONE`), including the NANP
//!   countries other than the US and Canada (Jamaica, Puerto Rico, ...);
//! - US and Canadian numbers by area code, for codes that lie wholly in one
//!   zone (see `NANP_AREA_CODES`). Codes that straddle a zone line (850 in
//!   Florida, 915 in Texas, 541 in Oregon, 928 in Arizona, 906 in Michigan,
//!   907 in Alaska, 250 in British Columbia, ...) are left out on purpose;
//! - Australian geographic numbers by their area digit (2 Sydney, 3
//!   Melbourne, 7 Brisbane); 8 spans three zones and mobiles have none.
//!
//! Everything else (Russia, Brazil, Mexico, Indonesia, Spain with the
//! Canaries, Portugal with the Azores, mobiles in multi-zone countries) falls
//! back to the campaign's zone.
//!
//! The window itself is local wall-clock time: a start and end time of day
//! (end exclusive), allowed weekdays and an optional first and last date. A
//! start time that a DST jump skips opens the window at the end of the gap;
//! one that a DST fall-back repeats opens it at its first occurrence.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The local rules of a campaign's schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct CallingWindow {
    /// Allowed weekdays, Monday first.
    pub weekdays: [bool; 7],
    /// Local time of day the window opens.
    pub start: NaiveTime,
    /// Local time of day the window closes (exclusive); after `start`.
    pub end: NaiveTime,
    /// First local date calls are allowed, if any.
    pub start_date: Option<NaiveDate>,
    /// Last local date calls are allowed (inclusive), if any.
    pub end_date: Option<NaiveDate>,
}

/// What the window says about a contact at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Call now.
    Open,
    /// Not now; the window next opens at this instant.
    OpensAt(DateTime<Utc>),
    /// The window will never open again (past the end date, or no weekday).
    Closed,
}

impl CallingWindow {
    /// 09:00 to 20:00 local, every day, no dates.
    pub fn default_hours() -> Self {
        Self {
            weekdays: [true; 7],
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap_or(NaiveTime::MIN),
            end: NaiveTime::from_hms_opt(20, 0, 0).unwrap_or(NaiveTime::MIN),
            start_date: None,
            end_date: None,
        }
    }

    fn allows_local(&self, date: NaiveDate, time: NaiveTime) -> bool {
        let day = date.weekday().num_days_from_monday() as usize;
        self.weekdays[day]
            && self.start_date.is_none_or(|d| date >= d)
            && self.end_date.is_none_or(|d| date <= d)
            && time >= self.start
            && time < self.end
    }

    /// Whether a contact in `zone` may be called at `at`.
    pub fn allows(&self, zone: Tz, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&zone).naive_local();
        self.allows_local(local.date(), local.time())
    }

    /// Whether `at` is inside the window and, if not, when it next opens.
    pub fn verdict(&self, zone: Tz, at: DateTime<Utc>) -> Verdict {
        if self.allows(zone, at) {
            return Verdict::Open;
        }
        let local = at.with_timezone(&zone).naive_local();
        let mut date = local.date();
        if let Some(first) = self.start_date
            && date < first
        {
            date = first;
        }
        // A week of candidate days finds every allowed weekday once; one more
        // covers a first day whose window has already closed.
        for _ in 0..8 {
            if self.end_date.is_some_and(|last| date > last) {
                return Verdict::Closed;
            }
            let day = date.weekday().num_days_from_monday() as usize;
            if self.weekdays[day]
                && let Some(open) = opening(zone, date, self.start, self.end)
                && open > at
            {
                return Verdict::OpensAt(open);
            }
            match date.succ_opt() {
                Some(next) => date = next,
                None => return Verdict::Closed,
            }
        }
        Verdict::Closed
    }
}

/// The instant the window opens on local `date`: `start`, or the end of a
/// DST gap that swallows it (if that is still before `end`).
fn opening(zone: Tz, date: NaiveDate, start: NaiveTime, end: NaiveTime) -> Option<DateTime<Utc>> {
    let at = date.and_time(start);
    match zone.from_local_datetime(&at) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => {
            // Gaps are at most a few hours; step by minutes to the first
            // local time that exists.
            (1..=240).find_map(|m| {
                let t = at + Duration::minutes(m);
                if t.date() != date || t.time() >= end {
                    return None;
                }
                zone.from_local_datetime(&t)
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
            })
        }
    }
}

/// The zone a number's country and region pin down unambiguously, if any.
/// `e164` must be normalized (see [`crate::e164::normalize`]).
pub fn zone_for_number(e164: &str) -> Option<Tz> {
    let number = phonenumber::parse(None, e164).ok()?;
    let national = number.national().value();
    let name = match number.country().id()? {
        phonenumber::country::Id::US | phonenumber::country::Id::CA => {
            let area = u16::try_from(national / 10_000_000).ok()?;
            NANP_AREA_CODES
                .iter()
                .find(|(_, codes)| codes.contains(&area))
                .map(|(zone, _)| *zone)?
        }
        phonenumber::country::Id::AU => {
            // Geographic numbers are nine digits starting with the area digit.
            if !(100_000_000..=999_999_999).contains(&national) {
                return None;
            }
            match national / 100_000_000 {
                2 => "Australia/Sydney",
                3 => "Australia/Melbourne",
                7 => "Australia/Brisbane",
                _ => return None,
            }
        }
        id => {
            let iso: &str = id.as_ref();
            SINGLE_ZONE
                .iter()
                .find(|(country, _)| *country == iso)
                .map(|(_, zone)| *zone)?
        }
    };
    name.parse().ok()
}

/// Countries (ISO 3166 alpha-2) whose numbers all keep one zone.
const SINGLE_ZONE: &[(&str, &str)] = &[
    ("AE", "Asia/Dubai"),
    ("AR", "America/Argentina/Buenos_Aires"),
    ("AT", "Europe/Vienna"),
    ("BB", "America/Barbados"),
    ("BD", "Asia/Dhaka"),
    ("BE", "Europe/Brussels"),
    ("BG", "Europe/Sofia"),
    ("BS", "America/Nassau"),
    ("CH", "Europe/Zurich"),
    ("CN", "Asia/Shanghai"),
    ("CO", "America/Bogota"),
    ("CR", "America/Costa_Rica"),
    ("CZ", "Europe/Prague"),
    ("DE", "Europe/Berlin"),
    ("DK", "Europe/Copenhagen"),
    ("DO", "America/Santo_Domingo"),
    ("EE", "Europe/Tallinn"),
    ("EG", "Africa/Cairo"),
    ("FI", "Europe/Helsinki"),
    ("FR", "Europe/Paris"),
    ("GB", "Europe/London"),
    ("GH", "Africa/Accra"),
    ("GR", "Europe/Athens"),
    ("GT", "America/Guatemala"),
    ("HK", "Asia/Hong_Kong"),
    ("HR", "Europe/Zagreb"),
    ("HU", "Europe/Budapest"),
    ("IE", "Europe/Dublin"),
    ("IL", "Asia/Jerusalem"),
    ("IN", "Asia/Kolkata"),
    ("IS", "Atlantic/Reykjavik"),
    ("IT", "Europe/Rome"),
    ("JM", "America/Jamaica"),
    ("JP", "Asia/Tokyo"),
    ("KE", "Africa/Nairobi"),
    ("KR", "Asia/Seoul"),
    ("LK", "Asia/Colombo"),
    ("LT", "Europe/Vilnius"),
    ("LU", "Europe/Luxembourg"),
    ("LV", "Europe/Riga"),
    ("MA", "Africa/Casablanca"),
    ("MY", "Asia/Kuala_Lumpur"),
    ("NG", "Africa/Lagos"),
    ("NL", "Europe/Amsterdam"),
    ("NO", "Europe/Oslo"),
    ("PA", "America/Panama"),
    ("PE", "America/Lima"),
    ("PH", "Asia/Manila"),
    ("PK", "Asia/Karachi"),
    ("PL", "Europe/Warsaw"),
    ("PR", "America/Puerto_Rico"),
    ("QA", "Asia/Qatar"),
    ("RO", "Europe/Bucharest"),
    ("RS", "Europe/Belgrade"),
    ("SA", "Asia/Riyadh"),
    ("SE", "Europe/Stockholm"),
    ("SG", "Asia/Singapore"),
    ("SI", "Europe/Ljubljana"),
    ("SK", "Europe/Bratislava"),
    ("TH", "Asia/Bangkok"),
    ("TR", "Europe/Istanbul"),
    ("TT", "America/Port_of_Spain"),
    ("TW", "Asia/Taipei"),
    ("UY", "America/Montevideo"),
    ("VE", "America/Caracas"),
    ("VN", "Asia/Ho_Chi_Minh"),
    ("ZA", "Africa/Johannesburg"),
];

/// US and Canadian area codes that lie wholly in one zone.
const NANP_AREA_CODES: &[(&str, &[u16])] = &[
    (
        "America/New_York",
        &[
            // New York, New Jersey, Pennsylvania
            212, 315, 332, 347, 516, 518, 585, 607, 631, 646, 680, 716, 718, 838, 845, 914, 917,
            929, 934, 201, 551, 609, 640, 732, 848, 856, 862, 908, 973, 215, 223, 267, 272, 412,
            445, 484, 570, 582, 610, 717, 724, 814, 835, 878, // New England
            339, 351, 413, 508, 617, 774, 781, 857, 978, 203, 475, 860, 959, 401, 802, 603, 207,
            // Georgia, the Carolinas, Virginia, Maryland, DC, Delaware, West Virginia
            229, 404, 470, 478, 678, 706, 762, 770, 912, 943, 252, 336, 472, 704, 743, 828, 910,
            919, 980, 984, 803, 839, 843, 854, 864, 276, 434, 540, 571, 703, 757, 804, 826, 948,
            227, 240, 301, 410, 443, 667, 202, 771, 302, 304, 681,
            // Ohio, Michigan (lower peninsula), Florida (but the panhandle)
            216, 220, 234, 283, 326, 330, 380, 419, 436, 440, 513, 567, 614, 740, 937, 231, 248,
            269, 313, 517, 586, 616, 734, 810, 947, 989, 305, 321, 352, 386, 407, 448, 561, 656,
            689, 727, 754, 772, 786, 813, 863, 904, 941, 954,
        ],
    ),
    (
        "America/Toronto",
        &[
            416, 437, 647, 905, 289, 365, 613, 343, 519, 226, 548, 705, 249, 514, 438, 450, 579,
            819, 873,
        ],
    ),
    (
        "America/Chicago",
        &[
            // Illinois, Texas (but El Paso and the far west), Minnesota, Wisconsin
            217, 224, 309, 312, 331, 447, 464, 618, 630, 708, 730, 773, 779, 815, 847, 872, 210,
            214, 254, 281, 325, 346, 361, 409, 430, 469, 512, 682, 713, 726, 737, 806, 817, 830,
            832, 903, 936, 940, 945, 956, 972, 979, 218, 320, 507, 612, 651, 763, 952, 262, 274,
            414, 534, 608, 715, 920,
            // Missouri, Iowa, Arkansas, Louisiana, Mississippi, Alabama, Oklahoma
            314, 417, 557, 573, 636, 660, 816, 975, 319, 515, 563, 641, 712, 479, 501, 870, 225,
            318, 337, 504, 985, 228, 601, 662, 769, 205, 251, 256, 334, 659, 938, 405, 539, 572,
            580, 918,
        ],
    ),
    ("America/Winnipeg", &[204, 431]),
    ("America/Regina", &[306, 639]),
    (
        "America/Denver",
        &[303, 719, 720, 970, 983, 385, 435, 801, 505, 575, 307, 406],
    ),
    ("America/Edmonton", &[403, 587, 780, 825, 368]),
    ("America/Phoenix", &[480, 520, 602, 623]),
    (
        "America/Los_Angeles",
        &[
            209, 213, 279, 310, 323, 341, 350, 408, 415, 424, 442, 510, 530, 559, 562, 619, 626,
            628, 650, 657, 661, 669, 707, 714, 747, 760, 805, 818, 820, 831, 840, 858, 909, 916,
            925, 949, 951, 206, 253, 360, 425, 509, 564, 702, 725, 775, 503, 971,
        ],
    ),
    ("America/Vancouver", &[604, 778, 236, 672]),
    ("America/Halifax", &[902, 782]),
    ("America/Moncton", &[506]),
    ("Pacific/Honolulu", &[808]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Weekday;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    fn weekdays(days: &[Weekday]) -> [bool; 7] {
        let mut w = [false; 7];
        for d in days {
            w[d.num_days_from_monday() as usize] = true;
        }
        w
    }

    #[test]
    fn default_hours_east_and_west_of_utc() {
        let w = CallingWindow::default_hours();
        // 2026-06-10 12:00 UTC: 08:00 in New York (closed), 21:00 in Tokyo
        // (closed), 14:00 in Berlin (open).
        let at = utc("2026-06-10T12:00:00Z");
        assert!(!w.allows(chrono_tz::America::New_York, at));
        assert!(!w.allows(chrono_tz::Asia::Tokyo, at));
        assert!(w.allows(chrono_tz::Europe::Berlin, at));
        assert_eq!(
            w.verdict(chrono_tz::America::New_York, at),
            Verdict::OpensAt(utc("2026-06-10T13:00:00Z"))
        );
        // Tokyo's next 09:00 is tomorrow 00:00 UTC.
        assert_eq!(
            w.verdict(chrono_tz::Asia::Tokyo, at),
            Verdict::OpensAt(utc("2026-06-11T00:00:00Z"))
        );
        // The end is exclusive: 20:00 Berlin (18:00 UTC in summer) is closed.
        assert!(w.allows(chrono_tz::Europe::Berlin, utc("2026-06-10T17:59:59Z")));
        assert!(!w.allows(chrono_tz::Europe::Berlin, utc("2026-06-10T18:00:00Z")));
        // Kiritimati is UTC+14: a UTC instant on one date is the next date there.
        let kiritimati = chrono_tz::Pacific::Kiritimati;
        assert!(w.allows(kiritimati, utc("2026-06-09T20:00:00Z")));
    }

    #[test]
    fn weekday_rules_are_local() {
        let mut w = CallingWindow::default_hours();
        w.weekdays = weekdays(&[
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ]);
        // Friday 2026-06-12 23:30 UTC is Saturday 08:30 in Sydney: closed
        // until Monday 09:00 there (Sunday 23:00 UTC).
        let at = utc("2026-06-12T23:30:00Z");
        assert_eq!(
            w.verdict(chrono_tz::Australia::Sydney, at),
            Verdict::OpensAt(utc("2026-06-14T23:00:00Z"))
        );
        // ...but still Friday 16:30 in Los Angeles: open.
        assert!(w.allows(chrono_tz::America::Los_Angeles, at));
        // No weekday at all: never.
        w.weekdays = [false; 7];
        assert_eq!(w.verdict(chrono_tz::UTC, at), Verdict::Closed);
    }

    #[test]
    fn dates_bound_the_window() {
        let mut w = CallingWindow::default_hours();
        w.start_date = NaiveDate::from_ymd_opt(2026, 7, 1);
        w.end_date = NaiveDate::from_ymd_opt(2026, 7, 2);
        let tz = chrono_tz::Europe::London;
        assert_eq!(
            w.verdict(tz, utc("2026-06-10T12:00:00Z")),
            Verdict::OpensAt(utc("2026-07-01T08:00:00Z"))
        );
        assert!(w.allows(tz, utc("2026-07-02T12:00:00Z")));
        assert_eq!(w.verdict(tz, utc("2026-07-02T19:30:00Z")), Verdict::Closed);
    }

    #[test]
    fn dst_spring_forward_and_fall_back() {
        let tz = chrono_tz::America::New_York;
        let mut w = CallingWindow::default_hours();
        // A window opening at 02:30, which 2026-03-08 skips (02:00 -> 03:00).
        w.start = hm(2, 30);
        w.end = hm(5, 0);
        assert_eq!(
            w.verdict(tz, utc("2026-03-08T05:00:00Z")),    // 00:00 EST
            Verdict::OpensAt(utc("2026-03-08T07:00:00Z"))  // 03:00 EDT
        );
        // 01:30 happens twice on 2026-11-01: the window opens at the first.
        w.start = hm(1, 30);
        assert_eq!(
            w.verdict(tz, utc("2026-11-01T04:00:00Z")),    // 00:00 EDT
            Verdict::OpensAt(utc("2026-11-01T05:30:00Z"))  // 01:30 EDT
        );
        // Default hours across the switch: 09:00 local is 14:00 UTC before
        // and 13:00 UTC after.
        let w = CallingWindow::default_hours();
        assert_eq!(
            w.verdict(tz, utc("2026-03-07T12:00:00Z")),
            Verdict::OpensAt(utc("2026-03-07T14:00:00Z"))
        );
        assert_eq!(
            w.verdict(tz, utc("2026-03-08T12:00:00Z")),
            Verdict::OpensAt(utc("2026-03-08T13:00:00Z"))
        );
        // Europe switches on another date: 09:00 Berlin is 08:00 UTC on
        // 2026-03-28 and 07:00 UTC on 2026-03-29.
        let berlin = chrono_tz::Europe::Berlin;
        assert_eq!(
            w.verdict(berlin, utc("2026-03-28T00:00:00Z")),
            Verdict::OpensAt(utc("2026-03-28T08:00:00Z"))
        );
        assert_eq!(
            w.verdict(berlin, utc("2026-03-29T00:00:00Z")),
            Verdict::OpensAt(utc("2026-03-29T07:00:00Z"))
        );
    }

    #[test]
    fn zones_from_numbers() {
        let z = |n: &str| zone_for_number(n).map(|z| z.name().to_string());
        assert_eq!(z("+12125550100").as_deref(), Some("America/New_York"));
        assert_eq!(z("+14155552671").as_deref(), Some("America/Los_Angeles"));
        assert_eq!(z("+13125550100").as_deref(), Some("America/Chicago"));
        assert_eq!(z("+16045550100").as_deref(), Some("America/Vancouver"));
        assert_eq!(z("+442079460958").as_deref(), Some("Europe/London"));
        assert_eq!(z("+33142685300").as_deref(), Some("Europe/Paris"));
        assert_eq!(z("+81312345678").as_deref(), Some("Asia/Tokyo"));
        assert_eq!(z("+61292530000").as_deref(), Some("Australia/Sydney"));
        // Straddling area codes and multi-zone countries stay unknown.
        assert_eq!(z("+18505550100"), None);
        assert_eq!(z("+61412345678"), None);
        assert_eq!(z("+74951234567"), None);
    }

    #[test]
    fn every_table_zone_exists() {
        for (_, zone) in SINGLE_ZONE {
            assert!(zone.parse::<Tz>().is_ok(), "{zone}");
        }
        for (zone, _) in NANP_AREA_CODES {
            assert!(zone.parse::<Tz>().is_ok(), "{zone}");
        }
    }
}
