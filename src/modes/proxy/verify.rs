//! The verifying direction of a proxy session: the [`Policy`] that judges each MAIL and
//! RCPT, holds one verdict per transaction, and runs the optional DATA check.

use std::net::IpAddr;
use std::sync::Arc;

use super::{Proxy, State, DATA_CHECK_VERDICTS};
use crate::bounce::{self, CheckVerdict};
use crate::core::config::RejectAt;
use crate::core::log::q;
use crate::core::tag;
use crate::core::verdict::{self, judge, Judgement, TxVerdict};
use crate::server::Server;
use crate::smtp::session::{Decision, Policy};
use crate::smtp::Reply;

/// The verifying direction of a session.
pub struct Verify<'a> {
    server: &'a Server<Proxy>,
    /// The snapshot of settings and keys this transaction is judged by.
    state: Arc<State>,
    session: u64,
    /// The connection's peer, and the client as named by XFORWARD (else the peer).
    peer: IpAddr,
    client: IpAddr,
    trusted_client: bool,
    today: i64,
    enforce: bool,
    sender: Option<String>,
    /// The sender of the MAIL being relayed, as judged (the null path in any spelling is
    /// empty).
    pending_sender: Option<String>,
    /// The transaction's verdict, set by the first recipient the downstream accepted.
    verdict: Option<TxVerdict>,
    pending: Option<TxVerdict>,
    reason: &'static str,
    pending_reason: &'static str,
    /// Recipients the downstream accepted, bounce-ok and backscatter (monitor mode lets
    /// both into one message and says so in its header), and the first backscatter's
    /// reason.
    accepted: [u32; 2],
    backscatter_reason: &'static str,
    /// Monitor mode has logged that it would have closed this session.
    would_close_logged: bool,
    /// For the DATA check (non-null senders): the accepted recipients that are protected
    /// and untagged, each judged on its own (one's tag says nothing about another).
    untagged_rcpts: Vec<String>,
    /// The recipient being relayed, if it is such a one.
    pending_rcpt: Option<String>,
    /// Gateway mode: the client's name for itself (EHLO/HELO), its TLS, and the user the
    /// MTA accepted its AUTH for (`Some(None)`: authenticated, user not known).
    helo: Option<String>,
    tls: Option<(&'static str, String)>,
    auth: Option<Option<String>>,
}

impl<'a> Verify<'a> {
    pub fn new(server: &'a Server<Proxy>, session: u64, client: IpAddr) -> Self {
        let mut v = Verify {
            server,
            state: server.state(),
            session,
            peer: client,
            client,
            trusted_client: false,
            today: 0,
            enforce: true,
            sender: None,
            pending_sender: None,
            verdict: None,
            pending: None,
            reason: "",
            pending_reason: "",
            accepted: [0; 2],
            backscatter_reason: "",
            would_close_logged: false,
            untagged_rcpts: Vec::new(),
            pending_rcpt: None,
            helo: None,
            tls: None,
            auth: None,
        };
        v.reset();
        v
    }

    /// The client's connection became TLS (front and gateway mode).
    pub fn tls(&mut self, version: &'static str, cipher: &str) {
        self.tls = Some((version, cipher.to_string()));
        // A new session: its EHLO and AUTH are still to come (RFC 3207 §4.2).
        self.helo = None;
        self.auth = None;
    }

    /// Gateway mode: the relay control for an RCPT path as written, before the verdict.
    /// `Some` refuses it.
    fn gateway_rcpt(&self, path: &str) -> Option<Reply> {
        let g = self.state.settings.gateway.as_ref()?;
        let may_relay = self.auth.is_some() || g.trusted.iter().any(|n| n.contains(self.client));
        if may_relay {
            return None;
        }
        let refusal = crate::core::relay::check(path, &g.relay_domains).err()?;
        self.server.service.counters.relay_refusals.inc();
        self.log_refusal(path, "refused-relay", refusal.reason());
        Some(match refusal {
            crate::core::relay::Refusal::Unreadable => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
            crate::core::relay::Refusal::Denied(_) => Reply::new(554, "5.7.1", "Relay access denied"),
        })
    }

    /// Gateway mode with `valid_recipients`: is `relayed` (the address the MTA will be
    /// given, tag stripped) unknown at a relay domain? Then 550 5.1.1, and the MTA never
    /// gets the recipient it would accept and bounce.
    fn unknown_recipient(&self, path: &str, relayed: &str) -> Option<Decision> {
        let g = self.state.settings.gateway.as_ref()?;
        let (_, table) = g.recipients.as_ref()?;
        // A trusted client may send elsewhere; an address beyond our reading was
        // refused by the relay check, or comes from a trusted client to the MTA's care.
        let a = crate::core::address::parse(relayed).ok()?;
        if !g.relay_domains.contains(a.domain) || a.local.eq_ignore_ascii_case("postmaster") {
            return None;
        }
        if table.knows(&a.local, a.domain, &g.delimiters) {
            return None;
        }
        self.server.service.counters.unknown_recipients.inc();
        self.log_refusal(path, "refused-unknown-recipient", "not-in-valid-recipients");
        Some(Decision::Refuse(Reply::new(
            550,
            "5.1.1",
            "Recipient address rejected: user unknown",
        )))
    }

    fn log_refusal(&self, rcpt: &str, action: &str, reason: &str) {
        crate::logln!(
            "batv-proxy: session={:x} client={} sender={} rcpt={} action={action} reason={reason}",
            self.session,
            self.client,
            q(&format!("<{}>", self.sender.as_deref().unwrap_or(""))),
            q(&format!("<{rcpt}>")),
        );
    }

    /// Gateway mode's trace field: the MTA sees the proxy as the client, so the proxy
    /// writes down who the client was (RFC 5321 §4.4, in Postfix's layout).
    fn received(&self) -> Vec<u8> {
        let ip = match self.client {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => format!("IPv6:{v6}"),
            },
            IpAddr::V4(v4) => v4.to_string(),
        };
        let helo = self.helo.as_deref().map(trace_word).filter(|h| !h.is_empty());
        let mut r = format!("Received: from {} ([{ip}])", helo.as_deref().unwrap_or("unknown"));
        if let Some((version, cipher)) = &self.tls {
            r.push_str(&format!("\r\n\t(using {version} with cipher {})", trace_word(cipher)));
        }
        if let Some(user) = &self.auth {
            match user.as_deref().map(trace_word).filter(|u| !u.is_empty()) {
                Some(u) => r.push_str(&format!("\r\n\t(Authenticated sender: {u})")),
                None => r.push_str("\r\n\t(Authenticated)"),
            }
        }
        let protocol = match (self.tls.is_some(), self.auth.is_some()) {
            (true, true) => "ESMTPSA",
            (true, false) => "ESMTPS",
            (false, true) => "ESMTPA",
            (false, false) => "ESMTP",
        };
        let date = chrono::DateTime::from_timestamp(self.server.now(), 0)
            .unwrap_or_default()
            .format("%a, %d %b %Y %H:%M:%S +0000");
        r.push_str(&format!(
            "\r\n\tby {} (batv) with {protocol} id {:x};\r\n\t{date}\r\n",
            self.state.settings.hostname, self.session
        ));
        r.into_bytes()
    }

    fn log(&self, rcpt: &str, j: &Judgement, action: &str) {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        crate::logln!(
            "batv-proxy: session={:x} client={} sender={} rcpt={} verdict={} reason={} action={} key={} tag_days_left={}",
            self.session,
            self.client,
            q(&format!("<{}>", self.sender.as_deref().unwrap_or(""))),
            q(&format!("<{rcpt}>")),
            j.verdict.name(),
            j.reason,
            action,
            opt(j.key.map(|k| k.to_string())),
            opt(j.days_left.map(|d| d.to_string())),
        );
    }

    fn bounce(&self) -> bool {
        self.sender.as_deref() == Some("")
    }
}

/// A client's word (HELO, AUTH user) made safe inside a header field: printable ASCII
/// that cannot end a comment or the field, at most 255 octets; anything else becomes `?`.
fn trace_word(s: &str) -> String {
    s.chars()
        .take(255)
        .map(|c| match c {
            '!'..='~' if !matches!(c, '(' | ')' | '\\' | ';' | '"') => c,
            _ => '?',
        })
        .collect()
}

/// The ADDR attribute of an XFORWARD command (Postfix XFORWARD_README), if it is an address.
fn xforward_addr(line: &[u8]) -> Option<IpAddr> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("XFORWARD") {
        return None;
    }
    let value = words.find_map(|w| w.get(..5).filter(|k| k.eq_ignore_ascii_case("ADDR=")).map(|_| &w[5..]))?;
    let value = match value.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPV6:") => &value[5..],
        _ => value,
    };
    value.parse().ok()
}

/// The queue id in a final reply (Postfix: `250 2.0.0 Ok: queued as 4Xy1z2`).
fn queue_id(reply: &Reply) -> Option<String> {
    let text = String::from_utf8_lossy(&reply.raw);
    let after = text.split("queued as ").nth(1)?;
    let id: String = after.chars().take_while(|c| c.is_ascii_alphanumeric()).take(64).collect();
    (!id.is_empty()).then_some(id)
}

impl Policy for Verify<'_> {
    fn mail(&mut self, path: &str) -> Decision {
        // Judged as the MTA reads it: every spelling of the null path it takes as null
        // (`< >`, `<()>`, `<"">`) is a bounce, and goes on as `<>` so both agree.
        match verdict::null_sender(path) {
            Some(true) => {
                self.pending_sender = Some(String::new());
                Decision::Relay((!path.is_empty()).then(String::new))
            }
            Some(false) => {
                self.pending_sender = Some(path.to_string());
                Decision::Relay(None)
            }
            None if self.enforce => {
                crate::logln!(
                    "batv-proxy: session={:x} client={} sender={} action=refused reason=unreadable-sender",
                    self.session,
                    self.client,
                    q(&format!("<{path}>"))
                );
                Decision::Refuse(Reply::new(501, "5.1.7", "Bad sender address syntax (BATV)"))
            }
            None => {
                // Monitor mode: what cannot be read is judged as a bounce.
                self.pending_sender = Some(String::new());
                Decision::Relay(None)
            }
        }
    }

    fn mail_reply(&mut self, _path: &str, reply: &Reply) {
        if reply.is_positive() {
            // A fresh key and settings snapshot and clock per transaction.
            let sender = self.pending_sender.take();
            self.reset();
            self.sender = sender;
        }
    }

    fn rcpt_written(&mut self, path: &str) -> Option<Reply> {
        self.gateway_rcpt(path)
    }

    fn rcpt(&mut self, path: &str) -> Decision {
        let mut j = judge(path, &self.state.settings.rules, &self.state.keys, self.today);
        let c = &self.server.service.counters;
        let bounce = self.bounce();
        if self.trusted_client && bounce && j.verdict == TxVerdict::Backscatter {
            j.verdict = TxVerdict::BounceOk;
            j.reason = "trusted-relay";
        }
        // Guessing at tags, in any transaction (a non-bounce to a guessed tag tells the
        // guesser by its reply whether the tag was stripped): a client that has used up
        // its failed tags gets no tagged recipient checked, and every invalid tag counts.
        let tagged = j.stripped.is_some() || j.failed_tag();
        if tagged && !self.trusted_client {
            let max = self.state.settings.max_failed_tags;
            let now = self.server.now();
            if self.server.service.failed_tags.over_limit(self.client, j.failed_tag(), max, now) {
                if self.enforce {
                    c.failed_tag_closes.inc();
                    self.log(path, &j, "closed-too-many-invalid-tags");
                    return Decision::Close(Reply::new(421, "4.7.0", "Too many invalid BATV tags, closing"));
                }
                if !self.would_close_logged {
                    self.would_close_logged = true;
                    self.log(path, &j, "would-close-too-many-invalid-tags");
                }
            }
        }
        if let Some(k) = j.key.filter(|_| j.stripped.is_some()) {
            c.tag_of_key(k);
        }
        if j.stripped.is_some() {
            c.stripped.inc();
        }
        if let Some(refused) = self.unknown_recipient(path, j.relay.as_deref().unwrap_or(path)) {
            return refused;
        }
        let relay = Decision::Relay(j.relay.clone());
        let unreadable = Decision::Refuse(Reply::new(501, "5.1.3", "Bad recipient address syntax (BATV)"));
        if !bounce {
            // Recipients with a tag, valid or not, are not inspected: a bounce carries
            // the null sender, and what else reaches a tag is not backscatter.
            if self.state.settings.data_check.is_some() {
                if j.verdict == TxVerdict::Unreadable && self.enforce && !self.trusted_client {
                    // The DATA check judges this message for its recipients: one it
                    // cannot read is one it cannot judge.
                    self.log(path, &j, "refused");
                    return unreadable;
                }
                if matches!(j.reason, "untagged" | "unreadable-address") {
                    self.pending_rcpt = Some(j.relay.clone().unwrap_or_else(|| path.to_string()));
                }
            }
            return relay;
        }
        match j.verdict {
            TxVerdict::BounceOk => c.bounce_ok.inc(),
            TxVerdict::Backscatter | TxVerdict::Unreadable => c.backscatter.inc(),
        };
        if j.verdict == TxVerdict::Unreadable {
            if self.trusted_client {
                self.log(path, &j, "relayed-trusted");
                return relay;
            }
            if self.enforce {
                self.log(path, &j, "refused");
                return unreadable;
            }
            // Monitor mode counts it with the backscatter it would refuse.
            j.verdict = TxVerdict::Backscatter;
        }
        if j.verdict == TxVerdict::Backscatter && self.enforce && self.state.settings.reject_at == RejectAt::Rcpt {
            self.log(path, &j, "refused");
            return Decision::Refuse(Reply::new(
                550,
                "5.7.1",
                "Backscatter refused: this address never sent the message you are bouncing (BATV)",
            ));
        }
        // One verdict per transaction; monitor mode changes nothing in the dialogue, so
        // it lets every recipient in and marks the message with what each one was.
        let first = self.verdict.or(self.pending);
        if self.enforce && self.state.settings.reject_at == RejectAt::Data && first.is_some_and(|v| v != j.verdict) {
            self.log(path, &j, "deferred-452");
            return Decision::Refuse(Reply::new(
                452,
                "4.5.3",
                "Too many recipients for this transaction, send the rest separately",
            ));
        }
        self.pending = Some(j.verdict);
        self.pending_reason = j.reason;
        self.log(path, &j, if self.enforce { "relayed" } else { "relayed-monitor" });
        relay
    }

    fn rcpt_reply(&mut self, reply: &Reply) {
        // Only a recipient the downstream accepted sets the transaction's verdict.
        if let Some(v) = self.pending.take().filter(|_| reply.is_positive()) {
            if self.verdict.is_none() {
                self.verdict = Some(v);
                self.reason = self.pending_reason;
            }
            match v {
                TxVerdict::BounceOk => self.accepted[0] += 1,
                _ => {
                    if self.accepted[1] == 0 {
                        self.backscatter_reason = self.pending_reason;
                    }
                    self.accepted[1] += 1;
                }
            }
        }
        if let Some(rcpt) = self.pending_rcpt.take().filter(|_| reply.is_positive()) {
            self.untagged_rcpts.push(rcpt);
        }
    }

    fn data(&mut self) -> Option<Reply> {
        // Enforcing, every accepted recipient has the first one's verdict; monitoring,
        // any backscatter recipient makes the message what would have been refused.
        let backscatter = if self.enforce {
            self.verdict == Some(TxVerdict::Backscatter)
        } else {
            self.accepted[1] > 0
        };
        if !backscatter {
            return None;
        }
        let c = &self.server.service.counters;
        let action = if self.enforce { "refused-at-data" } else { "delivered-monitor" };
        crate::logln!(
            "batv-proxy: session={:x} client={} sender=<> verdict=backscatter reason={} action={action}",
            self.session,
            self.client,
            self.backscatter_reason
        );
        if !self.enforce {
            c.monitored_transactions.inc();
            return None;
        }
        c.refused_transactions.inc();
        Some(Reply::new(
            550,
            "5.7.1",
            "Backscatter refused: no recipient of this bounce sent the original message (BATV)",
        ))
    }

    fn header(&mut self) -> Option<Vec<u8>> {
        let mut h = match self.state.settings.gateway {
            Some(_) => self.received(),
            None => Vec::new(),
        };
        // Monitor mode marks what it would have done, so an admin can sort and check:
        // one header per message, with each verdict's count when they differ.
        if !(self.enforce || !self.bounce() || self.accepted == [0, 0]) {
            let mark = verdict::monitor_mark(self.accepted, self.reason, self.backscatter_reason);
            h.extend_from_slice(format!("X-BATV: {mark}\r\n").as_bytes());
        }
        (!h.is_empty()).then_some(h)
    }

    fn inspect(&mut self) -> Option<usize> {
        // Only mail to an address that bounces must not reach untagged: a bounce of mail
        // this address never sent, from a sender that did not use the null path.
        let check = self.state.settings.data_check?;
        (!self.bounce() && !self.untagged_rcpts.is_empty() && !self.trusted_client).then_some(check.limit)
    }

    fn content(&mut self, head: &mut Vec<u8>, complete: bool) -> Result<Option<Vec<u8>>, Reply> {
        let Some(check) = self.state.settings.data_check else {
            return Ok(None);
        };
        // Only our header may speak for us: forged ones go.
        remove_fields(head, b"X-BATV", complete);
        let report = bounce::inspect(head, head.len(), false);
        let c = &self.server.service.counters;
        // The returned sender's tag is checked here, so this is a guesser's oracle too: a
        // client that has used up its failed tags gets no answer, and a failure counts.
        let rules = &self.state.settings.rules;
        if let Some(failed) = bounce::returned_tag_failed(&report, rules, &self.state.keys, self.today) {
            let now = self.server.now();
            if self
                .server
                .service
                .failed_tags
                .over_limit(self.client, failed, self.state.settings.max_failed_tags, now)
                && self.enforce
            {
                c.failed_tag_closes.inc();
                crate::logln!(
                    "batv-proxy: session={:x} client={} sender={} check=data action=deferred-too-many-invalid-tags",
                    self.session,
                    self.client,
                    q(&format!("<{}>", self.sender.as_deref().unwrap_or(""))),
                );
                return Err(Reply::new(451, "4.7.0", "Too many invalid BATV tags, try again later"));
            }
        }
        let Some((verdict, rcpt)) = bounce::worst_for(&report, &self.untagged_rcpts, rules, &self.state.keys, self.today) else {
            return Ok(None);
        };
        if let Some(i) = DATA_CHECK_VERDICTS.iter().position(|v| *v == verdict.name()) {
            c.data_checks[i].inc();
        }
        let backscatter = matches!(verdict, CheckVerdict::Backscatter(_));
        let action = match (backscatter, check.refuse, self.enforce) {
            (true, true, true) => "refused",
            (true, true, false) => "marked-monitor",
            _ if verdict == CheckVerdict::NotABounce => "relayed",
            _ => "marked",
        };
        crate::logln!(
            "batv-proxy: session={:x} client={} sender={} rcpt={} check=data verdict={} reason={} kind={} original_sender={} inspected={}{} action={action}",
            self.session,
            self.client,
            q(&format!("<{}>", self.sender.as_deref().unwrap_or(""))),
            q(&format!("<{rcpt}>")),
            verdict.name(),
            verdict.reason(),
            report.kind.name(),
            q(&format!(
                "<{}>",
                report.original_sender.as_deref().map_or("", |a| &a[..crate::bounce::floor(a, 256)])
            )),
            head.len(),
            if complete { "" } else { "+" },
        );
        if action == "refused" {
            c.refused_transactions.inc();
            return Err(Reply::new(
                550,
                "5.7.1",
                "Backscatter refused: this bounces a message this address never sent (BATV)",
            ));
        }
        if verdict == CheckVerdict::NotABounce {
            return Ok(None);
        }
        let monitor = if action == "marked-monitor" { "; mode=monitor" } else { "" };
        Ok(Some(
            format!(
                "X-BATV: {}; reason={}; kind={}{monitor}\r\n",
                verdict.name(),
                verdict.reason(),
                report.kind.name()
            )
            .into_bytes(),
        ))
    }

    fn finished(&mut self, reply: &Reply) {
        if let Some(v) = self.verdict.filter(|_| self.bounce()) {
            crate::logln!(
                "batv-proxy: session={:x} client={} sender=<> verdict={} reason={} result={} queue_id={}",
                self.session,
                self.client,
                v.name(),
                self.reason,
                reply.code,
                queue_id(reply).as_deref().unwrap_or("-")
            );
        }
    }

    fn xforward(&mut self, line: &[u8]) {
        // Before-queue: Postfix names the real client; trusted_relays and the failed-tag
        // count apply to it, not to Postfix's own address.
        // Only Postfix on this host may say who the client is.
        if !self.peer.is_loopback() {
            return;
        }
        if let Some(ip) = xforward_addr(line) {
            self.client = ip;
            self.trusted_client = self.state.settings.trusted.iter().any(|n| n.contains(ip));
        }
    }

    fn helo(&mut self, name: &[u8]) {
        self.helo = Some(String::from_utf8_lossy(name).into_owned());
    }

    fn authenticated(&mut self, user: Option<&str>) {
        self.auth = Some(user.map(str::to_string));
    }

    fn reset(&mut self) {
        self.state = self.server.state();
        self.trusted_client = self.state.settings.trusted.iter().any(|n| n.contains(self.client));
        let now = self.server.now();
        self.today = tag::unix_day(now);
        self.enforce = self.state.settings.enforcing(now);
        self.sender = None;
        self.pending_sender = None;
        self.verdict = None;
        self.pending = None;
        self.reason = "";
        self.pending_reason = "";
        self.accepted = [0; 2];
        self.backscatter_reason = "";
        self.untagged_rcpts.clear();
        self.pending_rcpt = None;
    }
}

/// Remove the header fields called `name` (with their continuation lines) from the
/// header section at the start of `head`. A field is removed only when its end is within
/// `head` (the line after it has begun, or `head` is the `complete` message), so no part
/// of one is ever left behind.
fn remove_fields(head: &mut Vec<u8>, name: &[u8], complete: bool) {
    let mut out = Vec::new();
    let mut kept_to = 0;
    let mut at = 0;
    let mut field: Option<(usize, bool)> = None; // (start, remove)
    while at < head.len() {
        let Some(nl) = head[at..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &head[at..at + nl + 1];
        let continuation = matches!(line[0], b' ' | b'\t');
        if !continuation {
            if let Some((start, true)) = field.take() {
                out.extend_from_slice(&head[kept_to..start]);
                kept_to = at;
            }
            if line == b"\r\n" || line == b"\n" {
                break;
            }
            let colon = line.iter().position(|&b| b == b':');
            let remove = colon.is_some_and(|c| line[..c].trim_ascii_end().eq_ignore_ascii_case(name));
            field = Some((at, remove));
        }
        at += nl + 1;
    }
    if let Some((start, true)) = field.filter(|_| complete && at == head.len()) {
        out.extend_from_slice(&head[kept_to..start]);
        kept_to = head.len();
    }
    if kept_to > 0 {
        out.extend_from_slice(&head[kept_to..]);
        *head = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_batv_fields_are_removed_from_the_header_only() {
        let strip = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            remove_fields(&mut v, b"X-BATV", false);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(
            strip("X-BATV: bounce-with-valid-tag\r\nFrom: a@b\r\nx-batv : valid;\r\n\tfolded\r\nTo: c@d\r\n\r\nX-BATV: body\r\n"),
            "From: a@b\r\nTo: c@d\r\n\r\nX-BATV: body\r\n"
        );
        assert_eq!(strip("From: a@b\r\nX-BATV: last\r\n\r\nbody"), "From: a@b\r\n\r\nbody");
        // Cut inside the field, or before we know it has no more lines: it stays whole.
        assert_eq!(strip("From: a@b\r\nX-BATV: cut"), "From: a@b\r\nX-BATV: cut");
        assert_eq!(strip("From: a@b\r\nX-BATV: x\r\n"), "From: a@b\r\nX-BATV: x\r\n");
        assert_eq!(
            strip("X-BATVX: no\r\nX-BATV-Other: no\r\n\r\n"),
            "X-BATVX: no\r\nX-BATV-Other: no\r\n\r\n"
        );
        assert_eq!(strip(""), "");
        // A whole message that ends in its header section: the last field ends with it.
        let mut v = b"From: a@b\r\nX-BATV: x\r\n\ty\r\n".to_vec();
        remove_fields(&mut v, b"X-BATV", true);
        assert_eq!(v, b"From: a@b\r\n");
        let mut v = b"X-BATV: cut".to_vec();
        remove_fields(&mut v, b"X-BATV", true);
        assert_eq!(v, b"X-BATV: cut", "no line end: not a field we can cut cleanly");
    }

    #[test]
    fn xforward_addresses() {
        assert_eq!(
            xforward_addr(b"XFORWARD NAME=mx.example ADDR=192.0.2.7\r\n"),
            Some([192, 0, 2, 7].into())
        );
        assert_eq!(
            xforward_addr(b"xforward addr=IPV6:2001:db8::1 PORT=25\r\n"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(xforward_addr(b"XFORWARD ADDR=[UNAVAILABLE]\r\n"), None);
        assert_eq!(xforward_addr(b"XCLIENT ADDR=192.0.2.7\r\n"), None);
    }
}
