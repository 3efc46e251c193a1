//! `batv daemon` at the protocol level, over raw unix and loopback TCP sockets: Postfix's
//! socketmap (netstrings, kept-alive connections, pipelining), the policy delegation
//! protocol (RCPT and DATA verdicts, per-instance state, monitor mode), Exim's one-line
//! requests (raw, and through a real `exim -be ${readsocket}`), malformed and oversized
//! requests, half-closed connections, reloads (keys directory poll, SIGHUP), startup
//! errors, SIGTERM and a concurrency smoke test. Every test is bounded in time and every
//! daemon is killed by its PID when the test ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon_proc::*;
use common::{require, run_bounded};

/// Bound of each test.
const LIMIT: Duration = Duration::from_secs(20);
/// 40 days after `NOW`: tags signed at `NOW` (7-day lifetime) have expired.
const LATER: &str = "2027-01-02T12:00:00Z";

const REFUSE_RCPT: &str = "550 5.7.1 ";
const DEFER: &str = "452 4.5.3 ";
const MONITOR_UNTAGGED: &str = "PREPEND X-BATV: backscatter; reason=untagged; mode=monitor";

/// A tag with one hash character changed (`prvs=` K DDD, then the hash from index 9).
fn forge(tag: &str) -> String {
    // Native tags are case-insensitive: "A" for "a" would be no forgery.
    let c = if tag[12..13].eq_ignore_ascii_case("a") { "b" } else { "a" };
    format!("{}{c}{}", &tag[..12], &tag[13..])
}

/// The key id of a socketmap `OK prvs=K...` reply.
fn key_of(reply: &str) -> char {
    let t = reply
        .strip_prefix("OK prvs=")
        .unwrap_or_else(|| panic!("not a signed reply: {reply}"));
    t.chars().next().unwrap()
}

// ---------------------------------------------------------------------------------------
// socketmap

#[test]
fn socketmap_sign_and_strip_on_one_kept_alive_connection() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        let tag = d.sign("bob@example.org");
        let upper = tag.to_ascii_uppercase();
        assert_ne!(tag, upper);
        for mut c in d.both() {
            let name = c.name;
            let signed = c.lookup("sign", "bob@example.org");
            assert_eq!(signed, format!("OK {tag}"), "{name}");
            let t = signed.strip_prefix("OK ").unwrap();
            assert_eq!(d.store.verify(NOW, &[t]).unwrap(), ["bob@example.org"], "{name}");
            // Our domain in another case is ours too.
            let mixed = c.lookup("sign", "Carol@Example.ORG");
            assert!(
                mixed.starts_with("OK prvs=1") && mixed.ends_with("=Carol@Example.ORG"),
                "{name}: {mixed}"
            );
            for key in [
                "alice",
                "@example.org",
                "joe@other.test",
                "",
                tag.as_str(),
                upper.as_str(),
                "SRS0=HHH=TT=other.test=joe@example.org",
                "SRS1=HHH=other.test==HHH=TT=third.test=joe@example.org",
                "<>",
            ] {
                assert_eq!(c.lookup("sign", key), "NOTFOUND ", "{name}: sign {key:?}");
            }
            // A key that is not UTF-8.
            c.send(b"7:sign \xff\xfe,");
            assert_eq!(c.netstring(), "NOTFOUND ", "{name}");

            assert_eq!(c.lookup("strip", &tag), "OK bob@example.org", "{name}");
            // Native tags are case-insensitive; the original keeps the case it came in.
            assert_eq!(c.lookup("strip", &upper), "OK BOB@EXAMPLE.ORG", "{name}");
            for key in [
                forge(&tag),
                forge(&upper),
                "bob@example.org".into(),
                "joe@other.test".into(),
                String::new(),
            ] {
                assert_eq!(c.lookup("strip", &key), "NOTFOUND ", "{name}: strip {key:?}");
            }
            for map in ["virtual", "SIGN", "strip2"] {
                let r = c.lookup(map, "bob@example.org");
                assert!(r.starts_with("PERM "), "{name}: map {map}: {r}");
            }
            // A map name without a key at all.
            let r = c.lookup("nokey", "").to_string();
            assert!(r.starts_with("PERM "), "{name}: {r}");
            // The connection is still served after all that.
            assert_eq!(c.lookup("strip", &tag), "OK bob@example.org", "{name}");
        }
        d.wait_log("listening on", 2);
    });
}

#[test]
fn socketmap_pipelined_requests_are_answered_in_order() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        let tag = d.sign("bob@example.org");
        let alice = d.sign("alice@example.org");
        for mut c in d.both() {
            let mut batch = Vec::new();
            for req in [
                "sign bob@example.org".to_string(),
                format!("strip {tag}"),
                "sign joe@other.test".into(),
                format!("strip {}", forge(&tag)),
                "virtual bob@example.org".into(),
                format!("strip {}", alice.to_ascii_uppercase()),
                "sign alice@example.org".into(),
                format!("strip {alice}"),
            ] {
                batch.extend_from_slice(&ns(&req));
            }
            c.send(&batch);
            let got: Vec<String> = (0..8).map(|_| c.netstring()).collect();
            assert_eq!(got[0], format!("OK {tag}"), "{}", c.name);
            assert_eq!(got[1], "OK bob@example.org");
            assert_eq!(got[2], "NOTFOUND ");
            assert_eq!(got[3], "NOTFOUND ");
            assert!(got[4].starts_with("PERM "), "{got:?}");
            assert_eq!(got[5], "OK ALICE@EXAMPLE.ORG");
            assert_eq!(got[6], format!("OK {alice}"));
            assert_eq!(got[7], "OK alice@example.org");
            // And the connection goes on.
            assert_eq!(c.lookup("strip", &tag), "OK bob@example.org");
        }
    });
}

#[test]
fn socketmap_expired_tags_still_strip() {
    bounded(LIMIT, || {
        let store = Store::new("");
        let old = store.sign(NOW, "bob@example.org");
        let d = Daemon::start_at(store, LATER);
        for mut c in d.both() {
            assert_eq!(c.lookup("strip", &old), "OK bob@example.org", "{}", c.name);
            assert_eq!(c.lookup("strip", &forge(&old)), "NOTFOUND ", "{}", c.name);
            // Signing uses the daemon's clock.
            let fresh = c.lookup("sign", "bob@example.org");
            assert_eq!(fresh, format!("OK {}", d.sign("bob@example.org")));
            assert_ne!(fresh, format!("OK {old}"));
        }
        // A bounce to the expired tag is backscatter.
        let mut c = d.unix();
        let action = c.policy(&[("recipient", &old)]);
        assert!(action.starts_with(REFUSE_RCPT), "{action}");
        d.wait_log("reason=expired action=refused", 1);
        let mut c = d.tcp();
        c.send(format!("verify {old}\n").as_bytes());
        assert_eq!(String::from_utf8(c.rest()).unwrap(), "REJECT expired\n");
    });
}

#[test]
fn malformed_netstrings_close_the_connection_and_the_daemon_serves_on() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        let tag = d.sign("bob@example.org");
        let cases: [(&str, &[u8]); 7] = [
            ("abc", b"abc"),
            ("no comma", b"5:hello;"),
            ("no colon", b"5hello,"),
            ("over request_limit", b"99999999:"),
            ("empty length", b":hello,"),
            ("sign in the length", b"-5:hello,"),
            ("short payload", b"3:sign bob,"),
        ];
        for kind in ["unix", "tcp"] {
            let connect = || if kind == "unix" { d.unix() } else { d.tcp() };
            for (what, bytes) in cases {
                // After a good request on the same connection.
                let mut c = connect();
                assert_eq!(c.lookup("strip", &tag), "OK bob@example.org");
                c.send(bytes);
                c.expect_closed(what);
                // As the first request (a first byte that is not a digit makes it a
                // one-line request: see one_line_requests_over_raw_sockets).
                if bytes[0].is_ascii_digit() {
                    let mut c = connect();
                    c.send(bytes);
                    c.expect_closed(what);
                }
                // The next connection is served.
                assert_eq!(
                    connect().lookup("sign", "bob@example.org"),
                    format!("OK {tag}"),
                    "{kind} after {what}"
                );
            }
            // A payload cut short by the client's half-close; a length with no ':'.
            for bytes in [&b"20:sign bob@example.org"[..], b"12", b"5:hello"] {
                let mut c = connect();
                assert_eq!(c.lookup("strip", &tag), "OK bob@example.org");
                c.send(bytes);
                c.half_close();
                c.expect_closed("truncated");
                let mut c = connect();
                c.send(bytes);
                c.half_close();
                c.expect_closed("truncated first");
            }
            assert_eq!(connect().lookup("strip", &tag), "OK bob@example.org");
        }
        let log = d.log();
        for why in [
            "malformed netstring",
            "request longer than 16384 octets",
            "connection closed in the middle of a request",
        ] {
            assert!(log.contains(why), "{why}: {log}");
        }
        assert!(log.contains("protocol=socketmap"), "{log}");
    });
}

#[test]
fn oversized_requests_close_the_connection() {
    bounded(LIMIT, || {
        let d = Daemon::start("[daemon]\nrequest_limit = 512\n");
        let tag = d.sign("bob@example.org");
        let short_policy = "request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\nrecipient=bob@example.org\ninstance=a1\n\n";
        for kind in ["unix", "tcp"] {
            let connect = || if kind == "unix" { d.unix() } else { d.tcp() };
            let serves = || assert_eq!(connect().lookup("strip", &tag), "OK bob@example.org", "{kind}");

            // A netstring of 600 octets (refused from its length), then one of exactly 512.
            let mut big = format!("600:sign {}", "a".repeat(595)).into_bytes();
            big.push(b',');
            let mut c = connect();
            c.send(&big);
            c.expect_closed("600-octet netstring");
            let mut c = connect();
            assert_eq!(c.lookup("strip", &tag), "OK bob@example.org");
            c.send(&big);
            c.expect_closed("600-octet netstring after a request");
            serves();
            let mut c = connect();
            assert_eq!(c.lookup("sign", &"a".repeat(507)), "NOTFOUND ", "a 512-octet request is answered");
            assert_eq!(c.lookup("strip", &tag), "OK bob@example.org");

            // Policy: many short lines adding up to more than 512 octets; one long line.
            let mut c = connect();
            c.send(short_policy.as_bytes());
            assert!(c.policy_reply().starts_with(REFUSE_RCPT));
            let mut many = String::from("request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\n");
            for i in 0..40 {
                many.push_str(&format!("x_attribute_{i:02}=value\n"));
            }
            many.push_str("recipient=bob@example.org\n\n");
            assert!(many.len() > 600);
            c.send(many.as_bytes());
            c.expect_closed("policy request over 512 octets");
            serves();
            let mut c = connect();
            c.send(format!("request=smtpd_access_policy\nrecipient={}@example.org\n\n", "b".repeat(600)).as_bytes());
            c.expect_closed("policy line over 512 octets");
            serves();

            // One line (Exim) over 512 octets, with and without its newline.
            let mut c = connect();
            c.send(format!("verify {}@example.org\n", "c".repeat(600)).as_bytes());
            c.expect_closed("one line over 512 octets");
            let mut c = connect();
            c.send(format!("verify {}@example.org", "c".repeat(600)).as_bytes());
            c.half_close();
            c.expect_closed("one line over 512 octets, half-closed");
            serves();
        }
        d.wait_log("request longer than 512 octets", 1);
    });
}

#[test]
fn half_closed_connections_still_get_their_answer() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        let tag = d.sign("bob@example.org");
        for kind in ["unix", "tcp"] {
            let connect = || if kind == "unix" { d.unix() } else { d.tcp() };
            // socketmap: the reply, then the end.
            let mut c = connect();
            c.send(&ns("sign bob@example.org"));
            c.half_close();
            assert_eq!(c.netstring(), format!("OK {tag}"), "{kind}");
            assert_eq!(c.rest(), b"", "{kind}");
            // Two pipelined, then the half-close.
            let mut c = connect();
            let mut two = ns(&format!("strip {tag}"));
            two.extend_from_slice(&ns("strip bob@example.org"));
            c.send(&two);
            c.half_close();
            assert_eq!(c.netstring(), "OK bob@example.org");
            assert_eq!(c.netstring(), "NOTFOUND ");
            assert_eq!(c.rest(), b"", "{kind}");
            // Exim: one line without its newline, then the half-close.
            for (req, want) in [
                ("verify bob@example.org".to_string(), "REJECT untagged\n".to_string()),
                (format!("verify {tag}"), "OK bob@example.org\n".into()),
                (format!("strip {tag}"), "OK bob@example.org\n".into()),
                ("sign bob@example.org".into(), format!("OK {tag}\n")),
            ] {
                let mut c = connect();
                c.send(req.as_bytes());
                c.half_close();
                assert_eq!(String::from_utf8(c.rest()).unwrap(), want, "{kind}: {req}");
            }
            // With its newline and no half-close: the answer, then the daemon closes.
            let mut c = connect();
            c.send(format!("strip {tag}\n").as_bytes());
            assert_eq!(String::from_utf8(c.rest()).unwrap(), "OK bob@example.org\n", "{kind}");
            // Policy: the reply, then the end.
            let mut c = connect();
            c.send(policy_request(&[]).as_bytes());
            c.half_close();
            assert!(c.policy_reply().starts_with(REFUSE_RCPT), "{kind}");
            assert_eq!(c.rest(), b"", "{kind}");
            // A policy request cut short: no reply.
            let mut c = connect();
            c.send(b"request=smtpd_access_policy\nsender=\nrecipient=bob@example.org\n");
            c.half_close();
            c.expect_closed("policy request without its empty line");
        }
    });
}

#[test]
fn requests_split_across_many_writes() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        let tag = d.sign("bob@example.org");
        let pause = || std::thread::sleep(Duration::from_millis(2));
        for kind in ["unix", "tcp"] {
            let connect = || if kind == "unix" { d.unix() } else { d.tcp() };
            // A netstring one octet at a time, twice on one connection.
            let mut c = connect();
            for _ in 0..2 {
                for b in ns(&format!("strip {tag}")) {
                    c.send(&[b]);
                    pause();
                }
                assert_eq!(c.netstring(), "OK bob@example.org", "{kind}");
            }
            // A policy request in pieces that cut lines and the final empty line apart.
            let mut c = connect();
            let req = policy_request(&[("recipient", &tag)]);
            for piece in req.as_bytes().chunks(7) {
                c.send(piece);
                pause();
            }
            assert_eq!(c.policy_reply(), "DUNNO", "{kind}");
            let req = policy_request(&[]);
            let (a, b) = req.split_at(req.len() - 1);
            c.send(a.as_bytes());
            std::thread::sleep(Duration::from_millis(50));
            c.send(b.as_bytes());
            assert!(c.policy_reply().starts_with(REFUSE_RCPT), "{kind}");
            // One line in three writes.
            let mut c = connect();
            for piece in ["ver", "ify bob@exam", "ple.org\n"] {
                c.send(piece.as_bytes());
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(String::from_utf8(c.rest()).unwrap(), "REJECT untagged\n", "{kind}");
        }
    });
}

/// reject_at = "data" keeps each transaction's verdict from its first recipient to DATA.
/// The table of transactions is bounded (10 000, an hour); when it is full of entries
/// younger than an hour it is cleared whole, in-flight transactions included, so a
/// backscatter transaction whose first RCPT came before the clear is let through at DATA.
#[test]
fn policy_reject_at_data_survives_a_full_instance_table() {
    bounded(Duration::from_secs(60), || {
        let d = Daemon::start("[daemon]\nreject_at = \"data\"\n");
        let mut c = d.unix();
        let rcpt = |inst: &str| {
            format!("request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\nrecipient=bob@example.org\ninstance={inst}\n\n")
        };
        assert_eq!(c.policy(&[("instance", "victim")]), "DUNNO");
        // 10 000 other bounce transactions meanwhile (a flood of backscatter within the
        // hour), pipelined in batches of 100; the last one finds the table full.
        for batch in 0..100 {
            let mut text = String::new();
            for i in 0..100 {
                text.push_str(&rcpt(&format!("other.{batch}.{i}")));
            }
            c.send(text.as_bytes());
            for _ in 0..100 {
                assert_eq!(c.policy_reply(), "DUNNO");
            }
        }
        let at_data = c.policy(&[("instance", "victim"), ("protocol_state", "DATA"), ("recipient", "")]);
        assert!(
            at_data.starts_with("550 5.7.1 "),
            "the backscatter transaction was let through at DATA: action={at_data}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Exim's one line, raw

#[test]
fn one_line_requests_over_raw_sockets() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        let tag = d.sign("bob@example.org");
        let cases: Vec<(String, String)> = vec![
            ("verify bob@example.org\n".into(), "REJECT untagged".into()),
            ("verify bob@example.org\r\n".into(), "REJECT untagged".into()),
            (format!("verify {tag}\n"), "OK bob@example.org".into()),
            (format!("verify {}\n", tag.to_ascii_uppercase()), "OK BOB@EXAMPLE.ORG".into()),
            (format!("verify {}\n", forge(&tag)), "REJECT bad-signature".into()),
            ("verify postmaster@example.org\n".into(), "DUNNO exempt-role".into()),
            ("verify abuse@example.org\n".into(), "DUNNO exempt-role".into()),
            ("verify Postmaster\n".into(), "DUNNO exempt-postmaster".into()),
            ("verify joe@other.test\n".into(), "DUNNO not-protected".into()),
            ("sign joe@other.test\n".into(), "NOTFOUND".into()),
            (format!("sign {tag}\n"), "NOTFOUND".into()),
            ("strip bob@example.org\n".into(), "NOTFOUND".into()),
            (format!("strip {}\n", forge(&tag)), "NOTFOUND".into()),
            ("sign bob@example.org\n".into(), format!("OK {tag}")),
            (
                "frobnicate bob@example.org\n".into(),
                "ERROR expected: sign|strip|verify ADDRESS".into(),
            ),
            // A first line without '=' is not a policy request.
            ("hello world\n".into(), "ERROR expected: sign|strip|verify ADDRESS".into()),
            ("\n".into(), "ERROR expected: sign|strip|verify ADDRESS".into()),
        ];
        for name in ["unix", "tcp"] {
            for (req, want) in &cases {
                let mut c = if name == "unix" { d.unix() } else { d.tcp() };
                c.send(req.as_bytes());
                assert_eq!(String::from_utf8(c.rest()).unwrap(), format!("{want}\n"), "{name}: {req:?}");
            }
        }
        // `verify` of an untagged bounce recipient is logged as a refusal.
        d.wait_log(
            "batv-daemon: exim rcpt=<bob@example.org> verdict=backscatter reason=untagged action=refused",
            2,
        );
    });
}

// ---------------------------------------------------------------------------------------
// policy

#[test]
fn policy_rcpt_verdicts_on_one_kept_alive_connection() {
    bounded(LIMIT, || {
        let d = Daemon::start("[daemon]\ntrusted_relays = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n");
        let tag = d.sign("bob@example.org");
        let upper = tag.to_ascii_uppercase();
        let forged = forge(&tag);
        for mut c in d.both() {
            let name = c.name;
            let mut n = 0;
            let mut ask = |set: &[(&str, &str)]| {
                n += 1;
                let inst = format!("{name}.{n}");
                let mut all = vec![("instance", inst.as_str())];
                all.extend_from_slice(set);
                c.policy(&all)
            };
            let refused = ask(&[("recipient", "bob@example.org")]);
            assert!(refused.starts_with(REFUSE_RCPT), "{name}: {refused}");
            assert!(refused.contains("(BATV)"), "{refused}");
            assert!(ask(&[("recipient", &forged)]).starts_with(REFUSE_RCPT), "{name}: forged");
            assert!(ask(&[("recipient", "Bob@Example.ORG")]).starts_with(REFUSE_RCPT), "{name}: case");
            for (what, set) in [
                ("valid tag", vec![("recipient", tag.as_str())]),
                ("valid tag, upper case", vec![("recipient", upper.as_str())]),
                (
                    "non-null sender",
                    vec![("sender", "alice@remote.example"), ("recipient", "bob@example.org")],
                ),
                ("foreign domain", vec![("recipient", "joe@other.test")]),
                ("postmaster@", vec![("recipient", "postmaster@example.org")]),
                ("Postmaster@", vec![("recipient", "Postmaster@Example.org")]),
                ("abuse@", vec![("recipient", "abuse@example.org")]),
                ("<postmaster>", vec![("recipient", "postmaster")]),
                ("SRS", vec![("recipient", "SRS0=HHH=TT=other.test=joe@example.org")]),
                (
                    "trusted relay",
                    vec![("client_address", "192.0.2.10"), ("recipient", "bob@example.org")],
                ),
                (
                    "trusted relay v6",
                    vec![("client_address", "2001:db8::25"), ("recipient", "bob@example.org")],
                ),
                ("DATA with reject_at rcpt", vec![("protocol_state", "DATA"), ("recipient", "")]),
                ("END-OF-MESSAGE", vec![("protocol_state", "END-OF-MESSAGE"), ("recipient", "")]),
                ("MAIL stage", vec![("protocol_state", "MAIL"), ("recipient", "")]),
                (
                    "not an access policy request",
                    vec![("request", "junk"), ("recipient", "bob@example.org")],
                ),
            ] {
                assert_eq!(ask(&set), "DUNNO", "{name}: {what}");
            }
            // A client address near the trusted net is not trusted.
            assert!(ask(&[("client_address", "192.0.3.10")]).starts_with(REFUSE_RCPT), "{name}");
            // Later attributes of the same name win.
            c.send(b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\nrecipient=bob@example.org\nrecipient=joe@other.test\ninstance=z\n\n");
            assert_eq!(c.policy_reply(), "DUNNO", "{name}");
            // Minimal requests work as well.
            c.send(b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\nrecipient=bob@example.org\n\n");
            assert!(c.policy_reply().starts_with(REFUSE_RCPT), "{name}");
            // Two requests in one write: two replies, in order.
            let two = policy_request(&[("instance", "p1")]) + &policy_request(&[("instance", "p2"), ("recipient", &tag)]);
            c.send(two.as_bytes());
            assert!(c.policy_reply().starts_with(REFUSE_RCPT), "{name}");
            assert_eq!(c.policy_reply(), "DUNNO", "{name}");
            // Still the same connection.
            assert!(c.policy(&[("instance", "last")]).starts_with(REFUSE_RCPT), "{name}");
        }
        d.wait_log("verdict=backscatter reason=untagged action=refused", 2);
        d.wait_log("reason=trusted-relay action=dunno", 2);
    });
}

#[test]
fn policy_line_without_equals_closes_the_connection() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        for kind in ["unix", "tcp"] {
            let connect = || if kind == "unix" { d.unix() } else { d.tcp() };
            for bad in [
                "this line has no equals sign\n",
                "Recipient=bob@example.org\n",
                "=value\n",
                "bad name=value\n",
            ] {
                let mut c = connect();
                assert!(c.policy(&[]).starts_with(REFUSE_RCPT));
                c.send(format!("request=smtpd_access_policy\nsender=\n{bad}\n").as_bytes());
                c.expect_closed(bad);
                // The daemon serves on.
                assert!(connect().policy(&[]).starts_with(REFUSE_RCPT), "{kind}");
            }
        }
        d.wait_log("protocol=policy error=\"policy request line without", 1);
    });
}

#[test]
fn policy_reject_at_data_one_verdict_per_instance() {
    bounded(LIMIT, || {
        let d = Daemon::start("[daemon]\nreject_at = \"data\"\n");
        let tag = d.sign("bob@example.org");
        let carol = d.sign("carol@example.org");
        for mut c in d.both() {
            let name = c.name;
            let a = format!("{name}-A");
            let b = format!("{name}-B");
            // A: the first recipient is backscatter.
            assert_eq!(c.policy(&[("instance", &a), ("recipient", "bob@example.org")]), "DUNNO", "{name}");
            let deferred = c.policy(&[("instance", &a), ("recipient", &tag)]);
            assert!(deferred.starts_with(DEFER), "{name}: {deferred}");
            assert_eq!(c.policy(&[("instance", &a), ("recipient", "dave@example.org")]), "DUNNO", "{name}");
            // Another transaction in between does not disturb A.
            assert_eq!(c.policy(&[("instance", &b), ("recipient", &tag)]), "DUNNO", "{name}");
            let refused = c.policy(&[
                ("instance", &a),
                ("protocol_state", "DATA"),
                ("recipient", ""),
                ("recipient_count", "2"),
            ]);
            assert!(refused.starts_with("550 5.7.1 "), "{name}: {refused}");
            let eom = c.policy(&[("instance", &a), ("protocol_state", "END-OF-MESSAGE"), ("recipient", "")]);
            assert!(eom.starts_with("550 5.7.1 "), "{name}: {eom}");
            // B: the first recipient has a valid tag.
            let deferred = c.policy(&[("instance", &b), ("recipient", "erin@example.org")]);
            assert!(deferred.starts_with(DEFER), "{name}: {deferred}");
            assert_eq!(c.policy(&[("instance", &b), ("recipient", &carol)]), "DUNNO", "{name}");
            assert_eq!(
                c.policy(&[("instance", &b), ("recipient", "postmaster@example.org")]),
                "DUNNO",
                "{name}"
            );
            assert_eq!(
                c.policy(&[("instance", &b), ("protocol_state", "DATA"), ("recipient", "")]),
                "DUNNO",
                "{name}"
            );
            // DATA of a transaction never seen at RCPT; DATA of a non-bounce.
            assert_eq!(
                c.policy(&[("instance", "unseen"), ("protocol_state", "DATA"), ("recipient", "")]),
                "DUNNO"
            );
            assert_eq!(
                c.policy(&[
                    ("instance", &a),
                    ("protocol_state", "DATA"),
                    ("sender", "x@remote.example"),
                    ("recipient", "")
                ]),
                "DUNNO"
            );
        }
        d.wait_log("action=refused-at-data", 4);
    });
}

#[test]
fn policy_monitor_marks_once_per_instance_and_refuses_nothing() {
    bounded(LIMIT, || {
        for extra in ["[daemon]\nenforce = false\n", "[daemon]\nenforce = false\nreject_at = \"data\"\n"] {
            let d = Daemon::start(extra);
            let tag = d.sign("bob@example.org");
            for mut c in d.both() {
                let name = c.name;
                let a = format!("{name}-A");
                assert_eq!(
                    c.policy(&[("instance", &a), ("recipient", "bob@example.org")]),
                    MONITOR_UNTAGGED,
                    "{extra}"
                );
                assert_eq!(
                    c.policy(&[("instance", &a), ("recipient", "carol@example.org")]),
                    "DUNNO",
                    "{extra}"
                );
                assert_eq!(c.policy(&[("instance", &a), ("recipient", &forge(&tag))]), "DUNNO", "{extra}");
                assert_eq!(
                    c.policy(&[("instance", &a), ("protocol_state", "DATA"), ("recipient", "")]),
                    "DUNNO",
                    "{extra}"
                );
                // A new transaction is marked again, with its own reason.
                let b = format!("{name}-B");
                assert_eq!(
                    c.policy(&[("instance", &b), ("recipient", &forge(&tag))]),
                    "PREPEND X-BATV: backscatter; reason=bad-signature; mode=monitor",
                    "{extra}"
                );
                assert_eq!(c.policy(&[("instance", &b), ("recipient", "bob@example.org")]), "DUNNO", "{extra}");
                assert_eq!(
                    c.policy(&[("instance", &b), ("protocol_state", "DATA"), ("recipient", "")]),
                    "DUNNO",
                    "{extra}"
                );
                // A valid tag is not marked.
                let v = format!("{name}-V");
                assert_eq!(c.policy(&[("instance", &v), ("recipient", &tag)]), "DUNNO", "{extra}");
            }
            // Exim's verify says monitor too.
            let mut c = d.unix();
            c.send(b"verify bob@example.org\n");
            assert_eq!(String::from_utf8(c.rest()).unwrap(), "DUNNO monitor untagged\n");
            // The log is read from a pipe: wait for the line rather than race its reader.
            d.wait_log("action=marked-monitor", 1);
            let log = d.log();
            assert!(!log.contains("action=refused"), "{log}");
        }
    });
}

#[test]
fn policy_enforce_after_in_the_future_is_monitor() {
    bounded(LIMIT, || {
        let extra = "[daemon]\nenforce_after = \"2026-12-01\"\n";
        // Before the date: monitor.
        let d = Daemon::start(extra);
        let mut c = d.unix();
        assert_eq!(c.policy(&[("instance", "x")]), MONITOR_UNTAGGED);
        assert_eq!(c.policy(&[("instance", "x"), ("recipient", "carol@example.org")]), "DUNNO");
        let mut c = d.tcp();
        c.send(b"verify bob@example.org\n");
        assert_eq!(String::from_utf8(c.rest()).unwrap(), "DUNNO monitor untagged\n");
        drop(d);
        // From the date on: enforced.
        let d = Daemon::start_at(Store::new(extra), "2026-12-01T00:00:01Z");
        let mut c = d.unix();
        assert!(c.policy(&[("instance", "x")]).starts_with(REFUSE_RCPT));
        let mut c = d.tcp();
        c.send(b"verify bob@example.org\n");
        assert_eq!(String::from_utf8(c.rest()).unwrap(), "REJECT untagged\n");
    });
}

// ---------------------------------------------------------------------------------------
// Exim

fn exim() -> Option<PathBuf> {
    let found = ["/usr/sbin/exim4", "/usr/sbin/exim", "/usr/local/sbin/exim", "/usr/bin/exim"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if require("exim (exim4-daemon-light)", found.is_some()) {
        found
    } else {
        None
    }
}

/// `exim -be '${readsocket{TARGET}{REQUEST}{2s}{}{FAIL}}'`: what Exim got. REQUEST is in
/// Exim's syntax (`\n` for a newline).
fn readsocket(exim: &Path, target: &str, request: &str) -> String {
    let expr = format!("${{readsocket{{{target}}}{{{request}}}{{2s}}{{}}{{FAIL}}}}");
    let mut cmd = Command::new(exim);
    cmd.arg("-be").arg(&expr).env("TZ", "UTC");
    let o = run_bounded(cmd, b"", Duration::from_secs(10));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.code, 0, "exim -be {expr}: {out} {}", o.stderr);
    out.trim_end_matches('\n').to_string()
}

#[test]
fn exim_readsocket_one_line_on_unix_and_tcp() {
    let Some(exim) = exim() else { return };
    bounded(LIMIT, move || {
        let d = Daemon::start("");
        let tag = d.sign("bob@example.org");
        for target in [d.sock.display().to_string(), format!("inet:{}", d.tcp)] {
            let ask = |req: &str| readsocket(&exim, &target, req);
            assert_eq!(ask("verify bob@example.org\\n"), "REJECT untagged", "{target}");
            assert_eq!(ask(&format!("verify {tag}\\n")), "OK bob@example.org", "{target}");
            assert_eq!(ask(&format!("verify {}\\n", forge(&tag))), "REJECT bad-signature", "{target}");
            assert_eq!(ask("verify postmaster@example.org\\n"), "DUNNO exempt-role", "{target}");
            assert_eq!(ask(&format!("strip {tag}\\n")), "OK bob@example.org", "{target}");
            // Without a newline: Exim's half-close ends the request.
            assert_eq!(ask(&format!("strip {tag}")), "OK bob@example.org", "{target}");
            assert_eq!(ask("verify bob@example.org"), "REJECT untagged", "{target}");
            let signed = ask("sign alice@example.org\\n");
            let t = signed.strip_prefix("OK ").unwrap_or_else(|| panic!("{target}: {signed}"));
            assert_eq!(d.store.verify(NOW, &[t]).unwrap(), ["alice@example.org"], "{target}");
            assert_eq!(ask("sign joe@other.test\\n"), "NOTFOUND", "{target}");
            let garbage = ask("garbage in\\n");
            assert!(garbage.starts_with("ERROR "), "{target}: {garbage}");
        }
        // Exim's own fail string when nothing listens.
        let gone = d.store.dir.path().join("nothing-here");
        assert_eq!(readsocket(&exim, &gone.display().to_string(), "verify bob@example.org\\n"), "FAIL");
    });
}

// ---------------------------------------------------------------------------------------
// Reloads

#[test]
fn keys_directory_changes_are_picked_up_without_a_signal() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        let old = d.sign("bob@example.org");
        // One kept-alive connection sees every snapshot.
        let mut c = d.unix();
        let first = c.lookup("sign", "bob@example.org");
        assert_eq!(first, format!("OK {old}"));
        let wait_key = |c: &mut Client, not: char| -> String {
            let deadline = Instant::now() + Duration::from_secs(6);
            loop {
                let r = c.lookup("sign", "bob@example.org");
                if key_of(&r) != not {
                    return r;
                }
                assert!(Instant::now() < deadline, "still signing with key {not}: {}", d.log());
                std::thread::sleep(Duration::from_millis(100));
            }
        };

        let o = d.store.batv(NOW, &["keys", "rotate"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let second = wait_key(&mut c, key_of(&first));
        let t = second.strip_prefix("OK ").unwrap();
        assert_eq!(
            second,
            format!("OK {}", d.sign("bob@example.org")),
            "the daemon signs as batv sign does"
        );
        assert_eq!(d.store.verify(NOW, &[t]).unwrap(), ["bob@example.org"]);
        // The retired key's tags still strip, on this connection and a new one.
        assert_eq!(c.lookup("strip", &old), "OK bob@example.org");
        assert_eq!(d.tcp().lookup("strip", &old), "OK bob@example.org");
        d.wait_log("batv-daemon: reloaded (keys)", 1);

        // Two phases: a standby key verifies but does not sign until activated.
        let o = d.store.batv(NOW, &["keys", "add", "--standby"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &o.stderr;
        let id = text
            .chars()
            .find(char::is_ascii_digit)
            .unwrap_or_else(|| panic!("no key id in {text:?}"));
        d.wait_log("batv-daemon: reloaded (keys)", 2);
        assert_eq!(c.lookup("sign", "bob@example.org"), second, "a standby key does not sign");
        let o = d.store.batv(NOW, &["keys", "activate", &id.to_string()]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let third = wait_key(&mut c, key_of(&second));
        assert_eq!(key_of(&third), id, "{third}");
        for t in [&old, t, third.strip_prefix("OK ").unwrap()] {
            assert_eq!(c.lookup("strip", t), "OK bob@example.org", "{t}");
            assert_eq!(d.unix().policy(&[("recipient", t)]), "DUNNO", "{t}");
        }

        // A keys directory that cannot be read any more keeps the old set.
        let manifest = d.store.keys.join("manifest.toml");
        let saved = std::fs::read(&manifest).unwrap();
        std::fs::write(&manifest, "this is [not a manifest").unwrap();
        d.wait_log("batv-daemon: keys not reloaded", 1);
        assert_eq!(c.lookup("sign", "bob@example.org"), third);
        assert_eq!(c.lookup("strip", &old), "OK bob@example.org");
        std::fs::write(&manifest, saved).unwrap();
        d.wait_log("batv-daemon: reloaded (keys)", 4);
        assert_eq!(c.lookup("sign", "bob@example.org"), third);
    });
}

/// SIGHUP, and the log lines of that reload (up to its last one).
fn hup(d: &Daemon) -> String {
    let from = d.log().len();
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let part = d.log()[from..].to_string();
        if part.contains("batv-daemon: reloaded (") || part.contains("batv-daemon: not reloaded:") {
            return part;
        }
        assert!(Instant::now() < deadline, "no reload after SIGHUP: {}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reloads_the_config_and_a_broken_one_is_kept_out() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        let mut c = d.unix();
        let mut n = 0;
        let mut bounce = |c: &mut Client| {
            n += 1;
            c.policy(&[("instance", &format!("i{n}"))])
        };
        assert!(bounce(&mut c).starts_with(REFUSE_RCPT));

        d.store.set_config("sign_domains = [\"example.org\"]\n[daemon]\nenforce = false\n");
        let part = hup(&d);
        assert!(part.contains("batv-daemon: reloaded (configuration and keys)"), "{part}");
        // The kept-alive connection and a new one both see the new settings.
        assert_eq!(bounce(&mut c), MONITOR_UNTAGGED);
        assert_eq!(bounce(&mut d.tcp()), MONITOR_UNTAGGED);

        for (broken, why) in [
            (
                "sign_domains = [\"example.org\"\n[daemon\nenforce = true\n",
                "configuration not reloaded",
            ),
            (
                "sign_domains = [\"example.org\"]\n[daemon]\nenforce = true\nbogus = 1\n",
                "configuration not reloaded",
            ),
            (
                "sign_domains = [\"example.org\"]\n[daemon]\nenforce = true\nreject_at = \"never\"\n",
                "configuration not reloaded",
            ),
            ("[daemon]\nenforce = true\n", "not reloaded: the daemon needs sign_domains"),
        ] {
            d.store.set_config(broken);
            let part = hup(&d);
            assert!(part.contains(why), "{broken}: {part}");
            assert!(part.contains("not reloaded"), "{part}");
            assert_eq!(bounce(&mut c), MONITOR_UNTAGGED, "{broken}");
            assert_eq!(bounce(&mut d.tcp()), MONITOR_UNTAGGED, "{broken}");
        }

        // daemon.listen waits for a restart; the rest applies.
        let elsewhere = d.store.dir.path().join("elsewhere");
        d.store.set_config(&format!(
            "sign_domains = [\"example.org\"]\n[daemon]\nenforce = true\nlisten = [\"unix:{}\"]\n",
            elsewhere.display()
        ));
        let part = hup(&d);
        assert!(!part.contains("not reloaded"), "{part}");
        assert!(part.contains("takes effect at the next restart"), "{part}");
        assert!(!elsewhere.exists());
        assert!(bounce(&mut c).starts_with(REFUSE_RCPT));
        // Signing went on throughout.
        assert_eq!(
            d.tcp().lookup("sign", "bob@example.org"),
            format!("OK {}", d.sign("bob@example.org"))
        );
    });
}

/// A configuration SIGHUP could not load is logged as not reloaded, and nothing after
/// says otherwise.
#[test]
fn sighup_with_a_broken_config_does_not_log_reloaded() {
    bounded(LIMIT, || {
        let d = Daemon::start("");
        d.store.set_config("sign_domains = [\n");
        let part = hup(&d);
        assert!(part.contains("configuration not reloaded"), "{part}");
        assert!(
            !part.contains("reloaded (configuration"),
            "contradictory log after a failed reload:\n{part}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Startup, shutdown

/// Run the daemon in the foreground (it must exit by itself within 10 s).
fn run_daemon(store: &Store, listen: &[String]) -> common::Output {
    run_bounded(store.daemon_cmd(NOW, listen), b"", Duration::from_secs(10))
}

#[test]
fn startup_without_keys_exits_78_and_creates_none() {
    bounded(LIMIT, || {
        let store = Store::without_keys("");
        let sock = store.dir.path().join("sock");
        let listen = [format!("unix:{}", sock.display())];
        let o = run_daemon(&store, &listen);
        assert_eq!(o.code, 78, "{}", o.stderr);
        assert!(o.stderr.contains("does not exist"), "{}", o.stderr);
        assert!(!store.keys.exists(), "a keys directory was created");
        assert!(!sock.exists());

        std::fs::create_dir(&store.keys).unwrap();
        let o = run_daemon(&store, &listen);
        assert_eq!(o.code, 78, "{}", o.stderr);
        assert!(o.stderr.contains("no keys") && o.stderr.contains("never creates"), "{}", o.stderr);
        assert_eq!(std::fs::read_dir(&store.keys).unwrap().count(), 0, "a key was created");
        assert!(!sock.exists());

        // A config the daemon cannot work with: also 78, naming the problem.
        let store = Store::new("");
        store.set_config("");
        let o = run_daemon(&store, &listen);
        assert_eq!(o.code, 78, "{}", o.stderr);
        assert!(o.stderr.contains("sign_domains"), "{}", o.stderr);
    });
}

#[test]
fn startup_refuses_a_listener_off_loopback() {
    bounded(LIMIT, || {
        let store = Store::new("");
        for spec in ["inet:192.0.2.1:25", "inet:0.0.0.0:10030", "inet:[::]:10030"] {
            // On the command line: a usage error (64).
            let o = run_daemon(&store, &[spec.to_string()]);
            assert_eq!(o.code, 64, "{spec}: {}", o.stderr);
            assert!(o.stderr.contains(spec) && o.stderr.contains("loopback only"), "{}", o.stderr);
            // In the config file: a configuration error (78).
            let cfg = Store::new("");
            cfg.set_config(&format!("sign_domains = [\"example.org\"]\n[daemon]\nlisten = [\"{spec}\"]\n"));
            let o = run_daemon(&cfg, &[]);
            assert_eq!(o.code, 78, "{spec}: {}", o.stderr);
            assert!(o.stderr.contains("loopback only"), "{}", o.stderr);
        }
        // A relative unix path.
        let o = run_daemon(&store, &["unix:relative/sock".to_string()]);
        assert_eq!(o.code, 64, "{}", o.stderr);
        assert!(o.stderr.contains("must be absolute"), "{}", o.stderr);
    });
}

#[test]
fn startup_refuses_a_regular_file_at_the_socket_path() {
    bounded(LIMIT, || {
        let store = Store::new("");
        let path = store.dir.path().join("sock");
        std::fs::write(&path, "not a socket\n").unwrap();
        let o = run_daemon(&store, &[format!("unix:{}", path.display())]);
        assert_ne!(o.code, 0);
        assert!(o.stderr.contains("exists and is not a socket"), "{}", o.stderr);
        assert!(o.stderr.contains(&path.display().to_string()), "{}", o.stderr);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket\n");
    });
}

#[test]
fn startup_replaces_a_stale_socket_but_not_a_live_one() {
    bounded(LIMIT, || {
        let store = Store::new("");
        let path = store.dir.path().join("sock");
        // Left by a daemon that was killed: the file is there, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let d = Daemon::start_at(store, NOW);
        let tag = d.sign("bob@example.org");
        assert_eq!(d.unix().lookup("sign", "bob@example.org"), format!("OK {tag}"));

        // A second daemon on the same socket is refused; the first keeps serving.
        let o = run_daemon(&d.store, &[format!("unix:{}", path.display())]);
        assert_ne!(o.code, 0);
        assert!(o.stderr.contains("another server answers there"), "{}", o.stderr);
        assert_eq!(d.unix().lookup("strip", &tag), "OK bob@example.org");
    });
}

#[test]
fn socket_mode_is_applied() {
    bounded(LIMIT, || {
        use std::os::unix::fs::PermissionsExt;
        let d = Daemon::start("");
        assert_eq!(std::fs::metadata(&d.sock).unwrap().permissions().mode() & 0o777, 0o666);
        drop(d);
        let d = Daemon::start("[daemon]\nsocket_mode = \"0660\"\n");
        assert_eq!(std::fs::metadata(&d.sock).unwrap().permissions().mode() & 0o777, 0o660);
        assert_eq!(d.unix().lookup("strip", "x@example.org"), "NOTFOUND ");
    });
}

#[test]
fn sigterm_stops_and_removes_the_socket() {
    bounded(LIMIT, || {
        let mut d = Daemon::start("");
        let mut idle = d.unix();
        assert_eq!(idle.lookup("strip", "bob@example.org"), "NOTFOUND ");
        let status = d.stop();
        assert!(status.success(), "{status:?}");
        assert!(!d.sock.exists(), "the socket is left behind");
        idle.expect_closed("after SIGTERM");
        d.wait_log("batv-daemon: stopped", 1);
        assert!(std::net::TcpStream::connect(d.tcp).is_err());
    });
}

// ---------------------------------------------------------------------------------------
// Limits

#[test]
fn idle_and_slow_connections_are_closed() {
    bounded(LIMIT, || {
        let d = Daemon::start("[daemon]\nidle_timeout_ms = 300\n");
        for kind in ["unix", "tcp"] {
            let connect = || if kind == "unix" { d.unix() } else { d.tcp() };
            let t = Instant::now();
            let mut c = connect();
            assert_eq!(c.lookup("strip", "bob@example.org"), "NOTFOUND ");
            c.expect_closed("idle");
            assert!(t.elapsed() < Duration::from_secs(3), "{kind}: idle for {:?}", t.elapsed());
            // Half a request: closed once the request time (at least 1 s) is up.
            let t = Instant::now();
            let mut c = connect();
            c.send(b"20:sign bob");
            c.expect_closed("slow request");
            assert!(t.elapsed() < Duration::from_secs(5), "{kind}: slow for {:?}", t.elapsed());
        }
        d.wait_log("no complete request within", 1);
    });
}

#[test]
fn connections_over_max_connections_are_closed() {
    bounded(LIMIT, || {
        let d = Daemon::start("[daemon]\nmax_connections = 2\n");
        let mut a = d.unix();
        let mut b = d.tcp();
        assert_eq!(a.lookup("strip", "x@example.org"), "NOTFOUND ");
        assert_eq!(b.lookup("strip", "x@example.org"), "NOTFOUND ");
        let mut c = d.unix();
        // The daemon may have closed it before the request is even written.
        if c.try_send(&ns("strip x@example.org")) {
            c.expect_closed("third connection");
        }
        d.wait_log("too many connections", 1);
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = d.unix();
            if let Some(r) = c.try_send(&ns("strip x@example.org")).then(|| c.try_netstring()).flatten() {
                assert_eq!(r, "NOTFOUND ");
                break;
            }
            assert!(Instant::now() < deadline, "a freed slot is not reused");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(b.lookup("strip", "x@example.org"), "NOTFOUND ");
    });
}

#[test]
fn concurrent_lookups_are_all_answered() {
    bounded(Duration::from_secs(60), || {
        let d = std::sync::Arc::new(Daemon::start(""));
        let reference = d.sign("u0x0@example.org");
        let t0 = Instant::now();
        let workers: Vec<_> = (0..50)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let mut sample = String::new();
                    // 10 connections a thread, 20 lookups on each: 10 sign, 10 strip.
                    for batch in 0..10 {
                        let mut c = if (t + batch) % 2 == 0 { d.unix() } else { d.tcp() };
                        for i in 0..10 {
                            let addr = format!("u{t}x{}@example.org", batch * 10 + i);
                            let r = c.lookup("sign", &addr);
                            let tag = r.strip_prefix("OK ").unwrap_or_else(|| panic!("{addr}: {r}"));
                            assert!(tag.starts_with("prvs=1") && tag.ends_with(&format!("={addr}")), "{addr}: {r}");
                            assert_eq!(c.lookup("strip", tag), format!("OK {addr}"));
                            if sample.is_empty() {
                                sample = tag.to_string();
                            }
                        }
                    }
                    sample
                })
            })
            .collect();
        let samples: Vec<String> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        let took = t0.elapsed();
        eprintln!("50 threads x 200 lookups: {took:?}");
        assert_eq!(samples[0], reference);
        let refs: Vec<&str> = samples.iter().map(String::as_str).collect();
        let originals = d.store.verify(NOW, &refs).unwrap();
        assert_eq!(originals, (0..50).map(|t| format!("u{t}x0@example.org")).collect::<Vec<_>>());
        d.signal(libc::SIGUSR1);
        d.wait_log("batv_daemon_lookups_total{map=\"sign\",result=\"ok\"} 5000", 1);
        d.wait_log("batv_daemon_lookups_total{map=\"strip\",result=\"ok\"} 5000", 1);
        d.wait_log("batv_daemon_connections_total 500\n", 1);
        d.wait_log("batv_daemon_malformed_requests_total 0", 1);
    });
}
