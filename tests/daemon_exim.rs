//! The README's Exim recipe, run by the real Exim (`exim -bh`, a whole SMTP session with
//! the ACLs and routers, nothing delivered) against `batv daemon`: the RCPT ACL asks the
//! daemon about bounces with `${readsocket}` (`verify`), and the router delivers a tagged
//! address to its owner (`strip`). The ACL and router are taken from README.md as written.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::daemon_proc::Daemon;
use common::{require, run_bounded};

/// The README's fenced block that holds the recipe: (ACL statements, router).
fn readme_recipe() -> (String, String) {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("```")
        .find(|b| b.contains("batv_strip:") && b.contains("acl_smtp_rcpt"))
        .expect("README has the Exim recipe");
    let acl = block
        .split("# acl_smtp_rcpt: bounces to our domains\n")
        .nth(1)
        .and_then(|b| b.split("# routers").next())
        .expect("the ACL part");
    let router = &block[block.find("batv_strip:").expect("the router")..];
    (acl.to_string(), router.to_string())
}

fn exim() -> Option<String> {
    ["/usr/sbin/exim", "/usr/sbin/exim4"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(str::to_string)
}

/// Write an Exim configuration around the README's recipe, with `sock` as BATV_SOCK.
fn config(dir: &Path, sock: &Path) -> std::path::PathBuf {
    let (acl, router) = readme_recipe();
    for d in ["spool", "log"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let conf = format!(
        "primary_hostname = mx.example.org\n\
         domainlist local_domains = example.org\n\
         spool_directory = {spool}\n\
         log_file_path = {log}/%slog\n\
         acl_smtp_rcpt = acl_check_rcpt\n\
         BATV_SOCK = {sock}\n\
         begin acl\n\
         acl_check_rcpt:\n\
         {acl}\n  deny    domains = +local_domains\n          !verify = recipient\n  accept  domains = +local_domains\n  deny    message = 5.7.1 relay not permitted\n\
         begin routers\n\
         {router}\n\
         local_users:\n  driver = accept\n  domains = +local_domains\n  local_parts = alice : bob : postmaster\n  transport = devnull\n\
         begin transports\n\
         devnull:\n  driver = appendfile\n  file = /dev/null\n",
        spool = dir.join("spool").display(),
        log = dir.join("log").display(),
        sock = sock.display(),
    );
    let path = dir.join("exim.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// `exim -bh` with `session` as the client's side: the server's reply codes, in order,
/// one per command after the greeting.
fn session(exim: &str, conf: &Path, lines: &[String]) -> Vec<String> {
    let mut cmd = Command::new(exim);
    cmd.arg("-C").arg(conf).args(["-bh", "192.0.2.1"]);
    let input: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
    let out = run_bounded(cmd, input.as_bytes(), Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Replies, multi-line ones joined: the last line of each is "NNN text".
    let replies: Vec<String> = stdout
        .lines()
        .filter(|l| l.len() >= 4 && l.as_bytes()[..3].iter().all(u8::is_ascii_digit) && l.as_bytes()[3] == b' ')
        .map(str::to_string)
        .collect();
    assert!(
        !replies.is_empty(),
        "exim -bh said nothing\nstdout: {stdout}\nstderr: {}",
        out.stderr
    );
    replies[1..].to_vec()
}

fn forge(tagged: &str) -> String {
    // The first hash character (after `prvs=` and K DDD), changed.
    let mut b = tagged.as_bytes().to_vec();
    b[9] = if b[9].eq_ignore_ascii_case(&b'a') { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

#[test]
fn the_readme_acl_and_router_in_a_real_exim() {
    let Some(exim) = exim() else {
        require("exim (exim4-daemon-light)", false);
        return;
    };
    if !require("root, for exim -C with a private configuration", unsafe { libc::geteuid() } == 0) {
        return;
    }
    let d = Daemon::start("");
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path(), &d.sock);
    let bob = d.sign("bob@example.org");
    let nosuch = d.sign("nosuch@example.org");
    let lines: Vec<String> = [
        "EHLO client.test",
        "MAIL FROM:<>",
        "RCPT TO:<bob@example.org>",
        &format!("RCPT TO:<{bob}>"),
        &format!("RCPT TO:<{}>", forge(&bob)),
        &format!("RCPT TO:<{}>", bob.to_ascii_uppercase()),
        "RCPT TO:<postmaster@example.org>",
        "RSET",
        "MAIL FROM:<someone@remote.test>",
        "RCPT TO:<bob@example.org>",
        &format!("RCPT TO:<{bob}>"),
        &format!("RCPT TO:<{}>", forge(&bob)),
        &format!("RCPT TO:<{nosuch}>"),
        "QUIT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = session(&exim, &conf, &lines);
    let codes: Vec<&str> = r.iter().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        ["250", "250", "550", "250", "550", "250", "250", "250", "250", "250", "250", "550", "550", "221"],
        "replies:\n{}\n--- daemon log ---\n{}",
        r.join("\n"),
        d.log()
    );
    // Exim folds the long text; its last line ends the README's message.
    assert!(r[2].ends_with("(BATV)"), "{}", r[2]);
    // A valid tag on an unknown local part: the router strips it and finds nobody.
    assert!(r[11].contains("unknown user"), "{}", r[11]);
    assert!(r[12].contains("Unrouteable") || r[12].contains("unknown"), "{}", r[12]);
    assert!(
        d.log()
            .contains("exim rcpt=<bob@example.org> verdict=backscatter reason=untagged action=refused"),
        "{}",
        d.log()
    );

    // Issue 13, tag guessing: invalid tags from one client count in every transaction
    // (the strip router answers a guess in ordinary mail too); once max_failed_tags are
    // used up, its tagged recipients are deferred unchecked, even a valid tag.
    let g = Daemon::start("[daemon]\nmax_failed_tags = 2\n");
    let gconf = config(dir.path(), &g.sock);
    let gbob = g.sign("bob@example.org");
    let guesses: Vec<String> = [
        "EHLO client.test".to_string(),
        "MAIL FROM:<someone@remote.test>".to_string(),
        format!("RCPT TO:<{}>", forge(&gbob)),
        format!("RCPT TO:<{}>", forge(&g.sign("alice@example.org"))),
        format!("RCPT TO:<{gbob}>"),
        "RCPT TO:<alice@example.org>".to_string(),
        "QUIT".to_string(),
    ]
    .to_vec();
    let r = session(&exim, &gconf, &guesses);
    let codes: Vec<&str> = r.iter().map(|l| &l[..3]).collect();
    assert_eq!(codes, ["250", "250", "550", "550", "451", "250", "221"], "{r:?}\n{}", g.log());
    assert!(r[4].contains("Too many invalid BATV tags"), "{r:?}");
    assert!(g.log().contains("exim client=192.0.2.1 rcpt=<"), "{}", g.log());

    // The daemon unreachable: bounces are deferred, never accepted unchecked.
    let down = config(dir.path(), &dir.path().join("no-such.sock"));
    let r = session(&exim, &down, &lines[..4]);
    assert_eq!(r[2].get(..3), Some("451"), "{r:?}");
    assert!(r[2].contains("BATV check unavailable"), "{r:?}");
}
