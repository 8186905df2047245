//! The guard's knobs an operator may turn on a live host (`portcullis xdp set KEY=VALUE ...`): enforcement and the
//! per-source budgets, written into the pinned config map the program reads on every packet, so a change takes
//! effect on the next packet, with no reload and no restart. The kill switch of an incident is one of them:
//! `enforce=false` makes every drop verdict a count (a dry run) when the guard misjudges real traffic.
//!
//! Keys and values are those of the config file's `[xdp]` section, parsed and checked by the same code
//! (`super::config::XdpSection`, `deny_unknown_fields`, `validate`), so the CLI accepts exactly what the file does.
//! What the daemon owns is not settable here: the listener ports (learned at bind), the SYN shed fractions
//! (admission control's), the budget clock; nor is what takes a restart (interfaces, mode, pin_dir).
//!
//! A change lasts until the daemon restarts, which writes the config file's values again: the CLI says so.

use portcullis_abi::xdp_config::XdpConfig;

use super::config::{KNOBS as KEYS, XdpSection};

/// `[xdp]` keys that take a restart.
const RESTART_KEYS: [&str; 3] = ["interfaces", "mode", "pin_dir"];

/// Why an assignment was refused; the operator's to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum KnobError {
    /// Not `KEY=VALUE`.
    #[error("`{0}` is not KEY=VALUE (e.g. enforce=false, syn_rate=200)")]
    NotAnAssignment(String),
    /// A key of the config file that only a restart applies.
    #[error("xdp.{0} takes a restart: change it in the config file and restart the daemon")]
    NeedsRestart(String),
    /// Not a key of `[xdp]` that may be set.
    #[error("`{key}` is not a knob of the XDP guard; the knobs are: {}", KEYS.join(", "))]
    UnknownKey {
        /// The key given.
        key: String,
    },
    /// The value does not parse as the key's type, or is out of its range.
    #[error("xdp.{key} = {value}: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One knob and its new value, parsed and checked: the `[xdp]` section holding only that key.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    key: &'static str,
    parsed: XdpSection,
}

impl Assignment {
    /// The key.
    pub(crate) fn key(&self) -> &'static str {
        self.key
    }

    /// Writes the value into `config` (the program's view).
    pub(crate) fn apply(&self, config: &mut XdpConfig) {
        self.parsed.write_knob(self.key, config);
    }
}

/// Parses `KEY=VALUE` (a TOML value: `false`, `200`, `0.5`).
///
/// # Errors
/// [`KnobError`] naming what is wrong: not an assignment, a key that takes a restart or is not a knob, a value
/// of the wrong type or out of range (the config file's own checks).
pub(crate) fn parse(text: &str) -> Result<Assignment, KnobError> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| KnobError::NotAnAssignment(text.to_owned()))?;
    let (key, value) = (key.trim(), value.trim());
    if RESTART_KEYS.contains(&key) {
        return Err(KnobError::NeedsRestart(key.to_owned()));
    }
    let Some(key) = KEYS.iter().copied().find(|k| *k == key) else {
        return Err(KnobError::UnknownKey {
            key: key.to_owned(),
        });
    };
    let bad = |reason: String| KnobError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    };
    let parsed: XdpSection = toml::from_str(&format!("{key} = {value}"))
        .map_err(|_| bad(format!("expected {}", expected(key))))?;
    // The other fields are the defaults, which pass: an error is about this key.
    parsed
        .validate()
        .map_err(|(_, reason)| bad(reason.to_owned()))?;
    Ok(Assignment { key, parsed })
}

/// What a value of `key` looks like, for an error.
fn expected(key: &str) -> &'static str {
    match key {
        "enforce" => "true or false",
        "hello_resume_cost" => "a number greater than 0 and at most 1, e.g. 0.25",
        "source_prefix_v4" => "a whole number of bits, 0 to 32",
        "source_prefix_v6" => "a whole number of bits, 0 to 128",
        "known_ttl" => "a whole number of seconds, 1 to 86400",
        "malformed_penalty_ms" => "a whole number of milliseconds, 0 to 600000",
        _ => "a whole number, 0 to 4294967295",
    }
}

/// The value of `key` in `config`, as the config file spells it (for "old -> new" lines).
pub(crate) fn show(key: &str, config: &XdpConfig) -> String {
    match key {
        "enforce" => (config.enforce != 0).to_string(),
        "syn_rate" => config.syn_rate.to_string(),
        "syn_burst" => config.syn_burst.to_string(),
        "flood_syn_rate" => config.flood_syn_rate.to_string(),
        "flood_syn_burst" => config.flood_syn_burst.to_string(),
        "known_ttl" => config.known_ttl_s.to_string(),
        "malformed_penalty_ms" => config.malformed_penalty_ms.to_string(),
        "hello_rate" => config.hello_rate.to_string(),
        "hello_burst" => config.hello_burst.to_string(),
        "hello_resume_cost" => format!("{}", f64::from(config.hello_resume_cost_milli) / 1000.0),
        "source_prefix_v4" => config.v4_prefix_len.to_string(),
        "source_prefix_v6" => config.v6_prefix_len.to_string(),
        _ => String::new(),
    }
}

/// Whether `config` holds every knob `wanted` holds (after a write, to catch one lost to the daemon's own
/// read-modify-write of the same map value: admission control's SYN shed fractions).
pub(crate) fn holds(config: &XdpConfig, wanted: &XdpConfig) -> bool {
    KEYS.iter()
        .all(|key| show(key, config) == show(key, wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(text: &str) -> XdpConfig {
        let mut config = XdpConfig::EMPTY;
        parse(text).expect(text).apply(&mut config);
        config
    }

    #[test]
    fn every_knob_reaches_its_field() {
        assert_eq!(applied("enforce=false").enforce, 0);
        assert_eq!(applied("enforce = true").enforce, 1);
        assert_eq!(applied("syn_rate=200").syn_rate, 200);
        assert_eq!(applied("syn_burst=7").syn_burst, 7);
        assert_eq!(applied("hello_rate=0").hello_rate, 0);
        assert_eq!(applied("hello_burst=3").hello_burst, 3);
        assert_eq!(
            applied("hello_resume_cost=0.5").hello_resume_cost_milli,
            500
        );
        assert_eq!(applied("source_prefix_v4=24").v4_prefix_len, 24);
        assert_eq!(applied("source_prefix_v6=48").v6_prefix_len, 48);
        for key in KEYS {
            let config = applied(&format!(
                "{key}={}",
                if key == "enforce" { "false" } else { "1" }
            ));
            assert_ne!(
                show(key, &config),
                show(key, &XdpConfig::EMPTY),
                "{key} did not change its field"
            );
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        assert_eq!(
            parse("enforce").expect_err("no ="),
            KnobError::NotAnAssignment("enforce".into())
        );
        assert_eq!(
            parse("mode=\"native\"").expect_err("a restart key"),
            KnobError::NeedsRestart("mode".into())
        );
        let typo = parse("syn_rat=5").expect_err("a typo");
        assert!(typo.to_string().contains("syn_rate"), "{typo}");
        for (text, needle) in [
            ("source_prefix_v4=33", "0 to 32"),
            ("source_prefix_v6=129", "0 to 128"),
            ("syn_burst=0", "at least 1"),
            ("hello_resume_cost=0", "greater than 0"),
            ("hello_resume_cost=1.5", "at most 1"),
            ("enforce=yes", "xdp.enforce = yes: expected true or false"),
            ("syn_rate=-1", "xdp.syn_rate = -1: expected a whole number"),
            ("source_prefix_v6=x", "0 to 128"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn holds_compares_the_knobs_only() {
        let mut wanted = XdpConfig::EMPTY;
        parse("enforce=false").expect("parse").apply(&mut wanted);
        let mut read = wanted;
        read.syn_shed_ppm = 500_000;
        assert!(holds(&read, &wanted), "the shed fraction is not a knob");
        read.enforce = 1;
        assert!(!holds(&read, &wanted));
    }
}
