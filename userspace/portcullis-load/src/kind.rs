//! Handshake kinds and a weighted mix of them.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::rng::Rng;

/// What a connection tries to do. The kind fixes the TLS version and whether resumption is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// TLS 1.3, no resumption offered: always a full handshake.
    Full13,
    /// TLS 1.2, no resumption offered.
    Full12,
    /// TLS 1.3, offers a ticket (PSK) from the shared store when there is one.
    Resume13,
    /// TLS 1.2, offers an RFC 5077 session ticket (and its session ID) when the store has a session.
    Resume12Ticket,
    /// TLS 1.2, offers a session ID only (server-side session cache), never a ticket.
    Resume12Id,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 5] = [
        Kind::Full13,
        Kind::Full12,
        Kind::Resume13,
        Kind::Resume12Ticket,
        Kind::Resume12Id,
    ];

    /// The name used on the command line, in JSON and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Full13 => "full13",
            Kind::Full12 => "full12",
            Kind::Resume13 => "resume13",
            Kind::Resume12Ticket => "resume12-ticket",
            Kind::Resume12Id => "resume12-id",
        }
    }

    /// Whether this kind offers resumption when the store has something to offer.
    pub fn wants_resumption(self) -> bool {
        !matches!(self, Kind::Full13 | Kind::Full12)
    }

    /// Whether this kind speaks TLS 1.3 (otherwise TLS 1.2).
    pub fn is_tls13(self) -> bool {
        matches!(self, Kind::Full13 | Kind::Resume13)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A kind name that is not one of [`Kind::ALL`].
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown handshake kind {0:?}: expected one of full13, full12, resume13, resume12-ticket, resume12-id"
)]
pub struct UnknownKind(String);

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// A weighted choice of kinds, e.g. `full13:1,resume13:3` (a bare name has weight 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    entries: Vec<(Kind, u32)>,
    total: u32,
}

/// A `--mix` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    /// A name is not a kind.
    #[error(transparent)]
    Kind(#[from] UnknownKind),
    /// A weight is not a whole number.
    #[error("bad weight {0:?} in the mix: expected a whole number such as full13:3")]
    Weight(String),
    /// All weights are zero or the mix is empty.
    #[error("the mix has no kind with a weight above zero")]
    Empty,
}

impl Mix {
    /// A mix of one kind.
    pub fn single(kind: Kind) -> Self {
        Self {
            entries: vec![(kind, 1)],
            total: 1,
        }
    }

    /// The kinds that can be drawn, in the order given.
    pub fn kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.entries.iter().map(|(k, _)| *k)
    }

    /// Draws one kind with probability proportional to its weight.
    pub fn pick(&self, rng: &mut Rng) -> Kind {
        let mut x = rng.below(u64::from(self.total));
        for (kind, weight) in &self.entries {
            if x < u64::from(*weight) {
                return *kind;
            }
            x -= u64::from(*weight);
        }
        // Unreachable while total is the sum of the weights; the first kind is a safe answer anyway.
        self.entries.first().map_or(Kind::Full13, |(k, _)| *k)
    }
}

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut entries = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once(':') {
                Some((n, w)) => (n, w.parse().map_err(|_| MixError::Weight(w.to_owned()))?),
                None => (part, 1),
            };
            if weight > 0 {
                entries.push((name.parse()?, weight));
            }
        }
        let total = entries.iter().map(|(_, w)| *w).sum();
        if total == 0 {
            return Err(MixError::Empty);
        }
        Ok(Self { entries, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_weights_and_picks_every_kind() {
        let mix: Mix = "full13:1, resume13:3".parse().expect("valid mix");
        let mut rng = Rng::new(7);
        let resumed = (0..4000)
            .filter(|_| mix.pick(&mut rng) == Kind::Resume13)
            .count();
        assert!((2700..3300).contains(&resumed), "{resumed}");
        assert!("full13:x".parse::<Mix>().is_err());
        assert!("full14".parse::<Mix>().is_err());
        assert!("full13:0".parse::<Mix>().is_err());
    }
}
