//! The shell completions under completions/ (installed by the Debian package) are
//! generated from the clap definitions; this test fails when they are stale. Regenerate
//! with `BATV_BLESS=1 cargo test --test completions`.

use std::path::Path;

use clap_complete::Shell;

/// File names as each shell's completion directory wants them.
const SHELLS: [(Shell, &str); 3] = [(Shell::Bash, "batv"), (Shell::Zsh, "_batv"), (Shell::Fish, "batv.fish")];

fn render(shell: Shell) -> Vec<u8> {
    let mut cmd = batv::cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "batv", &mut out);
    out
}

#[test]
fn completions_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
    let bless = std::env::var_os("BATV_BLESS").is_some();
    let mut stale = vec![];
    for (shell, name) in SHELLS {
        let body = render(shell);
        let path = dir.join(name);
        if bless {
            std::fs::write(&path, &body).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&body[..]) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "stale completions {stale:?}: run BATV_BLESS=1 cargo test --test completions"
    );
}

/// Every subcommand, however deep, is offered: the completions follow the definitions.
#[test]
fn completions_name_every_subcommand() {
    fn names(cmd: &clap::Command, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands() {
            out.push(sub.get_name().to_string());
            names(sub, out);
        }
    }
    let mut all = vec![];
    names(&batv::cli::command(), &mut all);
    assert!(all.len() > 10, "{all:?}");
    for (shell, _) in SHELLS {
        let text = String::from_utf8(render(shell)).unwrap();
        for n in &all {
            assert!(text.contains(n.as_str()), "{shell}: no {n}");
        }
    }
}

/// bash accepts the generated script and registers the completion for batv.
#[test]
fn bash_loads_the_completion() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("completions/batv");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && complete -p batv", path.display()))
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("batv"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
