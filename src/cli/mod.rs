//! The command line: clap definitions (`args`) and the commands they run (`commands`).

mod args;
pub mod commands;
mod keys;

pub use args::*;
pub use commands::{run, run_as_sendmail};
