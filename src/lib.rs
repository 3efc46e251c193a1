//! batv: Bounce Address Tag Validation.
//!
//! The core (`address`, `tag`, `keys`, `config`, `signer`, `verdict`, `failed_tags`,
//! `bounce`, `time`) knows nothing of the modes that use it. The SMTP layer (`smtp`,
//! `session`) and the modes (`sendmail`, `proxy`, `daemon`) sit on it, and the CLI
//! (`cli`, `commands`) on top. The library never exits the process.

pub mod address;
pub mod bounce;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod exit;
pub mod failed_tags;
pub mod front;
pub mod keys;
pub mod log;
pub mod privilege;
pub mod proxy;
pub mod sendmail;
pub mod session;
pub mod signer;
pub mod smtp;
pub mod syslog;
pub mod tag;
pub mod time;
pub mod verdict;
