//! The man pages under man/ are generated from the clap definitions; this test fails when
//! they are stale. Regenerate with `BATV_BLESS=1 cargo test --test man`.

use std::path::Path;

/// Section 8 for administrative commands, 1 for the rest.
fn section(sub: &str) -> &'static str {
    match sub {
        "keys" | "sendmail" | "proxy" | "daemon" | "milter" => "8",
        _ => "1",
    }
}

fn render(cmd: clap::Command, section: &str) -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("batv manual")
        .source(format!("batv {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)
        .expect("render man page");
    out
}

/// One page per command and subcommand, named as clap_mangen refers to them
/// (`batv-keys-rotate.8`).
fn pages() -> Vec<(String, Vec<u8>)> {
    // The pages name the release, not the commit they were built from.
    let root = batv::cli::command().long_version(None::<&str>);
    let mut pages = vec![("batv.1".to_string(), render(root.clone(), "1"))];
    for sub in root.get_subcommands() {
        let s = section(sub.get_name());
        add_pages(&mut pages, sub, "batv", s);
    }
    pages
}

fn add_pages(pages: &mut Vec<(String, Vec<u8>)>, cmd: &clap::Command, parent: &str, section: &str) {
    let name = format!("{parent}-{}", cmd.get_name());
    // clap names are &'static without its "string" feature; a test may leak a few.
    let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
    let bin: &'static str = Box::leak(leaked.replace('-', " ").into_boxed_str());
    pages.push((format!("{name}.{section}"), render(cmd.clone().name(leaked).bin_name(bin), section)));
    for sub in cmd.get_subcommands() {
        add_pages(pages, sub, &name, section);
    }
}

#[test]
fn man_pages_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let bless = std::env::var_os("BATV_BLESS").is_some();
    let mut stale = vec![];
    let pages = pages();
    // A page whose command is gone is stale too.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name != "batv.toml.5" && !pages.iter().any(|(p, _)| *p == name) {
            if bless {
                std::fs::remove_file(dir.join(&name)).unwrap();
            } else {
                stale.push(name);
            }
        }
    }
    for (name, body) in pages {
        let path = dir.join(&name);
        if bless {
            std::fs::write(&path, &body).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&body[..]) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "stale man pages {stale:?}: run BATV_BLESS=1 cargo test --test man"
    );
}

#[test]
fn man_pages_cover_every_subcommand() {
    let root = batv::cli::command();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    for sub in root.get_subcommands() {
        let name = format!("batv-{}.{}", sub.get_name(), section(sub.get_name()));
        assert!(dir.join(&name).exists(), "man/{name} missing");
    }
}

/// Every configuration key is documented in batv.toml(5).
#[test]
fn config_man_page_names_every_key() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/batv.toml.5")).unwrap();
    // Give every optional key a value so it is serialised too.
    let mut c = batv::core::config::Config {
        keys_dir: Some("/etc/batv/keys".into()),
        key_group: Some("batv".into()),
        protected_domains: Some(vec![]),
        ..Default::default()
    };
    c.sendmail.default_domain = Some("example.com".into());
    c.user = Some("batv".into());
    c.group = Some("batv".into());
    c.daemon.socket_group = Some("postfix".into());
    c.daemon.metrics_listen = Some("127.0.0.1:9126".parse().unwrap());
    c.proxy.enforce_after = Some("2026-12-01".into());
    c.proxy.tls_cert = Some("/c".into());
    c.proxy.tls_key = Some("/k".into());
    let table: toml::Table = toml::from_str(&c.to_toml()).unwrap();
    let mut missing = vec![];
    for (key, value) in &table {
        let names: Vec<String> = match value.as_table() {
            Some(t) => t.keys().map(|k| format!("{key}.{k}")).collect(),
            None => vec![key.clone()],
        };
        for n in names {
            let leaf = n.rsplit('.').next().unwrap().replace('_', "\\_");
            if !page.contains(&format!("\\fB{leaf}\\fR")) && !page.contains(&format!("\\fB{}\\fR", n.rsplit('.').next().unwrap())) {
                missing.push(n);
            }
        }
    }
    assert!(missing.is_empty(), "batv.toml.5 does not document {missing:?}");
    // [domain_keys] is a table of domains (left empty above): documented as a section.
    assert!(c.domain_keys.is_empty() && page.contains(".SH [domain_keys]"));
}
