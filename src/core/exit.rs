//! sysexits(3) codes: the CLI's exit status contract (DESIGN §4).

pub const EX_OK: u8 = 0;
/// An invalid tag, or a message judged backscatter.
pub const EX_INVALID: u8 = 1;
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_IOERR: u8 = 74;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;
