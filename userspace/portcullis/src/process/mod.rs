//! Least privilege: after start-up, the daemon gives up root and every capability.
//!
//! What needs privilege happens before the drop: binding the listeners (port 443: CAP_NET_BIND_SERVICE),
//! loading, attaching and pinning the XDP and steering programs (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON), creating
//! the state and pin directories. What runs afterwards needs none: the XDP and steering maps are written and
//! read through file descriptors the daemon already holds (the kernel checks privilege when an fd is
//! obtained, not on `BPF_MAP_UPDATE_ELEM`/`LOOKUP` through it), the XDP program is detached by closing its
//! bpf_link, certificates and ticket keys are plain files. So the daemon keeps **no capability**: CapEff,
//! CapPrm, CapInh and CapAmb are 0 and the bounding set is emptied.
//!
//! Order ([`drop_privileges`]): hand the pin and state directories to the user (so the pins can be removed at
//! exit and the state read again), empty the bounding and ambient sets, set `PR_SET_NO_NEW_PRIVS` (no exec
//! can gain privilege back), then `setgroups`, `setresgid`, `setresuid` (glibc applies them to every thread;
//! the kernel clears the permitted and effective capabilities of each thread when its uids leave 0). The
//! bounding set and no_new_privs are per thread: threads started before the drop (the ticket key watcher,
//! crypto threads) keep theirs, and they never exec. The result is checked from `/proc/self/status`.

pub mod config;

use std::path::Path;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Group, Uid, User};

pub use config::ProcessConfig;

/// The identity to switch to, resolved before any privilege is given up.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its user name (for logs).
    pub user: String,
    /// uid.
    pub uid: Uid,
    /// gid.
    pub gid: Gid,
}

impl Identity {
    /// Resolves `[process] user`/`group` (names or numbers); `None` when no user is configured.
    ///
    /// # Errors
    /// A user or group that does not exist, or a user that is root.
    pub fn resolve(config: &ProcessConfig) -> anyhow::Result<Option<Identity>> {
        let Some(user) = &config.user else {
            return Ok(None);
        };
        let (uid, primary) = match user.parse::<u32>() {
            Ok(n) => (
                Uid::from_raw(n),
                User::from_uid(Uid::from_raw(n))
                    .ok()
                    .flatten()
                    .map(|u| u.gid),
            ),
            Err(_) => {
                let u = User::from_name(user)
                    .with_context(|| format!("looking up process.user `{user}`"))?
                    .with_context(|| {
                        format!("process.user `{user}` does not exist; create it (useradd --system {user}) or give a uid")
                    })?;
                (u.uid, Some(u.gid))
            }
        };
        if uid.is_root() {
            bail!("process.user `{user}` is root: give an unprivileged user");
        }
        let gid = match &config.group {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => Gid::from_raw(n),
                Err(_) => {
                    Group::from_name(g)
                        .with_context(|| format!("looking up process.group `{g}`"))?
                        .with_context(|| format!("process.group `{g}` does not exist"))?
                        .gid
                }
            },
            None => primary.with_context(|| {
                format!("process.user `{user}` has no passwd entry: set process.group too")
            })?,
        };
        Ok(Some(Identity {
            user: user.clone(),
            uid,
            gid,
        }))
    }
}

/// Switches the process to `id` with no capability, giving it `dirs` (and their direct entries) first.
///
/// # Errors
/// Any step that fails: the daemon must not go on half-privileged.
pub fn drop_privileges(id: &Identity, dirs: &[&Path]) -> anyhow::Result<()> {
    for dir in dirs {
        hand_over(dir, id)
            .with_context(|| format!("cannot give {} to {}", dir.display(), id.user))?;
    }
    clear_capability_sets().context("cannot empty the capability bounding set")?;
    nix::sys::prctl::set_no_new_privs().context("cannot set PR_SET_NO_NEW_PRIVS")?;
    nix::unistd::setgroups(&[id.gid]).context("setgroups")?;
    nix::unistd::setresgid(id.gid, id.gid, id.gid).context("setresgid")?;
    nix::unistd::setresuid(id.uid, id.uid, id.uid).context("setresuid")?;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let now = Status::parse(&status);
    if now.uid != Some(id.uid.as_raw()) || now.cap_eff != Some(0) || now.cap_prm != Some(0) {
        bail!("privilege drop did not take: {now:?}");
    }
    tracing::info!(user = %id.user, uid = id.uid.as_raw(), gid = id.gid.as_raw(), "dropped root and every capability");
    Ok(())
}

/// For a daemon started unprivileged with ambient capabilities (systemd `User=` + `AmbientCapabilities=`):
/// gives every capability up once start-up is done: ambient set cleared, bounding set emptied where allowed,
/// `PR_SET_NO_NEW_PRIVS`, then effective, permitted and inheritable sets zeroed (`capset`). Per thread, like
/// the rest: threads started before keep theirs (module docs); the main thread and every worker have none.
///
/// # Errors
/// A step that fails, or capabilities still there afterwards.
pub fn drop_capabilities() -> anyhow::Result<()> {
    match clear_capability_sets() {
        Ok(()) => {}
        // Emptying the bounding set needs CAP_SETPCAP, which a unit need not grant: NoNewPrivs and an empty
        // permitted set already keep the bounding set from mattering.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => return Err(e).context("cannot clear the ambient capabilities"),
    }
    nix::sys::prctl::set_no_new_privs().context("cannot set PR_SET_NO_NEW_PRIVS")?;
    zero_capabilities().context("capset")?;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let now = Status::parse(&status);
    if now.cap_eff != Some(0) || now.cap_prm != Some(0) {
        bail!("capability drop did not take: {now:?}");
    }
    tracing::info!(uid = ?now.uid, "start-up done: dropped every capability");
    Ok(())
}

/// `capset` with empty effective, permitted and inheritable sets for the calling thread.
fn zero_capabilities() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: `header` and `data` are valid for the call and laid out as the kernel's
    // `__user_cap_header_struct` and two `__user_cap_data_struct`s (version 3).
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::from_mut(&mut header),
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Chowns `dir` and its direct entries (pins, the self-signed certificate directory) to `id`; a missing
/// directory is skipped.
fn hand_over(dir: &Path, id: &Identity) -> std::io::Result<()> {
    let chown =
        |p: &Path| nix::unistd::chown(p, Some(id.uid), Some(id.gid)).map_err(std::io::Error::from);
    match chown(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        chown(&path)?;
        if path.is_dir() {
            for inner in std::fs::read_dir(&path)? {
                chown(&inner?.path())?;
            }
        }
    }
    Ok(())
}

/// Empties the bounding set (needs CAP_SETPCAP, held as root) and the ambient set.
fn clear_capability_sets() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for cap in 0..=last_cap() {
        // SAFETY: as above.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: past this kernel's last capability (cap_last_cap unreadable, e.g. under ProcSubset=pid).
            if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// The identity and capability lines of a `/proc/PID/status`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Real uid.
    pub uid: Option<u32>,
    /// Real gid.
    pub gid: Option<u32>,
    /// Effective capabilities.
    pub cap_eff: Option<u64>,
    /// Permitted capabilities.
    pub cap_prm: Option<u64>,
    /// Bounding set.
    pub cap_bnd: Option<u64>,
    /// `NoNewPrivs`.
    pub no_new_privs: Option<bool>,
}

impl Status {
    /// Reads the fields it knows from `/proc/PID/status` text; missing ones stay `None`.
    pub fn parse(text: &str) -> Status {
        let mut s = Status::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let first = || value.split_whitespace().next().and_then(|v| v.parse().ok());
            let hex = || u64::from_str_radix(value, 16).ok();
            match key {
                "Uid" => s.uid = first(),
                "Gid" => s.gid = first(),
                "CapEff" => s.cap_eff = hex(),
                "CapPrm" => s.cap_prm = hex(),
                "CapBnd" => s.cap_bnd = hex(),
                "NoNewPrivs" => s.no_new_privs = Some(value == "1"),
                _ => {}
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read() {
        let s = Status::parse(
            "Name:\tportcullis\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n\
             CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
             CapBnd:\t000001ffffffffff\nNoNewPrivs:\t1\n",
        );
        assert_eq!(s.uid, Some(65534));
        assert_eq!(s.gid, Some(65534));
        assert_eq!(s.cap_eff, Some(0));
        assert_eq!(s.cap_bnd, Some(0x1ff_ffff_ffff));
        assert_eq!(s.no_new_privs, Some(true));
    }

    #[test]
    fn users_and_groups_resolve_by_name_or_number_and_root_is_refused() {
        let none = Identity::resolve(&ProcessConfig::default()).expect("ok");
        assert!(none.is_none());
        let nobody = Identity::resolve(&ProcessConfig {
            user: Some("65534".into()),
            group: Some("65534".into()),
            ..ProcessConfig::default()
        })
        .expect("numeric")
        .expect("some");
        assert_eq!((nobody.uid.as_raw(), nobody.gid.as_raw()), (65534, 65534));
        let err = Identity::resolve(&ProcessConfig {
            user: Some("root".into()),
            group: None,
            ..ProcessConfig::default()
        })
        .expect_err("root");
        assert!(err.to_string().contains("root"), "{err}");
        let err = Identity::resolve(&ProcessConfig {
            user: Some("no-such-user-portcullis".into()),
            group: None,
            ..ProcessConfig::default()
        })
        .expect_err("missing");
        assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    }
}
