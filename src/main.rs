use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match batv::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else is a usage error (64).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { batv::exit::EX_USAGE } else { batv::exit::EX_OK });
        }
    };
    ExitCode::from(batv::commands::run(cli))
}
