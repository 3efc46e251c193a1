//! One MTA connection: the negotiation, then each command answered in turn. A malformed
//! or out-of-order packet ends this connection only (the MTA applies its default action,
//! `milter_default_action` in Postfix, to the mail in progress).

use std::net::IpAddr;

use tokio::io::{AsyncWriteExt, BufReader};

use super::{Milter, State};
use crate::core::config::RejectAt;
use crate::core::log::q;
use crate::core::signer::Outcome;
use crate::core::tag;
use crate::core::verdict::{self, judge, Judgement, TxVerdict};
use crate::milter::flags::*;
use crate::milter::{self, Command, Macros, MilterError, Response, Stage};
use crate::server::{Connection, Server, Stop};

const REFUSE_RCPT: &str = "550 5.7.1 Backscatter refused: this address never sent the message you are bouncing (BATV)";
const REFUSE_DATA: &str = "550 5.7.1 Backscatter refused: no recipient of this bounce sent the original message (BATV)";
const DEFER_MIXED: &str = "452 4.5.3 Too many recipients for this transaction, send the rest separately";
const REFUSE_UNREADABLE: &str = "501 5.1.3 Bad recipient address syntax (BATV)";
const CLOSE_GUESSING: &str = "421 4.7.0 Too many invalid BATV tags, closing";

/// What batv asks to do: change the sender, add and delete recipients, add a header.
const ACTIONS: u32 = SMFIF_ADDHDRS | SMFIF_CHGFROM | SMFIF_ADDRCPT_PAR | SMFIF_DELRCPT;
/// What batv does not need to see: HELO, headers, end of headers, the body, unknown
/// commands.
const PROTOCOL: u32 = SMFIP_NOHELO | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY | SMFIP_NOUNKNOWN;

/// A recipient to put back without its tag at end of message.
struct Strip {
    /// As the MTA passed it (what DELRCPT must name).
    tagged: String,
    original: String,
    args: Option<String>,
}

/// One transaction (MAIL to end of message or ABORT).
#[derive(Default)]
struct Tx {
    /// The sender as judged: empty for the null path.
    sender: Option<String>,
    /// The tagged sender to set at end of message.
    sign: Option<(String, Option<String>)>,
    verdict: Option<TxVerdict>,
    reason: &'static str,
    /// Bounce recipients let through, bounce-ok and backscatter (monitor mode).
    accepted: [u32; 2],
    backscatter_reason: &'static str,
    strips: Vec<Strip>,
    /// For the DATA check (non-null senders): the accepted recipients that are protected
    /// and untagged, each judged on its own; the header and body seen so far, up to the
    /// limit; and how many X-BATV fields the message brought (forged: they go).
    untagged: Vec<String>,
    head: Vec<u8>,
    forged_fields: u32,
    /// Snapshot and clock taken at MAIL.
    enforce: bool,
    today: i64,
}

pub(super) struct Conn<'a> {
    server: &'a Server<Milter>,
    state: std::sync::Arc<State>,
    macros: Macros,
    /// The SMTP client, if the MTA named one (None for local submissions).
    client: Option<IpAddr>,
    /// A local submission (Postfix's non_smtpd_milters, Sendmail's -bs): signed.
    local: bool,
    tx: Tx,
    id: u64,
    /// The actions the MTA agreed to.
    actions: u32,
}

pub(super) async fn serve(server: &Server<Milter>, conn: Connection, mut stop: Stop) {
    let id = conn.id;
    let peer = conn.peer.to_string();
    let mut io = BufReader::new(conn.stream);
    let mut c = Conn::new(server, id);
    let idle = c.state.settings.idle;
    let result: Result<(), MilterError> = async {
        loop {
            let cmd = tokio::select! {
                r = tokio::time::timeout(idle, milter::read_command(&mut io, milter::MAX_PACKET)) => match r {
                    Err(_) => return Ok(()),
                    Ok(r) => r?,
                },
                // Stopping: between commands only, so a message in progress is answered.
                _ = stop.changed(), if c.tx.sender.is_none() => return Ok(()),
            };
            let Some(cmd) = cmd else { return Ok(()) };
            let quit = matches!(cmd, Command::Quit);
            let mut out = Vec::new();
            for r in c.answer(cmd)? {
                out.extend_from_slice(&milter::encode(&r));
            }
            // An MTA that stops reading must not hold the connection for ever.
            if !out.is_empty() {
                tokio::time::timeout(idle, io.get_mut().write_all(&out))
                    .await
                    .map_err(|_| MilterError::Timeout)??;
            }
            if quit {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        if !matches!(e, MilterError::Io(_)) {
            server.service.counters.malformed.inc();
        }
        crate::logln!(
            "batv-milter: session={id:x} mta={} error={} action=closed",
            q(&peer),
            q(&e.to_string())
        );
    }
}

/// The path inside its angle brackets, as the MTA passes it (`<a@b>`).
fn unbracket(s: &str) -> &str {
    s.strip_prefix('<').and_then(|s| s.strip_suffix('>')).unwrap_or(s)
}

/// A client address as MTAs write it: `192.0.2.1`, `IPv6:2001:db8::1`, `[192.0.2.1]`.
fn client_address(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(s);
    let s = s.strip_prefix("IPv6:").or_else(|| s.strip_prefix("ipv6:")).unwrap_or(s);
    s.parse().ok()
}

/// ESMTP parameters as one string (CHGFROM and ADDRCPT_PAR take them so), or None.
fn params(args: &[String]) -> Option<String> {
    (args.len() > 1).then(|| args[1..].join(" "))
}

impl<'a> Conn<'a> {
    /// A connection's state before its first command, as `serve` makes it.
    pub(super) fn new(server: &'a Server<Milter>, id: u64) -> Conn<'a> {
        Conn {
            server,
            state: server.state(),
            macros: Macros::default(),
            client: None,
            local: false,
            tx: Tx::default(),
            id,
            actions: 0,
        }
    }
}

impl Conn<'_> {
    pub(super) fn answer(&mut self, cmd: Command) -> Result<Vec<Response>, MilterError> {
        let cont = || Ok(vec![Response::Continue]);
        match cmd {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                // The DATA check needs the header and body, and may remove forged fields.
                let check = self.state.settings.data_check.is_some();
                let want_protocol = if check {
                    PROTOCOL & !(SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY)
                } else {
                    PROTOCOL
                };
                let want_actions = if check { ACTIONS | SMFIF_CHGHDRS } else { ACTIONS };
                let (version, actions, protocol) = milter::negotiate(version, actions, protocol, want_actions, ACTIONS, want_protocol)?;
                self.actions = actions;
                // Macro lists are a version 6 feature: below it, the MTA's own choice.
                let macros = if version >= 6 {
                    vec![
                        (SMFIM_CONNECT, "{daemon_name} {client_addr}".into()),
                        (SMFIM_ENVFROM, "{auth_authen} {mail_addr} i".into()),
                        (SMFIM_ENVRCPT, "{rcpt_addr}".into()),
                    ]
                } else {
                    vec![]
                };
                Ok(vec![Response::OptNeg {
                    version,
                    actions,
                    protocol,
                    macros,
                }])
            }
            Command::Macro { for_command, macros } => {
                self.macros.set(for_command, macros);
                Ok(vec![])
            }
            Command::Connect { family, address, .. } => {
                // Only what the MTA says is local is local: an address that cannot be read
                // (or an unknown family) is a stranger without an address, never signed.
                self.local = matches!(family, b'L' | b'U');
                self.client = match family {
                    b'4' | b'6' => client_address(&address).or_else(|| self.macros.get("{client_addr}").and_then(client_address)),
                    _ => None,
                };
                // A new SMTP session: nothing of an earlier one (a transaction the MTA
                // never ended, its macros after CONNECT's) carries over to it.
                self.tx = Tx::default();
                self.macros.clear_from(Stage::Helo);
                cont()
            }
            Command::Helo(_) => cont(),
            Command::Mail(args) => self.mail(&args),
            Command::Rcpt(args) => Ok(vec![self.rcpt(&args)]),
            Command::Data => Ok(vec![self.data()]),
            Command::Header { name, value } => {
                if name.trim().eq_ignore_ascii_case("X-BATV") {
                    // Only our header may speak for us.
                    self.tx.forged_fields += 1;
                } else {
                    self.keep(format!("{name}: {value}\r\n").as_bytes());
                }
                cont()
            }
            Command::Eoh => {
                self.keep(b"\r\n");
                cont()
            }
            Command::Body(chunk) => {
                self.keep(&chunk);
                cont()
            }
            Command::Unknown(_) => cont(),
            Command::BodyEob => Ok(self.end_of_message()),
            Command::Abort => {
                // The transaction's macros go with it; the connection's stay.
                self.tx = Tx::default();
                self.macros.clear_from(Stage::Mail);
                Ok(vec![])
            }
            Command::QuitNc => {
                // A new SMTP session on the same connection.
                self.tx = Tx::default();
                self.macros = Macros::default();
                self.client = None;
                self.local = false;
                Ok(vec![])
            }
            Command::Quit => Ok(vec![]),
        }
    }

    fn log(&self, rcpt: &str, j: &Judgement, action: &str) {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        crate::logln!(
            "batv-milter: session={:x} client={} queue_id={} sender={} rcpt={} verdict={} reason={} action={} key={} tag_days_left={}",
            self.id,
            self.client.map(|c| c.to_string()).unwrap_or_else(|| "local".into()),
            q(self.macros.get("i").unwrap_or("-")),
            q(&format!("<{}>", self.tx.sender.as_deref().unwrap_or(""))),
            q(&format!("<{rcpt}>")),
            j.verdict.name(),
            j.reason,
            action,
            opt(j.key.map(|k| k.to_string())),
            opt(j.days_left.map(|d| d.to_string())),
        );
    }

    fn mail(&mut self, args: &[String]) -> Result<Vec<Response>, MilterError> {
        let raw = args.first().ok_or(MilterError::Malformed("MAIL without a sender"))?;
        let path = unbracket(raw);
        // A fresh snapshot and clock per transaction.
        self.state = self.server.state();
        let now = self.server.now();
        let s = &self.state.settings;
        let mut tx = Tx {
            enforce: s.enforcing(now),
            today: tag::unix_day(now),
            ..Tx::default()
        };
        match verdict::null_sender(path) {
            Some(true) => tx.sender = Some(String::new()),
            Some(false) => tx.sender = Some(path.to_string()),
            // Unreadable: refused when enforcing, as the proxy does (what cannot be
            // judged is not let through); in monitor mode judged as a bounce. Never
            // signed.
            None if tx.enforce => {
                crate::logln!(
                    "batv-milter: session={:x} sender={} action=refused reason=unreadable-sender",
                    self.id,
                    q(&format!("<{path}>"))
                );
                self.tx = Tx::default();
                return Ok(vec![Response::ReplyCode("501 5.1.7 Bad sender address syntax (BATV)".into())]);
            }
            None => tx.sender = Some(String::new()),
        }
        let authenticated = self.macros.get("{auth_authen}").is_some_and(|a| !a.is_empty());
        let internal = self.local || authenticated || self.client.is_some_and(|ip| s.internal(ip));
        if internal && tx.sender.as_deref().is_some_and(|p| !p.is_empty()) {
            if let Some(signer) = &self.state.signer {
                if let Outcome::Signed(t) = signer.sign(path, tx.today) {
                    tx.sign = Some((format!("<{t}>"), params(args)));
                }
            }
        }
        self.tx = tx;
        Ok(vec![Response::Continue])
    }

    fn rcpt(&mut self, args: &[String]) -> Response {
        let Some(raw) = args.first() else {
            return Response::ReplyCode(REFUSE_UNREADABLE.into());
        };
        let path = unbracket(raw);
        let state = self.state.clone();
        let s = &state.settings;
        let c = &self.server.service.counters;
        let enforce = self.tx.enforce;
        let mut j = judge(path, &s.rules, &state.keys, self.tx.today);
        let trusted = self.client.is_some_and(|ip| s.trusted(ip));
        let bounce = self.tx.sender.as_deref() == Some("");
        if trusted && j.verdict == TxVerdict::Backscatter {
            j.verdict = TxVerdict::BounceOk;
            j.reason = "trusted-relay";
        }
        // Guessing at tags, in any transaction, as in the proxy.
        if let Some(ip) = self.client.filter(|_| !trusted && (j.stripped.is_some() || j.failed_tag())) {
            if self
                .server
                .service
                .failed_tags
                .over_limit(ip, j.failed_tag(), s.max_failed_tags, self.server.now())
            {
                if enforce {
                    c.failed_tag_closes.inc();
                    self.log(path, &j, "closed-too-many-invalid-tags");
                    return Response::ReplyCode(CLOSE_GUESSING.into());
                }
                self.log(path, &j, "would-close-too-many-invalid-tags");
            }
        }
        if let Some(original) = &j.stripped {
            c.stripped.inc();
            self.tx.strips.push(Strip {
                tagged: raw.clone(),
                original: format!("<{original}>"),
                args: params(args),
            });
        }
        if !bounce {
            // Recipients with a tag, valid or not, are not inspected: a bounce carries the
            // null sender, and what else reaches a tag is not backscatter.
            if s.data_check.is_some() && !trusted {
                if j.verdict == TxVerdict::Unreadable && enforce {
                    // The DATA check judges the message for its recipients: one it cannot
                    // read is one it cannot judge.
                    c.refused.inc();
                    self.log(path, &j, "refused");
                    return Response::ReplyCode(REFUSE_UNREADABLE.into());
                }
                if matches!(j.reason, "untagged" | "unreadable-address") {
                    self.tx.untagged.push(j.relay.clone().unwrap_or_else(|| path.to_string()));
                }
            }
            return Response::Continue;
        }
        match j.verdict {
            TxVerdict::BounceOk => c.bounce_ok.inc(),
            TxVerdict::Backscatter | TxVerdict::Unreadable => c.backscatter.inc(),
        };
        if j.verdict == TxVerdict::Unreadable {
            if trusted {
                self.log(path, &j, "continue-trusted");
                return Response::Continue;
            }
            if enforce {
                c.refused.inc();
                self.log(path, &j, "refused");
                self.tx.strips.retain(|x| x.tagged != *raw);
                return Response::ReplyCode(REFUSE_UNREADABLE.into());
            }
            j.verdict = TxVerdict::Backscatter;
        }
        let first = self.tx.verdict;
        let (reply, action) = match (j.verdict, s.reject_at) {
            (_, RejectAt::Data) if enforce && first.is_some_and(|v| v != j.verdict) => {
                c.deferred.inc();
                (Response::ReplyCode(DEFER_MIXED.into()), "deferred-452")
            }
            (TxVerdict::Backscatter, RejectAt::Rcpt) if enforce => {
                c.refused.inc();
                (Response::ReplyCode(REFUSE_RCPT.into()), "refused")
            }
            (TxVerdict::Backscatter, _) if enforce => (Response::Continue, "refuse-at-data"),
            (TxVerdict::Backscatter, _) => (Response::Continue, "continue-monitor"),
            _ => (Response::Continue, "continue"),
        };
        if matches!(reply, Response::Continue) {
            if first.is_none() {
                self.tx.verdict = Some(j.verdict);
                self.tx.reason = j.reason;
            }
            let i = (j.verdict != TxVerdict::BounceOk) as usize;
            self.tx.accepted[i] += 1;
            if i == 1 && self.tx.backscatter_reason.is_empty() {
                self.tx.backscatter_reason = j.reason;
            }
        } else {
            // Refused: nothing of it to strip at end of message.
            self.tx.strips.retain(|x| x.tagged != *raw);
        }
        self.log(path, &j, action);
        reply
    }

    fn data(&mut self) -> Response {
        let bounce = self.tx.sender.as_deref() == Some("");
        if bounce && self.tx.enforce && self.tx.verdict == Some(TxVerdict::Backscatter) {
            self.server.service.counters.refused.inc();
            crate::logln!(
                "batv-milter: session={:x} queue_id={} sender=<> verdict=backscatter reason={} action=refused-at-data",
                self.id,
                q(self.macros.get("i").unwrap_or("-")),
                self.tx.reason
            );
            return Response::ReplyCode(REFUSE_DATA.into());
        }
        Response::Continue
    }

    /// Keep header or body octets for the DATA check, up to its limit.
    fn keep(&mut self, bytes: &[u8]) {
        let Some(check) = self.state.settings.data_check else { return };
        let room = check.limit.saturating_sub(self.tx.head.len());
        self.tx.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The DATA check at end of message: a refusal, or the header to add (if any).
    fn data_check(&self, tx: &Tx) -> Result<Option<String>, Response> {
        let state = &self.state;
        let s = &state.settings;
        let Some(check) = s.data_check else { return Ok(None) };
        let bounce = tx.sender.as_deref() == Some("");
        let trusted = self.client.is_some_and(|ip| s.trusted(ip));
        if bounce || tx.untagged.is_empty() || trusted {
            return Ok(None);
        }
        let report = crate::bounce::inspect(&tx.head, tx.head.len(), false);
        let c = &self.server.service.counters;
        // The returned sender's tag is checked here, so this is a guesser's oracle too.
        if let (Some(failed), Some(ip)) = (
            crate::bounce::returned_tag_failed(&report, &s.rules, &state.keys, tx.today),
            self.client,
        ) {
            if self
                .server
                .service
                .failed_tags
                .over_limit(ip, failed, s.max_failed_tags, self.server.now())
                && tx.enforce
            {
                c.failed_tag_closes.inc();
                crate::logln!(
                    "batv-milter: session={:x} client={ip} check=data action=deferred-too-many-invalid-tags",
                    self.id
                );
                return Err(Response::ReplyCode("451 4.7.0 Too many invalid BATV tags, try again later".into()));
            }
        }
        let Some((verdict, rcpt)) = crate::bounce::worst_for(&report, &tx.untagged, &s.rules, &state.keys, tx.today) else {
            return Ok(None);
        };
        let backscatter = matches!(verdict, crate::bounce::CheckVerdict::Backscatter(_));
        let action = match (backscatter, check.refuse, tx.enforce) {
            (true, true, true) => "refused",
            (true, true, false) => "marked-monitor",
            _ if verdict == crate::bounce::CheckVerdict::NotABounce => "delivered",
            _ => "marked",
        };
        crate::logln!(
            "batv-milter: session={:x} queue_id={} sender={} rcpt={} check=data verdict={} reason={} kind={} inspected={} action={action}",
            self.id,
            q(self.macros.get("i").unwrap_or("-")),
            q(&format!("<{}>", tx.sender.as_deref().unwrap_or(""))),
            q(&format!("<{rcpt}>")),
            verdict.name(),
            verdict.reason(),
            report.kind.name(),
            tx.head.len(),
        );
        if action == "refused" {
            c.refused.inc();
            return Err(Response::ReplyCode(
                "550 5.7.1 Backscatter refused: this bounces a message this address never sent (BATV)".into(),
            ));
        }
        if verdict == crate::bounce::CheckVerdict::NotABounce {
            return Ok(None);
        }
        let monitor = if action == "marked-monitor" { "; mode=monitor" } else { "" };
        Ok(Some(format!(
            "{}; reason={}; kind={}{monitor}",
            verdict.name(),
            verdict.reason(),
            report.kind.name()
        )))
    }

    fn end_of_message(&mut self) -> Vec<Response> {
        let tx = std::mem::take(&mut self.tx);
        let mut out = Vec::new();
        let checked = match self.data_check(&tx) {
            // Refused: the message goes nowhere, so nothing of it is changed.
            Err(refusal) => return vec![refusal],
            Ok(h) => h,
        };
        if self.actions & SMFIF_CHGHDRS != 0 {
            // Forged X-BATV fields go, the last first (an index counts the fields left).
            for i in (1..=tx.forged_fields).rev() {
                out.push(Response::ChgHeader {
                    index: i,
                    name: "X-BATV".into(),
                    value: String::new(),
                });
            }
        }
        if let Some(value) = checked {
            out.push(Response::AddHeader {
                name: "X-BATV".into(),
                value,
            });
        }
        if let Some((from, args)) = tx.sign {
            self.server.service.counters.signed.inc();
            crate::logln!(
                "batv-milter: session={:x} client={} queue_id={} sender={} action=signed tagged={}",
                self.id,
                self.client.map(|c| c.to_string()).unwrap_or_else(|| "local".into()),
                q(self.macros.get("i").unwrap_or("-")),
                q(&format!("<{}>", tx.sender.as_deref().unwrap_or(""))),
                q(&from),
            );
            out.push(Response::ChgFrom { from, args });
        }
        for s in tx.strips {
            out.push(Response::DelRcpt(s.tagged));
            out.push(Response::AddRcptPar {
                rcpt: s.original,
                args: s.args,
            });
        }
        let bounce = tx.sender.as_deref() == Some("");
        if !tx.enforce && bounce && tx.accepted != [0, 0] {
            out.push(Response::AddHeader {
                name: "X-BATV".into(),
                value: verdict::monitor_mark(tx.accepted, tx.reason, tx.backscatter_reason),
            });
        }
        out.push(Response::Continue);
        out
    }
}
