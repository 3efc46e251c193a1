//! The README's delivery-time recipes, run by the real procmail and maildrop: `batv check
//! --add-header` as a filter, then sorting on the `X-BATV:` header. Backscatter lands in
//! the junk folder; genuine bounces, ordinary mail, and mail checked while the keys cannot
//! be read (exit 75 without --add-header) land in the inbox, unchanged behind the header.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{require, run_bounded};

const BIN: &str = env!("CARGO_BIN_EXE_batv");

fn generated(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/bounces/generated")
            .join(name),
    )
    .unwrap()
}

/// A mail home: a key store holding Exim's test secret (the corpus's tags) and two maildirs.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        common::exim_secret_store(d);
        for m in ["Maildir", "Maildir/.Junk.Backscatter"] {
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(d.join(m).join(sub)).unwrap();
            }
        }
        Home { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The batv command line the recipes run (the corpus's day; these keys).
    fn check(&self, keys: &str) -> String {
        format!(
            "{BIN} --config {} --keys {} --now 2026-11-23 check --add-header",
            self.path("batv.toml").display(),
            self.path(keys).display()
        )
    }

    /// The messages delivered to a maildir so far.
    fn delivered(&self, maildir: &str) -> Vec<Vec<u8>> {
        let new = self.path(maildir).join("new");
        let mut files: Vec<PathBuf> = std::fs::read_dir(new).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    /// Run a filter program on `message`, within 30 s; it must succeed.
    fn deliver(&self, program: &str, args: &[&str], message: &[u8]) {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(self.dir.path());
        let o = run_bounded(cmd, message, Duration::from_secs(30));
        assert_eq!(o.code, 0, "{program}: {}", o.stderr);
    }
}

/// Deliver the four cases with `run(home, keys_dir, message)` and check where they landed.
fn four_cases(appends_newline: bool, run: impl Fn(&Home, &str, &[u8])) {
    let home = Home::new();
    let backscatter = generated("exim-untagged-sender.eml");
    // As Postfix's local(8) hands it over: Delivered-To names the (stripped) recipient.
    let genuine = [&b"Delivered-To: user@example.org\r\n"[..], &generated("exim-unknown-user.eml")].concat();
    let ordinary =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ordinary/01-re-undelivered-mail-discussion.eml")).unwrap();
    run(&home, "keys", &backscatter);
    run(&home, "keys", &genuine);
    run(&home, "keys", &ordinary);
    // Keys unreadable: a bounce that cannot be judged is delivered (exit 75 would have
    // looked like a verdict to a recipe branching on the status).
    run(&home, "no-such-keys", &backscatter);

    let junk = home.delivered("Maildir/.Junk.Backscatter");
    let inbox = home.delivered("Maildir");
    // The message after our header, as text (procmail ends a message with a blank line).
    let behind = |m: &[u8], header: &str| {
        let h = header.as_bytes();
        assert!(m.starts_with(h), "{:?}", String::from_utf8_lossy(&m[..m.len().min(100)]));
        let rest = String::from_utf8_lossy(&m[h.len()..]).into_owned();
        match rest.strip_suffix("\r\n\n") {
            Some(r) if appends_newline => r.to_string() + "\r\n",
            _ => rest,
        }
    };
    let text = |m: &[u8]| String::from_utf8_lossy(m).into_owned();
    assert_eq!(junk.len(), 1, "one message is backscatter");
    assert_eq!(
        behind(&junk[0], "X-BATV: backscatter; reason=untagged; kind=delivery-report\r\n"),
        text(&backscatter)
    );
    assert_eq!(inbox.len(), 3);
    let mut found = [false; 3];
    for m in &inbox {
        if m.starts_with(b"X-BATV: bounce-with-valid-tag; reason=valid; kind=delivery-report\r\n") {
            assert_eq!(
                behind(m, "X-BATV: bounce-with-valid-tag; reason=valid; kind=delivery-report\r\n"),
                text(&genuine)
            );
            found[0] = true;
        } else if m.starts_with(b"X-BATV: not-a-bounce") {
            assert_eq!(
                behind(m, "X-BATV: not-a-bounce; reason=not-a-bounce; kind=not-a-bounce\r\n"),
                text(&ordinary)
            );
            found[1] = true;
        } else {
            assert_eq!(
                behind(m, "X-BATV: unknown; reason=keys-unavailable; kind=delivery-report\r\n"),
                text(&backscatter)
            );
            found[2] = true;
        }
    }
    assert_eq!(found, [true; 3], "genuine, ordinary and unjudged mail in the inbox");
}

#[test]
fn procmail_recipe_files_backscatter_and_delivers_the_rest() {
    if !require("procmail", Path::new("/usr/bin/procmail").exists()) {
        return;
    }
    four_cases(true, |home, keys, message| {
        let rc = home.path("procmailrc");
        let maildir = home.path("Maildir");
        std::fs::write(
            &rc,
            format!(
                "MAILDIR={maildir}\nDEFAULT={maildir}/\nSHELL=/bin/sh\nLOGFILE={log}\n\
                 :0 fw\n| {check}\n:0\n* ^X-BATV: backscatter\n.Junk.Backscatter/\n",
                maildir = maildir.display(),
                log = home.path("procmail.log").display(),
                check = home.check(keys)
            ),
        )
        .unwrap();
        home.deliver("/usr/bin/procmail", &["-m", rc.to_str().unwrap()], message);
    });
}

#[test]
fn maildrop_recipe_files_backscatter_and_delivers_the_rest() {
    if !require("maildrop", Path::new("/usr/bin/maildrop").exists()) {
        return;
    }
    four_cases(false, |home, keys, message| {
        let filter = home.path("mailfilter");
        let maildir = home.path("Maildir");
        std::fs::write(
            &filter,
            format!(
                "DEFAULT=\"{maildir}/\"\nxfilter \"{check}\"\nif (/^X-BATV: backscatter/)\n  to \"{maildir}/.Junk.Backscatter/\"\n",
                maildir = maildir.display(),
                check = home.check(keys)
            ),
        )
        .unwrap();
        // maildrop refuses a filter file others may read.
        std::fs::set_permissions(&filter, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        home.deliver("/usr/bin/maildrop", &[filter.to_str().unwrap()], message);
    });
}
