//! The load profile: named phases, each with a duration, a connection rate and an arrival process. From flags
//! (`--phase storm:10:500:poisson`) or a TOML file:
//!
//! ```toml
//! [[phase]]
//! name = "steady"
//! duration_s = 10.0   # seconds
//! rate = 200.0        # new connections per second
//! [[phase]]
//! name = "storm"
//! duration_s = 5.0
//! rate = 1000.0
//! arrival = "poisson" # or "constant" (the default)
//! ```

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How intended start times are spaced within a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Evenly spaced: one every 1/rate seconds.
    #[default]
    Constant,
    /// A Poisson process: exponential gaps with mean 1/rate (bursts happen, as with real clients).
    Poisson,
}

/// One phase of the profile.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Shown in the table and shaded on the chart.
    pub name: String,
    /// Length in seconds; must be above zero.
    pub duration_s: f64,
    /// New connections per second (0 is allowed: an idle phase).
    pub rate: f64,
    /// Arrival process; default constant.
    #[serde(default)]
    pub arrival: Arrival,
}

/// A phase list that cannot be used; the message names the phase and the field.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// A `--phase` value is not `NAME:SECONDS:RATE[:constant|poisson]`.
    #[error(
        "bad --phase {0:?}: expected NAME:SECONDS:RATE[:constant|poisson], e.g. storm:10:500:poisson"
    )]
    Syntax(String),
    /// The TOML file cannot be read.
    #[error("cannot read phase file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file does not parse into phases.
    #[error("phase file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: toml::de::Error,
    },
    /// A field is out of range.
    #[error("phase {name:?}: {field} must be {rule} (got {value})")]
    Invalid {
        /// The phase.
        name: String,
        /// The field.
        field: &'static str,
        /// What it must be.
        rule: &'static str,
        /// What it was.
        value: f64,
    },
    /// No phases at all.
    #[error("no phases: give --rate and --duration, --phase, or --phases FILE")]
    Empty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseFile {
    phase: Vec<Phase>,
}

/// Reads phases from a TOML file with `[[phase]]` tables and validates them.
pub fn from_file(path: &Path) -> Result<Vec<Phase>, PhaseError> {
    let text = std::fs::read_to_string(path).map_err(|source| PhaseError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file: PhaseFile = toml::from_str(&text).map_err(|source| PhaseError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    validate(&file.phase)?;
    Ok(file.phase)
}

/// Checks every phase: duration above zero and finite, rate zero or above and finite; at least one phase.
pub fn validate(phases: &[Phase]) -> Result<(), PhaseError> {
    if phases.is_empty() {
        return Err(PhaseError::Empty);
    }
    for p in phases {
        if !(p.duration_s.is_finite() && p.duration_s > 0.0) {
            return Err(invalid(p, "duration_s", "above zero", p.duration_s));
        }
        if !(p.rate.is_finite() && p.rate >= 0.0) {
            return Err(invalid(p, "rate", "zero or above", p.rate));
        }
    }
    Ok(())
}

fn invalid(p: &Phase, field: &'static str, rule: &'static str, value: f64) -> PhaseError {
    PhaseError::Invalid {
        name: p.name.clone(),
        field,
        rule,
        value,
    }
}

/// The total length of `phases` in seconds.
pub fn total_seconds(phases: &[Phase]) -> f64 {
    phases.iter().map(|p| p.duration_s).sum()
}

impl FromStr for Phase {
    type Err = PhaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PhaseError::Syntax(s.to_owned());
        let parts: Vec<&str> = s.split(':').collect();
        let (name, secs, rate, arrival) = match parts.as_slice() {
            [n, d, r] => (*n, *d, *r, Arrival::Constant),
            [n, d, r, "constant"] => (*n, *d, *r, Arrival::Constant),
            [n, d, r, "poisson"] => (*n, *d, *r, Arrival::Poisson),
            _ => return Err(bad()),
        };
        let phase = Phase {
            name: name.to_owned(),
            duration_s: secs.parse().map_err(|_| bad())?,
            rate: rate.parse().map_err(|_| bad())?,
            arrival,
        };
        validate(std::slice::from_ref(&phase))?;
        Ok(phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_and_file_forms_agree() {
        let flag: Phase = "storm:5:1000:poisson".parse().expect("valid");
        let file: PhaseFile = toml::from_str(
            "[[phase]]\nname = \"storm\"\nduration_s = 5.0\nrate = 1000.0\narrival = \"poisson\"\n",
        )
        .expect("valid toml");
        assert_eq!(file.phase, vec![flag]);
        assert!("storm:0:10".parse::<Phase>().is_err());
        assert!("storm:5:-1".parse::<Phase>().is_err());
        assert!("storm:5".parse::<Phase>().is_err());
        assert!(
            toml::from_str::<PhaseFile>("[[phase]]\nname=\"a\"\nduration_s=1.0\nrate=1.0\nrat=2\n")
                .is_err()
        );
    }
}
