//! Forwards the BPF program's aya-log records to `tracing`.
//!
//! aya-log hands records to the `log` facade; the daemon's tracing subscriber picks them up there
//! (`tracing_subscriber`'s `init()` installs the `log` bridge), with the BPF crate's module path as target
//! (`portcullis_ebpf`). The ring buffer must be drained continuously or records are dropped once its 128 KiB fill up, so
//! a small thread waits on its fd and flushes.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::Context as _;
use aya::Ebpf;
use aya_log::EbpfLogger;

/// How long the pump waits for records before it checks whether it should stop; bounds the shutdown delay.
const POLL_TIMEOUT_MS: libc::c_int = 100;

/// The level the BPF side logs at, from the tracing filter, so disabled levels cost one branch in the kernel
/// instead of a ring buffer write. Values are `aya_log::Level` discriminants; 0 disables all.
pub(crate) fn bpf_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => aya_log::Level::Error as u8,
        LevelFilter::WARN => aya_log::Level::Warn as u8,
        LevelFilter::INFO => aya_log::Level::Info as u8,
        LevelFilter::DEBUG => aya_log::Level::Debug as u8,
        _ => aya_log::Level::Trace as u8,
    }
}

/// The thread draining the BPF log ring buffer; stopped and joined by [`LogPump::stop`] or on drop.
pub(crate) struct LogPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogPump {
    /// Takes the program's log ring buffer out of `ebpf` and starts draining it on a thread named `xdp-log`.
    pub(crate) fn start(ebpf: &mut Ebpf) -> anyhow::Result<LogPump> {
        let mut logger = EbpfLogger::init(ebpf)
            .context("cannot open the BPF log ring buffer (AYA_LOGS); the embedded BPF object is inconsistent, rebuild it with `cargo xtask build`")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("xdp-log".into())
            .spawn(move || {
                let fd = logger.as_raw_fd();
                while !stop_flag.load(Ordering::Relaxed) {
                    let mut poll_fd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd, and `fd` stays open as long as `logger`, which this thread owns.
                    let ready = unsafe { libc::poll(&mut poll_fd, 1, POLL_TIMEOUT_MS) };
                    if ready > 0 {
                        logger.flush();
                    }
                }
                // Records written between the last poll and the stop request.
                logger.flush();
            })
            .context("cannot start the XDP log thread")?;
        Ok(LogPump {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread after a last flush and waits for it (at most about [`POLL_TIMEOUT_MS`]).
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the XDP log thread panicked; some BPF log lines may be lost");
        }
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop();
    }
}
