//! The XDP program as loaded, through `BPF_PROG_TEST_RUN` (root or CAP_BPF; skipped otherwise, failed under CI).

mod differential;
mod flood;
mod hello;
mod run;
