//! The per-stage macro store.
//!
//! The MTA sends SMFIC_MACRO before a command, with the macros for that command. As in
//! libmilter, macros sent for a command stay valid from that command on, until the stage is
//! set again or cleared: setting a stage's macros clears that stage and every later one (a
//! new MAIL's macros end the previous transaction's RCPT, DATA, EOH and EOM macros; a new
//! CONNECT's end everything). The mode calls `clear_from(Stage::Mail)` at ABORT. A lookup
//! searches the latest stage first.

use super::flags::*;

/// The stages macros are sent for, in protocol order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Eoh,
    Eom,
}

impl Stage {
    const ALL: [Stage; 7] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Eoh,
        Stage::Eom,
    ];

    /// The stage of the command macros are sent for (SMFIC_CONNECT, HELO, MAIL, RCPT, DATA,
    /// EOH, BODYEOB); None for any other.
    pub fn of_command(cmd: u8) -> Option<Stage> {
        Some(match cmd {
            SMFIC_CONNECT => Stage::Connect,
            SMFIC_HELO => Stage::Helo,
            SMFIC_MAIL => Stage::Mail,
            SMFIC_RCPT => Stage::Rcpt,
            SMFIC_DATA => Stage::Data,
            SMFIC_EOH => Stage::Eoh,
            SMFIC_BODYEOB => Stage::Eom,
            _ => return None,
        })
    }

    /// The stage's SMFIM_* number (for SMFIR_OPTNEG's macro lists).
    pub fn smfim(self) -> u32 {
        match self {
            Stage::Connect => SMFIM_CONNECT,
            Stage::Helo => SMFIM_HELO,
            Stage::Mail => SMFIM_ENVFROM,
            Stage::Rcpt => SMFIM_ENVRCPT,
            Stage::Data => SMFIM_DATA,
            Stage::Eoh => SMFIM_EOH,
            Stage::Eom => SMFIM_EOM,
        }
    }
}

/// Macros per stage; see the module's description for when they are valid.
#[derive(Debug, Clone, Default)]
pub struct Macros {
    stages: [Vec<(String, String)>; 7],
}

/// "{name}" and "name" are the same macro.
fn bare(name: &str) -> &str {
    name.strip_prefix('{').and_then(|n| n.strip_suffix('}')).unwrap_or(name)
}

impl Macros {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores the macros sent for `for_command` (an SMFIC_* byte), replacing that stage's and
    /// clearing the later stages'. Returns false (and stores nothing) for a command that
    /// has no stage.
    pub fn set(&mut self, for_command: u8, pairs: Vec<(String, String)>) -> bool {
        let Some(stage) = Stage::of_command(for_command) else {
            return false;
        };
        self.clear_from(stage);
        self.stages[stage as usize] = pairs;
        true
    }

    /// A macro's value, latest stage first; "{name}" and "name" both find a macro sent as
    /// either.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = bare(name);
        self.stages
            .iter()
            .rev()
            .flat_map(|s| s.iter())
            .find(|(n, _)| bare(n) == name)
            .map(|(_, v)| v.as_str())
    }

    /// Forgets the macros of `stage` and every later stage (`Stage::Mail` at ABORT,
    /// `Stage::Connect` for a new connection).
    pub fn clear_from(&mut self, stage: Stage) {
        for s in Stage::ALL.iter().filter(|s| **s >= stage) {
            self.stages[*s as usize].clear();
        }
    }
}
