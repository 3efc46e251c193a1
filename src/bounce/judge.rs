//! The verdict over an inspected message (`judge`): whether a bounce carries a valid tag
//! of the address it came back to, is backscatter, or cannot be settled.

use super::{Kind, Report};
use crate::core::keys::Keyring;
use crate::core::tag::{self, Verdict};
use crate::core::verdict::Rules;

/// What a checked message means for its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckVerdict {
    /// Not a bounce (or a report kept apart): deliver.
    NotABounce,
    /// A bounce of a message we sent: the recipient or the returned sender has a valid tag.
    ValidTag,
    /// A bounce to a protected address without a valid tag: `reason` says why.
    Backscatter(&'static str),
    /// A bounce the check cannot settle (no address of ours found, an auto-reply): deliver.
    Unknown(&'static str),
}

impl CheckVerdict {
    pub fn name(&self) -> &'static str {
        match self {
            CheckVerdict::NotABounce => "not-a-bounce",
            CheckVerdict::ValidTag => "bounce-with-valid-tag",
            CheckVerdict::Backscatter(_) => "backscatter",
            CheckVerdict::Unknown(_) => "unknown",
        }
    }
    pub fn reason(&self) -> &'static str {
        match self {
            CheckVerdict::NotABounce => "not-a-bounce",
            CheckVerdict::ValidTag => "valid",
            CheckVerdict::Backscatter(r) | CheckVerdict::Unknown(r) => r,
        }
    }
}

/// Judge an inspected message for `recipient` (its envelope recipient, if known). A valid
/// tag vouches only for its own address: the recipient's own tag, or a tag on the returned
/// message's sender whose address is the recipient's (an MTA that stripped the tag before
/// delivery leaves it in the returned headers). Every message we send carries a tag, so a
/// spammer can quote anyone's: a colleague's tagged Return-Path in a bounce to alice says
/// nothing about alice.
pub fn judge(report: &Report, recipient: Option<&str>, rules: &Rules, keys: &Keyring, today: i64) -> CheckVerdict {
    if !report.kind.is_bounce() {
        return CheckVerdict::NotABounce;
    }
    fn verify<'a>(a: &'a str, rules: &Rules, keys: &Keyring, today: i64) -> Option<Verdict<'a>> {
        tag::verify(a, today, rules.schemes, keys).ok()
    }
    let protected = |a: &str| crate::core::address::parse(a).is_ok_and(|x| rules.protected.contains(x.domain));
    // The recipient as the MTA resolved it, and its own tag.
    let rcpt = recipient.map(|r| match crate::core::address::normalize_path(r) {
        Ok(crate::core::address::Path::Address(a)) => Some(a.into_owned()),
        _ => None,
    });
    let mut ours: Option<&'static str> = None;
    let mut rcpt_plain: Option<String> = None;
    match &rcpt {
        // A recipient that cannot be read: the check cannot say whose bounce it is.
        Some(None) => return CheckVerdict::Unknown("unreadable-recipient"),
        Some(Some(r)) => match verify(r, rules, keys, today) {
            Some(Verdict::Valid(_)) => return CheckVerdict::ValidTag,
            Some(v @ Verdict::Expired(_)) => {
                rcpt_plain = v.authentic().map(|c| c.original.to_string());
                if rcpt_plain.as_deref().is_some_and(protected) {
                    ours = Some(v.reason());
                }
            }
            Some(Verdict::Untagged) => {
                rcpt_plain = Some(r.clone());
                if protected(r) {
                    ours = Some("untagged");
                }
            }
            // A forged or made-up tag on the recipient: whatever the message quotes.
            Some(v) if protected(r) => return CheckVerdict::Backscatter(v.reason()),
            Some(_) => return CheckVerdict::Unknown("not-protected"),
            None => return CheckVerdict::Unknown("unreadable-recipient"),
        },
        None => {}
    }
    let sender = report.original_sender.as_deref().filter(|a| *a != "<>" && !a.is_empty());
    if let Some(v) = sender.and_then(|a| verify(a, rules, keys, today)) {
        match (&v, rcpt_plain.as_deref()) {
            (Verdict::Valid(c), Some(r)) if same_address(&c.original, r) => return CheckVerdict::ValidTag,
            // Someone else's tag vouches for nobody here.
            (Verdict::Valid(_), Some(_)) if ours.is_some() => ours = Some("tag-of-another-address"),
            (Verdict::Valid(_), _) => {}
            // No recipient to compare with: the returned sender is the only address.
            (_, None) => {
                let a = v
                    .authentic()
                    .map_or_else(|| sender.unwrap_or_default().to_string(), |c| c.original.to_string());
                if protected(&a) {
                    ours = Some(v.reason());
                }
            }
            (_, Some(_)) => {}
        }
    }
    match ours {
        None if rcpt.is_none() && sender.is_none() => CheckVerdict::Unknown("no-address"),
        None if rcpt.is_none() => CheckVerdict::Unknown("no-recipient"),
        None => CheckVerdict::Unknown("not-protected"),
        // Vacation replies often go to From:, which is never tagged: not ours to refuse.
        Some(_) if report.kind == Kind::AutoReply => CheckVerdict::Unknown("auto-reply"),
        Some(reason) => CheckVerdict::Backscatter(reason),
    }
}

/// Are two addresses one mailbox? The local part compared without ASCII case (as
/// Postfix and Exim look users up), the domain canonically.
fn same_address(a: &str, b: &str) -> bool {
    let (Ok(a), Ok(b)) = (crate::core::address::parse(a), crate::core::address::parse(b)) else {
        return false;
    };
    let domain = |d| crate::core::address::canonical_domain(d).ok();
    a.local.eq_ignore_ascii_case(&b.local) && domain(a.domain).is_some() && domain(a.domain) == domain(b.domain)
}
/// The DATA check's tag question about a message: the returned sender, when it is one of
/// ours and carries a tag: Some(true) if the tag fails (a guess, counted as the proxy and
/// milter count invalid tags), Some(false) if it is authentic; None otherwise.
pub fn returned_tag_failed(report: &Report, rules: &Rules, keys: &Keyring, today: i64) -> Option<bool> {
    let a = report.original_sender.as_deref()?;
    let v = tag::verify(a, today, rules.schemes, keys).ok()?;
    let ours = crate::core::address::parse(a).is_ok_and(|x| rules.protected.contains(x.domain));
    (v != Verdict::Untagged && ours).then_some(matches!(v, Verdict::BadSignature | Verdict::UnknownKey(_) | Verdict::Malformed(_)))
}

/// The DATA check's verdict on a message for its untagged recipients, each judged on its
/// own (a tag vouches only for its own address): the worst, and whose it is. None without
/// recipients.
pub fn worst_for<'r>(report: &Report, rcpts: &'r [String], rules: &Rules, keys: &Keyring, today: i64) -> Option<(CheckVerdict, &'r str)> {
    let rank = |v: &CheckVerdict| match v {
        CheckVerdict::Backscatter(_) => 0,
        CheckVerdict::Unknown(_) => 1,
        _ => 2,
    };
    rcpts
        .iter()
        .map(|r| (judge(report, Some(r), rules, keys, today), r.as_str()))
        .min_by_key(|(v, _)| rank(v))
}
