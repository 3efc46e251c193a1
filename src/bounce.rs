//! Bounce inspection (DESIGN §7): is a message a delivery report, a plain-text bounce, an
//! auto-reply or a disposition notification, and whose message does it return?
//!
//! Total on any input: whatever cannot be read is `NotABounce` with no sender, and the
//! message is delivered. Only the first `limit` octets are looked at.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use crate::address::DomainSet;
use crate::keys::KeySet;
use crate::tag::{self, Verdict};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RFC 3464 multipart/report; report-type=delivery-status.
    DeliveryReport,
    /// A non-delivery or delay notice in another shape (qmail, old Sendmail, providers).
    PlainBounce,
    /// RFC 3834 auto-reply, vacation, challenge-response.
    AutoReply,
    /// RFC 8098 message disposition notification (kept apart: not a bounce).
    Disposition,
    /// RFC 5965 feedback (abuse) report (not a bounce).
    FeedbackReport,
    NotABounce,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::DeliveryReport => "delivery-report",
            Kind::PlainBounce => "plain-bounce",
            Kind::AutoReply => "auto-reply",
            Kind::Disposition => "disposition",
            Kind::FeedbackReport => "feedback-report",
            Kind::NotABounce => "not-a-bounce",
        }
    }

    /// Mail a tag check applies to: it comes back because of a message we sent.
    pub fn is_bounce(self) -> bool {
        matches!(self, Kind::DeliveryReport | Kind::PlainBounce | Kind::AutoReply)
    }
}

/// Where the original sender was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ReturnPath,
    DsnField,
    From,
    To,
    None,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::ReturnPath => "return-path",
            Source::DsnField => "dsn-field",
            Source::From => "from",
            Source::To => "to",
            Source::None => "none",
        }
    }
}

/// The inspection's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kind: Kind,
    /// The envelope sender of the message returned, as the bounce shows it.
    pub original_sender: Option<String>,
    pub source: Source,
    /// The envelope recipient as the delivering MTA recorded it (X-Original-To,
    /// Delivered-To), for a check that was not told the recipient.
    pub envelope_recipient: Option<String>,
}

/// Inspect a message (at most `limit` octets of it). `null_sender`: it came with
/// `MAIL FROM:<>`, if known.
pub fn inspect(raw: &[u8], limit: usize, null_sender: bool) -> Report {
    let mut raw = &raw[..raw.len().min(limit)];
    // An mbox "From " line before the headers (a message saved from a mailbox).
    if raw.starts_with(b"From ") {
        let end = raw.iter().position(|&b| b == b'\n').map_or(raw.len(), |i| i + 1);
        raw = &raw[end..];
    }
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Report {
            kind: Kind::NotABounce,
            original_sender: None,
            source: Source::None,
            envelope_recipient: None,
        };
    };
    let envelope_recipient = ["X-Original-To", "Delivered-To"]
        .iter()
        .find_map(|h| msg.header_raw(*h).and_then(bare));
    let kind = classify(&msg, null_sender);
    if kind == Kind::NotABounce {
        return Report {
            kind,
            original_sender: None,
            source: Source::None,
            envelope_recipient,
        };
    }
    let (original_sender, source) = match original_sender(&msg) {
        Some((a, s)) => (Some(a), s),
        None if kind == Kind::AutoReply => match first_address(msg.to()) {
            Some(a) => (Some(a), Source::To),
            None => (None, Source::None),
        },
        None => (None, Source::None),
    };
    Report {
        kind,
        original_sender,
        source,
        envelope_recipient,
    }
}

fn header<'a>(msg: &'a Message<'_>, name: &'static str) -> Option<&'a str> {
    msg.header_raw(name).map(str::trim)
}

/// Subjects MTAs and providers give their bounces and delay notices (lower case).
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "undelivered mail",
    "delivery status notification",
    "delivery failure",
    "delivery failed",
    "delivery has failed",
    "failure notice",
    "returned mail",
    "mail delivery failed",
    "mail delivery failure",
    "mail delivery system",
    "non-delivery",
    "nondeliverable",
    "non remis",
    "delivery notification",
    "could not send message",
    "delayed mail",
    "warning: message",
    "mail system error",
    "message not delivered",
    "returned to sender",
    "delivery problem",
    "unzustellbar",
    "error sending message",
    "failed delivery",
    "delivery status",
    "mail failure",
    "returned message",
    "エラー",
    "配信でき",
    "送信できません",
];

/// Phrases in a body that only delivery software writes (lower case).
const BOUNCE_PHRASES: &[&str] = &[
    "this message was created automatically by mail delivery software",
    "could not be delivered to one or more recipients",
    "i'm afraid i wasn't able to deliver",
    "i'm sorry to have to inform you that your message could not",
    "the following addresses had permanent fatal errors",
    "delivery to the following recipient",
    "your message could not be delivered",
    "this is the mail system at host",
    "unable to deliver your message",
    "delivery has failed to these recipients",
    "the original message was received at",
    "message could not be delivered",
    "permanent error",
    "hi. this is the qmail-send program",
];

/// Addresses delivery software sends as (local parts, lower case).
fn daemon_sender(msg: &Message<'_>) -> bool {
    let from = first_address(msg.from()).unwrap_or_default().to_ascii_lowercase();
    let local = from.split('@').next().unwrap_or("");
    matches!(local, "mailer-daemon" | "postmaster" | "mail-daemon" | "mailerdaemon" | "mdaemon")
        || local.starts_with("mailer-daemon")
        || local.contains("bounce")
        || from.contains("mail delivery")
        || header(msg, "From").is_some_and(|f| {
            let f = f.to_ascii_lowercase();
            f.contains("mail delivery") || f.contains("mailer-daemon") || f.contains("postmaster")
        })
}

fn classify(msg: &Message<'_>, null_sender: bool) -> Kind {
    // The report itself, or one wrapped in a multipart/mixed by a gateway.
    for part in msg.parts.iter().take(8) {
        let Some(ct) = part.content_type() else { continue };
        if !(ct.ctype().eq_ignore_ascii_case("multipart") && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))) {
            continue;
        }
        match ct.attribute("report-type").map(str::to_ascii_lowercase).as_deref() {
            Some("delivery-status") => return Kind::DeliveryReport,
            Some("disposition-notification") => return Kind::Disposition,
            Some("feedback-report") => return Kind::FeedbackReport,
            // A report without its type: its parts say what it is.
            None if has_part(msg, "delivery-status") => return Kind::DeliveryReport,
            _ => {}
        }
    }
    let null_sender =
        null_sender || header(msg, "Return-Path").is_some_and(|r| r.trim_matches(|c| c == '<' || c == '>' || c == ' ').is_empty());
    let subject = msg.subject().unwrap_or("").to_ascii_lowercase();
    let reply_subject = subject.starts_with("re:") || subject.starts_with("fwd:") || subject.starts_with("fw:");
    let bounce_subject = !reply_subject && BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s));
    let daemon = daemon_sender(msg);
    // Exim's own marker of a bounce.
    if msg.header_raw("X-Failed-Recipients").is_some() {
        return Kind::PlainBounce;
    }
    if (daemon || null_sender) && (bounce_subject || body_has_bounce_phrase(msg) || returns_a_message(msg)) {
        return Kind::PlainBounce;
    }
    if is_auto_reply(msg, &subject) {
        return Kind::AutoReply;
    }
    Kind::NotABounce
}

/// A part of type `*/subtype` anywhere in the message.
fn has_part(msg: &Message<'_>, subtype: &str) -> bool {
    msg.parts.iter().any(|p| {
        p.content_type()
            .and_then(|c| c.subtype())
            .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
    })
}

/// A delivery-status part, or a returned message, inside a non-report multipart.
fn returns_a_message(msg: &Message<'_>) -> bool {
    msg.parts.iter().skip(1).any(|p| {
        matches!(p.body, PartType::Message(_))
            || p.content_type().is_some_and(|c| {
                let sub = c.subtype().unwrap_or("");
                sub.eq_ignore_ascii_case("delivery-status") || sub.eq_ignore_ascii_case("rfc822-headers")
            })
    })
}

fn body_has_bounce_phrase(msg: &Message<'_>) -> bool {
    msg.text_bodies().take(4).any(|p| {
        p.text_contents().is_some_and(|t| {
            // Lower-cased once per part, not once per phrase.
            let head = t[..floor(t, 8192)].to_ascii_lowercase();
            BOUNCE_PHRASES.iter().any(|ph| head.contains(ph))
        })
    })
}

/// The largest char boundary at or below `n`.
fn floor(t: &str, n: usize) -> usize {
    let mut n = n.min(t.len());
    while !t.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// RFC 3834 and the common vacation markers.
fn is_auto_reply(msg: &Message<'_>, subject: &str) -> bool {
    if let Some(a) = header(msg, "Auto-Submitted") {
        let a = a.to_ascii_lowercase();
        if a.starts_with("auto-replied") {
            return true;
        }
    }
    if ["X-Autoreply", "X-Autorespond", "X-Vacation"]
        .iter()
        .any(|h| msg.header_raw(*h).is_some())
    {
        return true;
    }
    if header(msg, "Precedence").is_some_and(|p| p.eq_ignore_ascii_case("auto_reply")) {
        return true;
    }
    if header(msg, "X-Auto-Response-Suppress").is_some() && subject.starts_with("automatic reply") {
        return true;
    }
    [
        "out of office",
        "automatic reply",
        "auto:",
        "autoreply",
        "auto-reply",
        "vacation",
        "abwesenheit",
        "absence",
    ]
    .iter()
    .any(|s| subject.starts_with(s))
}

fn first_address(a: Option<&mail_parser::Address<'_>>) -> Option<String> {
    a?.first()?.address().map(str::to_string)
}

/// `<a@b>` or `a@b` or `rfc822; a@b` to `a@b`; `<>` stays `<>`.
fn bare(v: &str) -> Option<String> {
    let v = v.trim();
    let v = match v.split_once(';') {
        Some((t, rest)) if t.trim().eq_ignore_ascii_case("rfc822") => rest.trim(),
        _ => v,
    };
    if let (Some(s), Some(e)) = (v.find('<'), v.rfind('>')) {
        if s < e {
            let inner = v[s + 1..e].trim();
            return Some(if inner.is_empty() { "<>".into() } else { inner.to_string() });
        }
    }
    let word = v.split_whitespace().next()?;
    word.contains('@').then(|| word.to_string())
}

/// A header's value in a block of header lines (unfolded, first occurrence).
fn header_in(block: &str, name: &str) -> Option<String> {
    let mut lines = block.lines().peekable();
    while let Some(line) = lines.next() {
        let l = line.trim_start_matches(['>', ' ', '\t']);
        let Some((n, v)) = l.split_once(':') else { continue };
        if !n.trim().eq_ignore_ascii_case(name) {
            continue;
        }
        let mut value = v.to_string();
        while let Some(next) = lines.peek() {
            if next.starts_with([' ', '\t']) && !next.trim().is_empty() {
                value.push(' ');
                value.push_str(next.trim());
                lines.next();
            } else {
                break;
            }
        }
        return Some(value);
    }
    None
}

/// The returned message's sender: embedded message, headers part, DSN fields, then
/// headers quoted in a text part.
fn original_sender(msg: &Message<'_>) -> Option<(String, Source)> {
    let mut from = None;
    let mut dsn = None;
    for part in msg.parts.iter().skip(1) {
        match &part.body {
            PartType::Message(inner) => {
                if let Some(rp) = inner.header_raw("Return-Path").and_then(bare) {
                    return Some((rp, Source::ReturnPath));
                }
                if from.is_none() {
                    from = first_address(inner.from());
                }
            }
            PartType::Text(t) => {
                let ct = part.content_type();
                let sub = ct.and_then(|c| c.subtype()).unwrap_or("").to_ascii_lowercase();
                let ctype = ct.map(|c| c.ctype().to_ascii_lowercase()).unwrap_or_default();
                if sub == "delivery-status" {
                    dsn = dsn.or_else(|| {
                        ["X-Postfix-Sender", "X-Original-Sender", "Original-Sender"]
                            .iter()
                            .find_map(|h| header_in(t, h).and_then(|v| bare(&v)))
                    });
                } else if sub == "rfc822-headers" || sub == "rfc822" || ctype == "message" {
                    if let Some(rp) = header_in(t, "Return-Path").and_then(|v| bare(&v)) {
                        return Some((rp, Source::ReturnPath));
                    }
                    from = from.or_else(|| header_in(t, "From").and_then(|v| bare(&v)));
                }
            }
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                // message/delivery-status may arrive as a non-text part.
                let sub = part.content_type().and_then(|c| c.subtype()).unwrap_or("").to_ascii_lowercase();
                if sub == "delivery-status" {
                    let t = String::from_utf8_lossy(b);
                    dsn = dsn.or_else(|| header_in(&t, "X-Postfix-Sender").and_then(|v| bare(&v)));
                }
            }
            _ => {}
        }
    }
    if let Some(d) = dsn {
        return Some((d, Source::DsnField));
    }
    // Headers quoted in a text body (plain bounces): from the first Received: or
    // Return-Path: line on.
    let root_text = match &msg.parts.first()?.body {
        PartType::Text(t) => Some(t.as_ref()),
        _ => None,
    };
    for t in root_text.into_iter().chain(msg.parts.iter().skip(1).filter_map(|p| match &p.body {
        PartType::Text(t) => Some(t.as_ref()),
        _ => None,
    })) {
        let start = t.lines().position(|l| {
            let l = l.trim_start_matches(['>', ' ', '\t']).to_ascii_lowercase();
            l.starts_with("return-path:") || l.starts_with("received:")
        });
        if let Some(start) = start {
            let quoted: String = t.lines().skip(start).take(200).collect::<Vec<_>>().join("\n");
            if let Some(rp) = header_in(&quoted, "Return-Path").and_then(|v| bare(&v)) {
                return Some((rp, Source::ReturnPath));
            }
            from = from.or_else(|| header_in(&quoted, "From").and_then(|v| bare(&v)));
        }
    }
    from.map(|f| (f, Source::From))
}

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

/// Judge an inspected message for `recipient` (its envelope recipient, if known): a valid
/// tag on the recipient or on the returned message's sender makes it ours (an MTA that
/// stripped the tag before delivery leaves it in the returned headers).
pub fn judge(report: &Report, recipient: Option<&str>, keys: &KeySet, protected: &DomainSet, today: i64) -> CheckVerdict {
    if !report.kind.is_bounce() {
        return CheckVerdict::NotABounce;
    }
    let candidates: Vec<&str> = [recipient, report.original_sender.as_deref()]
        .into_iter()
        .flatten()
        .filter(|a| *a != "<>" && !a.is_empty())
        .collect();
    let mut ours: Option<&'static str> = None;
    for a in &candidates {
        let Ok(v) = tag::verify(a, today, |id| keys.get(id)) else {
            continue;
        };
        if v.is_valid() {
            return CheckVerdict::ValidTag;
        }
        let domain = match &v {
            Verdict::Expired(c) => crate::address::parse(&c.original).map(|x| x.domain.to_string()).ok(),
            _ => crate::address::parse(a).map(|x| x.domain.to_string()).ok(),
        };
        if ours.is_none() && domain.is_some_and(|d| protected.contains(&d)) {
            ours = Some(v.reason());
        }
    }
    match ours {
        None if candidates.is_empty() => CheckVerdict::Unknown("no-address"),
        None => CheckVerdict::Unknown("not-protected"),
        // Vacation replies often go to From:, which is never tagged: not ours to refuse.
        Some(_) if report.kind == Kind::AutoReply => CheckVerdict::Unknown("auto-reply"),
        Some(reason) => CheckVerdict::Backscatter(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_header_values() {
        assert_eq!(
            bare(" <prvs=0787ed3775=user@example.org>").as_deref(),
            Some("prvs=0787ed3775=user@example.org")
        );
        assert_eq!(bare("rfc822; bob@example.com").as_deref(), Some("bob@example.com"));
        assert_eq!(bare("<>").as_deref(), Some("<>"));
        assert_eq!(bare("Bob Smith <bob@x.org>").as_deref(), Some("bob@x.org"));
        assert_eq!(bare("nobody"), None);
    }

    #[test]
    fn garbage_is_not_a_bounce() {
        for input in [
            &b""[..],
            b"\0\0\xff",
            b"Content-Type: multipart/report; boundary=\"x\"\r\n\r\n--x\r\n",
        ] {
            let r = inspect(input, 1 << 20, false);
            assert!(matches!(r.kind, Kind::NotABounce | Kind::DeliveryReport), "{r:?}");
        }
    }
}
