//! SMTP smuggling, differentially: the same client byte streams through `batv proxy` into
//! real MTAs — front mode into a whole Postfix, before-queue mode into a listening Exim —
//! both relaying example.com to the aiosmtpd sink. Each case is a first transaction whose
//! message holds a tricky line ending (`.` CR CR LF, bare LF dots, bare-CR runs, `.` CR X,
//! NUL...), followed, in the same write, by what would be a second transaction
//! `MAIL FROM:<>` to the untagged, protected carol@example.com if the MTA saw the message
//! end early. Checked against tests/common/data.rs's model of what batv relays:
//! - the client gets exactly one final reply per command the model finds in its stream,
//!   each of the expected kind (in step: nothing runs in the MTA unseen);
//! - the MTA took as many messages as the client got 250s at the end of data, and the sink
//!   got exactly one per case, from the right sender to bob@example.com only, its body as
//!   batv normalised it; nothing ever reached carol.
//!
//! The first transaction is a bounce to a valid tag (`batv sign`) or a message from a
//! normal sender; the latter is held for the DATA check (`data_check_kib = 1`), with the
//! tricky ending placed around the 1024th octet, where the hold pauses the scanner.
//! Loopback only; every wait has a deadline.

mod common;

use common::exim::PrivateExim;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::data::{canonical, postfix_end, unstuffed};
use common::postfix::{can_run_postfix, free_port, Postfix};
use common::proxy::{postfix_root, Proxy, TODAY};
use common::{python_with_aiosmtpd, require, Sink};

const BOB: &str = "bob@example.com";
/// Protected and untagged: a bounce to carol is backscatter.
const CAROL: &str = "carol@example.com";
const SENDER: &str = "alice@remote.example";
/// A whole session, from connect to close.
const SESSION: Duration = Duration::from_secs(40);
/// The proxy's timeouts: generous, as the machine may be busy.
const PROXY: &str = "command_timeout_ms = 20000\ndata_timeout_ms = 20000\ndata_check = true\ndata_check_kib = 1\n";
/// The sink outlives every session and wait of a test.
const SINK_LIFETIME: u32 = 600;
/// Where the DATA check's hold pauses the scanner (data_check_kib = 1).
const HOLD: usize = 1024;

/// What follows "Hello" in the first message. The first ones end the message for every
/// reader of the raw stream that follows Postfix; the others must not end it anywhere.
const TRICKY: [&[u8]; 25] = [
    b"\r\n.\r\r\n",
    b"\r\n.\r\r\r\n",
    b"\n.\n",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r\n.\r\n",
    b"\r\r\n.\r\r\n",
    b"\r\n.\r\n\r\n",
    b"\r.\r\n",
    b"\r\r.\r\n",
    b"\r\n\r\r.\r\n",
    b"\r\n\r.\r\n",
    b"\n\r.\r\n",
    b"\r\n.\rMAIL FROM:<>\r\n",
    b"\r\n.\r.\r\n",
    b"\rA\r\rB\r\r\rC\r\n",
    b"\r\n..\r\n",
    b"\r\n..\r\r\n",
    b"\r\n.x\r\n",
    b".\r\r\n",
    b"\r\n\0.\r\n",
    b"\r\n.\0\r\n",
    b"\r\nNUL \0 in a line\r\n",
    b"\r\n\xe9t\xe9 in 8 bits\r\n",
    b"\r\n.\r",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// `MAIL FROM:<>` to bob's valid tag.
    Bounce,
    /// From a normal sender to bob, held for the DATA check.
    Plain,
}

struct Case {
    id: usize,
    first: First,
    tricky: &'static [u8],
    /// Everything the client sends after the 354.
    data: Vec<u8>,
}

/// The second transaction, in three spellings of its line endings. Its message has no
/// header: Postfix hangs up on a header field sent as a command, which would end the
/// comparison early.
fn smuggled(id: usize) -> Vec<u8> {
    let lines = [
        "MAIL FROM:<>".to_string(),
        format!("RCPT TO:<{CAROL}>"),
        "DATA".into(),
        format!("Smuggled {id}"),
        String::new(),
        "SMUGGLED".into(),
        ".".into(),
    ];
    let eol = ["\r\n", "\n", "\r\r\n"][id % 3];
    lines.iter().map(|l| format!("{l}{eol}")).collect::<String>().into_bytes()
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for first in [First::Bounce, First::Plain] {
        for tricky in TRICKY {
            let id = v.len();
            let mut data = format!("Subject: smuggling case {id}\r\n\r\n").into_bytes();
            if first == First::Plain {
                // Filler lines, so that the tricky octets start up to 4 octets before the
                // hold's end.
                let target = HOLD - id % 5 - "Hello".len();
                while target - data.len() > 74 {
                    data.extend_from_slice(&[b'F'; 70]);
                    data.extend_from_slice(b"\r\n");
                }
                let n = target - data.len() - 2;
                data.extend(std::iter::repeat_n(b'G', n));
                data.extend_from_slice(b"\r\n");
            }
            data.extend_from_slice(b"Hello");
            data.extend_from_slice(tricky);
            data.extend_from_slice(&smuggled(id));
            data.extend_from_slice(b"QUIT\r\n");
            v.push(Case { id, first, tricky, data });
        }
    }
    v
}

/// A reply the client should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Code(u16),
    /// Any 5xx (the MTAs word unknown commands differently).
    Refusal,
}

impl Want {
    fn accepts(self, code: u16) -> bool {
        match self {
            Want::Code(c) => c == code,
            Want::Refusal => (500..600).contains(&code),
        }
    }
}

/// The model's reading of the client's stream: the replies due, one per command (the
/// greeting, EHLO, MAIL, RCPT, DATA's 354, the end of the message, then one per line after
/// it), and the first message's octets as batv relays them.
fn expected(case: &Case) -> (Vec<Want>, Vec<u8>) {
    let end = postfix_end(&case.data).expect("every case's stream holds an end");
    let (relayed, model_end) = canonical(&case.data);
    assert_eq!(model_end, Some(end), "case {}: the model's end is Postfix's", case.id);
    let mut want = vec![
        Want::Code(220),
        Want::Code(250),
        Want::Code(250),
        Want::Code(250),
        Want::Code(354),
        Want::Code(250),
    ];
    for line in case.data[end..].split_inclusive(|&b| b == b'\n') {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = &content[..content.len() - content.iter().rev().take_while(|&&b| b == b'\r').count()];
        want.push(if content.contains(&b'\r') {
            // batv's own refusal of a bare CR in a command.
            Want::Code(500)
        } else if content == b"MAIL FROM:<>" || content == format!("RCPT TO:<{CAROL}>").as_bytes() {
            Want::Code(250)
        } else if content == b"DATA" {
            // A bounce to carol: backscatter, refused by batv.
            Want::Code(550)
        } else if content == b"QUIT" {
            Want::Code(221)
        } else {
            Want::Refusal
        });
    }
    (want, relayed)
}

/// A reply as the client got it.
#[derive(Debug)]
struct Got {
    code: u16,
    text: String,
}

/// Read one reply before `deadline`; `None` at end of stream (or on a timeout).
fn read_reply(r: &mut BufReader<TcpStream>, deadline: Instant) -> Option<Got> {
    let mut text = String::new();
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        r.get_ref().set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        text.push_str(&String::from_utf8_lossy(&line));
        if line.len() < 4 || line[3] != b'-' {
            let code = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Some(Got { code, text });
        }
    }
}

/// One session: the envelope and DATA in one write (RFC 2920), the rest in one write after
/// the 354, then every reply until the proxy closes.
fn converse(addr: &str, envelope: &[u8], data: &[u8]) -> Vec<Got> {
    let deadline = Instant::now() + SESSION;
    let mut w = TcpStream::connect(addr).expect("connect to the proxy");
    w.set_write_timeout(Some(SESSION)).expect("a write timeout");
    let mut r = BufReader::new(w.try_clone().expect("a second handle"));
    let mut got = Vec::new();
    got.extend(read_reply(&mut r, deadline));
    if w.write_all(envelope).is_err() {
        return got;
    }
    while got.len() < 5 {
        match read_reply(&mut r, deadline) {
            Some(g) => got.push(g),
            None => return got,
        }
    }
    if got[4].code != 354 || w.write_all(data).is_err() {
        return got;
    }
    while let Some(g) = read_reply(&mut r, deadline) {
        got.push(g);
    }
    got
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// The body of a message: what follows its first empty line (the MTAs add header fields).
fn body(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[i + 4..],
        None => b"",
    }
}

/// Run every case through the proxy at `addr`, then compare with what the sink got and
/// with `received()`, the number of messages the MTA says it took. Panics listing every
/// failed case.
fn run_cases(mta: &str, proxy: &Proxy, sink: &Sink, received: &dyn Fn() -> usize) {
    let tagged = proxy.sign(TODAY, BOB);
    assert!(tagged.starts_with("prvs="), "batv sign: {tagged:?}");
    let cases = cases();
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut finals_250 = 0;
    let mut want_bodies = Vec::new();
    for case in &cases {
        let (sender, rcpt) = match case.first {
            First::Bounce => ("", tagged.as_str()),
            First::Plain => (SENDER, BOB),
        };
        let envelope = format!("EHLO client.example\r\nMAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
        let (want, relayed) = expected(case);
        let got = converse(&proxy.addr, envelope.as_bytes(), &case.data);
        let in_step = got.len() == want.len() && want.iter().zip(&got).all(|(w, g)| w.accepts(g.code));
        if !in_step {
            let got: Vec<String> = got.iter().map(|g| g.text.trim_end().replace("\r\n", " | ")).collect();
            failures.push(format!(
                "{mta} case {} ({:?}, {}): replies out of step\n    want {want:?}\n    got  {got:?}",
                case.id,
                case.first,
                show(case.tricky)
            ));
        }
        // The reply to the end of the first message is the sixth; a smuggled message's
        // would be another 250 to a line the model takes as DATA (there is none).
        finals_250 += got.get(5).filter(|g| g.code == 250).map_or(0, |_| 1);
        want_bodies.push((case, unstuffed(&relayed)));
    }
    eprintln!("smuggling: {mta}: {} cases relayed in {:?}", cases.len(), started.elapsed());

    // Every message the MTA accepted reaches the sink: wait for them, then a little more
    // for any the MTA had no business accepting.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = sink.messages(finals_250);
    while got.len() < finals_250 && Instant::now() < deadline {
        got = sink.messages(finals_250);
    }
    std::thread::sleep(Duration::from_secs(2));
    let got = sink.messages(0);
    let took = received();
    if took != finals_250 || got.len() != finals_250 {
        failures.push(format!(
            "{mta}: the client got {finals_250} 250s at the end of data, the MTA took {took} messages, the sink got {}",
            got.len()
        ));
    }
    let latin1 = |v: &serde_json::Value| -> Vec<u8> { v.as_str().unwrap_or("").chars().map(|c| c as u32 as u8).collect() };
    for m in &got {
        let rcpts = &m["rcpt_tos"];
        if rcpts.to_string().contains(CAROL) {
            failures.push(format!("{mta}: a message reached {CAROL}: {m}"));
        }
    }
    for (case, want_body) in &want_bodies {
        let subject = format!("Subject: smuggling case {}\r\n", case.id);
        let mine: Vec<&serde_json::Value> = got
            .iter()
            .filter(|m| latin1(&m["data"]).windows(subject.len()).any(|w| w == subject.as_bytes()))
            .collect();
        let [m] = mine[..] else {
            failures.push(format!("{mta} case {}: {} messages delivered, not 1", case.id, mine.len()));
            continue;
        };
        let sender = if case.first == First::Bounce { "<>" } else { SENDER };
        if m["mail_from"] != sender || m["rcpt_tos"] != serde_json::json!([BOB]) {
            failures.push(format!(
                "{mta} case {}: envelope {} -> {}, want {sender} -> [{BOB}]",
                case.id, m["mail_from"], m["rcpt_tos"]
            ));
        }
        let data = latin1(&m["data"]);
        if body(&data) != body(want_body) {
            failures.push(format!(
                "{mta} case {} ({}): body\n    want {}\n    got  {}",
                case.id,
                show(case.tricky),
                show(body(want_body)),
                show(body(&data))
            ));
        }
    }
    eprintln!("smuggling: {mta}: {} cases checked, {} failures", cases.len(), failures.len());
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn front_mode_and_a_whole_postfix_stay_in_step() {
    let Some(root) = postfix_root() else { return };
    if !can_run_postfix() || !require("python3-aiosmtpd", python_with_aiosmtpd()) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let sink = Sink::start_for(t.path(), SINK_LIFETIME);
    let port = free_port();
    let main = format!(
        "mynetworks = 127.0.0.1/32
smtpd_authorized_xclient_hosts = 127.0.0.1
relay_domains = example.com
relayhost = [127.0.0.1]:{}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 100
smtpd_error_sleep_time = 0s
",
        sink.port
    );
    let pf = Postfix::start(&root, &main, &[format!("127.0.0.1:{port} inet n - n - - smtpd")], &[port]);
    let proxy = Proxy::start(&format!("127.0.0.1:{port}"), &format!("mode = \"front\"\n{PROXY}"));
    // qmgr logs each message it takes from the queue once, with its sender.
    let received = || pf.log().lines().filter(|l| l.contains("/qmgr[") && l.contains(": from=<")).count();
    run_cases("postfix (front)", &proxy, &sink, &received);
}

/// Exim listening on a loopback port with its own configuration: example.com accepted and
/// relayed to the sink. Stopped by its PID.
struct Exim(PrivateExim);

impl std::ops::Deref for Exim {
    type Target = PrivateExim;
    fn deref(&self) -> &PrivateExim {
        &self.0
    }
}

impl Exim {
    fn start(binary: &Path, sink: u16) -> Exim {
        Exim(PrivateExim::start(binary, |d| {
            format!(
                "primary_hostname = mx.example.com
domainlist local_domains = example.com
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
pid_file_path = {d}/exim.pid
local_interfaces = 127.0.0.1
keep_environment =
tls_advertise_hosts =
rfc1413_query_timeout = 0s
host_lookup =
smtp_max_unknown_commands = 1000
smtp_max_synprot_errors = 1000
smtp_accept_max_nonmail = 1000
acl_smtp_rcpt = acl_rcpt
begin acl
acl_rcpt:
  accept  domains = +local_domains
  deny    message = relay not permitted
begin routers
to_sink:
  driver = manualroute
  domains = +local_domains
  route_list = * 127.0.0.1
  self = send
  transport = sink
begin transports
sink:
  driver = smtp
  port = {sink}
  allow_localhost
  hosts_avoid_tls = *
begin retry
* * F,1m,10s
",
                d = d.display()
            )
        }))
    }
}

#[test]
fn before_queue_mode_and_a_listening_exim_stay_in_step() {
    let exim = common::exim::binary();
    let root = unsafe { libc::geteuid() } == 0;
    if !require("exim (exim4-daemon-light), run as root", exim.is_some() && root) || !require("python3-aiosmtpd", python_with_aiosmtpd()) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let sink = Sink::start_for(t.path(), SINK_LIFETIME);
    let exim = Exim::start(exim.unwrap(), sink.port);
    let proxy = Proxy::start(&format!("127.0.0.1:{}", exim.port), PROXY);
    // Exim logs each message it takes with "<=".
    let received = || exim.log().lines().filter(|l| l.contains(" <= ")).count();
    run_cases("exim (before-queue)", &proxy, &sink, &received);
}
