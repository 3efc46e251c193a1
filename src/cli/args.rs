//! The command line (DESIGN §4), as clap definitions. They live in the library so that the
//! man pages under `man/` are generated from them (and checked in a test).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::core::tag::Scheme;

const AFTER_HELP: &str = "\
Exit status (sysexits): 0 ok, 1 invalid tag, 64 usage, 65 bad input, 74 I/O error,
75 temporary failure, 78 configuration error.";

/// Bounce Address Tag Validation: sign envelope senders, refuse backscatter.
#[derive(Debug, Parser)]
#[command(name = "batv", version, long_version = env!("BATV_LONG_VERSION"), about, after_help = AFTER_HELP, max_term_width = 100, disable_help_subcommand = true)]
pub struct Cli {
    /// Configuration file [default: /etc/batv/batv.toml; batv.toml in a source checkout]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Keys directory [default: keys_dir from the config, else /etc/batv/keys; keys/ in a
    /// source checkout]
    #[arg(long, global = true, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// Evaluate as of this time: RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD (UTC)
    #[arg(long, global = true, value_name = "TIME")]
    pub now: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print tagged addresses
    Sign(SignArgs),
    /// Check tags: print the original address of each valid one
    Verify(VerifyArgs),
    /// Print addresses without their tag (no check)
    Strip(StripArgs),
    /// Is a message (on stdin) backscatter? For procmail, maildrop, Sieve and Postfix pipe
    #[command(long_about = CHECK_ABOUT, after_long_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Manage the signing keys
    #[command(long_about = KEYS_ABOUT, disable_help_subcommand = true)]
    Keys(KeysArgs),
    /// Validate or print the configuration
    #[command(subcommand, disable_help_subcommand = true)]
    Config(ConfigCommand),
    /// The sendmail wrapper: sign the envelope sender, then run the real sendmail
    #[command(long_about = SENDMAIL_ABOUT, after_long_help = SENDMAIL_INSTALL, disable_help_flag = true)]
    Sendmail(SendmailArgs),
    /// The SMTP proxy: refuse backscatter during the SMTP session, strip valid tags
    #[command(long_about = PROXY_ABOUT, after_long_help = PROXY_DEPLOY)]
    Proxy(ProxyArgs),
    /// Postfix socketmap (sign, strip) and policy service, and Exim ${readsocket}
    #[command(long_about = DAEMON_ABOUT, after_long_help = DAEMON_DEPLOY)]
    Daemon(DaemonArgs),
    /// A milter: sign, verify and strip inside Sendmail, Postfix or any milter MTA
    #[command(long_about = MILTER_ABOUT, after_long_help = MILTER_DEPLOY)]
    Milter(MilterArgs),
}

const MILTER_ABOUT: &str = "\
A milter (protocol version 6) doing BATV's three jobs inside the MTA's own SMTP session.

sign: mail from milter.internal_networks, from an authenticated client ({auth_authen}) or
submitted locally (Postfix non_smtpd_milters, no client address) gets its envelope
sender tagged at end of message (SMFIR_CHGFROM, ESMTP parameters kept). Mail from
anywhere else is never signed.

verify: in a null-sender transaction each recipient gets the proxy's verdict, one per
transaction: 550 5.7.1 for backscatter (reject_at = \"rcpt\"), or with reject_at =
\"data\" a differing recipient gets 452 4.5.3 and backscatter is refused at DATA.
Exemptions, trusted_relays and max_failed_tags (421 4.7.0) as in the proxy. With enforce
= false (monitor) nothing is refused and each bounce gets one X-BATV: header.

strip: a recipient with an authentic tag (valid or expired) is replaced by its original
address at end of message (SMFIR_DELRCPT, then SMFIR_ADDRCPT_PAR with its parameters).

milter.data_check = true adds the proxy's DATA check: mail from a non-null sender to a
protected, untagged recipient is inspected at end of message (header and first
data_check_kib KiB); a bounce gets an X-BATV: header (forged ones removed), and with
data_check_refuse backscatter is refused with 550 5.7.1.

A malformed packet ends that connection only; the MTA's default action (Postfix
milter_default_action) decides about the mail in progress. Runs as proxy and daemon do:
sockets from systemd or milter.listen, root dropping to user, SIGHUP reloads, SIGUSR1 and
milter.metrics_listen counters.";

const MILTER_DEPLOY: &str = "\
Postfix (socket milter.listen = [\"unix:/var/spool/postfix/batv/milter\"]):
  main.cf:
    smtpd_milters = unix:batv/milter
    non_smtpd_milters = unix:batv/milter
    milter_protocol = 6
    milter_default_action = tempfail
Sendmail (.mc):
  INPUT_MAIL_FILTER(`batv', `S=local:/var/run/batv/milter, F=T, T=S:30s;R:30s;E:1m')";

#[derive(Debug, Args)]
pub struct MilterArgs {
    /// Listen here instead of milter.listen: unix:/PATH or inet:127.0.0.1:PORT (repeatable)
    #[arg(long, value_name = "SPEC")]
    pub listen: Vec<crate::core::config::Listen>,
}

const PROXY_ABOUT: &str = "\
An ESMTP proxy that refuses backscatter in the SMTP session. Every command is relayed to
proxy.forward and every reply comes from there, except the proxy's own decisions. In a
bounce (MAIL FROM:<>) the first recipient the downstream accepts sets the transaction's
verdict: bounce-ok (a valid tag, or exempt: <Postmaster>, postmaster@ and abuse@, SRS,
local parts too long to sign, addresses outside protected_domains, trusted_relays) or
backscatter. A later recipient with the other verdict gets 452 4.5.3 (the client sends it
again in a new transaction); a backscatter transaction is refused at DATA with 550 5.7.1
(at BDAT after the chunk), and the downstream gets RSET. reject_at = \"rcpt\" refuses
backscatter recipients at once. Authentic tags (valid or expired) are stripped for every
sender; when the downstream offers DSN the tagged address becomes the ORCPT.

Fail closed: addresses are judged as the MTA resolves them (comments, white space and
trailing dots removed, every spelling of the null sender such as < > or <()> is null),
and a bounce recipient that cannot be read so gets 501 5.1.3, never relayed unjudged.
Only verify_schemes verify. Invalid tags count per client in every transaction; once
max_failed_tags are used up within an hour, tagged recipients get 421 4.7.0 unchecked.

The final reply to a message is always the downstream's: if the downstream is unreachable,
too slow or hangs up, the client gets 421 4.4.2 and keeps the message. Limits:
max_connections, max_recipients (452 4.5.3), max_errors and max_failed_tags (421 4.7.0),
512-octet commands (AUTH 12 288), command_timeout_ms, data_timeout_ms.

proxy.enforce = false, or a future enforce_after date, refuses nothing and changes nothing
in the dialogue, not even a 452 (monitor mode): it logs and adds one X-BATV: header to
each bounce, with each verdict's count when they differ. Sign for at least one tag lifetime before
enforcing. One key=value line per decision goes to stderr. SIGUSR1 prints counters per
verdict and per key id (also served as OpenMetrics text on metrics_listen). SIGHUP reloads
configuration, certificate and keys without touching running sessions (the keys also when
their directory changes; each part all or nothing, a bad new file keeps the old one; one
closing line says what was taken); SIGTERM stops accepting and lets sessions finish. The
proxy never creates a key: without one it exits 78.

Running: sockets passed by systemd (LISTEN_FDS, a .socket unit; one named \"metrics\"
serves the counters) replace proxy.listen. Started as root, it binds first and then runs
as `user` (and `group`) from the configuration; as root without `user` it says so in the
log. Log lines start with an RFC 3339 time, except when stderr is journald's.

Optional DATA check (data_check = true), for backscatter that does not use the null sender
(broken MTAs, auto-responders, challenge-response systems): mail from any other sender to
a protected, untagged recipient is held for its first data_check_kib KiB (64; at most
5 s) before the downstream sees it, and judged as batv check would. A bounce gets an
X-BATV: header (ones in the inspected header are removed); with data_check_refuse = true,
backscatter is refused with 550 5.7.1 instead, and the downstream gets RSET. Auto-replies
are only marked.";

const PROXY_DEPLOY: &str = "\
Deployment:
  before-queue (recommended): Postfix does TLS, postscreen and policy and hands sessions
  to the proxy, which relays to a second smtpd. In master.cf:
    smtp inet n - y - 20 smtpd -o smtpd_proxy_filter=127.0.0.1:10025
      -o receive_override_options=no_unknown_recipient_checks
    127.0.0.1:10026 inet n - n - - smtpd -o smtpd_authorized_xforward_hosts=127.0.0.0/8
      -o smtpd_recipient_restrictions=reject_unlisted_recipient,permit_mynetworks,reject
  with proxy.listen = 127.0.0.1:10025 and proxy.forward = 127.0.0.1:10026: recipients are
  validated on the second smtpd, where the tag is already stripped (the README has the
  whole recipe). Do not set
  smtpd_proxy_options = speed_adjust: it needs all recipients accepted or none, but the
  proxy answers a differing recipient with 452.

  front: the proxy on port 25, the MTA on a loopback port. Each connection first hands the
  client's address to the MTA, by XCLIENT (front_protocol = \"xclient\"; Postfix:
  smtpd_authorized_xclient_hosts = 127.0.0.1) or a PROXY v2 header (\"proxy-v2\"; Postfix:
  smtpd_upstream_proxy_protocol = haproxy), and checks the MTA took it; if not, the client
  gets 421 4.3.0, because every client would otherwise look local (an open relay). The
  proxy ends STARTTLS itself with proxy.tls_cert and proxy.tls_key.

  gateway: the proxy on port 25 in front of an MTA that takes neither XCLIENT nor PROXY
  (qmail, Exchange, Domino, Exim, LISTSERV, appliances). The MTA sees only the proxy,
  relays for it and must be reachable by it alone; the proxy is the relay control: from
  clients outside proxy.trusted_networks that have not authenticated, a recipient outside
  proxy.relay_domains (default protected_domains), and any %, !, source-route,
  quoted-@ or trailing-dot form, gets 554 5.7.1. With proxy.valid_recipients (a file of
  addresses and @domain catch-alls, reloaded when it changes) unknown users get 550 5.1.1
  at RCPT, so the MTA never accepts mail it would bounce. AUTH is relayed inside TLS only.
  The proxy adds a Received: field naming the client.

Rollout: run with enforce = false for at least one tag lifetime after signing began,
check the verdicts in the log and the X-BATV: headers, then set enforce = true and send
SIGHUP.";

const DAEMON_ABOUT: &str = "\
BATV inside Postfix, without a proxy hop: one server for Postfix's socketmap tables and
its policy delegation protocol, and for Exim's ${readsocket}. Each connection speaks one
of them, told apart by its first bytes.

socketmap (socketmap_table(5)): the map `sign` answers OK with the tagged address for an
envelope sender of sign_domains, and `strip` answers OK with the original address for a
recipient with an authentic tag (valid or expired). Everything else answers NOTFOUND:
foreign and invalid addresses, the null sender, tagged and SRS addresses, partial keys.
Never PERM (Postfix would defer the mail) except for a map name it should not ask for.

policy (SMTPD_POLICY_README): at protocol_state=RCPT with an empty sender, a protected
recipient without a valid tag gets action=550 5.7.1, anything else DUNNO; exemptions as
in the proxy (<Postmaster>, postmaster@ and abuse@, SRS, local parts too long to sign,
trusted_relays as client_address). The recipient is judged as Postfix will resolve it
(a trailing dot removed); one that cannot be read as an address gets 501 5.1.3. With
daemon.reject_at = \"data\" the first bounce recipient of a transaction (Postfix's
instance attribute) sets its verdict, a differing one gets 452 4.5.3, and backscatter is
refused at protocol_state=DATA. Invalid tags count per client_address in every
transaction; once daemon.max_failed_tags are used up within an hour, a tagged recipient
gets action=421 4.7.0 unchecked and Postfix hangs up. With enforce = false (monitor)
nothing is refused and no 452 is given: the message gets one `X-BATV: backscatter; ...;
mode=monitor` header (action=PREPEND) and the log says what would have happened.

Exim: one line, `sign ADDRESS`, `strip ADDRESS` or `verify ADDRESS [CLIENT]`, then end of
request (newline or half-close). Answers one line and closes: OK VALUE or NOTFOUND for
sign and strip; for verify (of a bounce's recipient) OK ORIGINAL (a valid tag), DUNNO
REASON (not ours to refuse), or REJECT REASON (backscatter: untagged, expired,
bad-signature, ...; DUNNO monitor REASON when not enforcing). With CLIENT (an IP address)
invalid tags count against it, and once max_failed_tags are used up the answer is DEFER
too-many-invalid-tags.

Keys and configuration reload on SIGHUP, and the keys also when their directory changes
(each part all or nothing, one closing line); SIGUSR1 logs the counters, which
daemon.metrics_listen also serves over HTTP; SIGTERM stops. The daemon never creates a key
(exit 78).

Running: sockets passed by systemd (LISTEN_FDS, a .socket unit; one named \"metrics\"
serves the counters) replace daemon.listen. Started as root, it binds first and then runs
as `user` (and `group`) from the configuration, reading the keys through key_group on
reloads; as root without `user` it says so in the log. Log lines start with an RFC 3339
time, except when stderr is journald's.";

const DAEMON_DEPLOY: &str = "\
Postfix (socket daemon.listen = [\"unix:/var/spool/postfix/batv/batv.sock\"]; smtpd and
cleanup resolve batv/batv.sock from the queue directory, where chrooted ones look too
(the tests run Postfix unchrooted); create the directory with
install -d -o batv -g postfix -m 0750 /var/spool/postfix/batv):

  main.cf:
    recipient_canonical_maps = socketmap:unix:batv/batv.sock:strip
    recipient_canonical_classes = envelope_recipient
    smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination,
        check_policy_service unix:batv/batv.sock
  master.cf: signing only in a cleanup of its own, for outbound mail:
    submission inet n - y - - smtpd
      -o cleanup_service_name=signcleanup
    pickup    unix n - y 60 1 pickup
      -o cleanup_service_name=signcleanup
    signcleanup unix n - y - 0 cleanup
      -o sender_canonical_maps=socketmap:unix:batv/batv.sock:sign
      -o sender_canonical_classes=envelope_sender

Never sign in the shared cleanup: mail arriving from outside with our domain as sender
would leave signed in its bounces and let the backscatter in. check_policy_service goes
after reject_unauth_destination (never an open relay by DUNNO). The strip map's answer
also makes smtpd count a tagged recipient as known to reject_unlisted_recipient; only an
authentic tag gets one, so made-up tags stay unknown. Postfix looks up the strip key
lower-cased: use the native scheme (case-insensitive) with Postfix, or prvs only for
lower-case local parts. Probe with postmap -q ADDRESS socketmap:unix:PATH:sign.";

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Listen here instead of daemon.listen: unix:/PATH or inet:127.0.0.1:PORT (repeatable)
    #[arg(long, value_name = "SPEC")]
    pub listen: Vec<crate::core::config::Listen>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Listen here instead of proxy.listen
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Forward to this MTA instead of proxy.forward
    #[arg(long, value_name = "ADDR:PORT")]
    pub forward: Option<std::net::SocketAddr>,
}

const SENDMAIL_ABOUT: &str = "\
A drop-in for /usr/sbin/sendmail: signs the envelope sender and runs the real sendmail
(sendmail.path) with the same arguments, only the sender's value changed. Also runs this
way when the binary is invoked as `sendmail` (a symlink or a copy); then only the default
configuration file is read and --config, --keys and --now do not exist.

The sender is the last -f or -r; without one, the login name at sendmail.default_domain,
passed on as -f. Not signed: the null sender, senders outside sign_domains, tagged and SRS
senders, mail to exempt_recipients (from the arguments, or with -t from To, Cc and Bcc),
and the modes -bp, -bi, -bv, -q and -I (also as mailq and newaliases), which are passed on
untouched. Without -t exemptions, the real sendmail is executed in place of batv and reads
the message itself. With -bs, batv relays the SMTP session to `sendmail.path -bs` and signs
MAIL FROM there (exempt_recipients does not apply to -bs sessions).

If the keys cannot be read, on_error = \"pass\" sends unsigned with a warning on stderr and
in syslog (facility mail); \"tempfail\" exits 75. The exit status is the real sendmail's. A
sendmail.path that leads back to batv is refused (exit 78).";

const SENDMAIL_INSTALL: &str = "\
INSTALLING. cron, PHP and mailx call /usr/sbin/sendmail by path, so divert the real one
and put batv in its place (package upgrades then install the MTA's under the new name):

    dpkg-divert --local --rename --divert /usr/sbin/sendmail.distrib --add /usr/sbin/sendmail
    install -m 0755 target/release/batv /usr/local/sbin/batv
    ln -s /usr/local/sbin/batv /usr/sbin/sendmail

and set [sendmail] path = \"/usr/sbin/sendmail.distrib\" in /etc/batv/batv.toml (with
Postfix that is Postfix's own sendmail). mailq and newaliases reach batv under their own
names and are passed through. For PHP alone, php.ini can name the wrapper directly:
sendmail_path = \"/usr/local/sbin/batv sendmail -t -i\".

NON-ROOT CALLERS. Key files are 0600 root. Set key_group = \"batv\" (files become 0640
root:batv) and install a set-group-id copy that only this use may have:

    groupadd --system batv
    install -o root -g batv -m 2755 target/release/batv /usr/local/libexec/batv/sendmail
    ln -sf /usr/local/libexec/batv/sendmail /usr/sbin/sendmail

A set-id batv runs only as sendmail, mailq or newaliases (every other command is refused),
reads only /etc/batv/batv.toml (no --config, --keys, --now, no environment variable), drops
the group for good once the keys are read, and runs the real sendmail with a cleared
environment (PATH=/usr/sbin:/usr/bin:/sbin:/bin; TZ, LANG, LC_ALL, LC_CTYPE kept). Keep the
config file root-owned.";

#[derive(Debug, Args)]
pub struct SendmailArgs {
    /// sendmail options and recipients, passed on (e.g. -t -i -f alice@example.com)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    pub args: Vec<std::ffi::OsString>,
}

/// Sign each ADDRESS with the active key and print it. Addresses that must not be signed
/// (null sender, already tagged, SRS, tagged local part over 64 octets) are printed
/// unchanged, with the reason on stderr. With no ADDRESS, read one per line from stdin.
/// If the keys directory exists but holds no key, a first key is created (with a notice
/// on stderr).
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Tag scheme [default: scheme from the config, else native]
    #[arg(long, value_name = "SCHEME")]
    pub scheme: Option<Scheme>,
    /// Where the tag goes: prefix (prvs=...=alice@example.com) or subaddress
    /// (alice+prvs=...@example.com, with subaddress_delimiter) [default: tag_syntax from
    /// the config, else prefix]
    #[arg(long, value_name = "SYNTAX")]
    pub syntax: Option<crate::core::config::TagSyntax>,
    /// Sign with this key id (0-9) instead of the active key
    #[arg(long, value_name = "ID")]
    pub key: Option<String>,
    /// Addresses to sign (local@domain; a quoted local part is allowed)
    #[arg(value_name = "ADDRESS")]
    pub addresses: Vec<String>,
}

/// Verify each ADDRESS: print its original (untagged) address on stdout if the tag is
/// valid; otherwise print the reason (untagged, malformed, unknown-key, bad-signature,
/// expired) on stderr. Exit 0 if all are valid, 1 if not, 65 if one is not an address at
/// all. With no ADDRESS, read one per line from stdin.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print one JSON object per address on stdout instead
    #[arg(long)]
    pub json: bool,
    /// Addresses to verify
    #[arg(value_name = "ADDRESS")]
    pub addresses: Vec<String>,
}

const CHECK_ABOUT: &str = "\
Read a message on stdin and decide whether it is backscatter. The message is a delivery
report (RFC 3464), a plain-text bounce (qmail, Sendmail, Exchange, providers), an
auto-reply (RFC 3834, vacation), a disposition notification or feedback report (kept apart:
not bounces), or not a bounce. For a bounce, the recipient (--recipient, else the topmost
X-Original-To, Delivered-To or Envelope-to header: the delivering MTA's own) and the sender
of the returned message (its Return-Path, DSN fields or quoted headers) are checked. A tag
vouches only for its own address: the recipient's valid tag, or a valid tag on the
returned sender whose address is the recipient's, makes it a real bounce; a valid tag for
another address does not (reason tag-of-another-address: anyone who had mail from us can
quote one), and without a recipient it vouches for nobody (unknown, no-recipient). A bounce
to a protected address with no valid tag is backscatter. Auto-replies
without a valid tag are not refused (vacation programs answer From:, which is never
tagged); they are reported as unknown.

Prints `verdict=... reason=... kind=... original_sender=...` on stdout and exits 0 (deliver:
not a bounce, a valid tag, or unknown), 1 (backscatter) or 75 (keys unreadable: try again).
With --add-header it always exits 0 and writes the message back on stdout with an X-BATV:
header in front: use that where a failure exit would make the MTA bounce (Postfix pipe),
because a bounce of backscatter is more backscatter. Malformed messages are never an
error: they are not bounces, and are delivered.";

const CHECK_EXAMPLES: &str = "\
Examples (mark with --add-header, then sort on the header: exit 75 must not look like 1):
  procmail (~/.procmailrc):
    :0 fw
    | batv check --add-header
    :0
    * ^X-BATV: backscatter
    .Junk.Backscatter/
  maildrop (~/.mailfilter):
    xfilter \"batv check --add-header\"
    if (/^X-BATV: backscatter/)
      to \"$HOME/Maildir/.Junk.Backscatter/\"
  Sieve (Dovecot Pigeonhole, sieve_extprograms with sieve_filter_bin_dir holding a
  batv-check script that runs batv check --add-header):
    require [\"vnd.dovecot.filter\", \"fileinto\"];
    filter \"batv-check\";
    if header :matches \"X-BATV\" \"backscatter;*\" { fileinto \"Junk\"; }
  Postfix: never branch on the exit status of a pipe(8) command (a failure makes Postfix
  bounce, and a bounce of backscatter is more backscatter). Use batv proxy with
  data_check = true (before-queue), or check --add-header in a filter that hands the
  message back to Postfix, and sort on the X-BATV: header.";

/// Print each ADDRESS without its tag, without checking the tag. Untagged addresses are
/// printed unchanged. With no ADDRESS, read one per line from stdin.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The message's envelope sender (\"\" for the null sender), if known
    #[arg(long, value_name = "ADDRESS")]
    pub sender: Option<String>,
    /// The message's envelope recipient [default: the topmost X-Original-To, Delivered-To or Envelope-to]
    #[arg(long, value_name = "ADDRESS")]
    pub recipient: Option<String>,
    /// Write the message back with an X-BATV: header in front; always exit 0
    #[arg(long)]
    pub add_header: bool,
}

#[derive(Debug, Args)]
pub struct StripArgs {
    /// Addresses to strip
    #[arg(value_name = "ADDRESS")]
    pub addresses: Vec<String>,
}

const KEYS_ABOUT: &str = "\
Create, rotate, activate and retire keys. A key has an id 0-9 (the tag's K digit), a secret
and a state: standby (verifies, does not sign), active (the one signing key) or retired
(verifies until its last tag can have expired, then prunable after 32 days). An id is never
reused while it is listed.

The keys directory holds manifest.toml (ids, states, times, fingerprints; no secrets) and
one key-N.secret file per key (mode 0600, or 0640 with key_group). Every change is written
to a temporary file and renamed into place, so a reader sees the old key set or the new one,
never zero or two active keys. Secrets are 16 to 64 bytes. Whatever loads or changes keys
refuses (exit 78) a key file that others, or a group other than key_group, may read, one
writable by its group, and a keys directory writable by its group or others; both must
belong to root or to the user batv runs as.

One host: `batv keys rotate`. A fleet sharing keys, in two phases: `batv keys add --standby`
(or `import`) on every host, then `batv keys activate ID` on every host, so no host ever sees
a tag it cannot check. Prune retired keys with `batv keys prune`.

With [domain_keys] in the configuration, `batv keys --domain DOMAIN ...` does the same to
that domain's store (a domain listed there, named as there).";

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Manage the [domain_keys] store of this domain instead of keys_dir
    #[arg(long, value_name = "DOMAIN", global = true)]
    pub domain: Option<String>,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the keys directory and a first active key, unless keys exist
    Init,
    /// List keys: id, state, times, fingerprint (never the secret)
    ///
    /// The fingerprint is the first 8 bytes of HMAC-SHA256(secret, "batv key fingerprint")
    /// in hex: equal on every host for the same secret, and no plain hash of the secret
    /// that guesses could be checked against.
    List,
    /// Add a new key and make it active (the previous active key is retired)
    Add {
        /// Add it in standby instead: it verifies but does not sign until activated
        #[arg(long)]
        standby: bool,
    },
    /// Make key ID the signing key; the previously active key is retired
    Activate {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Add a new key and activate it in one step (single host)
    Rotate,
    /// Retire a standby key (to retire the active key, activate another)
    Retire {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Delete keys retired more than 32 days ago
    Prune,
    /// Import a secret (16-64 bytes, one trailing newline stripped unless --raw) as standby key ID
    ///
    /// A shorter or longer secret is refused (exit 65): a short one could be guessed from
    /// one signed address.
    #[command(group = clap::ArgGroup::new("source").required(true))]
    Import {
        #[arg(value_name = "ID")]
        id: String,
        /// Read the secret from this file
        #[arg(long, value_name = "FILE", group = "source")]
        secret_file: Option<PathBuf>,
        /// Read the secret from standard input
        #[arg(long, group = "source")]
        secret_stdin: bool,
        /// Take the bytes exactly as they are, a trailing newline included (batv-tools
        /// keys are 64 raw bytes)
        #[arg(long)]
        raw: bool,
    },
    /// Show one key; the secret only with --secret
    Show {
        #[arg(value_name = "ID")]
        id: String,
        /// Also print the secret
        #[arg(long)]
        secret: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration file (exit 78 naming file, line and key if it is wrong)
    Check,
    /// Print the effective configuration (file values over defaults) as TOML
    Show,
}

/// The clap command tree (for man pages and completions).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
