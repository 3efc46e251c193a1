//! Bounce inspection (DESIGN §7): is a message a delivery report, a plain-text bounce, an
//! auto-reply or a disposition notification, and whose message does it return?
//!
//! Total on any input: whatever cannot be read is `NotABounce` with no sender, and the
//! message is delivered. Only the first `limit` octets are looked at.
//!
//! This file holds the public API (`inspect` and its report types); what kind a message is
//! lives in `classify`, whose message it returns in `sender`, the verdict over a report in
//! `judge`, and the header and address reading they share in `text`.

use mail_parser::MessageParser;

mod classify;
mod judge;
mod sender;
mod text;

use classify::classify;
pub use judge::{judge, returned_tag_failed, worst_for, CheckVerdict};

/// The DATA check's settings (proxy and milter): what of a message is inspected, and
/// whether backscatter is refused or only marked.
#[derive(Debug, Clone, Copy)]
pub struct DataCheck {
    /// Octets of a message inspected.
    pub limit: usize,
    /// Refuse backscatter (else only mark it).
    pub refuse: bool,
}
use sender::original_sender;
pub(crate) use text::floor;
use text::{bare, first_address};

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

#[cfg(test)]
mod tests {
    use super::*;

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
