//! Forwarding decrypted streams to upstream backends.

pub mod proxy_v2;
pub mod relay;
pub mod upstream;
