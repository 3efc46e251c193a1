//! `batv keys`: one key store, `keys_dir` or a `[domain_keys]` one (`--domain`).

use std::io::{self, Read, Write};
use std::path::Path;

use super::commands::{CliError, Context};
use super::{KeysArgs, KeysCommand};
use crate::core::address;
use crate::core::exit::*;
use crate::core::keys::{self, Change, KeyError, KeyStore, Secret};
use crate::core::time;

/// The store `[domain_keys]` names for `domain` (the same name, compared canonically).
fn domain_store(ctx: &Context, domain: &str) -> Result<KeyStore, CliError> {
    let want = address::canonical_domain(domain).map_err(|e| CliError::Usage(format!("--domain {domain:?}: {e}")))?;
    let dir = ctx
        .config
        .domain_keys
        .iter()
        .find(|(d, _)| address::canonical_domain(d).is_ok_and(|d| d == want))
        .map(|(_, dir)| dir)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--domain {domain}: {} has no [domain_keys] store for it; add \"{domain}\" = \"/etc/batv/keys-{domain}\" there",
                ctx.config_path.display()
            ))
        })?;
    Ok(KeyStore::new(dir, ctx.config.key_group.as_deref())?)
}

/// Run `batv keys [--domain D] COMMAND`.
pub fn run(ctx: &Context, args: KeysArgs) -> Result<u8, CliError> {
    let store = match args.domain.as_deref() {
        Some(d) => domain_store(ctx, d)?,
        None => ctx.store()?,
    };
    let now = ctx.now;
    let change = match args.command {
        KeysCommand::Init => store.init(now)?,
        KeysCommand::List => return keys_list(&store, now),
        KeysCommand::Add { standby } => store.add(standby, now)?,
        KeysCommand::Activate { id } => store.activate(keys::parse_id(&id)?, now)?,
        KeysCommand::Rotate => store.rotate(now)?,
        KeysCommand::Retire { id } => store.retire(keys::parse_id(&id)?, now)?,
        KeysCommand::Prune => store.prune(now)?,
        KeysCommand::Import {
            id,
            secret_file,
            secret_stdin,
            raw,
        } => {
            let id = keys::parse_id(&id)?;
            let bytes = read_secret_input(secret_file.as_deref(), secret_stdin)?;
            // --raw: the bytes exactly (batv-tools keys are 64 raw bytes, and may end in LF).
            let secret = if raw { Secret::new(bytes) } else { Secret::from_file_bytes(bytes) };
            let secret = secret.map_err(|e| CliError::Data(format!("import: {e}")))?;
            store.import(id, secret, now)?
        }
        KeysCommand::Show { id, secret } => return keys_show(&store, keys::parse_id(&id)?, secret, now),
    };
    let domain = args.domain.map(|d| format!(" --domain {d}")).unwrap_or_default();
    println!("{}", describe_change(&change, store.dir(), &domain));
    Ok(EX_OK)
}

fn read_secret_input(file: Option<&Path>, stdin: bool) -> Result<Vec<u8>, CliError> {
    let mut bytes = vec![];
    let limit = (keys::MAX_SECRET_LEN + 2) as u64;
    match file {
        Some(f) => std::fs::File::open(f)
            .and_then(|h| h.take(limit).read_to_end(&mut bytes))
            .map_err(|e| CliError::Data(format!("{}: {e}", f.display())))?,
        None if stdin => io::stdin().lock().take(limit).read_to_end(&mut bytes)?,
        None => return Err(CliError::Usage("import needs --secret-file FILE or --secret-stdin".into())),
    };
    Ok(bytes)
}

fn describe_change(c: &Change, dir: &Path, domain: &str) -> String {
    let retired = |r: &Option<u8>| r.map(|r| format!("; key {r} retired")).unwrap_or_default();
    match c {
        Change::Added(id) => format!("added key {id} in {}", dir.display()),
        Change::Activated { id, retired: r } => format!("key {id} is now active{}", retired(r)),
        Change::Rotated { new, retired: r } => format!("added key {new}, now active{}", retired(r)),
        Change::Retired(id) => format!("key {id} retired"),
        Change::Pruned(ids) if ids.is_empty() => "nothing to prune".to_string(),
        Change::Pruned(ids) => format!("pruned key(s) {}", ids.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")),
        Change::Imported(id) => format!("imported key {id} (standby; activate it with `batv keys{domain} activate {id}`)"),
        Change::Unchanged(why) => format!("unchanged: {why}"),
    }
}

fn opt_time(t: Option<i64>) -> String {
    t.map_or_else(|| "-".to_string(), time::format_rfc3339)
}

fn keys_list(store: &KeyStore, now: i64) -> Result<u8, CliError> {
    let keys = store.load()?;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<3} {:<18} {:<21} {:<21} {:<21} FINGERPRINT",
        "ID", "STATE", "CREATED", "ACTIVATED", "RETIRED"
    )?;
    for k in keys.iter() {
        let i = &k.info;
        let state = if i.prunable(now) { "retired (prunable)" } else { i.state.name() };
        writeln!(
            out,
            "{:<3} {:<18} {:<21} {:<21} {:<21} {}",
            i.id,
            state,
            time::format_rfc3339(i.created),
            opt_time(i.activated),
            opt_time(i.retired),
            i.fingerprint
        )?;
    }
    Ok(EX_OK)
}

fn keys_show(store: &KeyStore, id: u8, secret: bool, now: i64) -> Result<u8, CliError> {
    let keys = store.load()?;
    let k = keys.key(id).ok_or(KeyError::UnknownKey(id))?;
    let i = &k.info;
    let mut out = io::stdout().lock();
    writeln!(out, "id: {}", i.id)?;
    writeln!(out, "state: {}{}", i.state.name(), if i.prunable(now) { " (prunable)" } else { "" })?;
    writeln!(out, "created: {}", time::format_rfc3339(i.created))?;
    writeln!(out, "activated: {}", opt_time(i.activated))?;
    writeln!(out, "retired: {}", opt_time(i.retired))?;
    writeln!(out, "fingerprint: {}", i.fingerprint)?;
    if secret {
        out.write_all(b"secret: ")?;
        out.write_all(k.secret.expose())?;
        out.write_all(b"\n")?;
    }
    Ok(EX_OK)
}
