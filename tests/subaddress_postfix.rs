//! Sub-address tags (`tag_syntax = "subaddress"`: `alice+prvs=KDDDHASH@example.org`) through
//! a whole Postfix with `batv daemon` wired as README's "Inside Postfix, without a proxy"
//! section wires it (tests/common/postfix_site.rs). With the strip map, a valid sub-address
//! tag is accepted and delivered untagged; without it, Postfix's own `recipient_delimiter`
//! finds the user of a sub-address tag (so the strip map is optional for that syntax) while a
//! prefix-form tag stays an unknown user. Bounces come from 127.0.0.2, a stranger on port 25.

mod common;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon_proc::{bounded, Daemon, NOW};
use common::peers::{code, Client};
use common::postfix_site::{field, mx_site, policy_lines, verify, Site, Wiring};

/// A client outside mynetworks (127.0.0.1/32).
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// A test's whole run, Postfix's start and stop included.
const LIMIT: Duration = Duration::from_secs(180);
/// The policy service's refusal as Postfix's smtpd words it.
const REFUSED: &str = "550 5.7.1";
/// batv.toml after `sign_domains`: signers write the sub-address form.
const SUBADDRESS: &str = "tag_syntax = \"subaddress\"\nsubaddress_delimiter = \"+\"\n";

/// `batv sign --syntax SYNTAX ADDR` at the daemon's clock.
fn sign(d: &Daemon, syntax: &str, addr: &str) -> String {
    let o = d.store.batv(NOW, &["sign", "--syntax", syntax, addr]);
    assert_eq!(o.code, 0, "sign --syntax {syntax} {addr}: {}", o.stderr);
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// `batv sign ADDR` (the syntax the config's tag_syntax names).
fn sign_default(d: &Daemon, addr: &str) -> String {
    let o = d.store.batv(NOW, &["sign", addr]);
    assert_eq!(o.code, 0, "sign {addr}: {}", o.stderr);
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The tag with the first character of its hash changed, in either syntax (still well-formed,
/// so it is checked and fails: bad-signature).
fn forge(tagged: &str) -> String {
    // ... prvs= K DDD hash ...
    let at = tagged.to_ascii_lowercase().find("prvs=").expect("a tag") + 9;
    let mut b = tagged.as_bytes().to_vec();
    b[at] = if b[at] == b'a' { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

/// A sub-address tag of `local@example.org` (`local+prvs=KDDDHASH@example.org`).
fn assert_subaddress(tag: &str, local: &str) {
    let rest = tag
        .strip_prefix(&format!("{local}+prvs="))
        .and_then(|r| r.strip_suffix("@example.org"))
        .unwrap_or_else(|| panic!("{tag} is not a sub-address tag of {local}@example.org"));
    assert!(rest.len() > 4 && rest.bytes().all(|c| c.is_ascii_alphanumeric()), "{tag}");
}

/// One whole SMTP session from `source` (greeting to QUIT) sending a message from `from` to
/// `rcpt`: the replies to MAIL, RCPT and (when RCPT was accepted) DATA and the message's end,
/// and the transcript (`C:` client lines, `S:` Postfix's replies, verbatim).
fn session(site: &Site, source: Ipv4Addr, from: &str, rcpt: &str, tag: &str) -> (Vec<String>, String) {
    let mut t = String::new();
    let mut c = Client::connect_from(&format!("127.0.0.1:{}", site.mx), source);
    let mut step = |c: &mut Client, line: Option<&str>| -> String {
        if let Some(l) = line {
            for l in l.split("\r\n") {
                writeln!(t, "C: {l}").unwrap();
            }
        }
        let r = match line {
            Some(l) => c.cmd(l),
            None => c.reply(),
        };
        for l in r.lines() {
            writeln!(t, "S: {l}").unwrap();
        }
        r
    };
    assert_eq!(code(&step(&mut c, None)), 220);
    assert_eq!(code(&step(&mut c, Some("EHLO mx.remote.test"))), 250);
    let mut replies = vec![
        step(&mut c, Some(&format!("MAIL FROM:<{from}>"))),
        step(&mut c, Some(&format!("RCPT TO:<{rcpt}>"))),
    ];
    if code(&replies[1]) == 250 {
        replies.push(step(&mut c, Some("DATA")));
        replies.push(step(&mut c, Some(&format!("Subject: test {tag}\r\n\r\nHello.\r\n."))));
    }
    step(&mut c, Some("QUIT"));
    (replies, t)
}

/// A bounce from the stranger to `rcpt` alone: the RCPT reply.
fn bounce_rcpt(site: &Site, rcpt: &str, tag: &str) -> String {
    let r = site.transaction(STRANGER, "", &[&format!("<{rcpt}>")], tag);
    assert_eq!(code(&r[0]), 250, "MAIL FROM:<>: {r:#?}");
    r[1].clone()
}

fn accepted(r: &[String]) -> bool {
    code(&r[1]) == 250 && r.last().unwrap().contains("queued")
}

/// The daemon's policy line for bounce recipient `rcpt` (waiting, at most 10 s, for the log
/// to come through its pipe).
fn policy_line(site: &Site, rcpt: &str) -> Vec<(String, Option<String>)> {
    let want = format!("<{rcpt}>");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = policy_lines(&site.daemon)
            .into_iter()
            .find(|f| field(f, "sender") == Some("<>") && field(f, "rcpt") == Some(want.as_str()));
        if let Some(f) = found {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no policy line for {want}: {}",
            site.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `postmap -q KEY MAP` with the site's Postfix: (exit code, output).
fn postmap(site: &Site, key: &str, map: &str) -> (i32, String) {
    let o = Command::new(site.root.join("usr/sbin/postmap"))
        .env("LD_LIBRARY_PATH", site.root.join("usr/lib/postfix"))
        .arg("-c")
        .arg(site.pf.dir.path().join("etc"))
        .args(["-q", key, map])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8(o.stdout).unwrap().trim().to_string();
    (o.status.code().unwrap_or(-1), out)
}

/// `postconf -h NAME` with the site's main.cf: the value Postfix uses.
fn postconf(site: &Site, name: &str) -> String {
    let o = Command::new(site.root.join("usr/sbin/postconf"))
        .env("LD_LIBRARY_PATH", site.root.join("usr/lib/postfix"))
        .arg("-c")
        .arg(site.pf.dir.path().join("etc"))
        .args(["-h", name])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "postconf {name}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// README's wiring (the strip map as recipient_canonical_maps): a bounce to a valid
/// sub-address tag is accepted and delivered to the untagged address; forged and untagged
/// bounces are refused by the policy; a prefix-form tag still works.
#[test]
fn with_the_strip_map_subaddress_bounces_need_a_valid_tag_and_arrive_untagged() {
    bounded(LIMIT, || {
        let Some(site) = mx_site(Wiring {
            batv: SUBADDRESS,
            ..Wiring::default()
        }) else {
            return;
        };
        assert_eq!(
            postconf(&site, "recipient_canonical_maps"),
            format!("socketmap:unix:{}:strip", site.daemon.sock.display())
        );
        let d = &site.daemon;
        let alice = sign(d, "subaddress", "alice@example.org");
        assert_subaddress(&alice, "alice");
        assert_eq!(sign_default(d, "alice@example.org"), alice, "batv sign follows tag_syntax");
        assert_eq!(verify(d, &alice).as_deref(), Some("alice@example.org"), "{alice}");
        let forged = forge(&alice);
        assert_subaddress(&forged, "alice");
        assert_eq!(verify(d, &forged), None, "{forged} is forged");
        let bob = sign(d, "prefix", "bob@example.org");
        assert!(bob.starts_with("prvs=") && bob.ends_with("=bob@example.org"), "{bob}");

        let (r, transcript) = session(&site, STRANGER, "", &alice, "subaddress");
        assert!(accepted(&r), "a bounce to {alice} is accepted: {r:#?}");
        let f = policy_line(&site, &alice);
        assert_eq!(
            (field(&f, "verdict"), field(&f, "reason")),
            (Some("bounce-ok"), Some("valid")),
            "{f:?}"
        );

        for (rcpt, what) in [(forged.as_str(), "forged"), ("alice@example.org", "untagged")] {
            let r = bounce_rcpt(&site, rcpt, what);
            assert!(
                r.starts_with(REFUSED) && r.contains("Recipient address rejected"),
                "a bounce to an {what} address ({rcpt}) is refused by the policy: {r:?}"
            );
            let f = policy_line(&site, rcpt);
            assert_eq!(
                (field(&f, "verdict"), field(&f, "action")),
                (Some("backscatter"), Some("refused")),
                "{rcpt}: {f:?}"
            );
        }
        let r = site.transaction(STRANGER, "", &[&format!("<{bob}>")], "prefix");
        assert!(accepted(&r), "a bounce to the prefix-form {bob} is accepted too: {r:#?}");

        let got = site.delivered(2);
        let to_alice: Vec<_> = got.iter().filter(|m| m.text.contains("test subaddress\n")).collect();
        assert_eq!(to_alice.len(), 1, "{got:#?}");
        assert_eq!(to_alice[0].from, "", "{got:#?}");
        assert_eq!(to_alice[0].rcpts, ["alice@example.org"], "the strip map removed the tag: {got:#?}");
        let to_bob: Vec<_> = got.iter().filter(|m| m.text.contains("test prefix\n")).collect();
        assert_eq!(to_bob.len(), 1, "{got:#?}");
        assert_eq!(to_bob[0].rcpts, ["bob@example.org"], "{got:#?}");
        assert_eq!(got.len(), 2, "nothing refused reaches the sink: {got:#?}");

        eprintln!(
            "--- WITH the strip map: a bounce to {alice} ---\n{transcript}--- smtp-sink recorded RCPT TO:<{}> ---",
            to_alice[0].rcpts[0]
        );
    });
}

/// The same site without the strip map (`recipient_canonical_maps =`) and with Postfix's
/// `recipient_delimiter = +`: relay_recipient_maps (alice only) finds alice through the
/// delimiter, so a valid sub-address bounce is accepted and delivered still tagged, while the
/// policy still refuses untagged and forged bounces. A valid prefix-form tag has no
/// delimiter for Postfix to cut at: an unknown user (that is why only the sub-address syntax
/// makes the strip map optional).
#[test]
fn without_the_strip_map_recipient_delimiter_finds_the_user_of_a_subaddress_tag() {
    bounded(LIMIT, || {
        let Some(site) = mx_site(Wiring {
            batv: SUBADDRESS,
            main: "recipient_canonical_maps =\nrecipient_delimiter = +\n",
            users: &["alice@example.org"],
        }) else {
            return;
        };
        assert_eq!(postconf(&site, "recipient_canonical_maps"), "", "the strip map is off");
        assert_eq!(postconf(&site, "recipient_delimiter"), "+");
        let d = &site.daemon;
        let alice = sign(d, "subaddress", "alice@example.org");
        assert_subaddress(&alice, "alice");
        let forged = forge(&alice);
        let prefix = sign(d, "prefix", "alice@example.org");
        assert_eq!(verify(d, &prefix).as_deref(), Some("alice@example.org"), "{prefix}");

        let (r, transcript) = session(&site, STRANGER, "", &alice, "subaddress");
        assert!(accepted(&r), "a bounce to {alice} is accepted without the strip map: {r:#?}");
        let f = policy_line(&site, &alice);
        assert_eq!(
            (field(&f, "verdict"), field(&f, "reason")),
            (Some("bounce-ok"), Some("valid")),
            "{f:?}"
        );

        for (rcpt, what) in [("alice@example.org", "untagged"), (forged.as_str(), "forged")] {
            let r = bounce_rcpt(&site, rcpt, what);
            assert!(
                r.starts_with(REFUSED) && r.contains("Recipient address rejected"),
                "a bounce to an {what} address ({rcpt}) is refused by the policy: {r:?}"
            );
            let f = policy_line(&site, rcpt);
            assert_eq!(
                (field(&f, "verdict"), field(&f, "action")),
                (Some("backscatter"), Some("refused")),
                "{rcpt}: {f:?}"
            );
        }

        // The prefix-form tag is valid (the policy lets it through), but Postfix's recipient
        // check, run after the restrictions, does not know prvs=...=alice.
        let r = bounce_rcpt(&site, &prefix, "prefix");
        assert!(
            r.starts_with("550 5.1.1") && r.contains("User unknown in relay recipient table"),
            "without the strip map the prefix-form {prefix} is an unknown user: {r:?}"
        );
        let f = policy_line(&site, &prefix);
        assert_eq!(
            (field(&f, "verdict"), field(&f, "action")),
            (Some("bounce-ok"), Some("dunno")),
            "it is Postfix, not the policy, that refuses {prefix}: {f:?}"
        );

        let got = site.delivered(1);
        assert_eq!(got.len(), 1, "only the sub-address bounce reaches the sink: {got:#?}");
        assert_eq!(got[0].from, "", "{got:#?}");
        assert!(got[0].text.contains("test subaddress\n"), "{got:#?}");
        assert_eq!(got[0].rcpts, [alice.as_str()], "delivered with its tag: {got:#?}");

        eprintln!(
            "--- WITHOUT the strip map (recipient_delimiter = +): a bounce to {alice} ---\n{transcript}--- smtp-sink recorded RCPT TO:<{}> ---",
            got[0].rcpts[0]
        );
    });
}

/// mx_site has no signing cleanup (README's `signcleanup`), so the signing path is checked
/// through Postfix's own socketmap client: the daemon's `sign` map, asked by postmap, answers
/// in the sub-address syntax, and its `strip` map takes the sub-address tag back.
#[test]
fn postfix_socketmap_client_gets_subaddress_tags_from_the_sign_map() {
    bounded(LIMIT, || {
        let Some(site) = mx_site(Wiring {
            batv: SUBADDRESS,
            ..Wiring::default()
        }) else {
            return;
        };
        let map = format!("socketmap:unix:{}", site.daemon.sock.display());
        let (rc, tagged) = postmap(&site, "alice@example.org", &format!("{map}:sign"));
        assert_eq!(rc, 0, "{map}:sign alice@example.org");
        assert_subaddress(&tagged, "alice");
        assert_eq!(verify(&site.daemon, &tagged).as_deref(), Some("alice@example.org"), "{tagged}");
        assert_eq!(
            postmap(&site, &tagged, &format!("{map}:sign")),
            (1, String::new()),
            "a tagged address is not signed twice"
        );
        assert_eq!(
            postmap(&site, &tagged, &format!("{map}:strip")),
            (0, "alice@example.org".to_string())
        );
        assert_eq!(postmap(&site, &forge(&tagged), &format!("{map}:strip")), (1, String::new()));
        let prefix = sign(&site.daemon, "prefix", "alice@example.org");
        assert_eq!(
            postmap(&site, &prefix, &format!("{map}:strip")),
            (0, "alice@example.org".to_string())
        );
    });
}
