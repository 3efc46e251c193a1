//! Front mode against a whole Postfix: the client's address reaches Postfix by XCLIENT or
//! PROXY v2 (so Postfix's relay rules see the real client, not the proxy), the proxy fails
//! closed when neither works, and STARTTLS ends at the proxy.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::postfix::{can_run_postfix, free_port, Postfix};
use common::proxy::*;
use common::require;

/// A whole Postfix forks an smtpd per connection: slow on a busy machine.
const SLOW: &str = "command_timeout_ms = 20000\n";

/// Mail to example.com is relayed to smtp-sink; nothing else may be relayed except from
/// mynetworks (127.0.0.1 only). Three listeners: XCLIENT for 127.0.0.1, PROXY v2, and one
/// that offers the proxy no XCLIENT.
fn postfix(root: &Path, sink: u16, ports: [u16; 3]) -> Postfix {
    let main = format!(
        "mynetworks = 127.0.0.1/32
smtpd_authorized_xclient_hosts = 127.0.0.1
relay_domains = example.com
relayhost = [127.0.0.1]:{sink}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
"
    );
    let [x, p, n] = ports;
    let services = [
        format!("127.0.0.1:{x} inet n - n - - smtpd"),
        format!("127.0.0.1:{p} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy"),
        format!("127.0.0.1:{n} inet n - n - - smtpd -o smtpd_authorized_xclient_hosts="),
    ];
    Postfix::start(root, &main, &services, &ports)
}

/// Wait for smtp-sink to have `n` transactions (Postfix delivers from its queue).
fn delivered(sink: &SmtpSink, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = sink.envelopes();
        if e.len() >= n || Instant::now() > deadline {
            return e;
        }
    }
}

#[test]
fn the_client_address_reaches_postfix_or_the_client_is_refused() {
    let Some(root) = postfix_root() else { return };
    if !can_run_postfix() {
        return;
    }
    let sink = SmtpSink::start(&root, &[]);
    let ports = [free_port(), free_port(), free_port()];
    let pf = postfix(&root, sink.port, ports);
    let relay_test = [
        "EHLO client.example",
        "MAIL FROM:<a@remote.example>",
        "RCPT TO:<x@elsewhere.example>",
        "QUIT",
    ];

    for (protocol, port) in [("xclient", ports[0]), ("proxy-v2", ports[1])] {
        let p = Proxy::start(
            &format!("127.0.0.1:{port}"),
            &format!("mode = \"front\"\nfront_protocol = \"{protocol}\"\n{SLOW}"),
        );
        // 127.0.0.2 is not in mynetworks: Postfix refuses to relay for it. Without the
        // handoff it would see 127.0.0.1 and relay: an open relay.
        let out = client(&p.addr, "127.0.0.2", &relay_test);
        assert!(reply_to(&out, 3).starts_with("554 5.7.1"), "{protocol}: {out}");
        assert!(out.contains("Relay access denied"), "{protocol}: {out}");
        // 127.0.0.1 is, and may relay: the address Postfix sees is the client's.
        let out = client(&p.addr, "127.0.0.1", &relay_test);
        assert!(reply_to(&out, 3).starts_with("250"), "{protocol}: {out}");
        assert!(pf.wait_log("[127.0.0.2]"), "{protocol}: Postfix never saw 127.0.0.2: {}", pf.log());
    }

    // Bounces through the front proxy and Postfix to smtp-sink: the valid tag arrives
    // stripped, the untagged one is refused at DATA; clients cannot use XCLIENT themselves.
    let p = Proxy::start(&format!("127.0.0.1:{}", ports[0]), &format!("mode = \"front\"\n{SLOW}"));
    let tagged = p.sign(TODAY, "bob@example.com");
    let rcpt = format!("RCPT TO:<{tagged}>");
    let out = client(
        &p.addr,
        "127.0.0.2",
        &["EHLO mx.remote.example", "MAIL FROM:<>", &rcpt, "DATA", "QUIT"],
    );
    assert!(reply_to(&out, 5).starts_with("250 2.0.0 Ok: queued"), "{out}");
    assert!(!out.contains("XCLIENT"), "XCLIENT is hidden from clients: {out}");
    let out = client(
        &p.addr,
        "127.0.0.2",
        &[
            "EHLO mx.remote.example",
            "XCLIENT ADDR=127.0.0.1",
            "MAIL FROM:<>",
            "RCPT TO:<carol@example.com>",
            "DATA",
            "QUIT",
        ],
    );
    assert!(reply_to(&out, 2).starts_with("502 5.5.1"), "{out}");
    assert!(reply_to(&out, 5).starts_with("550 5.7.1"), "{out}");
    let got = delivered(&sink, 1);
    assert_eq!(got.len(), 1, "{got:?}\n{}", pf.log());
    assert!(got[0].starts_with("X-Mail-Args: <>|X-Rcpt-Args: <bob@example.com>"), "{got:?}");

    // Fail closed: no XCLIENT offered to the proxy, or a server that does not expect PROXY v2.
    for (protocol, port) in [("xclient", ports[2]), ("proxy-v2", ports[0])] {
        let p = Proxy::start(
            &format!("127.0.0.1:{port}"),
            &format!("mode = \"front\"\nfront_protocol = \"{protocol}\"\n{SLOW}"),
        );
        let out = client(&p.addr, "127.0.0.2", &relay_test);
        assert!(out.starts_with("421 4.3.0"), "{protocol}: {out}");
        assert_eq!(out.lines().count(), 2, "{protocol}: nothing relayed after the 421: {out}");
        let log = p.log.lock().unwrap().clone();
        assert!(log.contains("action=421"), "{protocol}: {log}");
    }
}

#[test]
fn starttls_ends_at_the_proxy_and_the_certificate_reloads() {
    let Some(root) = postfix_root() else { return };
    if !can_run_postfix() || !require("openssl", Command::new("openssl").arg("version").output().is_ok()) {
        return;
    }
    let sink = SmtpSink::start(&root, &[]);
    let ports = [free_port(), free_port(), free_port()];
    let _pf = postfix(&root, sink.port, ports);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, fp1) = make_cert(certs.path(), "one");
    let p = Proxy::start(
        &format!("127.0.0.1:{}", ports[0]),
        &format!(
            "mode = \"front\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{SLOW}",
            cert.display(),
            key.display()
        ),
    );
    let tagged = p.sign(TODAY, "bob@example.com");
    let rcpt = format!("RCPT TO:<{tagged}>");
    let out = client(
        &p.addr,
        "127.0.0.2",
        &[
            "EHLO mx.remote.example",
            "STARTTLS",
            "EHLO mx.remote.example",
            "MAIL FROM:<>",
            &rcpt,
            "DATA",
            "QUIT",
        ],
    );
    let (before, after) = out.split_once("TLS ").unwrap_or_else(|| panic!("no TLS: {out}"));
    assert!(before.contains("250-STARTTLS") || before.contains("250 STARTTLS"), "offered: {out}");
    assert!(after.starts_with(&fp1), "our certificate: {out}");
    assert!(!after.contains("STARTTLS"), "not offered again inside TLS: {out}");
    assert!(reply_to(&out, 7).starts_with("250 2.0.0 Ok: queued"), "delivered over TLS: {out}");

    // AUTH waits for TLS: the MTA behind cannot tell a TLS client from a plain one.
    let out = client(&p.addr, "127.0.0.2", &["EHLO c.example", "AUTH PLAIN AGFAYg==", "QUIT"]);
    assert!(reply_to(&out, 2).starts_with("530 5.7.0"), "{out}");

    // Plain text pipelined after STARTTLS is dropped, not run inside TLS (CVE-2011-0411).
    let out = client(&p.addr, "127.0.0.2", &["EHLO c.example", "STARTTLS+NOOP", "EHLO c.example", "QUIT"]);
    let after = out
        .split_once("TLS ")
        .map(|x| x.1)
        .unwrap_or_else(|| panic!("{out}\n{}", p.log.lock().unwrap()));
    let first = after.lines().nth(1).unwrap_or("");
    assert!(first.starts_with("250-"), "the EHLO reply comes first, no NOOP reply: {out}");

    // A new certificate in place, SIGHUP: new sessions get it.
    let (c2, k2, fp2) = make_cert(certs.path(), "two");
    std::fs::rename(c2, &cert).unwrap();
    std::fs::rename(k2, &key).unwrap();
    unsafe { libc::kill(p.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log.lock().unwrap().contains("reloaded (configuration") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = client(&p.addr, "127.0.0.2", &["EHLO c.example", "STARTTLS", "QUIT"]);
    assert!(out.contains(&format!("TLS {fp2}")), "reloaded certificate: {out}");
    assert_ne!(fp1, fp2);
}
