//! The core: addresses, tags, keys, configuration and verdicts. It knows nothing of
//! sockets or of the modes that use it.

pub mod address;
pub mod config;
pub mod exit;
pub mod failed_tags;
pub mod keys;
pub mod log;
pub mod nss;
pub mod privilege;
pub mod recipients;
pub mod signer;
pub mod tag;
pub mod time;
pub mod verdict;
