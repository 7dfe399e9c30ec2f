//! The `ferroserve` command: run, deploy and inspect ferroserve applications from config files,
//! with the built-in applications. See the `ferroserve_cli` library for the commands and exit
//! codes.

mod builtins;

fn main() -> std::process::ExitCode {
    ferroserve_cli::main(builtins::registry())
}
