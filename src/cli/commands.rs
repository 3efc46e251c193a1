//! The CLI commands: each returns a sysexits code; errors are printed once, here, as one
//! line on stderr. Only `main` turns the code into a process exit.

use std::ffi::OsString;
use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;

use crate::cli::{Cli, Command, ConfigCommand, SignArgs, StripArgs, VerifyArgs};
use crate::core::address::{self, AddressError};
use crate::core::config::{self, Config, ConfigError};
use crate::core::exit::*;
use crate::core::keys::{self, Change, KeyError, KeyStore, KeyStores, Keyring};
use crate::core::tag::{self, Verdict};
use crate::core::time;
use crate::modes::sendmail::Wrapper;
use crate::server;

/// Errors that end a command. Each maps to one sysexits code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(e) => e.exit_code(),
            CliError::Keys(e) => e.exit_code(),
            CliError::Usage(_) => EX_USAGE,
            CliError::Data(_) => EX_DATAERR,
            CliError::Io(_) => EX_IOERR,
        }
    }
}

/// What every command needs: the effective config, the keys directory and the clock.
pub struct Context {
    pub config: Config,
    pub config_path: PathBuf,
    pub keys_dir: PathBuf,
    pub now: i64,
    /// `--now` was given: daemons use a fixed clock.
    pub fixed_now: bool,
}

impl Context {
    pub fn new(cli: &Cli) -> Result<Self, CliError> {
        let now = match &cli.now {
            Some(s) => time::parse_now(s).map_err(|e| CliError::Usage(format!("--now: {e}")))?,
            None => time::system_now(),
        };
        let config = Config::load(cli.config.as_deref())?;
        let config_path = cli.config.clone().unwrap_or_else(config::default_config_path);
        let keys_dir = cli
            .keys
            .clone()
            .or_else(|| config.keys_dir.clone())
            .unwrap_or_else(config::default_keys_dir);
        Ok(Context {
            config,
            config_path,
            keys_dir,
            now,
            fixed_now: cli.now.is_some(),
        })
    }

    pub fn today(&self) -> i64 {
        tag::unix_day(self.now)
    }

    pub fn store(&self) -> Result<KeyStore, KeyError> {
        KeyStore::new(&self.keys_dir, self.config.key_group.as_deref())
    }

    /// `keys_dir` and the `[domain_keys]` stores.
    pub fn stores(&self) -> Result<KeyStores, KeyError> {
        KeyStores::from_config(&self.config, &self.keys_dir)
    }

    /// Load keys for an interactive command: an existing but empty `keys_dir` gets a
    /// first key (the quick start); `[domain_keys]` stores are only read. Daemons use
    /// `KeyStores::startup` and never do this.
    fn keys_interactive(&self) -> Result<Keyring, KeyError> {
        let stores = self.stores()?;
        let ring = stores.load()?;
        if !ring.default.is_empty() {
            return Ok(ring);
        }
        let store = &stores.default;
        if let Change::Added(id) = store.ensure_first_key(self.now)? {
            eprintln!("batv: created a first signing key (id {id}) in {}", store.dir().display());
        }
        stores.load()
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> u8 {
    if crate::core::privilege::is_privileged() {
        eprintln!("batv: refusing to run with set-id privileges; a set-id batv runs only as `sendmail`");
        return EX_CONFIG;
    }
    let result = Context::new(&cli).and_then(|ctx| match cli.command {
        Command::Sign(a) => sign(&ctx, a),
        Command::Verify(a) => verify(&ctx, a),
        Command::Strip(a) => strip(a),
        Command::Check(a) => check(&ctx, a),
        Command::Keys(k) => super::keys::run(&ctx, k),
        Command::Config(c) => config_cmd(&ctx, c),
        Command::Sendmail(a) => Ok(wrapper(ctx, OsString::from("sendmail")).run(a.args)),
        Command::Proxy(a) => proxy(ctx, a),
        Command::Daemon(a) => daemon(ctx, a),
        Command::Milter(a) => milter(ctx, a),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("batv: {e}");
            e.exit_code()
        }
    }
}

fn proxy(ctx: Context, a: crate::cli::ProxyArgs) -> Result<u8, CliError> {
    use crate::modes::proxy::Proxy;
    let mut config = ctx.config.clone();
    config.proxy.forward = a.forward.unwrap_or(config.proxy.forward);
    let listen = a.listen.unwrap_or(config.proxy.listen);
    let mut source = server::Source::new(ctx.config_path.clone(), ctx.stores()?);
    if let Some(f) = a.forward {
        source.adjust = Box::new(move |c: &mut Config| c.proxy.forward = f);
    }
    let keys = source.stores.startup()?;
    let how = server::Launch {
        bind: || Ok(vec![server::listen::bind_tcp(listen)?]),
        metrics: config.proxy.metrics_listen,
        max_connections: config.proxy.max_connections.get() as usize,
        tcp_only: true,
        loopback_only: false,
    };
    let service = Proxy::new(ctx.fixed_now.then_some(ctx.now));
    server::launch(service, config, keys, source, how).map_err(|e| start_error(&ctx, e))?;
    Ok(EX_OK)
}

fn daemon(ctx: Context, a: crate::cli::DaemonArgs) -> Result<u8, CliError> {
    use crate::modes::daemon::Daemon;
    let config = ctx.config.clone();
    let listen = if a.listen.is_empty() {
        config.daemon.listen.clone()
    } else {
        a.listen
    };
    let unix = unix_options(&ctx, config.daemon.socket_mode(), config.daemon.socket_group.as_deref(), "daemon")?;
    let source = server::Source::new(ctx.config_path.clone(), ctx.stores()?);
    let keys = source.stores.startup()?;
    let how = server::Launch {
        bind: move || server::listen::bind(&listen, unix),
        metrics: config.daemon.metrics_listen,
        max_connections: config.daemon.max_connections.get() as usize,
        tcp_only: false,
        loopback_only: true,
    };
    let service = Daemon::new(ctx.fixed_now.then_some(ctx.now));
    server::launch(service, config, keys, source, how).map_err(|e| start_error(&ctx, e))?;
    Ok(EX_OK)
}

fn milter(ctx: Context, a: crate::cli::MilterArgs) -> Result<u8, CliError> {
    use crate::modes::milter::Milter;
    let config = ctx.config.clone();
    let listen = if a.listen.is_empty() {
        config.milter.listen.clone()
    } else {
        a.listen
    };
    let unix = unix_options(&ctx, config.milter.socket_mode(), config.milter.socket_group.as_deref(), "milter")?;
    let source = server::Source::new(ctx.config_path.clone(), ctx.stores()?);
    let keys = source.stores.startup()?;
    let how = server::Launch {
        bind: move || server::listen::bind(&listen, unix),
        metrics: config.milter.metrics_listen,
        max_connections: config.milter.max_connections.get() as usize,
        tcp_only: false,
        loopback_only: true,
    };
    let service = Milter::new(ctx.fixed_now.then_some(ctx.now));
    server::launch(service, config, keys, source, how).map_err(|e| start_error(&ctx, e))?;
    Ok(EX_OK)
}

/// How a mode's unix sockets are made: its mode and its group (by name or gid).
fn unix_options(ctx: &Context, mode: u32, group: Option<&str>, section: &str) -> Result<server::UnixOptions, CliError> {
    let group = match group {
        Some(g) => Some(crate::core::nss::group_id(g).ok_or_else(|| {
            start_error(
                ctx,
                server::StartError::Config(format!("{section}.socket_group {g:?}: no such group")),
            )
        })?),
        None => None,
    };
    Ok(server::UnixOptions { mode, group })
}

/// A daemon that could not start: a configuration it cannot serve is a configuration
/// error (78), a socket that cannot be bound an I/O error (74).
fn start_error(ctx: &Context, e: server::StartError) -> CliError {
    match e {
        server::StartError::Io(e) => CliError::Io(e),
        server::StartError::Config(detail) => CliError::Config(config::ConfigError::Invalid {
            path: ctx.config_path.clone(),
            detail: format!(" {detail}"),
        }),
    }
}

fn wrapper(ctx: Context, argv0: OsString) -> Wrapper {
    Wrapper {
        privileged: crate::core::privilege::is_privileged(),
        config: ctx.config,
        keys_dir: ctx.keys_dir,
        now: ctx.now,
        argv0,
    }
}

/// The binary was invoked as `sendmail`, `mailq` or `newaliases`: the wrapper with the
/// default configuration and nothing overridable (it may be set-id).
pub fn run_as_sendmail(argv0: OsString, args: Vec<OsString>) -> u8 {
    let ctx = match Config::load(None) {
        Ok(config) => Context {
            keys_dir: config.keys_dir.clone().unwrap_or_else(config::default_keys_dir),
            config_path: config::default_config_path(),
            config,
            now: time::system_now(),
            fixed_now: false,
        },
        Err(e) => {
            eprintln!("batv sendmail: {e}");
            crate::core::log::syslog_error(&e.to_string());
            return e.exit_code();
        }
    };
    wrapper(ctx, argv0).run(args)
}

/// Addresses from the arguments, or one per line from stdin if there are none.
fn inputs(args: Vec<String>) -> Result<Vec<String>, CliError> {
    if !args.is_empty() {
        return Ok(args);
    }
    let mut out = vec![];
    for line in io::stdin().lock().lines() {
        let line = line?;
        let line = line.trim();
        if !line.is_empty() {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

/// Printable form of arbitrary input for messages (no control characters reach the tty).
fn shown(s: &str) -> String {
    format!("{s:?}")
}

fn sign(ctx: &Context, a: SignArgs) -> Result<u8, CliError> {
    let scheme = a.scheme.unwrap_or(ctx.config.scheme);
    let addrs = inputs(a.addresses)?;
    let syntax = ctx.config.syntax_of(a.syntax.unwrap_or(ctx.config.tag_syntax));
    let ring = ctx.keys_interactive()?;
    let key_id = a.key.as_deref().map(keys::parse_id).transpose()?;
    let ddd = tag::day_stamp(ctx.today(), ctx.config.lifetime_days);
    let mut out = io::stdout().lock();
    let mut code = EX_OK;
    for s in &addrs {
        if s.is_empty() || s == "<>" {
            writeln!(out, "{s}")?;
            eprintln!("batv: {}: not signed ({})", shown(s), tag::Skip::NullSender.name());
            continue;
        }
        let addr = match address::parse(s) {
            Ok(addr) => addr,
            Err(e) => {
                eprintln!("batv: {}: invalid address: {e}", shown(s));
                code = EX_DATAERR;
                continue;
            }
        };
        if let Ok(tag::Parsed::Malformed(why)) = tag::parse(s) {
            eprintln!("batv: {}: invalid address: malformed tag: {why}", shown(s));
            code = EX_DATAERR;
            continue;
        }
        if let Some(skip) = tag::structural_skip(&addr, scheme) {
            writeln!(out, "{s}")?;
            eprintln!("batv: {}: not signed ({})", shown(s), skip.name());
            continue;
        }
        // The store of the address's domain signs it ([domain_keys]).
        let (store, keys) = ring.lookup(addr.domain);
        let key = match key_id {
            Some(id) => keys.key(id).ok_or(KeyError::UnknownKey(id))?,
            None => keys
                .active()
                .ok_or_else(|| store.map_or(KeyError::NoActiveKey, |d| KeyError::NoActiveKeyFor(d.to_string())))?,
        };
        match tag::sign(&key.tag, key.info.id, scheme, syntax, &addr, ddd) {
            Ok(signed) => writeln!(out, "{signed}")?,
            Err(e) => {
                eprintln!("batv: {}: invalid address: {e}", shown(s));
                code = EX_DATAERR;
            }
        }
    }
    out.flush()?;
    Ok(code)
}

fn verify(ctx: &Context, a: VerifyArgs) -> Result<u8, CliError> {
    let addrs = inputs(a.addresses)?;
    let keys = ctx.keys_interactive()?;
    let today = ctx.today();
    let schemes = ctx.config.accepted_schemes();
    let mut out = io::stdout().lock();
    let mut code = EX_OK;
    for s in &addrs {
        let verdict = tag::verify(s, today, schemes, &keys);
        if a.json {
            writeln!(out, "{}", verdict_json(s, &verdict, today))?;
        }
        match &verdict {
            Ok(Verdict::Valid(c)) => {
                if !a.json {
                    writeln!(out, "{}", c.original)?;
                }
            }
            Ok(v) => {
                code = code.max(EX_INVALID);
                if !a.json {
                    let detail = match v {
                        Verdict::Malformed(why) => format!(": {why}"),
                        Verdict::UnknownKey(k) => format!(": no key {k}"),
                        Verdict::Expired(c) => format!(": {} day(s) ago", -c.days_left),
                        _ => String::new(),
                    };
                    eprintln!("batv: {}: {}{detail}", shown(s), v.reason());
                }
            }
            Err(e) => {
                code = EX_DATAERR;
                if !a.json {
                    eprintln!("batv: {}: malformed: invalid address: {e}", shown(s));
                }
            }
        }
    }
    out.flush()?;
    Ok(code)
}

/// How much of a message `check` inspects (a bounce's evidence is near the start).
const CHECK_LIMIT: usize = 1 << 20;

fn check(ctx: &Context, a: crate::cli::CheckArgs) -> Result<u8, CliError> {
    use crate::bounce::{self, CheckVerdict};
    let mut raw = Vec::new();
    io::stdin().lock().read_to_end(&mut raw)?;
    let report = bounce::inspect(&raw, CHECK_LIMIT, a.sender.as_deref() == Some(""));
    let recipient = a.recipient.clone().or_else(|| report.envelope_recipient.clone());
    // Keys are needed only for a bounce; unreadable keys are a temporary failure.
    let verdict = if report.kind.is_bounce() {
        match ctx.stores().and_then(|s| s.load()) {
            Ok(keys) => Ok(bounce::judge(
                &report,
                recipient.as_deref(),
                &crate::core::verdict::Rules::from_config(&ctx.config),
                &keys,
                ctx.today(),
            )),
            Err(e) => Err(e),
        }
    } else {
        Ok(CheckVerdict::NotABounce)
    };
    let (verdict, code) = match verdict {
        Ok(v) => {
            let code = if matches!(v, CheckVerdict::Backscatter(_)) {
                EX_INVALID
            } else {
                EX_OK
            };
            (v, code)
        }
        Err(e) => {
            eprintln!("batv: check: {e}");
            (CheckVerdict::Unknown("keys-unavailable"), EX_TEMPFAIL)
        }
    };
    let mut out = io::stdout().lock();
    if a.add_header {
        let crlf = raw.iter().position(|&b| b == b'\n').is_some_and(|i| i > 0 && raw[i - 1] == b'\r');
        write!(
            out,
            "X-BATV: {}; reason={}; kind={}{}",
            verdict.name(),
            verdict.reason(),
            report.kind.name(),
            if crlf { "\r\n" } else { "\n" }
        )?;
        out.write_all(&raw)?;
        out.flush()?;
        // A failure exit would make the MTA bounce: the header carries the verdict.
        return Ok(EX_OK);
    }
    writeln!(
        out,
        "verdict={} reason={} kind={} original_sender={} recipient={}",
        verdict.name(),
        verdict.reason(),
        report.kind.name(),
        crate::core::log::q(report.original_sender.as_deref().unwrap_or("-")),
        crate::core::log::q(recipient.as_deref().unwrap_or("-")),
    )?;
    Ok(code)
}

fn verdict_json(s: &str, v: &Result<Verdict<'_>, AddressError>, today: i64) -> serde_json::Value {
    use serde_json::json;
    match v {
        Err(e) => json!({"address": s, "valid": false, "reason": "malformed", "detail": format!("invalid address: {e}")}),
        Ok(v) => {
            let mut j = json!({"address": s, "valid": v.is_valid(), "reason": v.reason()});
            match v {
                Verdict::Malformed(why) => j["detail"] = json!(why),
                Verdict::UnknownKey(k) => j["key"] = json!(k),
                Verdict::Valid(c) | Verdict::Expired(c) => {
                    j["original"] = json!(c.original);
                    j["key"] = json!(c.key_id);
                    j["scheme"] = json!(c.scheme.name());
                    j["expires"] = json!(time::format_day(today + c.days_left as i64));
                    j["days_left"] = json!(c.days_left);
                }
                _ => {}
            }
            j
        }
    }
}

fn strip(a: StripArgs) -> Result<u8, CliError> {
    let mut out = io::stdout().lock();
    let mut code = EX_OK;
    for s in &inputs(a.addresses)? {
        match tag::strip(s) {
            Ok(stripped) => writeln!(out, "{stripped}")?,
            Err(e) => {
                eprintln!("batv: {}: invalid address: {e}", shown(s));
                code = EX_DATAERR;
            }
        }
    }
    out.flush()?;
    Ok(code)
}

fn config_cmd(ctx: &Context, cmd: ConfigCommand) -> Result<u8, CliError> {
    match cmd {
        ConfigCommand::Check => {
            // Config::load already validated the file; the key group must exist too.
            let stores = ctx.stores()?;
            if !ctx.config.domain_keys.is_empty() {
                // Every store is read as a daemon would: one it could not start with is
                // an error here too.
                for (domain, store) in stores.iter() {
                    let keys = keys::startup_keys(store)?;
                    let active = keys.active().map_or_else(
                        || "no active key".to_string(),
                        |k| format!("active key {} ({})", k.info.id, k.info.fingerprint),
                    );
                    let n = keys.iter().count();
                    println!(
                        "{} ({}): {n} key(s), {active}",
                        store.dir().display(),
                        domain.unwrap_or("other domains")
                    );
                }
            }
            let p = &ctx.config.proxy;
            if let Some(path) = p.valid_recipients.as_ref().filter(|_| p.mode == config::ProxyMode::Gateway) {
                // The proxy would refuse to start (or to reload) with a bad table.
                let table = crate::core::recipients::Recipients::load(path, p.valid_recipients_case).map_err(|e| {
                    CliError::Config(config::ConfigError::Invalid {
                        path: ctx.config_path.clone(),
                        detail: format!(" proxy.valid_recipients: {e}"),
                    })
                })?;
                let relay = crate::core::address::DomainSet::new(ctx.config.relay_domains()).unwrap_or_default();
                println!("{}: {} valid recipients", path.display(), table.len());
                let outside = table.outside(&relay);
                if outside > 0 {
                    println!("{}: warning: {outside} entries outside relay_domains (never used)", path.display());
                }
            }
            if ctx.config_path.exists() {
                println!("{}: OK", ctx.config_path.display());
            } else {
                println!("{}: not found; the defaults apply", ctx.config_path.display());
            }
        }
        ConfigCommand::Show => {
            let mut c = ctx.config.clone();
            c.keys_dir = Some(ctx.keys_dir.clone());
            print!("{}", c.to_toml());
        }
    }
    Ok(EX_OK)
}
