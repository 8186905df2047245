//! Where one handshake's time goes, stage by stage (`portcullis_handshake_stage_seconds{stage, mode}`).
//!
//! ```text
//! ClientHello reaches the socket -> worker reads it -> whole ClientHello -> crypto starts -> crypto done
//!                          socket                read                   queue           crypto
//! -> worker resumes the connection -> server flight written -> client's Finished processed
//!                 wake                          flight                   client
//! ```
//!
//! `socket` is measured from the kernel's receive timestamp of the first ClientHello bytes (`SO_TIMESTAMPNS`,
//! set on the listening sockets and inherited by accepted ones): the accept queue and the worker's own delay,
//! which no userspace clock sees. `queue` holds admission control's decision and the engine ring's wait;
//! `wake` is how long a finished job waits for its worker to run again (the worker's core is busy with other
//! connections); `client` is the client's round trip and its work on our flight. Only completed handshakes
//! are observed, so every stage has the same population.

use std::time::{Duration, Instant, SystemTime};

/// The stages, in order (label `stage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// ClientHello received by the kernel -> first read by the worker.
    Socket,
    /// First read -> whole ClientHello.
    Read,
    /// Whole ClientHello -> the expensive step starts (admission, engine ring).
    Queue,
    /// The expensive step (certificate, key exchange, signature).
    Crypto,
    /// Expensive step done -> the worker resumes the connection.
    Wake,
    /// Resumed -> the server's flight is written to the socket.
    Flight,
    /// Flight written -> the handshake is complete (the client's answer read and processed).
    Client,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 7] = [
        Self::Socket,
        Self::Read,
        Self::Queue,
        Self::Crypto,
        Self::Wake,
        Self::Flight,
        Self::Client,
    ];

    /// Position in [`Stage::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Read => "read",
            Self::Queue => "queue",
            Self::Crypto => "crypto",
            Self::Wake => "wake",
            Self::Flight => "flight",
            Self::Client => "client",
        }
    }
}

/// The instants one handshake passed, filled in as it goes.
#[derive(Debug, Default)]
pub struct StageClock {
    /// Kernel receive time of the first ClientHello bytes, and when the worker read them.
    arrival: Option<(SystemTime, SystemTime)>,
    first_read: Option<Instant>,
    hello: Option<Instant>,
    crypto: Option<(Instant, Instant)>,
    resumed: Option<Instant>,
    flight: Option<Instant>,
}

impl StageClock {
    /// The worker read the first ClientHello bytes; `stamp` is when the kernel received them, if known.
    pub fn first_read(&mut self, stamp: Option<SystemTime>) {
        if self.first_read.is_some() {
            return;
        }
        self.first_read = Some(Instant::now());
        self.arrival = stamp.map(|s| (s, SystemTime::now()));
    }

    /// The whole ClientHello is in.
    pub fn hello(&mut self) {
        self.hello = Some(Instant::now());
    }

    /// The expensive step ran from `started` to `finished`; the worker runs again now.
    pub fn crypto(&mut self, started: Instant, finished: Instant) {
        self.crypto = Some((started, finished));
        self.resumed = Some(Instant::now());
    }

    /// The first server flight is written.
    pub fn flight(&mut self) {
        if self.flight.is_none() {
            self.flight = Some(Instant::now());
        }
    }

    /// Each stage's duration, for a handshake completed at `done`. A stage whose ends are unknown is left out
    /// (`socket` without a kernel timestamp); clock steps count as zero. An iterator, not a collection: this
    /// runs once per handshake and allocates nothing.
    pub fn durations(&self, done: Instant) -> impl Iterator<Item = (Stage, Duration)> {
        let span = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        let (started, finished) = match self.crypto {
            Some((s, f)) => (Some(s), Some(f)),
            None => (None, None),
        };
        let socket = self
            .arrival
            .map(|(kernel, read)| read.duration_since(kernel).unwrap_or_default());
        [
            (Stage::Socket, socket),
            (Stage::Read, span(self.first_read, self.hello)),
            (Stage::Queue, span(self.hello, started)),
            (Stage::Crypto, span(started, finished)),
            (Stage::Wake, span(finished, self.resumed)),
            (Stage::Flight, span(self.resumed, self.flight)),
            (Stage::Client, span(self.flight, Some(done))),
        ]
        .into_iter()
        .filter_map(|(stage, d)| Some((stage, d?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_marks_in_order() {
        let mut clock = StageClock::default();
        let kernel = SystemTime::now() - Duration::from_millis(3);
        clock.first_read(Some(kernel));
        clock.first_read(None); // a later segment: the first read stands
        clock.hello();
        let started = Instant::now();
        let finished = started + Duration::from_millis(2);
        clock.crypto(started, finished);
        clock.flight();
        let done = Instant::now() + Duration::from_millis(5);
        let d: Vec<_> = clock.durations(done).collect();
        let names: Vec<_> = d.iter().map(|(s, _)| s.name()).collect();
        assert_eq!(
            names,
            [
                "socket", "read", "queue", "crypto", "wake", "flight", "client"
            ]
        );
        let get = |stage| d.iter().find(|(s, _)| *s == stage).map(|(_, d)| *d);
        assert!(get(Stage::Socket) >= Some(Duration::from_millis(3)));
        assert_eq!(get(Stage::Crypto), Some(Duration::from_millis(2)));
        assert!(get(Stage::Client) >= Some(Duration::from_millis(4)));
        // The worker resumed before the crypto thread's `finished` in this synthetic clock: counted as zero.
        assert_eq!(get(Stage::Wake), Some(Duration::ZERO));
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(stage.index(), i);
        }
    }

    #[test]
    fn without_a_kernel_timestamp_socket_is_left_out() {
        let mut clock = StageClock::default();
        clock.first_read(None);
        clock.hello();
        let d: Vec<_> = clock.durations(Instant::now()).collect();
        assert!(d.iter().all(|(s, _)| *s != Stage::Socket));
        assert!(d.iter().any(|(s, _)| *s == Stage::Read));
        // No crypto marks: queue, crypto, wake, flight and client are unknown.
        assert_eq!(d.len(), 1);
    }
}
