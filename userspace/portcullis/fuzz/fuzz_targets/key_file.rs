//! Fuzzes the ticket key file parser (portcullis TOML key files and nginx-style raw keys): never a panic, and
//! an error never quotes the secret.
#![no_main]

use std::path::Path;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use portcullis::tickets::keyfile::parse;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/fuzz/key");
    for name in ["a.toml", "a.key"] {
        if let Err(e) = parse(path, data, name.to_owned(), true, SystemTime::UNIX_EPOCH) {
            // A `secret = "<64 hex>"` line must not come back in the message.
            let text = e.to_string();
            if let Some(line) = std::str::from_utf8(data)
                .ok()
                .and_then(|t| t.lines().find(|l| l.trim_start().starts_with("secret")))
                .and_then(|l| l.split('"').nth(1))
                .filter(|s| s.len() >= 16)
            {
                assert!(!text.contains(line), "the error quotes the secret: {text}");
            }
        }
    }
});
