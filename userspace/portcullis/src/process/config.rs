//! The `[process]` config section: who the daemon runs as once it has bound, attached and pinned.

use serde::Deserialize;

/// The unprivileged identity the daemon switches to after start-up.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// User (name or numeric uid) to run as after listeners are bound, XDP and steering attached and maps
    /// pinned; every capability is dropped with root (see `process` module docs). `--user` on `portcullis
    /// run` overrides it. Default: none (the daemon keeps the identity it was started with).
    pub user: Option<String>,
    /// Group (name or numeric gid) to run as. Default: the user's primary group.
    pub group: Option<String>,
    /// Without `user`, when started as root: still give up every capability after start-up, keeping uid 0.
    /// For where the daemon must go on reading files only root may read, such as a Kubernetes Secret volume
    /// of ticket keys rotated in place (root-owned, mode 0400). A daemon started unprivileged always drops
    /// its capabilities. Default: `false`.
    pub drop_capabilities: bool,
}

impl ProcessConfig {
    /// Checks values; returns the offending field's name and why.
    ///
    /// # Errors
    /// An empty name, or a group without a user.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.user.as_deref() == Some("") {
            return Err(("process.user", "must not be empty".to_owned()));
        }
        if self.group.as_deref() == Some("") {
            return Err(("process.group", "must not be empty".to_owned()));
        }
        if self.group.is_some() && self.user.is_none() {
            return Err((
                "process.group",
                "needs process.user (the daemon changes group and user together)".to_owned(),
            ));
        }
        Ok(())
    }
}
