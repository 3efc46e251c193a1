//! Whose message a bounce returns: the original sender, looked for in returned messages,
//! headers parts, DSN fields, quoted headers and the envelope clauses of a bounce's prose.

use std::borrow::Cow;

use mail_parser::{Message, MimeHeaders, PartType};

use super::classify::{classify, daemon_sender};
use super::text::{bare, first_address, floor, headers_in, starts_with_ci, unparsed_multipart, TEXT_SCAN};
use super::{Kind, Source};

/// How many returned messages that are bounces themselves are looked into.
const NESTED_BOUNCES: usize = 2;
/// Lines of quoted headers looked at in a text part.
const QUOTED_LINES: usize = 200;
/// Octets of a text part searched for envelope clauses.
const CLAUSE_SCAN: usize = 16 * 1024;
/// Header fields of a delivery-status part that carry the envelope sender (Postfix,
/// Exchange, SendGrid: the MAIL FROM it used, its VERP address).
const DSN_SENDER_FIELDS: [&str; 4] = ["X-Postfix-Sender", "X-Original-Sender", "Original-Sender", "X-SendGrid-Sender"];

/// The returned message's sender: embedded message, headers part, DSN fields, then
/// headers and envelope clauses in a text part.
pub(super) fn original_sender(msg: &Message<'_>) -> Option<(String, Source)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
