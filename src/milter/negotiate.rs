//! The answer to the MTA's SMFIC_OPTNEG.

use super::{MilterError, VERSION};

/// Negotiation: given the MTA's OPTNEG and what we want, what we answer, as
/// `(version, actions, protocol)`:
/// - version: `min(6, theirs)`; an MTA below version 2 is refused ([`MilterError::Version`]);
/// - actions: `(want | need) & theirs`; a needed action the MTA does not offer is refused
///   ([`MilterError::MissingActions`], with the missing bits);
/// - protocol: the SMFIP_NO*/NR_* (and other) bits we ask for that the MTA offers:
///   `want_protocol & theirs`. Bits not offered are dropped, so the MTA sends (and waits for)
///   those steps as usual: a milter must still handle them.
pub fn negotiate(
    mta_version: u32,
    mta_actions: u32,
    mta_protocol: u32,
    want_actions: u32,
    need_actions: u32,
    want_protocol: u32,
) -> Result<(u32, u32, u32), MilterError> {
    if mta_version < 2 {
        return Err(MilterError::Version(mta_version));
    }
    let missing = need_actions & !mta_actions;
    if missing != 0 {
        return Err(MilterError::MissingActions(missing));
    }
    Ok((
        mta_version.min(VERSION),
        (want_actions | need_actions) & mta_actions,
        want_protocol & mta_protocol,
    ))
}
