//! Gateway mode in front of a sink that takes everything (aiosmtpd): whatever is refused
//! here was refused by batv alone. The relay control, the recipient table and its reloads,
//! the Received field, AUTH only inside TLS. The same outcomes with MTAs that accept and
//! bounce later are in gateway_exim.rs and gateway_postfix.rs.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::peers::{code, Client};
use common::proxy::*;
use common::Sink;

const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

struct Gw {
    proxy: Proxy,
    sink: Sink,
    _dir: tempfile::TempDir,
    table: std::path::PathBuf,
}

/// A gateway for example.com in front of the sink; `extra` goes into `[proxy]`, and the
/// recipient table (when `rcpts` is given) is `valid_recipients`.
fn gateway(rcpts: Option<&str>, extra: &str) -> Option<Gw> {
    let (sink, dir) = setup()?;
    let table = dir.path().join("recipients");
    let mut cfg = format!("mode = \"gateway\"\n{extra}");
    if let Some(r) = rcpts {
        std::fs::write(&table, r).unwrap();
        cfg.push_str(&format!("valid_recipients = \"{}\"\n", table.display()));
    }
    let proxy = Proxy::start(&format!("127.0.0.1:{}", sink.port), &cfg);
    Some(Gw {
        proxy,
        sink,
        _dir: dir,
        table,
    })
}

impl Gw {
    /// One transaction from `from_ip`: replies to MAIL and each RCPT, then DATA and the
    /// message when a recipient was accepted.
    fn send(&self, from_ip: Ipv4Addr, sender: &str, rcpts: &[&str], subject: &str) -> Vec<u16> {
        let mut c = Client::connect_from(&self.proxy.addr, from_ip);
        assert_eq!(code(&c.reply()), 220);
        assert_eq!(code(&c.cmd("EHLO client.remote.test")), 250);
        let message = format!("Subject: {subject}\r\nFrom: <{sender}>\r\n\r\nHello.\r\n");
        c.transaction(sender, rcpts, &message).iter().map(|r| code(r)).collect()
    }

    fn log(&self) -> String {
        self.proxy.log.lock().unwrap().clone()
    }

    fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

#[test]
fn an_untrusted_client_reaches_the_relay_domains_in_plain_form_only() {
    let Some(gw) = gateway(None, "") else { return };
    let tricks = [
        "bob@remote.test",
        "bob%remote.test@example.com",
        "remote.test!bob@example.com",
        "@example.com:bob@remote.test",
        "\"bob@remote.test\"@example.com",
        "bob@example.com.",
        "bob@[127.0.0.1]",
        "bob@example.com.remote.test",
        "bob",
    ];
    for t in tricks {
        let codes = gw.send(STRANGER, "carol@remote.test", &[t], t);
        assert_eq!(codes, [250, 554], "{t}\n{}", gw.log());
    }
    assert_eq!(gw.send(STRANGER, "carol@remote.test", &["(x)bob@example.com"], "cfws")[1], 554);
    // Unreadable: a syntax error, not a relay refusal.
    assert_eq!(gw.send(STRANGER, "carol@remote.test", &["bob@"], "unreadable")[1], 501);
    // What is ours goes through, in every spelling of a plain address.
    let ok = gw.send(
        STRANGER,
        "carol@remote.test",
        &["alice@example.com", "Bob@EXAMPLE.com", "postmaster", "\"c d\"@example.com"],
        "plain",
    );
    assert_eq!(ok, [250, 250, 250, 250, 250, 354, 250], "{}", gw.log());
    let got = gw.sink.messages(1);
    assert_eq!(got.len(), 1, "only the plain message reached the MTA: {got:#?}");
    assert_eq!(got[0]["rcpt_tos"].as_array().unwrap().len(), 4);
    assert!(gw.log().contains("action=refused-relay reason=percent-hack"), "{}", gw.log());
    assert!(gw.log().contains("action=refused-relay reason=source-route"), "{}", gw.log());
}

#[test]
fn trusted_networks_may_relay_anywhere() {
    let Some(gw) = gateway(Some("alice@example.com\n"), "trusted_networks = [\"127.0.0.2/32\"]\n") else {
        return;
    };
    let codes = gw.send(STRANGER, "alice@example.com", &["bob@remote.test"], "out");
    assert_eq!(codes, [250, 250, 354, 250], "{}", gw.log());
    // The recipient table still speaks for the relay domains.
    assert_eq!(gw.send(STRANGER, "alice@example.com", &["nobody@example.com"], "unknown")[1], 550);
    // Another loopback address is not trusted.
    assert_eq!(
        gw.send(Ipv4Addr::new(127, 0, 0, 3), "alice@example.com", &["bob@remote.test"], "x")[1],
        554
    );
    let got = gw.sink.messages(1);
    assert_eq!(got[0]["rcpt_tos"][0], "bob@remote.test");
}

#[test]
fn unknown_users_are_refused_before_the_mta_sees_them() {
    let table = "# users\nalice@example.com\n\"jdoe\"@example.com\n\"j.doe\"@example.com\nsales@example.com OK\n@lists.example.com\n";
    let Some(gw) = gateway(
        Some(table),
        "relay_domains = [\"example.com\", \"lists.example.com\", \"empty.example\"]\n",
    ) else {
        return;
    };
    let from = "carol@remote.test";
    for (rcpt, want) in [
        ("alice@example.com", 250),
        ("alice+news@example.com", 250),
        ("ALICE@Example.COM", 550),
        ("jdoe@example.com", 250),
        ("\"j.doe\"@example.com", 250),
        ("sales@example.com", 250),
        ("anyone@lists.example.com", 250),
        ("nobody@example.com", 550),
        ("alice@empty.example", 550),
        ("postmaster@example.com", 250),
        ("postmaster@empty.example", 250),
    ] {
        let codes = gw.send(STRANGER, from, &[rcpt], rcpt);
        assert_eq!(codes[1], want, "{rcpt}\n{}", gw.log());
    }
    // A valid tag is checked as the address it vouches for; a bad one as written.
    let tagged = gw.proxy.sign(TODAY, "alice@example.com");
    assert_eq!(gw.send_one("", &tagged), 250, "{}", gw.log());
    let forged = tagged.replacen("=alice@", "=nobody@", 1);
    assert_eq!(gw.send_one("", &forged), 550);
    assert!(gw.log().contains("action=refused-unknown-recipient"), "{}", gw.log());
}

impl Gw {
    /// One RCPT's reply code (the transaction goes on to DATA when accepted).
    fn send_one(&self, sender: &str, rcpt: &str) -> u16 {
        self.send(STRANGER, sender, &[rcpt], rcpt)[1]
    }
}

#[test]
fn the_local_part_may_be_compared_without_case() {
    let Some(gw) = gateway(Some("alice@example.com\n"), "valid_recipients_case = \"insensitive\"\n") else {
        return;
    };
    assert_eq!(gw.send_one("carol@remote.test", "ALICE@EXAMPLE.COM"), 250);
    assert_eq!(gw.send_one("carol@remote.test", "alicia@example.com"), 550);
}

#[test]
fn the_table_reloads_when_it_changes_all_or_nothing() {
    let Some(gw) = gateway(Some("alice@example.com\n"), "") else {
        return;
    };
    assert_eq!(gw.send_one("carol@remote.test", "bob@example.com"), 550);
    // Replaced atomically, as an admin's script would: seen within the 2 s poll.
    let tmp = gw.table.with_extension("new");
    std::fs::write(&tmp, "alice@example.com\nbob@example.com\n").unwrap();
    std::fs::rename(&tmp, &gw.table).unwrap();
    assert!(gw.wait_log("reloaded ("), "{}", gw.log());
    assert_eq!(gw.send_one("carol@remote.test", "bob@example.com"), 250);
    // A broken table is not taken: the running one stays, and the log says why.
    std::fs::write(&gw.table, "alice@example.com\nnot an address\n").unwrap();
    assert!(gw.wait_log("not reloaded: proxy.valid_recipients"), "{}", gw.log());
    assert!(gw.log().contains("line 2"), "{}", gw.log());
    assert_eq!(gw.send_one("carol@remote.test", "bob@example.com"), 250);
    // SIGHUP reads it again too (here: fixed, and carol added).
    std::fs::write(&gw.table, "carol@example.com\n").unwrap();
    unsafe { libc::kill(gw.proxy.child.id() as i32, libc::SIGHUP) };
    assert!(gw.wait_log("reloaded (configuration and keys)"), "{}", gw.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.send_one("carol@remote.test", "carol@example.com") != 250 {
        assert!(Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(gw.send_one("carol@remote.test", "bob@example.com"), 550);
}

#[test]
fn the_received_field_names_the_client() {
    let Some(gw) = gateway(None, "") else { return };
    let mut c = Client::connect_from(&gw.proxy.addr, STRANGER);
    c.reply();
    // A HELO chosen to break out of the field: it is written down defanged.
    assert_eq!(code(&c.cmd("EHLO evil(x);\"y\"")), 250);
    assert_eq!(code(&c.cmd("MAIL FROM:<carol@remote.test>")), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.com>")), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    assert_eq!(code(&c.cmd("Subject: hi\r\n\r\nHello.\r\n.")), 250);
    c.cmd("QUIT");
    let got = gw.sink.messages(1);
    let data = got[0]["data"].as_str().unwrap();
    assert!(data.starts_with("Received: from evil?x???y? ([127.0.0.2])\r\n\tby "), "{data}");
    let (field, rest) = data.split_once("\r\nSubject: hi\r\n").expect("the client's header follows");
    assert!(rest.starts_with("\r\nHello."), "{data}");
    assert!(field.contains(" (batv) with ESMTP id "), "{field}");
    // `; date`, the proxy's clock (--now).
    assert!(field.contains(";\r\n\tMon, 23 Nov 2026 "), "{field}");
    assert_eq!(field.lines().count(), 3, "{field}");
}

#[test]
fn auth_goes_to_the_mta_only_inside_tls() {
    let Some((_, dir)) = setup() else { return };
    let sink = Sink::with_auth(dir.path(), "alice:secret");
    // Without a certificate: AUTH is not offered and is refused.
    let plain = Proxy::start(&format!("127.0.0.1:{}", sink.port), "mode = \"gateway\"\n");
    let out = client(
        &plain.addr,
        "127.0.0.2",
        &["EHLO c.remote.test", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "QUIT"],
    );
    assert!(!out.contains("AUTH"), "{out}");
    assert!(reply_to(&out, 2).starts_with("538 5.7.11"), "{out}");
    assert!(plain.log.lock().unwrap().contains("AUTH is refused"));
    drop(plain);
    let (cert, key, _) = make_cert(dir.path(), "gw");
    let tls = Proxy::start(
        &format!("127.0.0.1:{}", sink.port),
        &format!(
            "mode = \"gateway\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    // Before STARTTLS: not offered, and refused.
    let out = client(
        &tls.addr,
        "127.0.0.2",
        &["EHLO c.remote.test", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "QUIT"],
    );
    assert!(out.contains("STARTTLS") && !out.contains("AUTH"), "{out}");
    assert!(reply_to(&out, 2).starts_with("530 5.7.0"), "{out}");
    // Inside TLS, AUTH (PLAIN: \0alice\0password), then a relay to another domain.
    let relay_after_auth = |password_b64: &str| {
        let auth = format!("AUTH PLAIN {password_b64}");
        let commands = [
            "EHLO c.remote.test",
            "STARTTLS",
            "EHLO c.remote.test",
            &auth,
            "MAIL FROM:<alice@example.com>",
            "RCPT TO:<bob@remote.test>",
            "DATA",
            "QUIT",
        ];
        client(&tls.addr, "127.0.0.2", &commands)
    };
    // A wrong password: no relaying.
    let out = relay_after_auth("AGFsaWNlAHdyb25n");
    assert!(reply_to(&out, 4).starts_with("535"), "{out}");
    assert!(reply_to(&out, 6).starts_with("554 5.7.1"), "{out}");
    // The MTA's 235: this client may relay, and the trace says who it was.
    let out = relay_after_auth("AGFsaWNlAHNlY3JldA==");
    assert!(reply_to(&out, 4).starts_with("235"), "{out}");
    assert!(reply_to(&out, 6).starts_with("250"), "{out}");
    assert!(reply_to(&out, 8).starts_with("250"), "{out}");
    let got = sink.messages(1);
    assert_eq!(got[0]["rcpt_tos"][0], "bob@remote.test");
    let data = got[0]["data"].as_str().unwrap();
    let field = data.split("\r\nSubject:").next().unwrap();
    assert!(
        field.starts_with("Received: from c.remote.test ([127.0.0.2])\r\n\t(using TLSv1."),
        "{field}"
    );
    assert!(
        field.contains("(Authenticated sender: alice)") && field.contains(" with ESMTPSA id "),
        "{field}"
    );
}

#[test]
fn config_check_knows_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let cfg = dir.path().join("batv.toml");
        std::fs::write(&cfg, text).unwrap();
        let o = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("--keys")
            .arg(dir.path().join("keys"))
            .args(["config", "check"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        (o.status.code().unwrap_or(-1), text)
    };
    let (code, out) = check("[proxy]\nmode = \"gateway\"\n");
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("gateway mode needs") && out.contains("relay_domains"), "{out}");
    std::fs::write(dir.path().join("rcpts"), "alice@example.com\n@other.example\n").unwrap();
    let (code, out) = check("sign_domains = [\"example.com\"]\n[proxy]\nmode = \"gateway\"\nvalid_recipients = \"rcpts\"\n");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 valid recipients") && out.contains("1 entries outside relay_domains"),
        "{out}"
    );
    std::fs::write(dir.path().join("rcpts"), "alice@example.com\n\nbob\n").unwrap();
    let (code, out) = check("sign_domains = [\"example.com\"]\n[proxy]\nmode = \"gateway\"\nvalid_recipients = \"rcpts\"\n");
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("line 3"), "{out}");
    let (code, out) = check("sign_domains = [\"example.com\"]\n[proxy]\nvalid_recipients = \"rcpts\"\n");
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("gateway mode only"), "{out}");
    // The proxy itself refuses to start on a bad table.
    let keys = dir.path().join("keys");
    assert!(std::process::Command::new(BIN)
        .arg("--keys")
        .arg(&keys)
        .args(["keys", "init"])
        .status()
        .unwrap()
        .success());
    let cfg = dir.path().join("batv.toml");
    std::fs::write(
        &cfg,
        "sign_domains = [\"example.com\"]\n[proxy]\nmode = \"gateway\"\nvalid_recipients = \"rcpts\"\n",
    )
    .unwrap();
    let o = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--keys")
        .arg(&keys)
        .args(["proxy", "--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 3"));
}
