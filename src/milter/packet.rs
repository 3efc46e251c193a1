//! Framing, the MTA's commands and our responses.
//!
//! `parse` and `encode` are the two directions a milter needs; `encode_command` and
//! `parse_response` are their inverses, for tests and for a fake MTA.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::flags::*;
use super::MilterError;

/// The most strings a MACRO, MAIL or RCPT packet may carry (name and value count as two),
/// far more than any MTA sends; it bounds what a packet of NULs costs in string headers.
pub const MAX_FIELDS: usize = 1024;

/// A command from the MTA, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// SMFIC_OPTNEG: the MTA's version, the actions it allows, the protocol steps it can skip.
    OptNeg { version: u32, actions: u32, protocol: u32 },
    /// SMFIC_MACRO: the command the macros are for, and name/value pairs (names as sent,
    /// e.g. "{auth_authen}" or "i").
    Macro { for_command: u8, macros: Vec<(String, String)> },
    /// SMFIC_CONNECT. `family` is b'4', b'6', b'L' (unix) or b'U' (unknown); `port` and
    /// `address` are 0 and "" when the MTA sends none (always for 'U', often for 'L').
    Connect {
        hostname: String,
        family: u8,
        port: u16,
        address: String,
    },
    /// SMFIC_HELO: the HELO/EHLO argument.
    Helo(String),
    /// SMFIC_MAIL: `args[0]` is the sender as the MTA passes it ("<a@b>"), the rest ESMTP
    /// parameters ("SIZE=100"). Never empty.
    Mail(Vec<String>),
    /// SMFIC_RCPT: as `Mail`, for one recipient.
    Rcpt(Vec<String>),
    /// SMFIC_DATA.
    Data,
    /// SMFIC_HEADER: one header, its name and its value (which may be empty).
    Header { name: String, value: String },
    /// SMFIC_EOH.
    Eoh,
    /// SMFIC_BODY: one chunk of the body, raw.
    Body(Vec<u8>),
    /// SMFIC_BODYEOB: end of message. A payload (a last body chunk, which Postfix and
    /// Sendmail do not send) is ignored.
    BodyEob,
    /// SMFIC_ABORT: the transaction is over (the connection is not).
    Abort,
    /// SMFIC_QUIT: the connection is over.
    Quit,
    /// SMFIC_QUIT_NC: this connection is over, the milter connection is kept for the next.
    QuitNc,
    /// SMFIC_UNKNOWN: an SMTP command the MTA did not know, its trailing NUL removed.
    Unknown(Vec<u8>),
}

/// A response to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    Skip,
    Progress,
    /// SMFIR_REPLYCODE: "550 5.7.1 text". Must start with a 4xx or 5xx code and a space
    /// ([`try_encode`] refuses anything else; [`encode`] sends SMFIR_TEMPFAIL instead). On the
    /// wire CR and LF become spaces and '%' is doubled (the MTA reads the text as a format).
    ReplyCode(String),
    /// SMFIR_CHGFROM: the new envelope sender, and its ESMTP parameters if any.
    ChgFrom {
        from: String,
        args: Option<String>,
    },
    /// SMFIR_ADDRCPT_PAR: a recipient to add, and its ESMTP parameters if any.
    AddRcptPar {
        rcpt: String,
        args: Option<String>,
    },
    /// SMFIR_DELRCPT: a recipient to remove, as the MTA passed it.
    DelRcpt(String),
    /// SMFIR_ADDHEADER: a header appended.
    AddHeader {
        name: String,
        value: String,
    },
    /// SMFIR_INSHEADER: a header inserted at `index` (0: first).
    InsHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// SMFIR_CHGHEADER: the `index`th (from 1) header named `name` changed; an empty value
    /// deletes it.
    ChgHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// SMFIR_OPTNEG: our answer to the negotiation (see [`super::negotiate`]), with the macros
    /// we want per stage: `(SMFIM_*, "{a} {b}")`. Send no macro lists below version 6.
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
        macros: Vec<(u32, String)>,
    },
}

/// Reads one packet's raw command byte and payload. `Ok(None)` at a clean EOF before a
/// packet starts. A length of 0 or more than `max` is an error, raised before anything is
/// allocated for the packet; a truncated packet is an error. The buffer grows only as bytes
/// arrive (a peer announcing `max` and sending less costs about what it sent), and no
/// allocation is larger than the packet.
pub async fn read_packet<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<(u8, Vec<u8>)>, MilterError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(MilterError::Malformed("truncated length"))
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(MilterError::Malformed("zero length"));
    }
    if len > max {
        return Err(MilterError::TooLong(len));
    }
    // Grown by doubling, exactly, never past `len`: no allocation is larger than the packet.
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    while buf.len() < len {
        if buf.len() == buf.capacity() {
            buf.reserve_exact(buf.capacity().min(len - buf.len()));
        }
        let spare = (buf.capacity() - buf.len()) as u64;
        if (&mut *r).take(spare).read_buf(&mut buf).await? == 0 {
            return Err(MilterError::Malformed("truncated packet"));
        }
    }
    let cmd = buf[0];
    buf.remove(0);
    Ok(Some((cmd, buf)))
}

/// Reads one packet (4-byte big-endian length including the command byte, then the command
/// byte and payload) and parses it. `Ok(None)` at a clean EOF before a packet starts. A
/// length of 0 or > `max` is an error; a truncated packet is an error. The packet is read
/// whole before it is parsed, so after a parse error (`Malformed`, `UnknownCommand`) the
/// stream is still framed. Besides the packet's buffer, parsing allocates its strings: a
/// lossy one is at most 3 times its bytes (each invalid byte becomes U+FFFD).
pub async fn read_command<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Command>, MilterError> {
    match read_packet(r, max).await? {
        None => Ok(None),
        Some((cmd, payload)) => parse(cmd, &payload).map(Some),
    }
}

/// [`read_command`] within `timeout` (the whole packet), else [`MilterError::Timeout`].
pub async fn read_command_within<R: AsyncRead + Unpin>(r: &mut R, max: usize, timeout: Duration) -> Result<Option<Command>, MilterError> {
    tokio::time::timeout(timeout, read_command(r, max))
        .await
        .map_err(|_| MilterError::Timeout)?
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One NUL-terminated string and what follows it.
fn cstr(p: &[u8]) -> Result<(String, &[u8]), MilterError> {
    let nul = p.iter().position(|&b| b == 0).ok_or(MilterError::Malformed("missing NUL"))?;
    Ok((lossy(&p[..nul]), &p[nul + 1..]))
}

/// A payload made of NUL-terminated strings only (none if empty), at most [`MAX_FIELDS`].
fn cstrs(p: &[u8]) -> Result<Vec<String>, MilterError> {
    match p.split_last() {
        None => Ok(Vec::new()),
        Some((&0, body)) => {
            let n = p.iter().filter(|&&b| b == 0).count();
            if n > MAX_FIELDS {
                return Err(MilterError::Malformed("too many strings"));
            }
            let mut v = Vec::with_capacity(n);
            v.extend(body.split(|&b| b == 0).map(lossy));
            Ok(v)
        }
        Some(_) => Err(MilterError::Malformed("missing NUL")),
    }
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// Parses one command's payload. Strings are NUL-terminated; bytes that are not UTF-8 are
/// replaced ([`String::from_utf8_lossy`]); a missing NUL is `Malformed`, as are more than
/// [`MAX_FIELDS`] strings in one packet. The payloads of
/// DATA, EOH, EOB, ABORT, QUIT and QUIT_NC are ignored, as are bytes after the last field of
/// OPTNEG, CONNECT and HELO.
pub fn parse(cmd: u8, payload: &[u8]) -> Result<Command, MilterError> {
    let p = payload;
    Ok(match cmd {
        SMFIC_OPTNEG => {
            if p.len() < 12 {
                return Err(MilterError::Malformed("short OPTNEG"));
            }
            Command::OptNeg {
                version: be32(p, 0),
                actions: be32(p, 4),
                protocol: be32(p, 8),
            }
        }
        SMFIC_MACRO => {
            let (&for_command, rest) = p.split_first().ok_or(MilterError::Malformed("empty MACRO"))?;
            let fields = cstrs(rest)?;
            if fields.len() % 2 != 0 {
                return Err(MilterError::Malformed("MACRO name without a value"));
            }
            let mut macros = Vec::with_capacity(fields.len() / 2);
            let mut it = fields.into_iter();
            while let (Some(n), Some(v)) = (it.next(), it.next()) {
                macros.push((n, v));
            }
            Command::Macro { for_command, macros }
        }
        SMFIC_CONNECT => {
            let (hostname, rest) = cstr(p)?;
            let (&family, rest) = rest.split_first().ok_or(MilterError::Malformed("CONNECT without a family"))?;
            if family == SMFIA_UNKNOWN || rest.is_empty() {
                Command::Connect {
                    hostname,
                    family,
                    port: 0,
                    address: String::new(),
                }
            } else {
                if rest.len() < 2 {
                    return Err(MilterError::Malformed("CONNECT with a short port"));
                }
                let port = u16::from_be_bytes([rest[0], rest[1]]);
                let (address, _) = cstr(&rest[2..])?;
                Command::Connect {
                    hostname,
                    family,
                    port,
                    address,
                }
            }
        }
        SMFIC_HELO => Command::Helo(cstr(p)?.0),
        SMFIC_MAIL | SMFIC_RCPT => {
            let args = cstrs(p)?;
            if args.is_empty() {
                return Err(MilterError::Malformed("MAIL/RCPT without an address"));
            }
            if cmd == SMFIC_MAIL {
                Command::Mail(args)
            } else {
                Command::Rcpt(args)
            }
        }
        SMFIC_DATA => Command::Data,
        SMFIC_HEADER => {
            let (name, rest) = cstr(p)?;
            let (value, _) = cstr(rest)?;
            Command::Header { name, value }
        }
        SMFIC_EOH => Command::Eoh,
        SMFIC_BODY => Command::Body(p.to_vec()),
        SMFIC_BODYEOB => Command::BodyEob,
        SMFIC_ABORT => Command::Abort,
        SMFIC_QUIT => Command::Quit,
        SMFIC_QUIT_NC => Command::QuitNc,
        SMFIC_UNKNOWN => Command::Unknown(p.strip_suffix(&[0]).unwrap_or(p).to_vec()),
        other => return Err(MilterError::UnknownCommand(other)),
    })
}

/// A packet being built: the length is patched in at the end.
struct Packet(Vec<u8>);

impl Packet {
    fn new(cmd: u8) -> Self {
        Packet(vec![0, 0, 0, 0, cmd])
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A string and its NUL; NULs inside it are dropped (they would end it early).
    fn str(mut self, s: &str) -> Self {
        self.0.extend(s.bytes().filter(|&b| b != 0));
        self.0.push(0);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn done(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

/// Whether a reply starts with a 4xx or 5xx code and a space.
fn valid_reply(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 4 && matches!(b[0], b'4' | b'5') && b[1].is_ascii_digit() && b[2].is_ascii_digit() && b[3] == b' '
}

/// The reply text as the MTA wants it: one line, '%' doubled.
fn reply_wire(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '\r' | '\n' | '\0' => vec![' '],
            '%' => vec!['%', '%'],
            c => vec![c],
        })
        .collect()
}

/// Encodes a response as a framed packet, or refuses a `ReplyCode` that does not start with
/// a 4xx/5xx code and a space. NULs inside strings are dropped.
pub fn try_encode(r: &Response) -> Result<Vec<u8>, MilterError> {
    if let Response::ReplyCode(s) = r {
        if !valid_reply(s) {
            return Err(MilterError::InvalidResponse("reply code must be 4xx or 5xx and a space"));
        }
    }
    Ok(encode_unchecked(r))
}

/// Encodes a response as a framed packet. An invalid `ReplyCode` (see [`try_encode`]) is
/// sent as SMFIR_TEMPFAIL, so a mistake fails safe. NULs inside strings are dropped.
pub fn encode(r: &Response) -> Vec<u8> {
    try_encode(r).unwrap_or_else(|_| Packet::new(SMFIR_TEMPFAIL).done())
}

fn with_args(p: Packet, first: &str, args: &Option<String>) -> Packet {
    let p = p.str(first);
    match args {
        Some(a) => p.str(a),
        None => p,
    }
}

fn encode_unchecked(r: &Response) -> Vec<u8> {
    match r {
        Response::Continue => Packet::new(SMFIR_CONTINUE),
        Response::Accept => Packet::new(SMFIR_ACCEPT),
        Response::Reject => Packet::new(SMFIR_REJECT),
        Response::Tempfail => Packet::new(SMFIR_TEMPFAIL),
        Response::Discard => Packet::new(SMFIR_DISCARD),
        Response::Skip => Packet::new(SMFIR_SKIP),
        Response::Progress => Packet::new(SMFIR_PROGRESS),
        Response::ReplyCode(s) => Packet::new(SMFIR_REPLYCODE).str(&reply_wire(s)),
        Response::ChgFrom { from, args } => with_args(Packet::new(SMFIR_CHGFROM), from, args),
        Response::AddRcptPar { rcpt, args } => with_args(Packet::new(SMFIR_ADDRCPT_PAR), rcpt, args),
        Response::DelRcpt(rcpt) => Packet::new(SMFIR_DELRCPT).str(rcpt),
        Response::AddHeader { name, value } => Packet::new(SMFIR_ADDHEADER).str(name).str(value),
        Response::InsHeader { index, name, value } => Packet::new(SMFIR_INSHEADER).u32(*index).str(name).str(value),
        Response::ChgHeader { index, name, value } => Packet::new(SMFIR_CHGHEADER).u32(*index).str(name).str(value),
        Response::OptNeg {
            version,
            actions,
            protocol,
            macros,
        } => {
            let mut p = Packet::new(SMFIR_OPTNEG).u32(*version).u32(*actions).u32(*protocol);
            for (stage, list) in macros {
                p = p.u32(*stage).str(list);
            }
            p
        }
    }
    .done()
}

/// Encodes a command as the MTA would send it, framed: the inverse of [`parse`] (for tests
/// and fake MTAs). A `Connect` of family 'U' carries no port or address; NULs inside
/// strings are dropped.
pub fn encode_command(c: &Command) -> Vec<u8> {
    match c {
        Command::OptNeg {
            version,
            actions,
            protocol,
        } => Packet::new(SMFIC_OPTNEG).u32(*version).u32(*actions).u32(*protocol),
        Command::Macro { for_command, macros } => {
            let mut p = Packet::new(SMFIC_MACRO).raw(&[*for_command]);
            for (n, v) in macros {
                p = p.str(n).str(v);
            }
            p
        }
        Command::Connect {
            hostname,
            family,
            port,
            address,
        } => {
            let p = Packet::new(SMFIC_CONNECT).str(hostname).raw(&[*family]);
            if *family == SMFIA_UNKNOWN {
                p
            } else {
                p.raw(&port.to_be_bytes()).str(address)
            }
        }
        Command::Helo(h) => Packet::new(SMFIC_HELO).str(h),
        Command::Mail(args) | Command::Rcpt(args) => {
            let cmd = if matches!(c, Command::Mail(_)) { SMFIC_MAIL } else { SMFIC_RCPT };
            args.iter().fold(Packet::new(cmd), |p, a| p.str(a))
        }
        Command::Data => Packet::new(SMFIC_DATA),
        Command::Header { name, value } => Packet::new(SMFIC_HEADER).str(name).str(value),
        Command::Eoh => Packet::new(SMFIC_EOH),
        Command::Body(b) => Packet::new(SMFIC_BODY).raw(b),
        Command::BodyEob => Packet::new(SMFIC_BODYEOB),
        Command::Abort => Packet::new(SMFIC_ABORT),
        Command::Quit => Packet::new(SMFIC_QUIT),
        Command::QuitNc => Packet::new(SMFIC_QUIT_NC),
        Command::Unknown(b) => Packet::new(SMFIC_UNKNOWN).raw(b).raw(&[0]),
    }
    .done()
}

/// Parses a response's payload, as the MTA would: the inverse of [`encode`] (for tests and
/// fake MTAs). A reply's "%%" is read back as "%".
pub fn parse_response(cmd: u8, payload: &[u8]) -> Result<Response, MilterError> {
    let p = payload;
    let pair = |p: &[u8]| -> Result<(String, Option<String>), MilterError> {
        let (first, rest) = cstr(p)?;
        let args = if rest.is_empty() { None } else { Some(cstr(rest)?.0) };
        Ok((first, args))
    };
    let header = |p: &[u8]| -> Result<(u32, String, String), MilterError> {
        if p.len() < 4 {
            return Err(MilterError::Malformed("short header index"));
        }
        let (name, rest) = cstr(&p[4..])?;
        Ok((be32(p, 0), name, cstr(rest)?.0))
    };
    Ok(match cmd {
        SMFIR_CONTINUE => Response::Continue,
        SMFIR_ACCEPT => Response::Accept,
        SMFIR_REJECT => Response::Reject,
        SMFIR_TEMPFAIL => Response::Tempfail,
        SMFIR_DISCARD => Response::Discard,
        SMFIR_SKIP => Response::Skip,
        SMFIR_PROGRESS => Response::Progress,
        SMFIR_REPLYCODE => Response::ReplyCode(cstr(p)?.0.replace("%%", "%")),
        SMFIR_CHGFROM => {
            let (from, args) = pair(p)?;
            Response::ChgFrom { from, args }
        }
        SMFIR_ADDRCPT_PAR => {
            let (rcpt, args) = pair(p)?;
            Response::AddRcptPar { rcpt, args }
        }
        SMFIR_DELRCPT => Response::DelRcpt(cstr(p)?.0),
        SMFIR_ADDHEADER => {
            let (name, rest) = cstr(p)?;
            Response::AddHeader {
                name,
                value: cstr(rest)?.0,
            }
        }
        SMFIR_INSHEADER => {
            let (index, name, value) = header(p)?;
            Response::InsHeader { index, name, value }
        }
        SMFIR_CHGHEADER => {
            let (index, name, value) = header(p)?;
            Response::ChgHeader { index, name, value }
        }
        SMFIR_OPTNEG => {
            if p.len() < 12 {
                return Err(MilterError::Malformed("short OPTNEG"));
            }
            let mut rest = &p[12..];
            let mut macros = Vec::new();
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(MilterError::Malformed("short macro stage"));
                }
                let (list, after) = cstr(&rest[4..])?;
                macros.push((be32(rest, 0), list));
                rest = after;
            }
            Response::OptNeg {
                version: be32(p, 0),
                actions: be32(p, 4),
                protocol: be32(p, 8),
                macros,
            }
        }
        other => return Err(MilterError::UnknownCommand(other)),
    })
}
