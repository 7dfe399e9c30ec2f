//! The `ferroserve` command: run, deploy and inspect ferroserve applications from config files.
//! See `ferroserve::cli` for the commands and exit codes.

mod builtins;

fn main() -> std::process::ExitCode {
    ferroserve::cli::main(builtins::registry())
}
