//! Fuzzes the config parser and validation: any text parses or fails with a message, and validation of what
//! parses never panics (durations and sizes are bounded before anything adds them to an `Instant`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let _ = config.with_defaults().validate();
    }
});
