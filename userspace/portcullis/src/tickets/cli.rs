//! `portcullis keys init|rotate|prune|list --dir DIR`: managing a ticket key directory (format in
//! `deploy/ticket-keys.md`). Run it on one machine and distribute the directory (Kubernetes Secret, Vault
//! agent, config management); every daemon watching a copy picks changes up within a second.
//!
//! Exit codes: 0 done; 1 the directory could not be read or written; 2 bad flags or a bad key file.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use crate::config::{Config, TlsConfig};
use crate::tickets::key::{KeyKind, TicketKey};
use crate::tickets::keyfile;
use crate::tickets::keyset::{KeySet, state_of};

/// `portcullis keys ...`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create DIR (mode 0700) with one key that encrypts from now.
    Init(Schedule),
    /// Stage the next key: it starts encrypting after the lead time, so it reaches every node first.
    Rotate(Schedule),
    /// Delete key files past their decrypt-until.
    Prune(DirArg),
    /// Show each key's name (never its bytes), window and state.
    List(DirArg),
}

#[derive(Debug, Args)]
struct DirArg {
    /// The ticket key directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct Schedule {
    /// The ticket key directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Read tls.ticket_lifetime and tls.ticket_key_lead from this config file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// How long each key is the encrypting one (rotate about this often). Default: 24h.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "24h")]
    period: Duration,
    /// Ticket lifetime: keys decrypt this long after their period ends. Default: tls.ticket_lifetime (6h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ticket_lifetime: Option<Duration>,
    /// Time from `rotate` to the new key's activation. Default: tls.ticket_key_lead (1h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    lead: Option<Duration>,
}

/// Runs a `keys` subcommand.
pub fn run(args: KeysArgs) -> ExitCode {
    let result = match args.command {
        KeysCommand::Init(s) => schedule(&s, true),
        KeysCommand::Rotate(s) => schedule(&s, false),
        KeysCommand::Prune(d) => prune(&d.dir),
        KeysCommand::List(d) => list(&d.dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<keyfile::KeyDirError>()
                .is_some_and(|k| !matches!(k, keyfile::KeyDirError::ReadDir { .. }))
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn schedule(s: &Schedule, init: bool) -> anyhow::Result<()> {
    let tls = match &s.config {
        Some(path) => Config::load(path)?.tls,
        None => TlsConfig::default(),
    };
    let lifetime = s.ticket_lifetime.unwrap_or(tls.ticket_lifetime);
    let lead = s.lead.unwrap_or(tls.ticket_key_lead);
    let now = SystemTime::now();
    let from = if init {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&s.dir)
            .with_context(|| format!("cannot create {}", s.dir.display()))?;
        let existing = keyfile::read_dir(&s.dir)?;
        if !existing.is_empty() {
            anyhow::bail!(
                "{} already holds {} key(s): use `portcullis keys rotate`",
                s.dir.display(),
                existing.len()
            );
        }
        now
    } else {
        let existing = keyfile::read_dir(&s.dir)?;
        let newest_until = existing
            .iter()
            .filter(|k| k.kind == KeyKind::Windowed)
            .filter_map(|k| k.decrypt_until)
            .max();
        let from = now + lead;
        if let Some(until) = newest_until
            && until < from + lifetime
        {
            eprintln!(
                "warning: the current keys stop decrypting at {} (before this key's activation plus the ticket lifetime): some tickets will be refused as unknown_key; rotate earlier or use a longer --period",
                humantime::format_rfc3339_seconds(until)
            );
        }
        from
    };
    let fresh = TicketKey::random(false).map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
    let key = TicketKey::new(
        fresh.name,
        Zeroizing::new(*fresh.secret()),
        KeyKind::Windowed,
        (Some(from), Some(from + s.period + lifetime)),
        from,
        String::new(),
    );
    let path = keyfile::write_native(&s.dir, &key)
        .with_context(|| format!("cannot write a key into {}", s.dir.display()))?;
    println!(
        "{}: key {} encrypts from {}, decrypts until {}",
        path.display(),
        key.name,
        humantime::format_rfc3339_seconds(from),
        humantime::format_rfc3339_seconds(from + s.period + lifetime)
    );
    Ok(())
}

fn prune(dir: &Path) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let keys = keyfile::read_dir(dir)?;
    let mut removed = 0;
    for k in keys.iter().filter(|k| !k.decrypts_at(now)) {
        let path = dir.join(&k.file);
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        println!("removed {} (key {})", path.display(), k.name);
        removed += 1;
    }
    println!("{removed} expired key(s) removed");
    Ok(())
}

fn list(dir: &Path) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let keys = keyfile::read_dir(dir)?;
    let live: Vec<TicketKey> = keys
        .iter()
        .filter(|k| k.decrypts_at(now))
        .cloned()
        .collect();
    let encrypting = KeySet::new(live, now)
        .map_err(|e| eprintln!("warning: {e}"))
        .ok()
        .and_then(|set| set.encrypting(now).map(|k| k.name));
    let time = |t: Option<SystemTime>| {
        t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<32}  {:<13}  {:<20}  {:<20}  file",
        "name", "state", "encrypt_from", "decrypt_until"
    );
    for k in &keys {
        println!(
            "{:<32}  {:<13}  {:<20}  {:<20}  {}",
            k.name.hex(),
            state_of(k, encrypting, now).name(),
            time(k.encrypt_from),
            time(k.decrypt_until),
            k.file
        );
    }
    Ok(())
}
