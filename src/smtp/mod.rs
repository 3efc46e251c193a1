//! SMTP framing: command lines with length limits, multi-line replies, and the raw DATA and
//! BDAT streams. Reads are bounded; nothing here buffers a message.
//!
//! One file per concern, the items re-exported here:
//!
//! ```text
//! line      command lines and their limits, replies, send
//! data      the DATA scanner and BDAT's counted chunks
//! path      the path of a MAIL/RCPT line
//! session   the relay session, one file per stage
//! front     front mode's handoff (XCLIENT, PROXY v2)
//! tls       the TLS acceptor and the client connection (re-exported by front)
//! ```
//!
//! [`SmtpError`], shared by all of them, is defined here.

mod data;
pub mod front;
mod line;
mod path;
pub mod session;
mod tls;

use std::io;

pub use data::{discard_exact, relay_data, relay_exact, DataEnd, DataScan};
pub use line::{read_line, read_reply, read_reply_within, send, Line, Reply, MAX_AUTH_LINE, MAX_COMMAND_LINE};
pub use path::{path_address, path_span, with_path};

/// A session's failure, by side: the downstream's failures get the client a 421.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// Reading from or writing to the client.
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed by the client {0}")]
    ClientClosed(&'static str),
    /// Reading from or writing to the downstream.
    #[error("downstream: {0}")]
    Downstream(io::Error),
    #[error("connection closed by the downstream")]
    DownstreamClosed,
    /// The downstream did not answer in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("malformed reply from the downstream: {0}")]
    BadReply(String),
}

impl SmtpError {
    /// The downstream failed us (not the client).
    pub fn is_downstream(&self) -> bool {
        matches!(
            self,
            SmtpError::Downstream(_) | SmtpError::DownstreamClosed | SmtpError::Timeout(_) | SmtpError::BadReply(_)
        )
    }
}
