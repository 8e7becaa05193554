//! The dialer's pacing core: decides whether one more call may start now
//! under every cap at once (the campaign's concurrency and calls per second,
//! each trunk's `max_calls` and `cps`, a global cap), and if not, whether to
//! wait for a slot to free or until an instant.
//!
//! Sans-IO: plain state, `now` and the trunks' calls passed in, so it is
//! tested with paused time. Rates are enforced as strict spacing (one call
//! per `1/cps`), so no one-second window ever holds more than `cps` starts.
//! Caps count this node's calls; with several nodes sharing a campaign,
//! each applies them.
//!
//! A trunk's `max_calls` is counted in one place: the call layer's live
//! calls (every inbound and outbound call holding a slot on the trunk),
//! read at each [`Pacer::ready`]. The pacer adds only the calls it handed
//! to the call layer that have not come back yet ([`Pacer::placed`]),
//! which hold no slot so far.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// A concurrency cap and a rate cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Caps {
    pub max_calls: u32,
    /// Calls started per second; 0 means no limit.
    pub cps: f64,
}

#[derive(Debug, Clone)]
struct Lane {
    caps: Caps,
    /// A campaign's calls in flight; a trunk's calls being placed.
    active: u32,
    /// The earliest instant the next call may start.
    next_start: Option<Instant>,
}

impl Lane {
    fn new(caps: Caps) -> Self {
        Self {
            caps,
            active: 0,
            next_start: None,
        }
    }

    /// `elsewhere`: calls counted outside this lane that take a slot too.
    fn check(&self, now: Instant, elsewhere: u32) -> Result<(), Wait> {
        if self.active.saturating_add(elsewhere) >= self.caps.max_calls {
            return Err(Wait::Slot);
        }
        match self.next_start {
            Some(t) if t > now => Err(Wait::Until(t)),
            _ => Ok(()),
        }
    }

    fn start(&mut self, now: Instant) {
        self.active += 1;
        if self.caps.cps > 0.0 {
            let spacing = Duration::from_secs_f64(1.0 / self.caps.cps);
            // Spacing counts from the later of now and the planned instant,
            // so an idle lane does not bank a burst.
            let from = self.next_start.map_or(now, |t| t.max(now));
            self.next_start = Some(from + spacing);
        }
    }

    fn finish(&mut self) {
        self.active = self.active.saturating_sub(1);
    }
}

/// Why a call may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A concurrency cap is full: wait for a call to end.
    Slot,
    /// A rate cap: the next start is allowed at this instant.
    Until(Instant),
}

/// The caps of every lane and the calls each has in flight.
#[derive(Debug)]
pub struct Pacer {
    global_max: u32,
    global_active: u32,
    campaigns: HashMap<String, Lane>,
    trunks: HashMap<String, Lane>,
}

impl Pacer {
    pub fn new(global_max: u32) -> Self {
        Self {
            global_max,
            global_active: 0,
            campaigns: HashMap::new(),
            trunks: HashMap::new(),
        }
    }

    /// Sets (or updates) a campaign's caps, keeping its calls in flight.
    pub fn set_campaign(&mut self, id: &str, caps: Caps) {
        self.campaigns
            .entry(id.to_string())
            .and_modify(|l| l.caps = caps)
            .or_insert_with(|| Lane::new(caps));
    }

    /// Sets (or updates) a trunk's caps, keeping its calls in flight.
    pub fn set_trunk(&mut self, name: &str, caps: Caps) {
        self.trunks
            .entry(name.to_string())
            .and_modify(|l| l.caps = caps)
            .or_insert_with(|| Lane::new(caps));
    }

    pub fn active(&self) -> u32 {
        self.global_active
    }

    pub fn campaign_active(&self, id: &str) -> u32 {
        self.campaigns.get(id).map_or(0, |l| l.active)
    }

    /// Whether a call of `campaign` may start now on one of `trunks` (tried
    /// in order): the trunk to use, or what to wait for. `on_trunk` is how
    /// many calls a trunk carries now, as the call layer counts them.
    /// Reserves nothing.
    pub fn ready(
        &self,
        now: Instant,
        campaign: &str,
        trunks: &[String],
        on_trunk: impl Fn(&str) -> u32,
    ) -> Result<String, Wait> {
        if self.global_active >= self.global_max {
            return Err(Wait::Slot);
        }
        let lane = self.campaigns.get(campaign).ok_or(Wait::Slot)?;
        lane.check(now, 0)?;
        let mut wait: Option<Wait> = None;
        for trunk in trunks {
            let Some(t) = self.trunks.get(trunk) else {
                continue;
            };
            match t.check(now, on_trunk(trunk)) {
                Ok(()) => return Ok(trunk.clone()),
                Err(w) => {
                    // The soonest trunk decides how long to wait.
                    wait = Some(match (wait, w) {
                        (None, w) => w,
                        (Some(Wait::Slot), w) | (Some(w), Wait::Slot) => w,
                        (Some(Wait::Until(a)), Wait::Until(b)) => Wait::Until(a.min(b)),
                    });
                }
            }
        }
        Err(wait.unwrap_or(Wait::Slot))
    }

    /// Records a call started now (after [`Pacer::ready`] said yes) and
    /// handed to the call layer; [`Pacer::placed`] when it comes back.
    pub fn start(&mut self, now: Instant, campaign: &str, trunk: &str) {
        self.adopt(now, campaign);
        if let Some(l) = self.trunks.get_mut(trunk) {
            l.start(now);
        }
    }

    /// The call layer answered a call handed to it on `trunk`: placed, it
    /// holds a slot the call layer counts; refused, it holds none.
    pub fn placed(&mut self, trunk: &str) {
        if let Some(l) = self.trunks.get_mut(trunk) {
            l.finish();
        }
    }

    /// Counts a call already up (adopted after a restart) against its
    /// campaign and the global cap; its trunk slot is the call layer's.
    pub fn adopt(&mut self, now: Instant, campaign: &str) {
        self.global_active += 1;
        if let Some(l) = self.campaigns.get_mut(campaign) {
            l.start(now);
        }
    }

    /// Records a call that ended (or was never placed after all).
    pub fn finish(&mut self, campaign: &str) {
        self.global_active = self.global_active.saturating_sub(1);
        if let Some(l) = self.campaigns.get_mut(campaign) {
            l.finish();
        }
    }

    /// What the earliest of several campaigns waits for.
    pub fn soonest(waits: impl IntoIterator<Item = Wait>) -> Option<Wait> {
        waits.into_iter().fold(None, |acc, w| match (acc, w) {
            (None, w) => Some(w),
            (Some(Wait::Slot), w) | (Some(w), Wait::Slot) => Some(w),
            (Some(Wait::Until(a)), Wait::Until(b)) => Some(Wait::Until(a.min(b))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunks(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The calls the "call layer" counts on `trunk`.
    fn on(live: &[(Instant, String)], trunk: &str) -> u32 {
        u32::try_from(live.iter().filter(|(_, t)| t == trunk).count()).unwrap()
    }

    /// Starts as many calls as allowed over `secs` seconds of paused time,
    /// ending each after `hold`; returns the start instants.
    async fn simulate(
        p: &mut Pacer,
        campaign: &str,
        ts: &[String],
        secs: u64,
        hold: Duration,
    ) -> Vec<(Instant, String)> {
        let begin = Instant::now();
        let mut starts = Vec::new();
        let mut live: Vec<(Instant, String)> = Vec::new();
        let step = Duration::from_millis(5);
        for _ in 0..(secs * 200) {
            let now = Instant::now();
            live.retain(|(end, _)| {
                if *end <= now {
                    p.finish(campaign);
                    false
                } else {
                    true
                }
            });
            // Bounded: one tick cannot start more calls than the global cap.
            for _ in 0..p.global_max {
                match p.ready(now, campaign, ts, |t| on(&live, t)) {
                    Ok(trunk) => {
                        p.start(now, campaign, &trunk);
                        p.placed(&trunk);
                        live.push((now + hold, trunk.clone()));
                        starts.push((now, trunk));
                    }
                    Err(_) => break,
                }
            }
            tokio::time::sleep(step).await;
        }
        assert!(Instant::now() >= begin + Duration::from_secs(secs));
        starts
    }

    fn max_in_any_second(starts: &[Instant]) -> usize {
        starts
            .iter()
            .map(|s| {
                starts
                    .iter()
                    .filter(|t| **t >= *s && **t < *s + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn campaign_cps_is_strict_spacing() {
        let mut p = Pacer::new(100);
        p.set_campaign(
            "c",
            Caps {
                max_calls: 100,
                cps: 5.0,
            },
        );
        p.set_trunk(
            "t",
            Caps {
                max_calls: 100,
                cps: 0.0,
            },
        );
        let starts = simulate(&mut p, "c", &trunks(&["t"]), 10, Duration::from_millis(100)).await;
        let at: Vec<Instant> = starts.iter().map(|s| s.0).collect();
        assert!(max_in_any_second(&at) <= 5);
        assert!(starts.len() >= 49, "about 5 a second: {}", starts.len());
    }

    #[tokio::test(start_paused = true)]
    async fn every_cap_holds_at_once() {
        let mut p = Pacer::new(6);
        p.set_campaign(
            "c",
            Caps {
                max_calls: 8,
                cps: 20.0,
            },
        );
        p.set_trunk(
            "a",
            Caps {
                max_calls: 3,
                cps: 2.0,
            },
        );
        p.set_trunk(
            "b",
            Caps {
                max_calls: 5,
                cps: 50.0,
            },
        );
        let ts = trunks(&["a", "b"]);
        let mut max_seen = (0, 0, 0);
        let mut live: Vec<(Instant, String)> = Vec::new();
        let mut starts_a = Vec::new();
        for _ in 0..4000 {
            let now = Instant::now();
            live.retain(|(end, _)| {
                if *end <= now {
                    p.finish("c");
                    false
                } else {
                    true
                }
            });
            for _ in 0..10 {
                let Ok(trunk) = p.ready(now, "c", &ts, |t| on(&live, t)) else {
                    break;
                };
                p.start(now, "c", &trunk);
                p.placed(&trunk);
                if trunk == "a" {
                    starts_a.push(now);
                }
                live.push((now + Duration::from_millis(700), trunk));
            }
            max_seen.0 = max_seen.0.max(live.len());
            max_seen.1 = max_seen.1.max(on(&live, "a"));
            max_seen.2 = max_seen.2.max(on(&live, "b"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(max_seen.0, 6, "global cap reached, never passed");
        assert!(max_seen.1 <= 3 && max_seen.2 <= 5, "{max_seen:?}");
        assert!(max_in_any_second(&starts_a) <= 2);
        assert_eq!(p.active(), u32::try_from(live.len()).unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn waits_say_what_they_wait_for() {
        let mut p = Pacer::new(10);
        p.set_campaign(
            "c",
            Caps {
                max_calls: 1,
                cps: 1.0,
            },
        );
        p.set_trunk(
            "t",
            Caps {
                max_calls: 10,
                cps: 0.0,
            },
        );
        let ts = trunks(&["t"]);
        let now = Instant::now();
        assert_eq!(p.ready(now, "c", &ts, |_| 0), Ok("t".to_string()));
        p.start(now, "c", "t");
        assert_eq!(p.ready(now, "c", &ts, |_| 0), Err(Wait::Slot));
        p.finish("c");
        assert_eq!(
            p.ready(now, "c", &ts, |_| 0),
            Err(Wait::Until(now + Duration::from_secs(1)))
        );
        // Unknown campaign or trunks: nothing starts.
        assert_eq!(p.ready(now, "x", &ts, |_| 0), Err(Wait::Slot));
        assert_eq!(
            p.ready(now + Duration::from_secs(2), "c", &trunks(&["nope"]), |_| 0),
            Err(Wait::Slot)
        );
        assert_eq!(
            Pacer::soonest([
                Wait::Slot,
                Wait::Until(now),
                Wait::Until(now + Duration::from_secs(1))
            ]),
            Some(Wait::Until(now))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trunk_slot_is_the_call_layers_count_plus_calls_being_placed() {
        let mut p = Pacer::new(10);
        p.set_campaign(
            "c",
            Caps {
                max_calls: 10,
                cps: 0.0,
            },
        );
        p.set_trunk(
            "t",
            Caps {
                max_calls: 2,
                cps: 0.0,
            },
        );
        let ts = trunks(&["t"]);
        let now = Instant::now();
        // Two calls on the trunk that the campaign did not place (inbound).
        assert_eq!(p.ready(now, "c", &ts, |_| 2), Err(Wait::Slot));
        assert_eq!(p.ready(now, "c", &ts, |_| 1), Ok("t".to_string()));
        // One being placed holds no slot yet, but counts.
        p.start(now, "c", "t");
        assert_eq!(p.ready(now, "c", &ts, |_| 1), Err(Wait::Slot));
        // Refused by the call layer: nothing holds the slot any more.
        p.placed("t");
        assert_eq!(p.ready(now, "c", &ts, |_| 1), Ok("t".to_string()));
    }
}
