//! The `ferroserve` command: inspect running ferroserve servers (and, in later releases, run and
//! deploy config files).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// ferroserve: Ray Serve's model-serving semantics for Rust services.
#[derive(Parser, Debug)]
#[command(name = "ferroserve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the applications a running proxy serves (its `/-/routes`) and its health.
    Routes {
        /// The proxy's address.
        #[arg(long, default_value = "127.0.0.1:8000", env = "FERROSERVE_ADDRESS")]
        address: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Routes { address } => match routes(&address) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// Fetches `/-/healthz` and `/-/routes` with a plain HTTP/1.1 GET.
fn routes(address: &str) -> Result<String, String> {
    let address = address.trim_start_matches("http://").trim_end_matches('/');
    let health = get(address, "/-/healthz")?;
    let routes = get(address, "/-/routes")?;
    Ok(format!("health: {}\nroutes: {}", health.1, routes.1))
}

fn get(address: &str, path: &str) -> Result<(u16, String), String> {
    let no_server = |e: std::io::Error| format!("no ferroserve server at {address}: {e}");
    let addr = address
        .to_socket_addrs()
        .map_err(no_server)?
        .next()
        .ok_or_else(|| format!("cannot resolve {address}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(no_server)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(no_server)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n"
    )
    .map_err(no_server)?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).map_err(no_server)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{address} did not answer HTTP"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{address} did not answer HTTP"))?;
    Ok((status, body.to_owned()))
}
