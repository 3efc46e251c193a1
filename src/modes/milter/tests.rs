//! The session in memory: `Conn::answer` driven with the commands Postfix sends, and a
//! property test of random command sequences.

use proptest::prelude::*;

use super::session::Conn;
use super::Milter;
use crate::core::config::{Config, RejectAt};
use crate::core::keys::KeySet;
use crate::core::signer::Outcome;
use crate::milter::flags::*;
use crate::milter::{Command, Response};
use crate::server::Server;

const NOW: i64 = 20_780 * 86_400;
const INSIDE: &str = "127.0.0.1";
const OUTSIDE: &str = "192.0.2.1";

fn server(extra: impl FnOnce(&mut Config)) -> Server<Milter> {
    let mut config = Config {
        sign_domains: vec!["example.org".into()],
        ..Config::default()
    };
    extra(&mut config);
    let keys = KeySet::from_keys(vec![crate::core::keys::test_key()]).unwrap().into();
    Server::new(Milter::new(Some(NOW)), &config, &keys).unwrap()
}

/// An authentic tag for `addr`, as the server signs today.
fn tag(server: &Server<Milter>, addr: &str) -> String {
    let state = server.state();
    match state.signer.as_ref().unwrap().sign(addr, crate::core::tag::unix_day(NOW)) {
        Outcome::Signed(t) => t,
        _ => panic!("not signed: {addr}"),
    }
}

/// The same tag with one character of its signature changed.
fn forge(tagged: &str) -> String {
    let end = tagged[5..].find('=').unwrap() + 5;
    let mut b = tagged.as_bytes().to_vec();
    b[end - 1] = if b[end - 1] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

fn optneg() -> Command {
    Command::OptNeg {
        version: 6,
        actions: 0x1ff,
        protocol: 0x1f_ffff,
    }
}

fn macros(for_command: u8, pairs: &[(&str, &str)]) -> Command {
    Command::Macro {
        for_command,
        macros: pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
    }
}

fn connect(family: u8, address: &str) -> Command {
    Command::Connect {
        hostname: "client.example".into(),
        family,
        port: if address.is_empty() { 0 } else { 25 },
        address: address.into(),
    }
}

fn mail(sender: &str) -> Command {
    Command::Mail(vec![sender.into(), "SIZE=10".into()])
}

fn rcpt(r: &str) -> Command {
    Command::Rcpt(vec![r.into()])
}

fn rcpt_args(r: &str, args: &[&str]) -> Command {
    Command::Rcpt(std::iter::once(r).chain(args.iter().copied()).map(String::from).collect())
}

fn ok(c: &mut Conn, cmd: Command) -> Vec<Response> {
    c.answer(cmd).unwrap()
}

fn cont() -> Vec<Response> {
    vec![Response::Continue]
}

fn reply(r: &[Response]) -> &str {
    match r {
        [Response::ReplyCode(s)] => s,
        _ => panic!("not a reply code: {r:?}"),
    }
}

/// OPTNEG, connect from `family`/`address`, with the connect macros Postfix sends.
fn session<'a>(s: &'a Server<Milter>, family: u8, address: &str) -> Conn<'a> {
    let mut c = Conn::new(s, 1);
    ok(&mut c, optneg());
    ok(
        &mut c,
        macros(SMFIC_CONNECT, &[("j", "mx.example.org"), ("{daemon_name}", "smtpd")]),
    );
    assert_eq!(ok(&mut c, connect(family, address)), cont());
    c
}

/// MAIL, the RCPTs, DATA: each answer, then the end-of-message answer.
fn transaction(c: &mut Conn, sender: &str, rcpts: &[&str]) -> (Vec<Vec<Response>>, Vec<Response>) {
    ok(c, macros(SMFIC_MAIL, &[("i", "4ABC"), ("{mail_addr}", sender)]));
    let mut answers = vec![ok(c, mail(sender))];
    for r in rcpts {
        ok(c, macros(SMFIC_RCPT, &[("{rcpt_addr}", r)]));
        answers.push(ok(c, rcpt(r)));
    }
    answers.push(ok(c, Command::Data));
    (answers, ok(c, Command::BodyEob))
}

fn chgfrom(r: &[Response]) -> Option<&Response> {
    r.iter().find(|r| matches!(r, Response::ChgFrom { .. }))
}

#[test]
fn optneg_is_answered_with_our_actions_protocol_and_macros() {
    let s = server(|_| {});
    let mut c = Conn::new(&s, 1);
    let r = ok(&mut c, optneg());
    let [Response::OptNeg {
        version,
        actions,
        protocol,
        macros: lists,
    }] = &r[..]
    else {
        panic!("{r:?}")
    };
    assert_eq!(*version, 6);
    assert_eq!(*actions, SMFIF_ADDHDRS | SMFIF_CHGFROM | SMFIF_ADDRCPT_PAR | SMFIF_DELRCPT);
    assert_eq!(
        *protocol,
        SMFIP_NOHELO | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY | SMFIP_NOUNKNOWN
    );
    assert!(lists.contains(&(SMFIM_CONNECT, "{daemon_name} {client_addr}".into())));
    assert!(lists.iter().any(|(st, l)| *st == SMFIM_ENVFROM && l.contains("{auth_authen}")));
    assert!(crate::milter::try_encode(&r[0]).is_ok());
    // An MTA without CHGFROM cannot have batv.
    assert!(Conn::new(&s, 2)
        .answer(Command::OptNeg {
            version: 6,
            actions: SMFIF_ADDHDRS,
            protocol: 0,
        })
        .is_err());
    // Macros get no answer.
    assert_eq!(ok(&mut c, macros(SMFIC_CONNECT, &[("j", "mx")])), vec![]);
}

#[test]
fn inside_client_is_signed_at_end_of_message_only_outside_not() {
    let s = server(|_| {});
    let mut c = session(&s, b'4', INSIDE);
    let (answers, eom) = transaction(&mut c, "<alice@example.org>", &["<carol@example.net>"]);
    assert!(answers.iter().all(|a| *a == cont()), "{answers:?}");
    let Some(Response::ChgFrom { from, args }) = chgfrom(&eom) else {
        panic!("{eom:?}")
    };
    assert!(from.starts_with("<prvs=") && from.ends_with("=alice@example.org>"), "{from}");
    assert_eq!(args.as_deref(), Some("SIZE=10"));
    assert_eq!(eom.last(), Some(&Response::Continue));
    assert_eq!(eom.len(), 2);

    let mut c = session(&s, b'4', OUTSIDE);
    let (answers, eom) = transaction(&mut c, "<alice@example.org>", &["<carol@example.net>"]);
    assert!(answers.iter().all(|a| *a == cont()));
    assert_eq!(eom, cont());
    // A foreign sender is not signed, even from inside.
    let mut c = session(&s, b'4', INSIDE);
    assert_eq!(transaction(&mut c, "<alice@example.net>", &["<carol@example.net>"]).1, cont());
}

#[test]
fn authenticated_and_local_clients_are_signed() {
    let s = server(|_| {});
    let mut c = session(&s, b'4', OUTSIDE);
    ok(&mut c, macros(SMFIC_MAIL, &[("{auth_authen}", "alice"), ("i", "4ABC")]));
    ok(&mut c, mail("<alice@example.org>"));
    ok(&mut c, rcpt("<carol@example.net>"));
    ok(&mut c, Command::Data);
    assert!(chgfrom(&ok(&mut c, Command::BodyEob)).is_some());
    // An empty {auth_authen} is no authentication.
    let mut c = session(&s, b'4', OUTSIDE);
    ok(&mut c, macros(SMFIC_MAIL, &[("{auth_authen}", "")]));
    ok(&mut c, mail("<alice@example.org>"));
    assert_eq!(ok(&mut c, Command::BodyEob), cont());

    for family in [SMFIA_UNIX, SMFIA_UNKNOWN] {
        let mut c = session(&s, family, "");
        let (_, eom) = transaction(&mut c, "<alice@example.org>", &["<carol@example.net>"]);
        assert!(chgfrom(&eom).is_some(), "family {}", family as char);
    }
}

#[test]
fn bounce_to_untagged_protected_recipient_is_refused() {
    let s = server(|_| {});
    let mut c = session(&s, b'4', OUTSIDE);
    let (answers, eom) = transaction(&mut c, "<>", &["<bob@example.org>"]);
    assert_eq!(answers[0], cont());
    let r = reply(&answers[1]);
    assert!(r.starts_with("550 5.7.1 "), "{r}");
    assert!(crate::milter::try_encode(&answers[1][0]).is_ok());
    // Not to a foreign domain; never signed.
    assert_eq!(answers[2], cont());
    assert_eq!(eom, cont());
    let (answers, _) = transaction(&mut c, "<>", &["<bob@example.net>", "<postmaster@example.org>"]);
    assert!(answers.iter().all(|a| *a == cont()), "{answers:?}");
}

#[test]
fn valid_tag_is_accepted_and_stripped_at_end_of_message() {
    let s = server(|_| {});
    let tagged = format!("<{}>", tag(&s, "bob@example.org"));
    let mut c = session(&s, b'4', OUTSIDE);
    ok(&mut c, mail("<>"));
    assert_eq!(ok(&mut c, rcpt_args(&tagged, &["NOTIFY=NEVER", "ORCPT=rfc822;x@y"])), cont());
    assert_eq!(ok(&mut c, Command::Data), cont());
    let eom = ok(&mut c, Command::BodyEob);
    assert_eq!(
        eom,
        vec![
            Response::DelRcpt(tagged.clone()),
            Response::AddRcptPar {
                rcpt: "<bob@example.org>".into(),
                args: Some("NOTIFY=NEVER ORCPT=rfc822;x@y".into()),
            },
            Response::Continue,
        ]
    );
    // Stripped in any transaction, as passed (no brackets here), and without parameters.
    let bare = tag(&s, "bob@example.org");
    ok(&mut c, mail("<carol@example.net>"));
    ok(&mut c, rcpt(&bare));
    let eom = ok(&mut c, Command::BodyEob);
    assert_eq!(eom[0], Response::DelRcpt(bare));
    assert_eq!(
        eom[1],
        Response::AddRcptPar {
            rcpt: "<bob@example.org>".into(),
            args: None
        }
    );
}

#[test]
fn reject_at_data_defers_a_second_verdict_and_refuses_backscatter_at_data() {
    let s = server(|c| c.milter.reject_at = RejectAt::Data);
    let tagged = format!("<{}>", tag(&s, "bob@example.org"));
    let mut c = session(&s, b'4', OUTSIDE);
    // Backscatter first: kept until DATA; a valid tag after it is deferred.
    let (answers, eom) = transaction(&mut c, "<>", &["<bob@example.org>", &tagged]);
    assert_eq!(answers[1], cont());
    assert!(reply(&answers[2]).starts_with("452 4.5.3 "));
    assert!(reply(&answers[3]).starts_with("550 5.7.1 "));
    // The deferred recipient is not stripped.
    assert_eq!(eom, cont());
    // A valid tag first: a backscatter recipient after it is deferred, DATA goes on.
    let (answers, eom) = transaction(&mut c, "<>", &[&tagged, "<bob@example.org>"]);
    assert_eq!(answers[1], cont());
    assert!(reply(&answers[2]).starts_with("452 4.5.3 "));
    assert_eq!(answers[3], cont());
    assert!(matches!(eom[0], Response::DelRcpt(ref r) if *r == tagged));
}

#[test]
fn monitor_mode_adds_one_header_and_refuses_nothing() {
    let s = server(|c| c.milter.enforce = false);
    let tagged = format!("<{}>", tag(&s, "bob@example.org"));
    let mut c = session(&s, b'4', OUTSIDE);
    let (answers, eom) = transaction(&mut c, "<>", &["<bob@example.org>", "<alice@example.org>", &tagged]);
    assert!(answers.iter().all(|a| *a == cont()), "{answers:?}");
    let headers: Vec<_> = eom.iter().filter(|r| matches!(r, Response::AddHeader { .. })).collect();
    let [Response::AddHeader { name, value }] = &headers[..] else {
        panic!("{eom:?}")
    };
    assert_eq!(name, "X-BATV");
    assert!(value.starts_with("backscatter; reason="), "{value}");
    assert!(value.contains("mode=monitor; recipients=bounce-ok:1,backscatter:2"), "{value}");
    // Not for mail that is no bounce.
    assert_eq!(transaction(&mut c, "<carol@example.net>", &["<bob@example.org>"]).1, cont());
}

#[test]
fn abort_resets_the_transaction() {
    let s = server(|_| {});
    let tagged = format!("<{}>", tag(&s, "bob@example.org"));
    let mut c = session(&s, b'4', INSIDE);
    ok(&mut c, macros(SMFIC_MAIL, &[("{auth_authen}", "alice")]));
    ok(&mut c, mail("<alice@example.org>"));
    ok(&mut c, rcpt(&tagged));
    assert_eq!(ok(&mut c, Command::Abort), vec![]);
    assert_eq!(ok(&mut c, Command::BodyEob), cont());
    // The same session from outside: no stale CHGFROM, DELRCPT or authentication.
    let mut c = session(&s, b'4', OUTSIDE);
    ok(&mut c, macros(SMFIC_MAIL, &[("{auth_authen}", "alice")]));
    ok(&mut c, mail("<alice@example.org>"));
    ok(&mut c, rcpt(&tagged));
    ok(&mut c, Command::Abort);
    ok(&mut c, mail("<alice@example.org>"));
    ok(&mut c, rcpt("<carol@example.net>"));
    assert_eq!(ok(&mut c, Command::BodyEob), cont());
}

#[test]
fn quit_nc_resets_the_connection() {
    let s = server(|_| {});
    for (family, address) in [(b'4', INSIDE), (SMFIA_UNIX, "")] {
        let mut c = session(&s, family, address);
        assert!(chgfrom(&transaction(&mut c, "<alice@example.org>", &["<c@example.net>"]).1).is_some());
        assert_eq!(ok(&mut c, Command::QuitNc), vec![]);
        // The next session is from outside.
        ok(&mut c, connect(b'4', OUTSIDE));
        assert_eq!(transaction(&mut c, "<alice@example.org>", &["<c@example.net>"]).1, cont());
    }
    // An authenticated session's macros go with it.
    let mut c = session(&s, b'4', OUTSIDE);
    ok(&mut c, macros(SMFIC_MAIL, &[("{auth_authen}", "alice")]));
    ok(&mut c, mail("<alice@example.org>"));
    ok(&mut c, Command::QuitNc);
    ok(&mut c, connect(b'4', OUTSIDE));
    ok(&mut c, mail("<alice@example.org>"));
    assert_eq!(ok(&mut c, Command::BodyEob), cont());
}

#[test]
fn connect_starts_a_new_session() {
    let s = server(|_| {});
    let tagged = format!("<{}>", tag(&s, "bob@example.org"));
    // An MTA that never ended the transaction: no CHGFROM or DELRCPT of it for the next
    // client.
    let mut c = session(&s, b'4', INSIDE);
    ok(&mut c, macros(SMFIC_MAIL, &[("{auth_authen}", "alice")]));
    ok(&mut c, mail("<alice@example.org>"));
    ok(&mut c, rcpt(&tagged));
    ok(&mut c, connect(b'4', OUTSIDE));
    assert_eq!(ok(&mut c, Command::BodyEob), cont());
    ok(&mut c, mail("<alice@example.org>"));
    assert_eq!(ok(&mut c, Command::BodyEob), cont());
}

#[test]
fn optneg_below_version_6_has_no_macro_lists() {
    let s = server(|_| {});
    let r = ok(
        &mut Conn::new(&s, 1),
        Command::OptNeg {
            version: 2,
            actions: 0x1ff,
            protocol: 0,
        },
    );
    assert!(
        matches!(&r[..], [Response::OptNeg { version: 2, macros, .. }] if macros.is_empty()),
        "{r:?}"
    );
}

#[test]
fn too_many_forged_tags_from_one_client_are_answered_421() {
    let s = server(|c| c.milter.max_failed_tags = std::num::NonZeroU32::new(3).unwrap());
    let valid = format!("<{}>", tag(&s, "bob@example.org"));
    let forged = format!("<{}>", forge(&tag(&s, "bob@example.org")));
    let mut c = session(&s, b'4', OUTSIDE);
    ok(&mut c, mail("<>"));
    for _ in 0..3 {
        assert!(reply(&ok(&mut c, rcpt(&forged))).starts_with("550 5.7.1 "));
    }
    let r = ok(&mut c, rcpt(&forged));
    assert!(reply(&r).starts_with("421 4.7.0 "), "{r:?}");
    assert!(crate::milter::try_encode(&r[0]).is_ok());
    // Then even a valid tag, in any transaction, and nothing is stripped.
    ok(&mut c, Command::Abort);
    ok(&mut c, mail("<carol@example.net>"));
    assert!(reply(&ok(&mut c, rcpt(&valid))).starts_with("421 4.7.0 "));
    assert_eq!(ok(&mut c, Command::BodyEob), cont());
    // Another client is not concerned.
    let mut c = session(&s, b'4', "192.0.2.99");
    ok(&mut c, mail("<>"));
    assert_eq!(ok(&mut c, rcpt(&valid)), cont());
}

#[test]
fn trusted_relays_are_exempt() {
    let s = server(|c| {
        c.milter.trusted_relays = vec!["192.0.2.0/24".into()];
        c.milter.max_failed_tags = std::num::NonZeroU32::new(1).unwrap();
    });
    let forged = format!("<{}>", forge(&tag(&s, "bob@example.org")));
    let mut c = session(&s, b'4', OUTSIDE);
    let (answers, _) = transaction(&mut c, "<>", &["<bob@example.org>", &forged, &forged, &forged, "<bob>"]);
    assert!(answers.iter().all(|a| *a == cont()), "{answers:?}");
    // Not signed for all that.
    assert!(chgfrom(&transaction(&mut c, "<alice@example.org>", &["<c@example.net>"]).1).is_none());
}

// ---- random command sequences ----

/// What the property test's commands are made of.
#[derive(Debug, Clone)]
enum Step {
    OptNeg(u32, u32, u32),
    Macro(u8, Vec<(String, String)>),
    Connect(u8, String),
    Mail(Vec<String>),
    Rcpt(Vec<String>),
    Data,
    Header,
    Body,
    BodyEob,
    Abort,
    QuitNc,
}

/// Recipient kinds: resolved against the server's key when the case runs.
#[derive(Debug, Clone)]
enum Addr {
    Plain(String),
    Tagged(String, bool),
    Forged(String),
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,6}",
        "\\PC{0,12}",
        Just("<>".to_string()),
        Just("<@a,@b:x@example.org>".to_string()),
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("alice@example.org".to_string()),
        Just("bob@example.org".to_string()),
        Just("postmaster@example.org".to_string()),
        Just("carol@example.net".to_string()),
        Just("x@[192.0.2.1]".to_string()),
    ]
}

/// Addresses the server signs.
fn ours() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("alice@example.org".to_string()),
        Just("bob@example.org".to_string()),
        Just("a.b+c@example.org".to_string()),
    ]
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        text().prop_map(Addr::Plain),
        address().prop_map(|a| Addr::Plain(format!("<{a}>"))),
        (ours(), any::<bool>()).prop_map(|(a, b)| Addr::Tagged(a, b)),
        ours().prop_map(Addr::Forged),
    ]
}

fn esmtp() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![Just("SIZE=10".to_string()), Just("NOTIFY=NEVER".into()), "[A-Z]{1,4}=[a-z]{0,3}"],
        0..3,
    )
}

#[derive(Debug, Clone)]
enum RawStep {
    Plain(Step),
    Rcpt(Addr, Vec<String>),
    Mail(Addr, Vec<String>),
}

fn raw_step() -> impl Strategy<Value = RawStep> {
    let macro_cmd = prop_oneof![Just(b'C'), Just(b'M'), Just(b'R'), Just(b'T'), Just(b'E'), Just(b'X')];
    let macro_name = prop_oneof![
        Just("{auth_authen}".to_string()),
        Just("i".to_string()),
        Just("j".to_string()),
        "[a-z{}]{0,5}"
    ];
    let family = prop_oneof![Just(b'4'), Just(b'6'), Just(b'L'), Just(b'U'), any::<u8>()];
    let ip = prop_oneof![
        Just(INSIDE.to_string()),
        Just(OUTSIDE.to_string()),
        Just("192.0.2.7".to_string()),
        Just("IPv6:::1".to_string()),
        Just("2001:db8::1".to_string()),
        text(),
    ];
    prop_oneof![
        1 => (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(v, a, p)| RawStep::Plain(Step::OptNeg(v % 8, a, p))),
        1 => (macro_cmd, prop::collection::vec((macro_name, text()), 0..3)).prop_map(|(c, m)| RawStep::Plain(Step::Macro(c, m))),
        1 => (family, ip).prop_map(|(f, a)| RawStep::Plain(Step::Connect(f, a))),
        3 => (addr(), esmtp()).prop_map(|(a, e)| RawStep::Mail(a, e)),
        1 => Just(RawStep::Plain(Step::Mail(vec![]))),
        4 => (addr(), esmtp()).prop_map(|(a, e)| RawStep::Rcpt(a, e)),
        1 => Just(RawStep::Plain(Step::Rcpt(vec![]))),
        1 => Just(RawStep::Plain(Step::Data)),
        1 => Just(RawStep::Plain(Step::Header)),
        1 => Just(RawStep::Plain(Step::Body)),
        2 => Just(RawStep::Plain(Step::BodyEob)),
        1 => Just(RawStep::Plain(Step::Abort)),
        1 => Just(RawStep::Plain(Step::QuitNc)),
    ]
}

fn resolve(s: &Server<Milter>, a: &Addr) -> String {
    match a {
        Addr::Plain(p) => p.clone(),
        Addr::Tagged(a, bracket) => {
            let t = tag(s, a);
            if *bracket {
                format!("<{t}>")
            } else {
                t
            }
        }
        Addr::Forged(a) => format!("<{}>", forge(&tag(s, a))),
    }
}

fn to_command(s: &Server<Milter>, step: &RawStep) -> Command {
    let with = |a: &Addr, e: &[String]| std::iter::once(resolve(s, a)).chain(e.iter().cloned()).collect();
    match step {
        RawStep::Mail(a, e) => Command::Mail(with(a, e)),
        RawStep::Rcpt(a, e) => Command::Rcpt(with(a, e)),
        RawStep::Plain(p) => match p.clone() {
            Step::OptNeg(version, actions, protocol) => Command::OptNeg {
                version,
                actions,
                protocol,
            },
            Step::Macro(for_command, macros) => Command::Macro { for_command, macros },
            Step::Connect(family, address) => connect(family, &address),
            Step::Mail(a) => Command::Mail(a),
            Step::Rcpt(a) => Command::Rcpt(a),
            Step::Data => Command::Data,
            Step::Header => Command::Header {
                name: "Subject".into(),
                value: "x".into(),
            },
            Step::Body => Command::Body(b"text\r\n".to_vec()),
            Step::BodyEob => Command::BodyEob,
            Step::Abort => Command::Abort,
            Step::QuitNc => Command::QuitNc,
        },
    }
}

/// The connection and transaction as the MTA sees them, to judge the answers by.
#[derive(Default)]
struct Model {
    /// The client may be signed for: inside, authenticated (at MAIL) or local.
    may_sign: bool,
    client_may_sign: bool,
    /// The MTA's macros (its word on authentication).
    macros: crate::milter::Macros,
    /// Recipients passed since the transaction began (args[0], as passed).
    rcpts: Vec<String>,
}

fn check(model: &mut Model, cmd: &Command, answer: &[Response]) -> Result<(), TestCaseError> {
    let modifying = |r: &Response| {
        matches!(
            r,
            Response::ChgFrom { .. } | Response::AddRcptPar { .. } | Response::DelRcpt(_) | Response::AddHeader { .. }
        )
    };
    let eob = matches!(cmd, Command::BodyEob);
    for (i, r) in answer.iter().enumerate() {
        prop_assert!(!modifying(r) || eob, "{r:?} in answer to {cmd:?}");
        if let Response::ReplyCode(_) = r {
            prop_assert!(
                matches!(cmd, Command::Mail(_) | Command::Rcpt(_) | Command::Data),
                "{r:?} in answer to {cmd:?}"
            );
            prop_assert!(crate::milter::try_encode(r).is_ok(), "{r:?}");
        }
        if let Response::DelRcpt(d) = r {
            prop_assert!(model.rcpts.contains(d), "DELRCPT {d:?} not among {:?}", model.rcpts);
            prop_assert!(
                matches!(answer.get(i + 1), Some(Response::AddRcptPar { .. })),
                "DELRCPT without ADDRCPT_PAR: {answer:?}"
            );
        }
        if let Response::ChgFrom { .. } = r {
            prop_assert!(model.may_sign, "CHGFROM for a client outside: {answer:?}");
        }
        if let Response::OptNeg { version, macros, .. } = r {
            prop_assert!(matches!(cmd, Command::OptNeg { .. }), "OPTNEG answered to {:?}", cmd);
            // Macro lists are a version 6 feature.
            prop_assert!(*version >= 6 || macros.is_empty(), "{:?}", r);
            prop_assert!(crate::milter::try_encode(r).is_ok());
        }
    }
    match cmd {
        Command::OptNeg { .. } => prop_assert_eq!(answer.len(), 1),
        Command::Macro { .. } | Command::Abort | Command::QuitNc | Command::Quit => prop_assert!(answer.is_empty()),
        Command::BodyEob => prop_assert_eq!(answer.last(), Some(&Response::Continue)),
        _ => prop_assert_eq!(answer.len(), 1, "{:?}", answer),
    }
    // The model's own transitions, after the answer.
    match cmd {
        Command::Macro { for_command, macros } => {
            model.macros.set(*for_command, macros.clone());
        }
        Command::Connect { family, address, .. } => {
            let ip: Option<std::net::IpAddr> = match family {
                b'4' | b'6' => address.trim_start_matches("IPv6:").parse().ok(),
                _ => None,
            };
            model.client_may_sign = ip.is_none_or(|ip| ip.is_loopback());
            model.may_sign = false;
            model.rcpts.clear();
            model.macros.clear_from(crate::milter::Stage::Helo);
        }
        Command::Mail(_) => {
            let auth = model.macros.get("auth_authen").is_some_and(|a| !a.is_empty());
            model.may_sign = model.client_may_sign || auth;
            model.rcpts.clear();
        }
        Command::Rcpt(a) => model.rcpts.extend(a.first().cloned()),
        Command::BodyEob => {
            model.may_sign = false;
            model.rcpts.clear();
        }
        Command::Abort => {
            model.macros.clear_from(crate::milter::Stage::Mail);
            model.may_sign = false;
            model.rcpts.clear();
        }
        Command::QuitNc => *model = Model::default(),
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_get_allowed_answers(
        optneg_first in any::<bool>(),
        monitor in any::<bool>(),
        at_data in any::<bool>(),
        steps in prop::collection::vec(raw_step(), 0..40),
    ) {
        let s = server(|c| {
            c.milter.enforce = !monitor;
            c.milter.max_failed_tags = std::num::NonZeroU32::new(2).unwrap();
            if at_data {
                c.milter.reject_at = RejectAt::Data;
            }
        });
        let mut c = Conn::new(&s, 1);
        let mut model = Model::default();
        let head = optneg_first.then(optneg);
        let cmds = head.into_iter().chain(steps.iter().map(|st| to_command(&s, st)));
        for cmd in cmds {
            match c.answer(cmd.clone()) {
                Ok(answer) => check(&mut model, &cmd, &answer)?,
                // The connection ends here (a malformed or refused packet).
                Err(_) => break,
            }
        }
    }
}

#[test]
fn an_unreadable_sender_is_refused_when_enforcing() {
    let s = server(|_| {});
    let mut c = session(&s, b'4', OUTSIDE);
    let r = ok(&mut c, mail("<a b@@example.org>"));
    assert!(reply(&r).starts_with("501 5.1.7 "), "{r:?}");
    // Monitor mode lets it through, judged as a bounce.
    let s = server(|c| c.milter.enforce = false);
    let mut c = session(&s, b'4', OUTSIDE);
    assert_eq!(ok(&mut c, mail("<a b@@example.org>")), cont());
}

/// A client address that cannot be read is a stranger, not a local submission: never
/// signed. The bracketed and IPv6: forms MTAs write are read.
#[test]
fn an_unreadable_client_address_is_not_local() {
    let s = server(|_| {});
    let mut c = session(&s, b'4', "not-an-address");
    let (_, eom) = transaction(&mut c, "<alice@example.org>", &["<carol@remote.test>"]);
    assert_eq!(eom, cont(), "not signed: {eom:?}");
    for inside in ["[127.0.0.1]", "IPv6:::1"] {
        let mut c = session(&s, if inside.contains(':') { b'6' } else { b'4' }, inside);
        let (_, eom) = transaction(&mut c, "<alice@example.org>", &["<carol@remote.test>"]);
        assert!(matches!(eom[0], Response::ChgFrom { .. }), "{inside}: {eom:?}");
    }
}
