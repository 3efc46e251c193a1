//! Bounce inspection (DESIGN §7): is a message a delivery report, a plain-text bounce, an
//! auto-reply or a disposition notification, and whose message does it return?
//!
//! Total on any input: whatever cannot be read is `NotABounce` with no sender, and the
//! message is delivered. Only the first `limit` octets are looked at.

use std::borrow::Cow;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use crate::core::keys::KeySet;
use crate::core::tag::{self, Verdict};
use crate::core::verdict::Rules;

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
    // The delivering MTA puts its own field on top, above any a sender forged: the
    // topmost of these is the one to believe (Postfix X-Original-To and Delivered-To,
    // Exim's Envelope-to).
    let envelope_recipient = msg
        .headers_raw()
        .find(|(name, _)| {
            ["X-Original-To", "Delivered-To", "Envelope-to"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
        })
        .and_then(|(_, value)| bare(value));
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
    "could not be delivered to",
    "unable to deliver message to the following",
    // RFC 5321's text for 550 and 450 replies, which gateways quote.
    "requested action not taken",
];

/// What mailing-list managers (fml, Mailman) answer a post from a non-member with (lower case).
const LIST_REJECTION_PHRASES: &[&str] = &[
    "you are not a member of this mailing list",
    "you are not allowed to post to this mailing list",
];

/// Addresses delivery software sends as (local parts, lower case).
fn daemon_sender(msg: &Message<'_>) -> bool {
    let from = first_address(msg.from()).unwrap_or_default().to_ascii_lowercase();
    let local = from.split('@').next().unwrap_or("");
    matches!(
        local,
        "mailer-daemon" | "postmaster" | "post_master" | "mail-daemon" | "mailerdaemon" | "mdaemon"
    ) || local.starts_with("mailer-daemon")
        || local.contains("bounce")
        || from.contains("mail delivery")
        || header(msg, "From").is_some_and(|f| {
            let f = f.to_ascii_lowercase();
            // `From: <>`: only delivery software writes a null author.
            f == "<>" || f.contains("mail delivery") || f.contains("mailer-daemon") || f.contains("postmaster")
        })
}

/// From: MAILER-DAEMON (with or without a domain or a display name).
fn mailer_daemon_from(msg: &Message<'_>) -> bool {
    header(msg, "From").is_some_and(|f| f.to_ascii_lowercase().contains("mailer-daemon"))
}

/// Microsoft's junk-mail reports (JMRP): a multipart/mixed, not a multipart/report, with
/// the Subject "complaint about message from <IP address>" and the reported message attached.
fn is_jmrp(msg: &Message<'_>) -> bool {
    let subject = msg.subject().unwrap_or("").trim();
    let Some(prefix) = subject
        .get(..29)
        .filter(|p| p.eq_ignore_ascii_case("complaint about message from "))
    else {
        return false;
    };
    let ip = subject[prefix.len()..].trim().trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>().is_ok() && msg.parts.iter().skip(1).any(|p| matches!(p.body, PartType::Message(_)))
}

/// A mailing-list manager returning a post from a non-member: it comes from the list's
/// administrative address (`*-admin`, `*-owner`, `*-request`, `owner-*`), carries the
/// list manager's headers (`List-*`, `Mailing-List`, `X-MLServer`, `X-Mailman-Version`)
/// and says so at the very start of its text (not a list owner's own reply).
fn list_rejection(msg: &Message<'_>) -> bool {
    let from = first_address(msg.from()).unwrap_or_default().to_ascii_lowercase();
    let local = from.split('@').next().unwrap_or("");
    let admin = local.ends_with("-admin") || local.ends_with("-owner") || local.ends_with("-request") || local.starts_with("owner-");
    let list_headers = || {
        msg.headers().iter().any(|h| {
            let n = h.name();
            starts_with_ci(n, "list-")
                || ["Mailing-List", "X-MLServer", "X-Mailman-Version"]
                    .iter()
                    .any(|x| n.eq_ignore_ascii_case(x))
        })
    };
    admin
        && list_headers()
        && msg.text_bodies().take(1).any(|p| {
            p.text_contents().is_some_and(|t| {
                let head = t.trim_start();
                let head = head[..floor(head, 200)].to_ascii_lowercase();
                LIST_REJECTION_PHRASES.iter().any(|ph| head.contains(ph))
            })
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
    if is_jmrp(msg) {
        return Kind::FeedbackReport;
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
    // The null sender and From: MAILER-DAEMON: delivery software's own notice.
    if null_sender && mailer_daemon_from(msg) {
        return Kind::PlainBounce;
    }
    // A provider's notice from an ordinary (no-reply) address: a bounce subject, the
    // wording of delivery software, and the recipient's own message returned (not a
    // person passing on a bounce or forwarding a message of theirs).
    if bounce_subject && body_has_bounce_phrase(msg) && returns_recipients_message(msg) {
        return Kind::PlainBounce;
    }
    if list_rejection(msg) {
        return Kind::PlainBounce;
    }
    if is_auto_reply(msg, &subject) {
        return Kind::AutoReply;
    }
    Kind::NotABounce
}

/// An attached message (or its headers) sent by this message's recipient: what a bounce
/// returns is the recipient's own mail. Addresses compare without case and without a
/// BATV tag (`prvs=...=user@domain` is `user@domain`).
fn returns_recipients_message(msg: &Message<'_>) -> bool {
    let untag = |a: &str| tag::strip(a).unwrap_or(Cow::Borrowed(a)).to_ascii_lowercase();
    let recipients: Vec<String> = msg
        .to()
        .into_iter()
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address())
        .map(&untag)
        .chain(
            ["X-Original-To", "Delivered-To"]
                .iter()
                .filter_map(|h| msg.header_raw(*h).and_then(bare))
                .map(|a| untag(&a)),
        )
        .take(16)
        .collect();
    let ours = |a: Option<String>| a.is_some_and(|a| recipients.contains(&untag(&a)));
    msg.parts.iter().skip(1).any(|p| match &p.body {
        PartType::Message(inner) => ours(inner.header_raw("Return-Path").and_then(bare)) || ours(first_address(inner.from())),
        PartType::Text(t)
            if p.content_type()
                .and_then(|c| c.subtype())
                .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers")) =>
        {
            ours(header_in(t, "Return-Path").and_then(|v| bare(&v))) || ours(header_in(t, "From").and_then(|v| bare(&v)))
        }
        _ => false,
    })
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
    let has = |t: &str| {
        // Lower-cased once per part, not once per phrase.
        let head = t[..floor(t, 8192)].to_ascii_lowercase();
        BOUNCE_PHRASES.iter().any(|ph| head.contains(ph))
    };
    msg.text_bodies().take(4).any(|p| p.text_contents().is_some_and(has))
        || msg.parts.iter().filter_map(unparsed_multipart).take(2).any(|t| has(&t))
}

/// A multipart part the parser could not split (its boundary missing, e.g. on an
/// unfolded line): its content, read as text.
fn unparsed_multipart<'a>(part: &'a mail_parser::MessagePart<'_>) -> Option<Cow<'a, str>> {
    match &part.body {
        PartType::Binary(b) | PartType::InlineBinary(b)
            if part.content_type().is_some_and(|c| c.ctype().eq_ignore_ascii_case("multipart")) =>
        {
            Some(String::from_utf8_lossy(&b[..b.len().min(TEXT_SCAN)]))
        }
        _ => None,
    }
}

/// The largest char boundary at or below `n`.
pub(crate) fn floor(t: &str, n: usize) -> usize {
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
    let (typed, v) = match v.split_once(';') {
        Some((t, rest)) if t.trim().eq_ignore_ascii_case("rfc822") => (true, rest.trim()),
        _ => (false, v),
    };
    if let (Some(s), Some(e)) = (v.find('<'), v.rfind('>')) {
        if s < e {
            let inner = v[s + 1..e].trim();
            return Some(if inner.is_empty() { "<>".into() } else { inner.to_string() });
        }
    }
    let word = v.split_whitespace().next()?;
    // A DSN field typed rfc822 holds an address even without a domain (a local sender).
    (typed || word.contains('@')).then(|| word.to_string())
}

/// A header's value in a block of header lines (unfolded, first occurrence).
fn header_in(block: &str, name: &str) -> Option<String> {
    let [value] = headers_in(block, [name], usize::MAX);
    value
}

/// The values of the header fields `names` in a block of header lines (unfolded, first
/// occurrence of each), in one pass over at most `max_lines` lines.
fn headers_in<const N: usize>(block: &str, names: [&str; N], max_lines: usize) -> [Option<String>; N] {
    let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut lines = block.lines().take(max_lines).peekable();
    while let Some(line) = lines.next() {
        let l = line.trim_start_matches(['>', ' ', '\t']);
        let Some((n, v)) = l.split_once(':') else { continue };
        let n = n.trim();
        let Some(slot) = names.iter().position(|x| n.eq_ignore_ascii_case(x)).and_then(|k| found.get_mut(k)) else {
            continue;
        };
        if slot.is_some() {
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
        *slot = Some(value);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
}

/// How many returned messages that are bounces themselves are looked into.
const NESTED_BOUNCES: usize = 2;
/// Lines of quoted headers looked at in a text part.
const QUOTED_LINES: usize = 200;
/// Octets of an unparsed part read as text.
const TEXT_SCAN: usize = 64 * 1024;
/// Octets of a text part searched for envelope clauses.
const CLAUSE_SCAN: usize = 16 * 1024;
/// Header fields of a delivery-status part that carry the envelope sender (Postfix,
/// Exchange, SendGrid: the MAIL FROM it used, its VERP address).
const DSN_SENDER_FIELDS: [&str; 4] = ["X-Postfix-Sender", "X-Original-Sender", "Original-Sender", "X-SendGrid-Sender"];

/// The returned message's sender: embedded message, headers part, DSN fields, then
/// headers and envelope clauses in a text part.
fn original_sender(msg: &Message<'_>) -> Option<(String, Source)> {
    sender_in(msg, NESTED_BOUNCES)
}

/// Weaker findings, kept until nothing better turns up.
#[derive(Default)]
struct Candidates {
    /// A DSN sender field quoted in a text part.
    quoted_dsn: Option<String>,
    /// An envelope clause in a bounce's text (`MAIL FROM:`, `Original Sender:`, ...).
    clause: Option<String>,
    /// The returned message's From.
    from: Option<String>,
}

fn sender_in(msg: &Message<'_>, depth: usize) -> Option<(String, Source)> {
    let mut c = Candidates::default();
    let mut dsn = None;
    for part in msg.parts.iter().skip(1) {
        // A returned message pasted right after a boundary without a blank line: its
        // header block was read as the part's headers.
        if let Some(rp) = part_header_raw(msg, part, "Return-Path").and_then(bare) {
            if rp != "<>" {
                return Some((rp, Source::ReturnPath));
            }
        }
        let ct = part.content_type();
        let sub = ct.and_then(|c| c.subtype()).unwrap_or("").to_ascii_lowercase();
        let ctype = ct.map(|c| c.ctype().to_ascii_lowercase()).unwrap_or_default();
        match &part.body {
            PartType::Message(inner) => {
                let rp = inner.header_raw("Return-Path").and_then(bare);
                if let Some(rp) = rp.as_ref().filter(|r| *r != "<>") {
                    return Some((rp.clone(), Source::ReturnPath));
                }
                // The returned message is a bounce itself (a null Return-Path, or none and
                // it reads as one): the message it returns is the one that was sent.
                if depth > 0
                    && (rp.is_some() || daemon_sender(inner) && matches!(classify(inner, false), Kind::DeliveryReport | Kind::PlainBounce))
                {
                    match sender_in(inner, depth - 1) {
                        Some(found @ (_, Source::ReturnPath | Source::DsnField)) => return Some(found),
                        Some((a, _)) => {
                            c.from.get_or_insert(a);
                            continue;
                        }
                        None => {}
                    }
                }
                if c.from.is_none() {
                    c.from = inner_from(inner);
                }
            }
            PartType::Text(t) => {
                if sub == "delivery-status" {
                    dsn = dsn.or_else(|| dsn_sender(t));
                } else if sub == "rfc822-headers" || sub == "rfc822" || ctype == "message" {
                    let q = quoted_headers(t, 0);
                    if let Some(rp) = q.return_path.filter(|r| r != "<>") {
                        return Some((rp, Source::ReturnPath));
                    }
                    c.quoted_dsn = c.quoted_dsn.or(q.dsn);
                    c.from = c.from.or(q.from);
                }
            }
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                // message/delivery-status may arrive as a non-text part; message/partial
                // (a returned fragment) and unreadable returned messages too.
                if sub == "delivery-status" {
                    dsn = dsn.or_else(|| dsn_sender(&String::from_utf8_lossy(b)));
                } else if ctype == "message" || sub == "rfc822-headers" {
                    let t = String::from_utf8_lossy(&b[..b.len().min(TEXT_SCAN)]);
                    let q = quoted_headers(&t, 0);
                    if let Some(rp) = q.return_path.filter(|r| r != "<>") {
                        return Some((rp, Source::ReturnPath));
                    }
                    c.quoted_dsn = c.quoted_dsn.or(q.dsn);
                    c.from = c.from.or(q.from);
                }
            }
            _ => {}
        }
    }
    if let Some(d) = dsn {
        return Some((d, Source::DsnField));
    }
    // A plain bounce's text: headers it quotes, envelope clauses in its prose.
    let root_text = match &msg.parts.first()?.body {
        PartType::Text(t) => Some(t.as_ref()),
        _ => None,
    };
    let texts: Vec<Cow<'_, str>> = root_text
        .map(Cow::Borrowed)
        .into_iter()
        .chain(msg.parts.iter().skip(1).filter_map(|p| match &p.body {
            PartType::Text(t) => Some(Cow::Borrowed(t.as_ref())),
            _ => unparsed_multipart(p),
        }))
        .collect();
    for t in &texts {
        if let Some(start) = quoted_start(t) {
            let q = quoted_headers(t, start);
            match q.return_path {
                Some(rp) if rp != "<>" => return Some((rp, Source::ReturnPath)),
                _ => {}
            }
            c.quoted_dsn = c.quoted_dsn.or(q.dsn);
            c.from = c.from.or(q.from);
        }
        if c.clause.is_none() {
            c.clause = envelope_clause(t);
        }
    }
    c.quoted_dsn
        .or(c.clause)
        .map(|a| (a, Source::DsnField))
        .or(c.from.map(|a| (a, Source::From)))
        // Weakest, and looked for only when nothing else is found.
        .or_else(|| texts.iter().find_map(|t| envelope_from(t)).map(|a| (a, Source::DsnField)))
}

/// A header of a MIME part, as written.
fn part_header_raw<'a>(msg: &'a Message<'_>, part: &mail_parser::MessagePart<'_>, name: &str) -> Option<&'a str> {
    let h = part.headers.iter().find(|h| h.name().eq_ignore_ascii_case(name))?;
    let raw = msg.raw_message.get(h.offset_start as usize..h.offset_end as usize)?;
    std::str::from_utf8(raw).ok()
}

/// The From of a returned message, read from its header block when the parser's reading
/// is no address (a display name that looks like one, a header block it could not
/// finish, a stray blank line before the headers).
fn inner_from(inner: &Message<'_>) -> Option<String> {
    first_address(inner.from()).filter(|a| a.matches('@').count() == 1).or_else(|| {
        let raw = inner.raw_message();
        let t = String::from_utf8_lossy(&raw[..raw.len().min(TEXT_SCAN)]);
        let q = quoted_headers(&t, 0);
        q.return_path.filter(|r| r != "<>").or(q.from)
    })
}

fn dsn_sender(t: &str) -> Option<String> {
    headers_in(t, DSN_SENDER_FIELDS, usize::MAX)
        .into_iter()
        .flatten()
        .find_map(|v| bare(&v))
}

/// `s` starts with `prefix`, ASCII case ignored.
fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Where quoted headers begin in a text: the first `Return-Path:` or `Received:` line, or
/// a `From:` line followed by another header of a message (`To:`, `Subject:`, ...), as
/// in "Original message: From: ... Subject: ...".
fn quoted_start(t: &str) -> Option<usize> {
    let mut prev_from = None;
    for (i, line) in t.lines().enumerate().take(QUOTED_LINES * 10) {
        let l = line.trim_start_matches(['>', ' ', '\t']);
        if starts_with_ci(l, "return-path:") || starts_with_ci(l, "received:") {
            return Some(i);
        }
        if let Some(f) = prev_from.take() {
            if ["to:", "subject:", "date:", "message-id:", "cc:", "sent:"]
                .iter()
                .any(|h| starts_with_ci(l, h))
            {
                return Some(f);
            }
        }
        if starts_with_ci(l, "from:") {
            prev_from = Some(i);
        }
    }
    None
}

struct Quoted {
    return_path: Option<String>,
    dsn: Option<String>,
    from: Option<String>,
}

/// The sender fields of the headers quoted from line `start` of a text on.
fn quoted_headers(t: &str, start: usize) -> Quoted {
    let offset: usize = t.split_inclusive('\n').take(start).map(str::len).sum();
    let [return_path, from, d1, d2, d3, d4] = headers_in(
        t.get(offset..).unwrap_or(""),
        [
            "Return-Path",
            "From",
            DSN_SENDER_FIELDS[0],
            DSN_SENDER_FIELDS[1],
            DSN_SENDER_FIELDS[2],
            DSN_SENDER_FIELDS[3],
        ],
        QUOTED_LINES,
    );
    let return_path = return_path.and_then(|v| bare(&v));
    // A null Return-Path: the quoted message is a bounce; what it reports is the sender.
    let dsn = if return_path.as_deref() == Some("<>") {
        [d1, d2, d3, d4].into_iter().flatten().find_map(|v| bare(&v))
    } else {
        None
    };
    Quoted {
        return_path,
        dsn,
        from: from.and_then(|v| bare(&v)),
    }
}

/// The address right after `pos` in `t`: `<a@b>` or a bare word with an `@`, past
/// separators (`:`, `=`, quotes, "was"); `<>` and words without `@` are not addresses.
fn address_at(t: &str, pos: usize) -> Option<String> {
    let rest = t.get(pos..)?;
    // Bounded: an address is at most a few hundred octets away.
    let rest = &rest[..floor(rest, 400)];
    let rest = rest.trim_start_matches([' ', '\t', ':', '=', '"', '\'']);
    let rest = ["was ", "is "]
        .iter()
        .find_map(|w| rest.strip_prefix(w))
        .unwrap_or(rest)
        .trim_start();
    let word = if let Some(r) = rest.strip_prefix(['<', '[']) {
        &r[..r.find(['>', ']', '\n'])?]
    } else {
        &rest[..rest
            .find(|c: char| c.is_whitespace() || "<>\",;()[]".contains(c))
            .unwrap_or(rest.len())]
    };
    let word = word.trim();
    (word.len() <= 320 && word.contains('@') && !word.contains(char::is_whitespace)).then(|| word.to_string())
}

/// An envelope clause in a bounce's prose: an SMTP transcript's `MAIL FROM:`, "Original
/// Sender:", Exim's log fields `F=<sender> T=<recipient>`, Sendmail's "The original
/// message was received at DATE from ADDRESS".
fn envelope_clause(t: &str) -> Option<String> {
    let t = &t[..floor(t, CLAUSE_SCAN)];
    // Lower-cased once; ASCII case folding keeps every offset.
    let low = t.to_ascii_lowercase();
    ["mail from:", "original sender:"]
        .iter()
        .find_map(|p| low.match_indices(p).take(64).find_map(|(i, m)| address_at(t, i + m.len())))
        .or_else(|| exim_log_sender(t, &low))
        .or_else(|| {
            let (i, m) = low.match_indices("original message was received at").next()?;
            let next = t.get(i + m.len()..)?.split('\n').nth(1)?.trim_start();
            starts_with_ci(next, "from ").then(|| address_at(next, 5)).flatten()
        })
}

/// `envelope-from <a@b>` (Received lines, Received-SPF) or "envelope sender" (prose).
fn envelope_from(t: &str) -> Option<String> {
    let t = &t[..floor(t, CLAUSE_SCAN)];
    let low = t.to_ascii_lowercase();
    ["envelope-from", "envelope sender", "envelope-sender"]
        .iter()
        .find_map(|p| low.match_indices(p).take(64).find_map(|(i, m)| address_at(t, i + m.len())))
}

/// Exim's log fields quoted in a diagnostic: `F=<sender>` (or `F=[sender]`) followed by
/// `T=` on the same line.
fn exim_log_sender(t: &str, low: &str) -> Option<String> {
    let bytes = low.as_bytes();
    low.match_indices("f=")
        // `F=` as a word of its own (not `href=`), then `<` or `[`: cheap tests first.
        .filter(|(i, _)| {
            let before = i.checked_sub(1).and_then(|b| bytes.get(b));
            !before.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') && matches!(bytes.get(i + 2), Some(b'<' | b'['))
        })
        .take(64)
        .find_map(|(i, _)| {
            let after = low.get(i + 2..)?;
            let line = after[..floor(after, 400)].split('\n').next().unwrap_or("");
            if !line.contains(" t=") {
                return None;
            }
            address_at(t, i + 2)
        })
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

/// Judge an inspected message for `recipient` (its envelope recipient, if known). A valid
/// tag vouches only for its own address: the recipient's own tag, or a tag on the returned
/// message's sender whose address is the recipient's (an MTA that stripped the tag before
/// delivery leaves it in the returned headers). Every message we send carries a tag, so a
/// spammer can quote anyone's: a colleague's tagged Return-Path in a bounce to alice says
/// nothing about alice.
pub fn judge(report: &Report, recipient: Option<&str>, rules: &Rules, keys: &KeySet, today: i64) -> CheckVerdict {
    if !report.kind.is_bounce() {
        return CheckVerdict::NotABounce;
    }
    fn verify<'a>(a: &'a str, rules: &Rules, keys: &KeySet, today: i64) -> Option<Verdict<'a>> {
        tag::verify(a, today, rules.schemes, |id| keys.get(id)).ok()
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

    fn clauses(t: &str) -> (Option<String>, Option<String>) {
        (envelope_clause(t), envelope_from(t))
    }

    #[test]
    fn envelope_clauses_in_prose() {
        let some = |a: &str| Some(a.to_string());
        assert_eq!(clauses(">>> MAIL From:<a@x.org> SIZE=12\n<<< 250 ok").0, some("a@x.org"));
        assert_eq!(clauses("  MAIL FROM: a@x.org\n  RCPT TO: b@y.org").0, some("a@x.org"));
        // A null MAIL FROM is no sender; the next clause is.
        assert_eq!(clauses("MAIL FROM:<> SIZE=1\nOriginal Sender:    <c@x.org>").0, some("c@x.org"));
        assert_eq!(clauses("550-H=mx [192.0.2.1] F=[a@x.org] T=[b@y.org] S=[x]").0, some("a@x.org"));
        assert_eq!(clauses("F=<a@x.org> T=<b@y.org>").0, some("a@x.org"));
        // href= and an F= with no T= on its line are not Exim's fields.
        assert_eq!(clauses("<a href=<a@x.org> t=1>\nF=<b@x.org>\nT=<c@y.org>").0, None);
        assert_eq!(
            clauses("The original message was received at Mon, 6 Jan 2025 22:22:29 +0900\nfrom a@x.org\n").0,
            some("a@x.org")
        );
        assert_eq!(
            clauses("The original message was received at Mon\nfrom localhost [127.0.0.1]\n").0,
            None
        );
        assert_eq!(clauses("by mx (Exim 4.96)\n\t(envelope-from <a@x.org>)\n").1, some("a@x.org"));
        assert_eq!(clauses("The original envelope sender was <a@x.org>.").1, some("a@x.org"));
        assert_eq!(clauses("envelope-from=\"a@x.org\"; x-sender=b").1, some("a@x.org"));
        assert_eq!(clauses("MAIL FROM: nobody\nenvelope-from <>").0, None);
        // Unterminated, multi-byte, at the very end: no panic, no address.
        for t in [
            "MAIL FROM:<a@x.org",
            "MAIL FROM:",
            "F=[",
            "f=<é@é",
            "envelope-from \u{e9}",
            "received at",
        ] {
            let _ = clauses(t);
        }
    }

    #[test]
    fn typed_dsn_fields_keep_local_senders() {
        assert_eq!(bare("rfc822; mailadm+x.example").as_deref(), Some("mailadm+x.example"));
        assert_eq!(bare("rfc822;"), None);
        assert_eq!(bare("mailadm"), None);
    }

    /// A bounce with every kind of clause and quoted header, cut at every octet: never a panic.
    #[test]
    fn truncated_plain_bounces_never_panic() {
        let msg = "Return-Path: <>\r\nFrom: MAILER-DAEMON@x.example\r\nSubject: failure notice\r\n\
            Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
            Zustellung fehlgeschlagen \u{2014} 送信できませんでした\r\nMAIL FROM:<é@x.example>\r\n\
            550-F=[a@x.example] T=[b@y.example]\r\nThe original message was received at now\r\nfrom ü@x.example\r\n\
            Original message:\r\nFrom: c@x.example\r\nSubject: hi\r\n(envelope-from <d@x.example>)\r\n\
            --b\r\nReturn-Path: <>\r\nX-Postfix-Sender: rfc822; e\r\n\r\nbody\r\n\
            --b\r\nContent-Type: message/rfc822\r\n\r\n\r\nFrom: f@x.example\r\n\r\n--b--\r\n";
        for n in 0..=msg.len() {
            let r = inspect(&msg.as_bytes()[..n], 1 << 20, n % 2 == 0);
            assert!(r.original_sender.as_deref().is_none_or(|s| !s.is_empty()), "{n}: {r:?}");
        }
        let r = inspect(msg.as_bytes(), 1 << 20, false);
        assert_eq!((r.kind, r.original_sender.as_deref()), (Kind::PlainBounce, Some("é@x.example")));
    }

    #[test]
    fn microsoft_complaints_are_feedback_reports() {
        let jmrp = "From: staff@hotmail.com\r\nSubject: complaint about message from 192.0.2.1\r\n\
            Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n\
            From: Shop <news@x.example>\r\nSubject: Sale\r\n\r\nbuy\r\n--b--\r\n";
        let r = inspect(jmrp.as_bytes(), 1 << 20, false);
        assert_eq!(
            (r.kind, r.original_sender.as_deref()),
            (Kind::FeedbackReport, Some("news@x.example"))
        );
        let human = jmrp.replace("192.0.2.1", "our new shop");
        assert_eq!(inspect(human.as_bytes(), 1 << 20, false).kind, Kind::NotABounce);
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
