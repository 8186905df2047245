//! The fingerprints of the ClientHellos that reached the daemon lately, most frequent first: what an operator looks
//! at to pick the fingerprint to block (`GET /fingerprints` on the admin endpoint, then `portcullis xdp
//! block-fingerprint add HEX`).
//!
//! Counted per [`WINDOW`]: the report gives the last complete window and the current one so far, so a flood shows
//! within seconds and one that stopped leaves the report after two windows. Each window keeps at most [`TRACKED`]
//! fingerprints with the space-saving algorithm (Metwally et al., 2005): a new fingerprint takes the place of the
//! least counted one and inherits its count as its error bound, so every fingerprint seen more than
//! 1/[`TRACKED`] of a window's ClientHellos is in the report, with a count that overstates it by at most its
//! error. Memory is fixed whatever a flood sends: a botnet that randomises its ClientHellos costs an eviction per
//! handshake, not an entry.
//!
//! The ClientHellos XDP dropped never reach the daemon and are not here (`portcullis xdp stats` counts them).
//! Workers record into one of [`SHARDS`] shards picked by thread, each behind its own mutex, so recording is an
//! uncontended lock and at most [`TRACKED`] comparisons; the report merges the shards.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_abi::client_hello::Fingerprint;

/// How long one counting window lasts.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Fingerprints one window of one shard keeps.
pub const TRACKED: usize = 64;
/// Shards recorded into, picked by thread.
const SHARDS: usize = 16;

/// One tracked fingerprint in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    fingerprint: Fingerprint,
    /// ClientHellos counted for it (including `error` inherited ones).
    count: u64,
    /// At most this many of `count` were another fingerprint's (the evicted entry's count it took over).
    error: u64,
}

/// The space-saving summary of one window.
#[derive(Clone, Debug, Default)]
struct TopK {
    entries: Vec<Entry>,
    /// ClientHellos recorded in the window.
    total: u64,
}

impl TopK {
    /// Counts one ClientHello of `fingerprint`; fingerprints are told apart by their unordered variant (the
    /// ordered one, kept from the first seen, varies per connection for clients that shuffle their extensions).
    fn record(&mut self, fingerprint: Fingerprint) {
        self.total += 1;
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.fingerprint.unordered == fingerprint.unordered)
        {
            entry.count += 1;
            return;
        }
        if self.entries.len() < TRACKED {
            self.entries.push(Entry {
                fingerprint,
                count: 1,
                error: 0,
            });
            return;
        }
        if let Some(least) = self.entries.iter_mut().min_by_key(|e| e.count) {
            *least = Entry {
                fingerprint,
                count: least.count + 1,
                error: least.count,
            };
        }
    }
}

/// One shard: the window being counted and the one before it.
#[derive(Debug)]
struct Shard {
    current: TopK,
    previous: TopK,
    /// When `current` started.
    started: Instant,
}

impl Shard {
    /// Moves to the window `now` falls in: the current one becomes the previous, or both are dropped when more
    /// than a window passed without a ClientHello.
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < WINDOW {
            return;
        }
        self.previous = if elapsed < 2 * WINDOW {
            std::mem::take(&mut self.current)
        } else {
            self.current = TopK::default();
            TopK::default()
        };
        // Windows stay aligned to the first start, so every shard's windows are the same ones.
        let windows = elapsed.as_nanos() / WINDOW.as_nanos();
        let advance = WINDOW.saturating_mul(u32::try_from(windows).unwrap_or(u32::MAX));
        self.started = self.started.checked_add(advance).unwrap_or(now);
    }
}

/// One line of the report: a fingerprint and its counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The fingerprint (its ordered variant as first seen in the window).
    pub fingerprint: Fingerprint,
    /// ClientHellos in the last complete window (an upper bound: see the module docs).
    pub previous: u64,
    /// ClientHellos in the current window so far (likewise).
    pub current: u64,
    /// How much of `previous + current` may belong to other fingerprints.
    pub error: u64,
}

/// The recent fingerprints of the daemon's ClientHellos; see the module docs.
#[derive(Debug)]
pub struct SeenFingerprints {
    shards: Vec<Mutex<Shard>>,
}

impl Default for SeenFingerprints {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl SeenFingerprints {
    /// Empty, with windows starting at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: TopK::default(),
                        previous: TopK::default(),
                        started: start,
                    })
                })
                .collect(),
        }
    }

    /// Counts one ClientHello of `fingerprint` at `now`.
    pub fn record(&self, fingerprint: Fingerprint, now: Instant) {
        let Some(shard) = self.shards.get(shard_of_this_thread()) else {
            return;
        };
        // A poisoned shard (a panic while it was held: it cannot, nothing in it panics) still counts.
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        shard.roll(now);
        shard.current.record(fingerprint);
    }

    /// The fingerprints seen in the last complete window and the current one, most counted first, and the
    /// ClientHellos counted in all (fingerprinted or not, tracked or not) in each.
    pub fn report(&self, now: Instant) -> (Vec<Seen>, u64, u64) {
        let mut seen: Vec<Seen> = Vec::new();
        let (mut previous_total, mut current_total) = (0, 0);
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.roll(now);
            previous_total += shard.previous.total;
            current_total += shard.current.total;
            for (entries, in_previous) in [
                (&shard.previous.entries, true),
                (&shard.current.entries, false),
            ] {
                for entry in entries {
                    let index = match seen
                        .iter()
                        .position(|s| s.fingerprint.unordered == entry.fingerprint.unordered)
                    {
                        Some(index) => index,
                        None => {
                            seen.push(Seen {
                                fingerprint: entry.fingerprint,
                                previous: 0,
                                current: 0,
                                error: 0,
                            });
                            seen.len() - 1
                        }
                    };
                    let line = &mut seen[index];
                    if in_previous {
                        line.previous += entry.count;
                    } else {
                        line.current += entry.count;
                    }
                    line.error += entry.error;
                }
            }
        }
        seen.sort_by_key(|s| std::cmp::Reverse(s.previous + s.current));
        (seen, previous_total, current_total)
    }
}

/// The report as the admin endpoint serves it (`GET /fingerprints`): a header, then one line per fingerprint.
pub fn render(seen: &SeenFingerprints, now: Instant) -> String {
    use std::fmt::Write as _;
    let (lines, previous, current) = seen.report(now);
    let window = WINDOW.as_secs();
    let mut out = format!(
        "# Fingerprints of the ClientHellos that reached the daemon (those XDP dropped did not), most frequent \
         first: ClientHellos in the last complete {window} s window and in the current one so far, then the \
         unordered and ordered fingerprints. Block one with `portcullis xdp block-fingerprint add HEX`.\n\
         # ClientHellos counted: {previous} last window, {current} this window; a count marked ± may include up \
         to that many of other fingerprints (only the {TRACKED} most frequent per window and shard are kept).\n\
         {:>10} {:>10}  {:<16}  {}\n",
        "last", "now", "unordered", "ordered"
    );
    for line in lines {
        let hex = |v| {
            String::from_utf8_lossy(&portcullis_abi::client_hello::fingerprint_hex(v)).into_owned()
        };
        let _ = write!(
            out,
            "{:>10} {:>10}  {}  {}",
            line.previous,
            line.current,
            hex(line.fingerprint.unordered),
            hex(line.fingerprint.ordered)
        );
        if line.error != 0 {
            let _ = write!(out, "  ±{}", line.error);
        }
        out.push('\n');
    }
    out
}

/// This thread's shard: threads take shards in turn as they first record.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(n: u64) -> Fingerprint {
        Fingerprint {
            ordered: 0x0200_0000_0000_0000 | n << 1,
            unordered: 0x0200_0000_0000_0000 | n,
        }
    }

    #[test]
    fn a_flood_stays_on_top_of_randomised_ones_and_memory_stays_bounded() {
        let start = Instant::now();
        let seen = SeenFingerprints::new(start);
        // One fingerprint in four is the flood's; the others are all different (a botnet randomising its
        // ClientHellos), ten times more distinct fingerprints than a window tracks.
        for n in 0..(40 * TRACKED as u64) {
            let fp = if n % 4 == 0 {
                fingerprint(7)
            } else {
                fingerprint(1000 + n)
            };
            seen.record(fp, start);
        }
        let (report, previous, current) = seen.report(start);
        assert_eq!((previous, current), (0, 40 * TRACKED as u64));
        assert_eq!(report[0].fingerprint, fingerprint(7));
        // Space-saving: the count is an upper bound, the true count (10 * TRACKED) is at least count - error.
        let top = report[0];
        assert!(
            top.current >= 10 * TRACKED as u64 && top.current - top.error <= 10 * TRACKED as u64
        );
        assert!(
            report.len() <= TRACKED,
            "one thread, one shard: {}",
            report.len()
        );
    }

    #[test]
    fn windows_roll_and_fade() {
        let start = Instant::now();
        let seen = SeenFingerprints::new(start);
        seen.record(fingerprint(1), start);
        seen.record(fingerprint(1), start + WINDOW / 2);
        let (report, ..) = seen.report(start + WINDOW + WINDOW / 2);
        assert_eq!(
            (report[0].previous, report[0].current),
            (2, 0),
            "the window before is reported as previous"
        );
        seen.record(fingerprint(2), start + WINDOW + WINDOW / 2);
        let (report, previous, current) = seen.report(start + 2 * WINDOW + WINDOW / 2);
        assert_eq!((previous, current), (1, 0));
        assert_eq!(
            report.len(),
            1,
            "two windows later the first fingerprint is gone: {report:?}"
        );
        assert_eq!(report[0].fingerprint, fingerprint(2));
        let (report, ..) = seen.report(start + 10 * WINDOW);
        assert!(report.is_empty(), "an idle stretch clears both windows");
    }
}
