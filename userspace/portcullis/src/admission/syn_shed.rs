//! The SYN shed loop: how much of the offered load the XDP program should turn away at the SYN, so that what
//! reaches userspace is about what it can admit.
//!
//! Every connection that reaches admission control costs a socket, an accept, a read and, when it is shed
//! there, a reset: tens of microseconds. At 10x overload those costs alone exceed the CPU a full handshake
//! budget leaves, and goodput collapses. A SYN dropped in XDP costs a few hundred nanoseconds and the client's
//! TCP retransmits it after 1 s, 3 s, ...: the cheapest shedding there is. So each [`loop_interval`] the loop compares
//! the connections that *arrived* at admission control with those it *admitted*, and moves the fraction of SYNs
//! XDP keeps (`keep`, 1.0 = all) towards `admitted * (1 + HEADROOM) / arrived`: userspace goes on seeing a
//! little more than it can take (so it always has work, and sheds the excess by class, resumptions last),
//! and XDP drops the rest before it costs anything.
//!
//! Cut to the measured ratio at once when overloaded (a storm arrives within one interval; at least [`MIN_SHED`]
//! connections shed in userspace, so a few resets at half load do not start it), double back while
//! intervals need (almost) no shedding in userspace (from 5% kept, all SYNs are let in after five quiet
//! intervals, 125 ms: a storm ends quickly, but one quiet interval within a storm does not let it all in at
//! once), probe up gently in between.
//!
//! Retransmitted SYNs of flows XDP already shed go last: while shedding, and for `retry_hold` after the last
//! interval that shed, XDP drops them all (`retry_ppm`; `max_shed` bounds new SYNs only, and 0 turns both off). A shed client has waited a
//! second already; and after a storm its retransmissions keep coming for seconds (1 s, 3 s, 7 s after the
//! first SYN), which would otherwise crowd out the clients arriving after the storm.

use std::time::Duration;

use tokio::time::Instant;

/// How much more than it admits userspace should see: the excess it sheds itself, by class.
pub const HEADROOM: f64 = 0.25;

/// At or below this share of arrivals shed by userspace, the interval was quiet: twice as many SYNs are let in.
const RELAX_BELOW: f64 = 0.05;

/// Fewer connections shed in userspace than this in one interval do not start SYN shedding: a few resets in a
/// burst at half load (the cost budget at work) are not a storm, and a SYN shed then costs its client a
/// timeout (its retransmissions are held back for `retry_hold`). A storm sheds hundreds per interval.
pub const MIN_SHED: u64 = 8;

/// The loop's interval for a controller `interval`: a quarter of it (25 ms for the default 100 ms). A storm's
/// first interval is the one that reaches userspace unshed and queues up: the shorter, the smaller that burst.
/// The sojourn-time controller needs the longer interval (a standing queue must stand); this loop compares two
/// counts, which a few dozen connections already make meaningful.
pub fn loop_interval(interval: Duration) -> Duration {
    (interval / 4).max(Duration::from_millis(1))
}

/// What XDP should drop, in parts per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynShed {
    /// Of SYNs of new flows.
    pub ppm: u32,
    /// Of retransmitted SYNs of flows already shed.
    pub retry_ppm: u32,
}

/// The loop's state.
#[derive(Debug)]
pub struct SynShedLoop {
    interval: Duration,
    retry_hold: Duration,
    /// When the last interval that shed ended.
    last_shed: Option<Instant>,
    /// The largest fraction of SYNs XDP may drop.
    max_shed: f64,
    /// Fraction of SYNs kept, from `1 - max_shed` to 1.
    keep: f64,
    interval_start: Instant,
    arrived: u64,
    admitted: u64,
}

impl SynShedLoop {
    /// A loop that sheds nothing yet, measuring over `interval`, never dropping more than `max_shed` (0 to 1),
    /// dropping retransmitted SYNs of shed flows until `retry_hold` after it last shed.
    pub fn new(interval: Duration, max_shed: f64, retry_hold: Duration, now: Instant) -> Self {
        Self {
            interval,
            retry_hold,
            last_shed: None,
            max_shed: max_shed.clamp(0.0, 1.0),
            keep: 1.0,
            interval_start: now,
            arrived: 0,
            admitted: 0,
        }
    }

    /// Sets the interval, the largest fraction to drop and the retry hold (a reload), keeping the fraction kept
    /// now (within the new bound) and the counts of the current interval.
    pub fn set_params(&mut self, interval: Duration, max_shed: f64, retry_hold: Duration) {
        self.interval = interval;
        self.max_shed = max_shed.clamp(0.0, 1.0);
        self.keep = self.keep.max(1.0 - self.max_shed);
        self.retry_hold = retry_hold;
    }

    /// The fraction of new SYNs to drop now, in parts per million.
    pub fn ppm(&self) -> u32 {
        // `keep` is within [1 - max_shed, 1], so the product is within [0, 1e6].
        ((1.0 - self.keep) * 1_000_000.0).round() as u32
    }

    /// What XDP should drop now.
    pub fn shed(&self) -> SynShed {
        let holding = self.last_shed.is_some();
        SynShed {
            ppm: self.ppm(),
            // Every retransmission while holding: letting a share of them in would only hand the slots new clients
            // need to ones that have already waited a second or more (and are about to give up).
            retry_ppm: if holding && self.max_shed > 0.0 {
                1_000_000
            } else {
                0
            },
        }
    }

    /// Notes one connection that reached admission control, and whether it was admitted. Returns what XDP
    /// should drop when an interval ended and that changed.
    pub fn record(&mut self, admitted: bool, now: Instant) -> Option<SynShed> {
        let changed = self.tick(now);
        self.arrived += 1;
        self.admitted += u64::from(admitted);
        changed
    }

    /// Closes the intervals that ended by `now`. Returns what XDP should drop if that changed.
    pub fn tick(&mut self, now: Instant) -> Option<SynShed> {
        let elapsed = now.saturating_duration_since(self.interval_start);
        if elapsed < self.interval {
            return None;
        }
        let before = self.shed();
        let (arrived, admitted) = (self.arrived as f64, self.admitted as f64);
        let floor = 1.0 - self.max_shed;
        let engaged = self.keep < 1.0 || self.arrived.saturating_sub(self.admitted) >= MIN_SHED;
        if engaged && arrived > admitted * (1.0 + HEADROOM) {
            // Overloaded: keep only what userspace can take, plus the headroom.
            let ratio = admitted.max(1.0) * (1.0 + HEADROOM) / arrived;
            self.keep = (self.keep * ratio).clamp(floor, 1.0);
        } else if arrived - admitted <= arrived * RELAX_BELOW {
            self.keep = (self.keep * 2.0).min(1.0);
        } else {
            self.keep = (self.keep * 1.1).min(1.0);
        }
        // Intervals without a single arrival (everything dropped, or idle) each count as a relaxed one.
        let idle = (elapsed.as_nanos() / self.interval.as_nanos().max(1)).saturating_sub(1);
        for _ in 0..idle.min(32) {
            self.keep = (self.keep * 2.0).min(1.0);
        }
        if self.keep > 0.999 {
            self.keep = 1.0;
        }
        self.keep = self.keep.max(floor);
        self.arrived = 0;
        self.admitted = 0;
        self.interval_start = now;
        if self.ppm() != 0 {
            self.last_shed = Some(now);
        } else if self
            .last_shed
            .is_some_and(|t| now.saturating_duration_since(t) >= self.retry_hold)
        {
            self.last_shed = None;
        }
        let after = self.shed();
        (after != before).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS100: Duration = Duration::from_millis(100);
    const HOLD: Duration = Duration::from_secs(4);

    /// Feeds one interval of `arrived` connections of which `admitted` were admitted, then closes it.
    fn interval(l: &mut SynShedLoop, now: &mut Instant, arrived: u64, admitted: u64) -> u32 {
        for i in 0..arrived {
            l.record(i < admitted, *now);
        }
        *now += MS100;
        l.tick(*now);
        l.ppm()
    }

    #[test]
    fn a_storm_is_cut_to_what_userspace_admits_and_released_after() {
        let mut now = Instant::now();
        let mut l = SynShedLoop::new(MS100, 0.99, HOLD, now);
        // Normal: everything admitted, nothing dropped.
        assert_eq!(interval(&mut l, &mut now, 50, 50), 0);
        // 10x: 1000 arrive, 100 admitted -> keep 12.5%.
        assert_eq!(interval(&mut l, &mut now, 1000, 100), 875_000);
        // Now about 125 arrive (10x * 12.5%), 100 admitted: in the band, probe up a little.
        let ppm = interval(&mut l, &mut now, 125, 100);
        assert!(ppm > 850_000 && ppm < 875_000, "{ppm}");
        // The storm ends: 5 arrive, all admitted -> keep doubles each interval: 0.1375, 0.275, 0.55, 1.
        let mut released = 0;
        for i in 1..=4 {
            if interval(&mut l, &mut now, 5, 5) == 0 {
                released = i;
                break;
            }
        }
        assert_eq!(released, 3);
    }

    #[test]
    fn a_lower_maximum_set_during_a_storm_bounds_the_fraction_at_once() {
        let mut now = Instant::now();
        let mut l = SynShedLoop::new(MS100, 0.99, HOLD, now);
        assert_eq!(interval(&mut l, &mut now, 1000, 100), 875_000);
        l.set_params(MS100, 0.5, HOLD);
        assert_eq!(l.ppm(), 500_000, "the new maximum, not the storm's 87.5%");
        assert!(interval(&mut l, &mut now, 1000, 100) <= 500_000);
    }

    #[test]
    fn a_few_resets_at_half_load_do_not_start_shedding() {
        let mut now = Instant::now();
        let mut l = SynShedLoop::new(MS100, 0.95, HOLD, now);
        // 12 arrive, 5 reset by the cost budget: above the headroom, below MIN_SHED.
        assert_eq!(interval(&mut l, &mut now, 12, 5), 0);
        assert_eq!(l.shed().retry_ppm, 0, "no flow was shed, nothing to hold");
        // As many resets as MIN_SHED start it.
        let ppm = interval(&mut l, &mut now, 2 * MIN_SHED, MIN_SHED);
        assert!(ppm > 0, "{ppm}");
    }

    #[test]
    fn never_drops_more_than_the_maximum() {
        let mut now = Instant::now();
        let mut l = SynShedLoop::new(MS100, 0.5, HOLD, now);
        assert_eq!(interval(&mut l, &mut now, 10_000, 1), 500_000);
        assert_eq!(interval(&mut l, &mut now, 10_000, 1), 500_000);
        let mut off = SynShedLoop::new(MS100, 0.0, HOLD, now);
        assert_eq!(interval(&mut off, &mut now, 10_000, 1), 0);
    }

    #[test]
    fn an_idle_gap_releases_everything() {
        let mut now = Instant::now();
        let mut l = SynShedLoop::new(MS100, 0.99, HOLD, now);
        interval(&mut l, &mut now, 10_000, 100);
        assert!(l.ppm() > 980_000);
        now += Duration::from_secs(2);
        assert_eq!(
            l.tick(now),
            Some(SynShed {
                ppm: 0,
                retry_ppm: 1_000_000
            })
        );
    }

    #[test]
    fn retransmissions_stay_shed_for_the_hold_after_the_storm() {
        let mut now = Instant::now();
        let mut l = SynShedLoop::new(MS100, 0.95, HOLD, now);
        assert_eq!(l.shed().retry_ppm, 0, "nothing shed yet");
        interval(&mut l, &mut now, 1000, 100);
        assert_eq!(l.shed().retry_ppm, 1_000_000);
        // New SYNs are let in again within a few intervals; retransmissions only after the hold.
        let mut released_at = None;
        for i in 1..=60 {
            interval(&mut l, &mut now, 5, 5);
            if l.ppm() == 0 && released_at.is_none() {
                released_at = Some(i);
            }
            if l.shed().retry_ppm == 0 {
                let released = released_at.expect("new SYNs first");
                assert!(
                    released <= 5,
                    "new SYNs back after {released} quiet intervals"
                );
                assert!(
                    i >= 40,
                    "retransmissions back after {i} intervals, hold is 4 s"
                );
                return;
            }
        }
        panic!("retry shedding never ended: {:?}", l.shed());
    }

    #[test]
    fn within_an_interval_nothing_changes() {
        let now = Instant::now();
        let mut l = SynShedLoop::new(MS100, 0.99, HOLD, now);
        for _ in 0..1000 {
            assert!(l.record(false, now + Duration::from_millis(50)).is_none());
        }
        assert_eq!(l.ppm(), 0);
    }
}
