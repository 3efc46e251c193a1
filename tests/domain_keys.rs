//! Per-domain key stores (`[domain_keys]`): a relay signing for a customer domain with the
//! customer's own keys, so the customer's MX verifies with its store alone; `batv keys
//! --domain`, two-phase rotation per domain, `config check`, and a running daemon that
//! signs and strips with each domain's keys and reloads a domain's store when it changes.

mod common;

use std::fs;
use std::time::Duration;

use common::daemon_proc::{bounded, Daemon, Store, NOW};

const LIMIT: Duration = Duration::from_secs(60);

/// The relay: its own domain on keys_dir, customer.example on a store of its own.
const RELAY: &str = "sign_domains = [\"example.org\", \"customer.example\"]\n\
                     tag_syntax = \"subaddress\"\n\
                     [domain_keys]\n\"Customer.Example\" = \"keys-customer\"\n";

fn out(o: &common::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &common::Output) -> String {
    o.stderr.clone()
}

/// A relay's store: keys_dir and the customer's store, each with one active key.
fn relay() -> Store {
    let s = Store::without_keys("");
    s.set_config(RELAY);
    for args in [&["keys", "init"][..], &["keys", "--domain", "customer.example", "init"]] {
        let o = s.batv(NOW, args);
        assert_eq!(o.code, 0, "{args:?}: {}", err(&o));
    }
    s
}

/// The customer's MX: its keys_dir is the relay's customer store, nothing else.
fn customer_mx(relay: &Store) -> Store {
    let mut s = Store::without_keys("");
    s.set_config("sign_domains = [\"customer.example\"]\ntag_syntax = \"subaddress\"\n");
    s.keys = relay.dir.path().join("keys-customer");
    s
}

fn sign(s: &Store, addrs: &[&str]) -> Vec<String> {
    let mut args = vec!["sign"];
    args.extend_from_slice(addrs);
    let o = s.batv(NOW, &args);
    assert_eq!(o.code, 0, "{}", err(&o));
    out(&o).lines().map(str::to_string).collect()
}

#[test]
fn each_domain_is_signed_with_its_own_store() {
    let relay = relay();
    let mx = customer_mx(&relay);
    let tagged = sign(&relay, &["alice@example.org", "bob@customer.example", "carol@EU.Customer.Example"]);
    for (t, mailbox) in tagged.iter().zip(["alice+prvs=", "bob+prvs=", "carol+prvs="]) {
        assert!(t.starts_with(mailbox), "{t}");
    }
    // The relay verifies all three.
    assert_eq!(
        relay.verify(NOW, &tagged.iter().map(String::as_str).collect::<Vec<_>>()).unwrap(),
        ["alice@example.org", "bob@customer.example", "carol@EU.Customer.Example"]
    );
    // The customer's MX, holding only its own store, verifies its domain (and the
    // domains below it), and not the relay's: its keys are not the relay's.
    assert_eq!(
        mx.verify(NOW, &[&tagged[1], &tagged[2]]).unwrap(),
        ["bob@customer.example", "carol@EU.Customer.Example"]
    );
    let (code, why) = mx.verify(NOW, &[&tagged[0]]).unwrap_err();
    assert_eq!(code, 1);
    assert!(why.contains("bad-signature"), "{why}");
    // A customer tag presented for another of the relay's domains does not verify there.
    let moved = tagged[1].replace("@customer.example", "@example.org");
    assert!(relay.verify(NOW, &[&moved]).is_err());
    // The secrets differ: list shows each store's fingerprint.
    let fp = |args: &[&str]| {
        let o = relay.batv(NOW, args);
        assert_eq!(o.code, 0, "{}", err(&o));
        out(&o).lines().nth(1).unwrap().split_whitespace().last().unwrap().to_string()
    };
    assert_ne!(fp(&["keys", "list"]), fp(&["keys", "--domain", "customer.example", "list"]));
    // --domain after the subcommand works as well, in any case.
    assert_eq!(
        fp(&["keys", "--domain", "customer.example", "list"]),
        fp(&["keys", "list", "--domain", "CUSTOMER.example"])
    );
}

#[test]
fn keys_domain_names_a_configured_store() {
    let relay = relay();
    let o = relay.batv(NOW, &["keys", "--domain", "other.example", "list"]);
    assert_eq!(o.code, 64, "{}", err(&o));
    assert!(err(&o).contains("no [domain_keys] store for it"), "{}", err(&o));
    // The parent of a configured domain is not that domain.
    let o = relay.batv(NOW, &["keys", "--domain", "example", "init"]);
    assert_eq!(o.code, 64);
    assert!(!relay.dir.path().join("keys-example").exists());
}

#[test]
fn config_check_lists_every_store_and_its_active_key() {
    let relay = relay();
    let o = relay.batv(NOW, &["config", "check"]);
    assert_eq!(o.code, 0, "{}", err(&o));
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].contains("/keys (other domains): 1 key(s), active key 1 ("), "{text}");
    assert!(
        lines[1].contains("/keys-customer (customer.example): 1 key(s), active key 1 ("),
        "{text}"
    );
    assert!(lines[2].ends_with(": OK"), "{text}");
    // A store a daemon could not start with fails the check, naming it.
    fs::remove_dir_all(relay.dir.path().join("keys-customer")).unwrap();
    let o = relay.batv(NOW, &["config", "check"]);
    assert_eq!(o.code, 78, "{}", err(&o));
    assert!(err(&o).contains("keys-customer"), "{}", err(&o));
}

#[test]
fn a_domain_rotates_in_two_phases_on_its_own() {
    let relay = relay();
    let mx = customer_mx(&relay);
    let old = sign(&relay, &["bob@customer.example"]).remove(0);
    // Phase one: a standby key, everywhere. Signing is unchanged.
    let o = relay.batv(NOW, &["keys", "--domain", "customer.example", "add", "--standby"]);
    assert_eq!(o.code, 0, "{}", err(&o));
    assert_eq!(sign(&relay, &["bob@customer.example"])[0], old);
    // Phase two: activate it; the next tags carry key 2, the old ones still verify, and
    // the default store never changed.
    let o = relay.batv(NOW, &["keys", "--domain", "customer.example", "activate", "2"]);
    assert_eq!(o.code, 0, "{}", err(&o));
    let tags = sign(&relay, &["bob@customer.example", "alice@example.org"]);
    assert!(tags[0].starts_with("bob+prvs=2"), "{}", tags[0]);
    assert!(tags[1].starts_with("alice+prvs=1"), "{}", tags[1]);
    assert_eq!(mx.verify(NOW, &[&old, &tags[0]]).unwrap(), ["bob@customer.example"; 2]);
    let o = relay.batv(NOW, &["keys", "list"]);
    assert_eq!(out(&o).lines().count(), 2, "{}", out(&o));
}

#[test]
fn a_store_without_an_active_key_signs_nothing_with_another() {
    let s = Store::without_keys("");
    s.set_config(RELAY);
    assert_eq!(s.batv(NOW, &["keys", "init"]).code, 0);
    let store = s.dir.path().join("keys-customer");
    fs::create_dir(&store).unwrap();
    fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let secret = s.dir.path().join("secret");
    fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let o = s.batv(
        NOW,
        &[
            "keys",
            "--domain",
            "customer.example",
            "import",
            "3",
            "--secret-file",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 0, "{}", err(&o));
    assert!(out(&o).contains("batv keys --domain customer.example activate 3"), "{}", out(&o));
    // Only a standby key: the customer's mail is not signed with the relay's key.
    let o = s.batv(NOW, &["sign", "bob@customer.example"]);
    assert_eq!(o.code, 78, "{}", err(&o));
    assert!(
        err(&o).contains("no active key in the [domain_keys] store of customer.example"),
        "{}",
        err(&o)
    );
    assert_eq!(sign(&s, &["alice@example.org"]).len(), 1);
    // A daemon starts (the standby key verifies) and says which store cannot sign; the
    // other domains are signed as before.
    bounded(LIMIT, move || {
        let d = Daemon::start_at(s, NOW);
        d.wait_log("warning: no active key in the [domain_keys] store of customer.example", 1);
        let mut c = d.unix();
        assert!(c.lookup("sign", "bob@customer.example").starts_with("NOTFOUND"));
        assert!(c.lookup("sign", "alice@example.org").starts_with("OK alice+prvs=1"));
    });
}

#[test]
fn the_daemon_signs_and_strips_per_domain_and_reloads_a_domain_store() {
    bounded(LIMIT, || {
        let relay = relay();
        let d = Daemon::start_at(relay, NOW);
        let mut c = d.unix();
        let bob = c.lookup("sign", "bob@customer.example");
        let alice = c.lookup("sign", "alice@example.org");
        assert!(bob.starts_with("OK bob+prvs=1"), "{bob}");
        assert!(alice.starts_with("OK alice+prvs=1"), "{alice}");
        let bob = bob.strip_prefix("OK ").unwrap().to_string();
        // The customer MX's store verifies bob's tag, not alice's.
        let mx = customer_mx(&d.store);
        assert!(mx.verify(NOW, &[&bob]).is_ok());
        assert!(mx.verify(NOW, &[alice.strip_prefix("OK ").unwrap()]).is_err());
        assert_eq!(c.lookup("strip", &bob), "OK bob@customer.example");
        // Bob's hash under the relay's own key: not stripped.
        let relay_key = {
            let o = d.store.batv(NOW, &["sign", "bob@example.org"]);
            out(&o).trim().to_string()
        };
        let crossed = relay_key.replace("@example.org", "@customer.example");
        assert!(c.lookup("strip", &crossed).starts_with("NOTFOUND"), "{crossed}");
        // Rotating the customer's store is seen without a signal.
        let o = d.store.batv(NOW, &["keys", "--domain", "customer.example", "rotate"]);
        assert_eq!(o.code, 0, "{}", err(&o));
        d.wait_log("reloaded (keys)", 1);
        let mut c = d.unix();
        assert!(c.lookup("sign", "bob@customer.example").starts_with("OK bob+prvs=2"));
        assert!(c.lookup("sign", "alice@example.org").starts_with("OK alice+prvs=1"));
        // The old tag still strips (key 1 is retired, not gone).
        assert_eq!(c.lookup("strip", &bob), "OK bob@customer.example");
    });
}
