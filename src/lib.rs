//! batv: Bounce Address Tag Validation.
//!
//! The crate in layers; each uses only the layers below it:
//!
//! ```text
//! cli      clap definitions and the commands (the binary is a thin main over it)
//! modes    sendmail wrapper, proxy, daemon (socketmap, policy, readsocket), milter
//! server   the one runtime every daemon plugs into: listeners, limits, signals,
//!          reloads, metrics, privilege drop
//! milter   the milter wire protocol (packets, negotiation)
//! smtp     line and DATA framing, the relay session, front-mode handoff and TLS
//! bounce   inspection of a message that may be a bounce
//! core     address, tag, keys, config, verdict, signer, time, log
//! ```
//!
//! The library never exits the process.

pub mod bounce;
pub mod cli;
pub mod core;
pub mod milter;
pub mod modes;
pub mod server;
pub mod smtp;
