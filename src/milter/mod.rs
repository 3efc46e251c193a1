//! The milter wire protocol, version 6, as libmilter and Postfix's MILTER_README describe it:
//! framed packets, option negotiation, macros. Written from the public descriptions; it uses
//! only std, tokio and thiserror, and nothing above it in the crate.
//!
//! One file per concern, the items re-exported here:
//!
//! ```text
//! packet     framing (read_command, encode), the MTA's commands (parse) and our responses
//! negotiate  the answer to the MTA's SMFIC_OPTNEG
//! macros     the per-stage macro store (Macros)
//! ```
//!
//! A packet is a 4-byte big-endian length (counting the command byte), a command byte and
//! the payload. Strings are NUL-terminated; bytes that are not UTF-8 are read with
//! [`String::from_utf8_lossy`]. Packets are bounded by a caller-given maximum
//! ([`MAX_PACKET`] by default): a longer length prefix is refused before anything is
//! allocated for it.

mod macros;
mod negotiate;
mod packet;
#[cfg(test)]
mod tests;

pub use macros::{Macros, Stage};
pub use negotiate::negotiate;
pub use packet::{
    encode, encode_command, parse, parse_response, read_command, read_command_within, read_packet, try_encode, Command, Response,
    MAX_FIELDS,
};

/// The longest packet accepted (length prefix value: command byte and payload), 1 MiB;
/// libmilter's default limit is of the same order. Longer packets are refused.
pub const MAX_PACKET: usize = 1 << 20;

/// The protocol version we speak (and the highest we negotiate).
pub const VERSION: u32 = 6;

/// A failure on a milter connection. Every one of them ends that connection only.
#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    #[error("milter i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announced more than the maximum (the announced length).
    #[error("milter packet of {0} bytes is longer than allowed")]
    TooLong(usize),
    #[error("malformed milter packet: {0}")]
    Malformed(&'static str),
    #[error("unknown milter command {0:#04x}")]
    UnknownCommand(u8),
    #[error("milter peer timed out")]
    Timeout,
    /// The MTA offers a protocol version below 2 (the version offered).
    #[error("milter protocol version {0} is not supported")]
    Version(u32),
    /// The MTA does not offer actions we need (the missing SMFIF_* bits).
    #[error("the MTA does not offer milter actions {0:#x}")]
    MissingActions(u32),
    /// A response that cannot be encoded (a reply code not of the form "4xx text"/"5xx text").
    #[error("invalid milter response: {0}")]
    InvalidResponse(&'static str),
}

/// The protocol's constants: SMFIC_* command bytes (MTA to milter), SMFIR_* response bytes
/// (milter to MTA), SMFIF_* action bits, SMFIP_* protocol bits, SMFIM_* macro stages and
/// SMFIA_* address families.
pub mod flags {
    // Commands, MTA to milter.
    pub const SMFIC_ABORT: u8 = b'A';
    pub const SMFIC_BODY: u8 = b'B';
    pub const SMFIC_CONNECT: u8 = b'C';
    pub const SMFIC_MACRO: u8 = b'D';
    pub const SMFIC_BODYEOB: u8 = b'E';
    pub const SMFIC_HELO: u8 = b'H';
    pub const SMFIC_QUIT_NC: u8 = b'K';
    pub const SMFIC_HEADER: u8 = b'L';
    pub const SMFIC_MAIL: u8 = b'M';
    pub const SMFIC_EOH: u8 = b'N';
    pub const SMFIC_OPTNEG: u8 = b'O';
    pub const SMFIC_QUIT: u8 = b'Q';
    pub const SMFIC_RCPT: u8 = b'R';
    pub const SMFIC_DATA: u8 = b'T';
    pub const SMFIC_UNKNOWN: u8 = b'U';

    // Responses, milter to MTA.
    pub const SMFIR_ADDRCPT: u8 = b'+';
    pub const SMFIR_DELRCPT: u8 = b'-';
    pub const SMFIR_ADDRCPT_PAR: u8 = b'2';
    pub const SMFIR_SHUTDOWN: u8 = b'4';
    pub const SMFIR_ACCEPT: u8 = b'a';
    pub const SMFIR_REPLBODY: u8 = b'b';
    pub const SMFIR_CONTINUE: u8 = b'c';
    pub const SMFIR_DISCARD: u8 = b'd';
    pub const SMFIR_CHGFROM: u8 = b'e';
    pub const SMFIR_CONN_FAIL: u8 = b'f';
    pub const SMFIR_ADDHEADER: u8 = b'h';
    pub const SMFIR_INSHEADER: u8 = b'i';
    pub const SMFIR_SETSYMLIST: u8 = b'l';
    pub const SMFIR_CHGHEADER: u8 = b'm';
    pub const SMFIR_PROGRESS: u8 = b'p';
    pub const SMFIR_QUARANTINE: u8 = b'q';
    pub const SMFIR_REJECT: u8 = b'r';
    pub const SMFIR_SKIP: u8 = b's';
    pub const SMFIR_TEMPFAIL: u8 = b't';
    pub const SMFIR_REPLYCODE: u8 = b'y';
    /// The option negotiation answer has the same byte as the command.
    pub const SMFIR_OPTNEG: u8 = b'O';

    // Actions the milter may take (SMFIC_OPTNEG's second word).
    pub const SMFIF_ADDHDRS: u32 = 0x01;
    pub const SMFIF_CHGBODY: u32 = 0x02;
    pub const SMFIF_ADDRCPT: u32 = 0x04;
    pub const SMFIF_DELRCPT: u32 = 0x08;
    pub const SMFIF_CHGHDRS: u32 = 0x10;
    pub const SMFIF_QUARANTINE: u32 = 0x20;
    pub const SMFIF_CHGFROM: u32 = 0x40;
    pub const SMFIF_ADDRCPT_PAR: u32 = 0x80;
    pub const SMFIF_SETSYMLIST: u32 = 0x100;

    // Protocol steps (SMFIC_OPTNEG's third word): what the MTA may skip or not wait for.
    pub const SMFIP_NOCONNECT: u32 = 0x01;
    pub const SMFIP_NOHELO: u32 = 0x02;
    pub const SMFIP_NOMAIL: u32 = 0x04;
    pub const SMFIP_NORCPT: u32 = 0x08;
    pub const SMFIP_NOBODY: u32 = 0x10;
    pub const SMFIP_NOHDRS: u32 = 0x20;
    pub const SMFIP_NOEOH: u32 = 0x40;
    pub const SMFIP_NR_HDR: u32 = 0x80;
    pub const SMFIP_NOUNKNOWN: u32 = 0x100;
    pub const SMFIP_NODATA: u32 = 0x200;
    pub const SMFIP_SKIP: u32 = 0x400;
    pub const SMFIP_RCPT_REJ: u32 = 0x800;
    pub const SMFIP_NR_CONN: u32 = 0x1000;
    pub const SMFIP_NR_HELO: u32 = 0x2000;
    pub const SMFIP_NR_MAIL: u32 = 0x4000;
    pub const SMFIP_NR_RCPT: u32 = 0x8000;
    pub const SMFIP_NR_DATA: u32 = 0x10000;
    pub const SMFIP_NR_UNKN: u32 = 0x20000;
    pub const SMFIP_NR_EOH: u32 = 0x40000;
    pub const SMFIP_NR_BODY: u32 = 0x80000;
    pub const SMFIP_HDR_LEADSPC: u32 = 0x100000;
    pub const SMFIP_MDS_256K: u32 = 0x10000000;
    pub const SMFIP_MDS_1M: u32 = 0x20000000;

    // Macro stages (the SMFIR_OPTNEG macro lists, SMFIR_SETSYMLIST).
    pub const SMFIM_CONNECT: u32 = 0;
    pub const SMFIM_HELO: u32 = 1;
    pub const SMFIM_ENVFROM: u32 = 2;
    pub const SMFIM_ENVRCPT: u32 = 3;
    pub const SMFIM_DATA: u32 = 4;
    pub const SMFIM_EOM: u32 = 5;
    pub const SMFIM_EOH: u32 = 6;

    // Address families of SMFIC_CONNECT.
    pub const SMFIA_UNKNOWN: u8 = b'U';
    pub const SMFIA_UNIX: u8 = b'L';
    pub const SMFIA_INET: u8 = b'4';
    pub const SMFIA_INET6: u8 = b'6';
}
