//! What kind a message is (`Kind`): a delivery report, a plain bounce, an auto-reply, a
//! report kept apart, or none of these; the markers of each and the phrases they use.

use std::borrow::Cow;

use mail_parser::{Message, MimeHeaders, PartType};

use super::text::{bare, first_address, floor, header_in, starts_with_ci, unparsed_multipart};
use super::Kind;
use crate::core::tag;

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
pub(super) fn daemon_sender(msg: &Message<'_>) -> bool {
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

pub(super) fn classify(msg: &Message<'_>, null_sender: bool) -> Kind {
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

#[cfg(test)]
mod tests {
    use crate::bounce::{inspect, Kind};

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
}
