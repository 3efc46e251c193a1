use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // Installed as /usr/sbin/sendmail (or mailq, newaliases): be the sendmail wrapper.
    let name = Path::new(&argv0).file_name().and_then(|n| n.to_str()).unwrap_or("");
    if matches!(name, "sendmail" | "mailq" | "newaliases") {
        return ExitCode::from(batv::cli::run_as_sendmail(argv0, args.collect()));
    }
    let cli = match batv::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else is a usage error (64).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                batv::core::exit::EX_USAGE
            } else {
                batv::core::exit::EX_OK
            });
        }
    };
    ExitCode::from(batv::cli::run(cli))
}
