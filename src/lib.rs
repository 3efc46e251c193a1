//! batv: Bounce Address Tag Validation.
//!
//! The core (`address`, `tag`, `keys`, `config`, `time`) knows nothing of the modes that use
//! it; the CLI (`cli`, `commands`) sits on top. The library never exits the process.

pub mod address;
pub mod cli;
pub mod commands;
pub mod config;
pub mod exit;
pub mod keys;
pub mod tag;
pub mod time;
