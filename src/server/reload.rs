//! Reloads: SIGHUP reads the configuration (and so the certificate) and the keys again,
//! the keys directory is polled for changes; each part is taken all or nothing, and every
//! reload ends in one closing log line.

use std::path::PathBuf;

use crate::core::config::Config;
use crate::core::keys::{KeyStores, Keyring};

use super::{Server, Service};

/// Where configuration and keys come from.
pub struct Source {
    pub config: PathBuf,
    /// `keys_dir` and the `[domain_keys]` stores.
    pub stores: KeyStores,
    /// Command-line settings that outlive reloads (`--forward`, say).
    pub adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
}

impl Source {
    pub fn new(config: PathBuf, stores: KeyStores) -> Source {
        Source {
            config,
            stores,
            adjust: Box::new(|_| {}),
        }
    }

    fn load_config(&self) -> Result<Config, String> {
        let mut c = Config::load(Some(&self.config)).map_err(|e| e.to_string())?;
        (self.adjust)(&mut c);
        Ok(c)
    }

    /// Every store, all or nothing; each must hold a key (as at start).
    fn load_keys(&self) -> Result<Keyring, String> {
        self.stores.startup().map_err(|e| e.to_string())
    }
}

/// The configuration and keys the running state was built from.
pub(crate) struct Running {
    pub(crate) config: Config,
    pub(crate) keys: Keyring,
    /// The configuration at start: what restart-only settings are compared with (the
    /// running one takes a new listener's name without serving it).
    pub(crate) started: Config,
}

impl Running {
    pub(crate) fn new(config: Config, keys: Keyring) -> Running {
        Running {
            started: config.clone(),
            config,
            keys,
        }
    }
}

/// Read the configuration and keys and build a state from them, and throw it away: can
/// this process reload at all (as the user it now runs as)?
pub(crate) fn check<S: Service>(server: &Server<S>, source: &Source) -> Result<(), String> {
    let config = source.load_config()?;
    let keys = source.load_keys()?;
    server.service.build(&config, &keys).map(drop)
}

/// Settings no reload changes: the runtime's own, then the mode's.
fn restart_only<S: Service>(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    for (name, changed) in [
        ("keys_dir", running.keys_dir != new.keys_dir),
        ("domain_keys", running.domain_keys != new.domain_keys),
        ("key_group", running.key_group != new.key_group),
        ("user", running.user != new.user),
        ("group", running.group != new.group),
    ] {
        if changed {
            v.push(name);
        }
    }
    v.extend(S::restart_only(running, new));
    v
}

/// One reload: the configuration too (SIGHUP) or the keys alone (their directory
/// changed). What cannot be loaded or built is logged and the running one kept.
pub(crate) fn reload<S: Service>(server: &Server<S>, source: &Source, running: &mut Running, config_too: bool) {
    let name = S::NAME;
    let mut config = None;
    if config_too {
        match source.load_config() {
            Ok(c) => match server.service.refuse_change(&running.config, &c) {
                Some(why) => crate::logln!("{name}: configuration not reloaded: {why}"),
                None => {
                    for what in restart_only::<S>(&running.started, &c) {
                        crate::logln!("{name}: {what} changed: takes effect at the next restart");
                    }
                    config = Some(c);
                }
            },
            Err(e) => crate::logln!("{name}: configuration not reloaded: {e}; keeping the old one"),
        }
    }
    let keys = match source.load_keys() {
        Ok(k) => Some(k),
        Err(e) => {
            crate::logln!("{name}: keys not reloaded: {e}; keeping the old set");
            None
        }
    };
    if let Some(c) = config {
        match server.service.build(&c, keys.as_ref().unwrap_or(&running.keys)) {
            Ok(state) => {
                server.service.loaded(&state);
                server.replace(state);
                running.config = c;
                let what = match keys {
                    Some(k) => {
                        running.keys = k;
                        "configuration and keys"
                    }
                    None => "configuration",
                };
                crate::logln!("{name}: reloaded ({what}) from {}", source.config.display());
                return;
            }
            Err(e) => crate::logln!("{name}: configuration not reloaded: {e}; keeping the old one"),
        }
    }
    let Some(keys) = keys else {
        crate::logln!("{name}: not reloaded: keeping the running configuration and keys");
        return;
    };
    match server.service.build(&running.config, &keys) {
        Ok(state) => {
            server.service.loaded(&state);
            server.replace(state);
            running.keys = keys;
            crate::logln!("{name}: reloaded (keys) from {}", source.stores.describe());
        }
        Err(e) => crate::logln!("{name}: not reloaded: {e}"),
    }
}

/// A watched file changed ([`Service::watched`]): the state again from the running
/// configuration and keys, all or nothing.
pub(crate) fn rebuild<S: Service>(server: &Server<S>, running: &Running, files: &str) {
    let name = S::NAME;
    match server.service.build(&running.config, &running.keys) {
        Ok(state) => {
            server.service.loaded(&state);
            server.replace(state);
            crate::logln!("{name}: reloaded ({files})");
        }
        Err(e) => crate::logln!("{name}: not reloaded: {e}; keeping the running state"),
    }
}
