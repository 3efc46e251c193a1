//! The README's before-queue recipe, run by a whole Postfix that validates recipients
//! (`mydestination = example.com`, `local_recipient_maps` listing alice and bob) with
//! `batv proxy` between its two smtpds. The master.cf services are the README's own, read at
//! test time with only the ports changed, so the documented recipe is the tested one.
//!
//! The point: Postfix must look up recipients after batv has stripped the tag (on the
//! second smtpd). The port-25 smtpd sees `prvs=...=alice@example.com`, a user it does not
//! know; the old recipe let it check, and every genuine bounce got 550 5.1.1.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;

use common::peers::{code, Client};
use common::postfix::{can_run_postfix, free_port, Postfix};
use common::proxy::{postfix_root, Proxy, TODAY};
use common::{python_with_aiosmtpd, require, Sink};

/// The recipe this file replaced in the README (from Postfix's SMTPD_PROXY_README, made for
/// filters that leave recipients alone): recipients checked on port 25, where the tag still
/// is, and turned off on the second smtpd, where it is gone.
const OLD_RECIPE: &str = "\
smtp      inet  n       -       y       -       20      smtpd
  -o smtpd_proxy_filter=127.0.0.1:10025
  -o smtpd_client_connection_count_limit=10
127.0.0.1:10026 inet n  -       n       -       -       smtpd
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o smtpd_client_restrictions= -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions= -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_data_restrictions= -o mynetworks=127.0.0.0/8
  -o receive_override_options=no_unknown_recipient_checks";

/// A whole Postfix forks an smtpd per connection, the second one per proxied session: slow
/// on a busy machine.
const SLOW: &str = "command_timeout_ms = 20000\ndata_timeout_ms = 20000\n";

/// The client: on loopback, but outside the port-25 smtpd's mynetworks (127.0.0.1/32), so
/// relay control applies to it.
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The README's fenced block holding `needle` (exactly one).
fn block(readme: &str, needle: &str) -> String {
    let blocks: Vec<&str> = readme.split("```").skip(1).step_by(2).filter(|b| b.contains(needle)).collect();
    assert_eq!(blocks.len(), 1, "one README block with {needle:?}");
    // Drop the info string (`toml`) of the opening fence.
    blocks[0].split_once('\n').map(|(_, b)| b).unwrap_or("").to_string()
}

/// The README's master.cf services for before-queue mode, and its batv.toml's
/// (listen, forward), which must be the addresses those services name.
fn readme_recipe() -> String {
    let readme = readme();
    let master = block(&readme, "smtpd_proxy_filter=");
    let toml: toml::Table = block(&readme, "mode = \"before-queue\"").parse().unwrap();
    let proxy = toml["proxy"].as_table().unwrap();
    let (listen, forward) = (proxy["listen"].as_str().unwrap(), proxy["forward"].as_str().unwrap());
    assert!(master.contains(&format!("-o smtpd_proxy_filter={listen}\n")), "{master}");
    assert!(
        master.lines().any(|l| l.split_whitespace().next() == Some(forward)),
        "the README's second smtpd listens on proxy.forward ({forward}):\n{master}"
    );
    master
}

/// `recipe` with its ports replaced: the port-25 service `smtp` on 127.0.0.1:mx, the proxy
/// at `proxy`, the second smtpd on 127.0.0.1:second.
fn with_ports(recipe: &str, mx: u16, proxy: &str, second: u16) -> String {
    let mut out = String::new();
    let mut smtp = 0;
    for line in recipe.lines() {
        let line = match line.strip_prefix("smtp ") {
            Some(rest) => {
                smtp += 1;
                format!("127.0.0.1:{mx} {rest}")
            }
            None => line.to_string(),
        };
        out.push_str(
            &line
                .replace("127.0.0.1:10025", proxy)
                .replace("127.0.0.1:10026", &format!("127.0.0.1:{second}")),
        );
        out.push('\n');
    }
    assert_eq!(smtp, 1, "one `smtp` service:\n{recipe}");
    assert!(
        out.contains(&format!("smtpd_proxy_filter={proxy}")) && out.contains(&format!("127.0.0.1:{second} inet")),
        "{out}"
    );
    out
}

/// Everything under test; fields drop in order: Postfix first, then the proxy, the sink.
struct Site {
    pf: Postfix,
    proxy: Proxy,
    sink: Sink,
    mx: u16,
    _dir: tempfile::TempDir,
}

/// A Postfix delivering example.com (alice and bob only) to the aiosmtpd sink, with
/// `recipe`'s services and the proxy (`proxy_extra` in `[proxy]`) between them. None (skip)
/// when Postfix or aiosmtpd cannot run here.
fn site(recipe: &str, proxy_extra: &str) -> Option<Site> {
    let root = postfix_root()?;
    if !can_run_postfix() || !require("python3-aiosmtpd", python_with_aiosmtpd()) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path());
    let users = dir.path().join("users");
    std::fs::write(&users, "alice ok\nbob ok\n").unwrap();
    let (mx, second) = (free_port(), free_port());
    let proxy = Proxy::start(
        &format!("127.0.0.1:{second}"),
        &format!("mode = \"before-queue\"\nenforce = true\n{SLOW}{proxy_extra}"),
    );
    let main = format!(
        "mydestination = example.com
local_recipient_maps = texthash:{users}
local_transport = smtp:[127.0.0.1]:{sink}
mynetworks = 127.0.0.1/32
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
",
        users = users.display(),
        sink = sink.port,
    );
    let services = with_ports(recipe, mx, &proxy.addr, second);
    let pf = Postfix::start(&root, &main, &[services], &[mx, second]);
    Some(Site {
        pf,
        proxy,
        sink,
        mx,
        _dir: dir,
    })
}

impl Site {
    /// One transaction from 127.0.0.2 through the port-25 smtpd: the replies to MAIL, each
    /// RCPT and, when a recipient was accepted, DATA and (after a 354) the message.
    fn transaction(&self, from: &str, rcpts: &[&str], subject: &str) -> Vec<String> {
        let mut c = Client::connect_from(&format!("127.0.0.1:{}", self.mx), CLIENT);
        let greeting = c.reply();
        assert_eq!(code(&greeting), 220, "{greeting}\n--- maillog ---\n{}", self.pf.log());
        assert_eq!(code(&c.cmd("EHLO mx.remote.example")), 250);
        c.transaction(from, rcpts, &format!("Subject: {subject}\r\n\r\nIt bounced.\r\n"))
    }

    /// The maillog's reject lines for `rcpt`.
    fn rejects_now(&self, rcpt: &str) -> Vec<String> {
        let to = format!("to=<{rcpt}>");
        self.pf
            .log()
            .lines()
            .filter(|l| l.contains("NOQUEUE: reject: RCPT") && l.contains(&to))
            .map(str::to_string)
            .collect()
    }

    /// The maillog's refusals of `rcpt`, once there is one (postlogd writes a moment after
    /// the reply; at most 10 s).
    fn rejects(&self, rcpt: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = self.rejects_now(rcpt);
            if !r.is_empty() || std::time::Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The messages the sink got, once there are `n` (at most 10 s).
    fn delivered(&self, n: usize) -> Vec<serde_json::Value> {
        let m = self.sink.messages(n);
        assert_eq!(m.len(), n, "{m:#?}\n--- maillog ---\n{}", self.pf.log());
        m
    }
}

fn codes(replies: &[String]) -> Vec<u16> {
    replies.iter().map(|r| code(r)).collect()
}

/// The message with `subject`: its envelope (sender, recipients).
fn envelope(got: &[serde_json::Value], subject: &str) -> (String, Vec<String>) {
    let m: Vec<&serde_json::Value> = got
        .iter()
        .filter(|m| m["data"].as_str().unwrap_or("").contains(&format!("Subject: {subject}\r\n")))
        .collect();
    assert_eq!(m.len(), 1, "one message {subject:?}: {got:#?}");
    let rcpts = m[0]["rcpt_tos"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string());
    (m[0]["mail_from"].as_str().unwrap().to_string(), rcpts.collect())
}

#[test]
fn the_readme_recipe_checks_recipients_after_the_tag_is_stripped() {
    let Some(site) = site(&readme_recipe(), "") else { return };
    let alice = site.proxy.sign(TODAY, "alice@example.com");
    let nobody = site.proxy.sign(TODAY, "nobody@example.com");
    let log = || format!("--- maillog ---\n{}", site.pf.log());

    // A genuine bounce: accepted, and delivered to alice, stripped.
    let r = site.transaction("", &[&alice], "bounce to a valid tag");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", log());
    // A valid tag for a user who does not exist: the second smtpd knows, once stripped.
    let r = site.transaction("", &[&nobody], "bounce to nobody");
    assert_eq!(codes(&r), [250, 550], "{r:#?}\n{}", log());
    assert!(r[1].starts_with("550 5.1.1 <nobody@example.com>"), "{r:#?}");
    // Backscatter to a real user: RCPT accepted by Postfix, the transaction refused by batv.
    let r = site.transaction("", &["alice@example.com"], "backscatter");
    assert_eq!(codes(&r), [250, 250, 550], "{r:#?}\n{}", log());
    assert!(r[2].starts_with("550 5.7.1 "), "{r:#?}");
    // Other mail: unknown users refused, known ones delivered; relay control on port 25.
    let r = site.transaction(
        "carol@remote.test",
        &["carol@example.com", "x@other.test", "alice@example.com"],
        "mail",
    );
    assert_eq!(codes(&r), [250, 550, 454, 250, 354, 250], "{r:#?}\n{}", log());
    assert!(r[1].starts_with("550 5.1.1 <carol@example.com>"), "{r:#?}");
    assert!(r[2].contains("Relay access denied"), "{r:#?}");

    let got = site.delivered(2);
    assert_eq!(
        envelope(&got, "bounce to a valid tag"),
        ("<>".to_string(), vec!["alice@example.com".to_string()])
    );
    assert_eq!(
        envelope(&got, "mail"),
        ("carol@remote.test".to_string(), vec!["alice@example.com".to_string()])
    );
    // Who refused what: the unknown users by the second smtpd (its client is batv, on
    // 127.0.0.1) on the stripped address; relaying by the port-25 smtpd (client 127.0.0.2).
    for rcpt in ["nobody@example.com", "carol@example.com"] {
        let rejects = site.rejects(rcpt);
        assert!(
            rejects.len() == 1 && rejects[0].contains("from unknown[127.0.0.1]: 550 5.1.1"),
            "{rcpt}: {rejects:#?}\n{}",
            log()
        );
    }
    assert!(site.rejects_now(&nobody).is_empty(), "{}", log());
    let relay = site.rejects("x@other.test");
    assert!(
        relay.len() == 1 && relay[0].contains("from unknown[127.0.0.2]: 454 4.7.1"),
        "{relay:#?}\n{}",
        log()
    );
}

#[test]
fn the_readme_recipe_with_reject_at_rcpt() {
    let Some(site) = site(&readme_recipe(), "reject_at = \"rcpt\"\n") else {
        return;
    };
    let alice = site.proxy.sign(TODAY, "alice@example.com");
    let nobody = site.proxy.sign(TODAY, "nobody@example.com");
    let log = || format!("--- maillog ---\n{}", site.pf.log());

    let r = site.transaction("", &["alice@example.com"], "backscatter");
    assert_eq!(codes(&r), [250, 550], "{r:#?}\n{}", log());
    assert!(r[1].starts_with("550 5.7.1 "), "{r:#?}");
    let r = site.transaction("", &[&nobody], "bounce to nobody");
    assert_eq!(codes(&r), [250, 550], "{r:#?}\n{}", log());
    assert!(r[1].starts_with("550 5.1.1 <nobody@example.com>"), "{r:#?}");
    let r = site.transaction("", &[&alice], "bounce to a valid tag");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", log());
    let got = site.delivered(1);
    assert_eq!(
        envelope(&got, "bounce to a valid tag"),
        ("<>".to_string(), vec!["alice@example.com".to_string()])
    );
}

/// What the README recipe fixes: with the old one every genuine bounce is refused, by the
/// port-25 smtpd, before batv sees it.
#[test]
fn the_old_recipe_refuses_every_valid_tag() {
    let Some(site) = site(OLD_RECIPE, "") else { return };
    let alice = site.proxy.sign(TODAY, "alice@example.com");

    let r = site.transaction("", &[&alice], "bounce to a valid tag");
    assert_eq!(codes(&r), [250, 550], "{r:#?}");
    assert!(
        r[1].starts_with(&format!("550 5.1.1 <{alice}>: Recipient address rejected: User unknown")),
        "{r:#?}"
    );
    let rejects = site.rejects(&alice);
    assert!(
        rejects.len() == 1 && rejects[0].contains("from unknown[127.0.0.2]: 550 5.1.1"),
        "{rejects:#?}\n--- maillog ---\n{}",
        site.pf.log()
    );
    let proxy_log = common::peers::log(&site.proxy);
    assert!(!proxy_log.contains("rcpt="), "batv never saw the recipient: {proxy_log}");
}
