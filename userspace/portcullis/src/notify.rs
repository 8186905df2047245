//! Readiness notification with the systemd protocol (sd_notify(3)): when `NOTIFY_SOCKET` is set, send
//! `READY=1` once serving, `STOPPING=1` on shutdown. The bound addresses travel in `PORTCULLIS_LISTEN` and
//! `PORTCULLIS_METRICS` (systemd ignores unknown variables), which lets tests bind port 0 and wait on
//! readiness instead of sleeping.

use std::os::unix::net::UnixDatagram;

/// Sends `message` to `$NOTIFY_SOCKET`, if set. Failures are logged, not fatal.
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(message.as_bytes(), &addr)
        } else {
            sock.send_to(message.as_bytes(), &path)
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}
