//! The packets byte for byte (hand-computed), Postfix's shapes, negotiation and macros.

use super::flags::*;
use super::*;

#[test]
fn parse_optneg_as_postfix_sends_it() {
    let p = b"\0\0\0\x06\0\0\x01\xff\0\x1f\xff\xff";
    assert_eq!(
        parse(b'O', p).unwrap(),
        Command::OptNeg {
            version: 6,
            actions: 0x1ff,
            protocol: 0x1fffff
        }
    );
    assert!(matches!(parse(b'O', &p[..11]), Err(MilterError::Malformed(_))));
}

#[test]
fn parse_macro_for_connect() {
    let p = b"Cj\0mx.example.org\0{daemon_name}\0smtpd\0v\0Postfix 3.8\0";
    assert_eq!(
        parse(b'D', p).unwrap(),
        Command::Macro {
            for_command: b'C',
            macros: vec![
                ("j".into(), "mx.example.org".into()),
                ("{daemon_name}".into(), "smtpd".into()),
                ("v".into(), "Postfix 3.8".into())
            ]
        }
    );
    assert_eq!(
        parse(b'D', b"M").unwrap(),
        Command::Macro {
            for_command: b'M',
            macros: vec![]
        }
    );
    assert!(matches!(parse(b'D', b""), Err(MilterError::Malformed(_))));
    assert!(
        matches!(parse(b'D', b"Ci\0"), Err(MilterError::Malformed(_))),
        "a name without a value"
    );
    assert!(matches!(parse(b'D', b"Ci\0abc"), Err(MilterError::Malformed(_))), "no final NUL");
}

#[test]
fn parse_connect_families() {
    let p = b"mail.example.org\x004\x00\x19192.0.2.1\0";
    assert_eq!(
        parse(b'C', p).unwrap(),
        Command::Connect {
            hostname: "mail.example.org".into(),
            family: b'4',
            port: 25,
            address: "192.0.2.1".into()
        }
    );
    let p = b"[2001:db8::1]\x006\xc3\x502001:db8::1\0";
    assert_eq!(
        parse(b'C', p).unwrap(),
        Command::Connect {
            hostname: "[2001:db8::1]".into(),
            family: b'6',
            port: 50000,
            address: "2001:db8::1".into()
        }
    );
    assert_eq!(
        parse(b'C', b"localhost\0L").unwrap(),
        Command::Connect {
            hostname: "localhost".into(),
            family: b'L',
            port: 0,
            address: String::new()
        }
    );
    assert_eq!(
        parse(b'C', b"localhost\0L\0\0/run/x.sock\0").unwrap(),
        Command::Connect {
            hostname: "localhost".into(),
            family: b'L',
            port: 0,
            address: "/run/x.sock".into()
        }
    );
    assert_eq!(
        parse(b'C', b"unknown\0U").unwrap(),
        Command::Connect {
            hostname: "unknown".into(),
            family: b'U',
            port: 0,
            address: String::new()
        }
    );
    assert!(matches!(parse(b'C', b"host\0"), Err(MilterError::Malformed(_))));
    assert!(matches!(parse(b'C', b"host\x004\x00"), Err(MilterError::Malformed(_))));
    assert!(matches!(parse(b'C', b"host\x004\x00\x19192.0.2.1"), Err(MilterError::Malformed(_))));
    assert!(matches!(parse(b'C', b"host"), Err(MilterError::Malformed(_))));
}

#[test]
fn parse_helo_mail_rcpt() {
    assert_eq!(parse(b'H', b"client.example\0").unwrap(), Command::Helo("client.example".into()));
    assert!(matches!(parse(b'H', b"client.example"), Err(MilterError::Malformed(_))));
    assert_eq!(
        parse(b'M', b"<a@b.example>\0SIZE=100\0BODY=8BITMIME\0").unwrap(),
        Command::Mail(vec!["<a@b.example>".into(), "SIZE=100".into(), "BODY=8BITMIME".into()])
    );
    assert_eq!(parse(b'M', b"<>\0").unwrap(), Command::Mail(vec!["<>".into()]));
    assert_eq!(
        parse(b'R', b"<r@c.example>\0").unwrap(),
        Command::Rcpt(vec!["<r@c.example>".into()])
    );
    assert!(matches!(parse(b'R', b""), Err(MilterError::Malformed(_))));
    assert!(matches!(parse(b'M', b"<a@b>"), Err(MilterError::Malformed(_))));
}

#[test]
fn parse_header_body_and_the_bare_commands() {
    assert_eq!(
        parse(b'L', b"X-Empty\0\0").unwrap(),
        Command::Header {
            name: "X-Empty".into(),
            value: String::new()
        }
    );
    assert_eq!(
        parse(b'L', b"Subject\0 hi\0").unwrap(),
        Command::Header {
            name: "Subject".into(),
            value: " hi".into()
        }
    );
    assert!(matches!(parse(b'L', b"Subject\0hi"), Err(MilterError::Malformed(_))));
    assert_eq!(parse(b'B', b"line\r\n\0\xff").unwrap(), Command::Body(b"line\r\n\0\xff".to_vec()));
    assert_eq!(parse(b'B', b"").unwrap(), Command::Body(vec![]));
    assert_eq!(parse(b'T', b"").unwrap(), Command::Data);
    assert_eq!(parse(b'N', b"").unwrap(), Command::Eoh);
    assert_eq!(parse(b'E', b"").unwrap(), Command::BodyEob);
    assert_eq!(parse(b'A', b"").unwrap(), Command::Abort);
    assert_eq!(parse(b'Q', b"").unwrap(), Command::Quit);
    assert_eq!(parse(b'K', b"").unwrap(), Command::QuitNc);
    assert_eq!(parse(b'U', b"XFOO bar\0").unwrap(), Command::Unknown(b"XFOO bar".to_vec()));
    assert!(matches!(parse(b'z', b""), Err(MilterError::UnknownCommand(b'z'))));
}

#[test]
fn parse_caps_the_strings() {
    let ok = vec![0u8; MAX_FIELDS];
    assert!(matches!(parse(b'M', &ok), Ok(Command::Mail(a)) if a.len() == MAX_FIELDS));
    let over = vec![0u8; MAX_FIELDS + 1];
    assert!(matches!(parse(b'M', &over), Err(MilterError::Malformed(_))));
    let mut macros = vec![b'C'];
    macros.extend(vec![0u8; MAX_FIELDS + 2]);
    assert!(matches!(parse(b'D', &macros), Err(MilterError::Malformed(_))));
}

#[test]
fn parse_is_lossy_on_non_utf8() {
    assert_eq!(parse(b'H', b"h\xffx\0").unwrap(), Command::Helo("h\u{fffd}x".into()));
}

#[test]
fn encode_byte_exact() {
    let cases: Vec<(Response, &[u8])> = vec![
        (Response::Continue, b"\0\0\0\x01c"),
        (Response::Accept, b"\0\0\0\x01a"),
        (Response::Reject, b"\0\0\0\x01r"),
        (Response::Tempfail, b"\0\0\0\x01t"),
        (Response::Discard, b"\0\0\0\x01d"),
        (Response::Skip, b"\0\0\0\x01s"),
        (Response::Progress, b"\0\0\0\x01p"),
        (Response::ReplyCode("550 5.7.1 no".into()), b"\0\0\0\x0ey550 5.7.1 no\0"),
        (
            Response::ChgFrom {
                from: "<a@b>".into(),
                args: Some("SIZE=1".into()),
            },
            b"\0\0\0\x0ee<a@b>\0SIZE=1\0",
        ),
        (
            Response::ChgFrom {
                from: "<a@b>".into(),
                args: None,
            },
            b"\0\0\0\x07e<a@b>\0",
        ),
        (
            Response::AddRcptPar {
                rcpt: "<x@y>".into(),
                args: None,
            },
            b"\0\0\0\x072<x@y>\0",
        ),
        (
            Response::AddRcptPar {
                rcpt: "<x@y>".into(),
                args: Some("NOTIFY=NEVER".into()),
            },
            b"\0\0\0\x142<x@y>\0NOTIFY=NEVER\0",
        ),
        (Response::DelRcpt("<x@y>".into()), b"\0\0\0\x07-<x@y>\0"),
        (
            Response::AddHeader {
                name: "X-BATV".into(),
                value: "bad".into(),
            },
            b"\0\0\0\x0chX-BATV\0bad\0",
        ),
        (
            Response::InsHeader {
                index: 0,
                name: "X-A".into(),
                value: "b".into(),
            },
            b"\0\0\0\x0bi\0\0\0\0X-A\0b\0",
        ),
        (
            Response::ChgHeader {
                index: 1,
                name: "X-A".into(),
                value: String::new(),
            },
            b"\0\0\0\x0am\0\0\0\x01X-A\0\0",
        ),
        (
            Response::OptNeg {
                version: 6,
                actions: 0xc8,
                protocol: 0,
                macros: vec![(2, "{auth_authen}".into())],
            },
            b"\0\0\0\x1fO\0\0\0\x06\0\0\0\xc8\0\0\0\0\0\0\0\x02{auth_authen}\0",
        ),
        (
            Response::OptNeg {
                version: 2,
                actions: 1,
                protocol: 0x400,
                macros: vec![],
            },
            b"\0\0\0\x0dO\0\0\0\x02\0\0\0\x01\0\0\x04\0",
        ),
    ];
    for (r, bytes) in cases {
        assert_eq!(encode(&r), bytes, "{r:?}");
        assert_eq!(try_encode(&r).unwrap(), bytes, "{r:?}");
        assert_eq!(parse_response(bytes[4], &bytes[5..]).unwrap(), r);
    }
}

#[test]
fn reply_codes_are_checked_and_sanitized() {
    let r = Response::ReplyCode("550 5.7.1 100% bad\r\nx".into());
    assert_eq!(encode(&r), b"\0\0\0\x18y550 5.7.1 100%% bad  x\0");
    for bad in ["250 ok", "550", "550-5.7.1 x", "abc def", "55 0 x", ""] {
        let r = Response::ReplyCode(bad.into());
        assert!(matches!(try_encode(&r), Err(MilterError::InvalidResponse(_))), "{bad}");
        assert_eq!(encode(&r), b"\0\0\0\x01t", "{bad}");
    }
    assert_eq!(encode(&Response::DelRcpt("<a\0b>".into())), b"\0\0\0\x06-<ab>\0", "NULs dropped");
}

#[tokio::test]
async fn read_command_frames() {
    let mut bytes = encode_command(&Command::Helo("h".into()));
    bytes.extend(b"\0\0\0\x01Z"); // unknown, but framed: the next packet still reads
    bytes.extend(encode_command(&Command::Quit));
    let mut r = &bytes[..];
    assert_eq!(read_command(&mut r, MAX_PACKET).await.unwrap(), Some(Command::Helo("h".into())));
    assert!(matches!(
        read_command(&mut r, MAX_PACKET).await,
        Err(MilterError::UnknownCommand(b'Z'))
    ));
    assert_eq!(read_command(&mut r, MAX_PACKET).await.unwrap(), Some(Command::Quit));
    assert_eq!(read_command(&mut r, MAX_PACKET).await.unwrap(), None);
    let mut r: &[u8] = b"";
    assert_eq!(read_command(&mut r, 10).await.unwrap(), None);
}

#[tokio::test]
async fn read_command_refuses_bad_lengths() {
    let mut r: &[u8] = b"\0\0";
    assert!(matches!(read_command(&mut r, MAX_PACKET).await, Err(MilterError::Malformed(_))));
    let mut r: &[u8] = b"\0\0\0\0";
    assert!(matches!(read_command(&mut r, MAX_PACKET).await, Err(MilterError::Malformed(_))));
    let mut r: &[u8] = b"\xff\xff\xff\xffQ";
    assert!(matches!(
        read_command(&mut r, MAX_PACKET).await,
        Err(MilterError::TooLong(0xffff_ffff))
    ));
    let mut r: &[u8] = b"\0\0\0\x0bHshort\0";
    assert!(matches!(read_command(&mut r, MAX_PACKET).await, Err(MilterError::Malformed(_))));
    let mut r: &[u8] = b"\0\0\0\x03Hh\0";
    assert!(matches!(read_command(&mut r, 2).await, Err(MilterError::TooLong(3))));
    let mut r: &[u8] = b"\0\0\0\x03Hh\0";
    assert_eq!(read_command(&mut r, 3).await.unwrap(), Some(Command::Helo("h".into())));
}

#[tokio::test]
async fn read_command_within_times_out() {
    let (mut a, _b) = tokio::io::duplex(64);
    let got = read_command_within(&mut a, MAX_PACKET, std::time::Duration::from_millis(10)).await;
    assert!(matches!(got, Err(MilterError::Timeout)));
}

#[test]
fn negotiation() {
    let want = SMFIF_CHGFROM | SMFIF_ADDRCPT_PAR | SMFIF_DELRCPT | SMFIF_ADDHDRS;
    let need = SMFIF_CHGFROM;
    let proto = SMFIP_NOBODY | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_HDR_LEADSPC;
    // Postfix 3.x offers everything.
    assert_eq!(negotiate(6, 0x1ff, 0x1fffff, want, need, proto).unwrap(), (6, want, proto));
    // A newer MTA gets version 6.
    assert_eq!(negotiate(7, 0x1ff, 0x1fffff, want, need, proto).unwrap().0, 6);
    // An old one keeps its version; what it does not offer is dropped.
    assert_eq!(
        negotiate(2, SMFIF_CHGFROM | SMFIF_ADDHDRS, SMFIP_NOBODY, want, need, proto).unwrap(),
        (2, SMFIF_CHGFROM | SMFIF_ADDHDRS, SMFIP_NOBODY)
    );
    // Needed actions are asked for even when not among the wanted.
    assert_eq!(negotiate(6, 0x1ff, 0, 0, need, 0).unwrap(), (6, need, 0));
    assert!(matches!(
        negotiate(1, 0x1ff, 0x1fffff, want, need, proto),
        Err(MilterError::Version(1))
    ));
    assert!(matches!(
        negotiate(0, 0x1ff, 0x1fffff, want, need, proto),
        Err(MilterError::Version(0))
    ));
    assert!(matches!(
        negotiate(6, SMFIF_ADDHDRS, 0x1fffff, want, need | SMFIF_DELRCPT, proto),
        Err(MilterError::MissingActions(m)) if m == SMFIF_CHGFROM | SMFIF_DELRCPT
    ));
}

#[test]
fn macros_by_stage() {
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(n, x)| (n.to_string(), x.to_string())).collect::<Vec<_>>();
    let mut m = Macros::new();
    assert!(m.set(b'C', pairs(&[("{daemon_name}", "smtpd"), ("j", "mx")])));
    assert!(m.set(b'M', pairs(&[("{auth_authen}", "alice"), ("i", "ABC")])));
    assert!(!m.set(b'L', pairs(&[("x", "y")])), "no stage for HEADER");
    assert_eq!(m.get("{daemon_name}"), Some("smtpd"));
    assert_eq!(m.get("daemon_name"), Some("smtpd"));
    assert_eq!(m.get("auth_authen"), Some("alice"));
    assert_eq!(m.get("{i}"), Some("ABC"));
    assert_eq!(m.get("i"), Some("ABC"));
    assert_eq!(m.get("x"), None);
    // A later stage's value wins.
    m.set(b'R', pairs(&[("i", "DEF")]));
    assert_eq!(m.get("i"), Some("DEF"));
    // ABORT: the transaction's macros go, the connection's stay.
    m.clear_from(Stage::Mail);
    assert_eq!(m.get("auth_authen"), None);
    assert_eq!(m.get("i"), None);
    assert_eq!(m.get("j"), Some("mx"));
    // A new MAIL clears RCPT's.
    m.set(b'R', pairs(&[("{rcpt_addr}", "r@x")]));
    m.set(b'M', pairs(&[("{mail_addr}", "a@b")]));
    assert_eq!(m.get("rcpt_addr"), None);
    assert_eq!(m.get("mail_addr"), Some("a@b"));
    assert_eq!(Stage::Eoh.smfim(), SMFIM_EOH);
    assert_eq!(Stage::of_command(b'E'), Some(Stage::Eom));
}
