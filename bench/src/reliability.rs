//! The reliability scenarios (issue 10), run only when `BENCH_ONLY` names them, against one
//! `fs_mixed` server process, driven by `soak_mix`:
//!
//! - `soak_mix`: `BENCH_SOAK_MIX_REQUESTS` (1,000,000) mixed operations (JSON, streaming,
//!   cancelled mid-flight, WebSocket messages, a quarter each), RSS idle / after a warm-up
//!   (half the count) / after, and the growth over the measured count. The warm-up is that
//!   long because the server's RSS takes about 500,000 mixed operations to level off (a
//!   high-water mark of connection buffers and allocator pools, not a leak: measured 8.0 MiB
//!   after 250k, 10.3 MiB after 500k, 10.4 MiB after 2M, the same with `MALLOC_ARENA_MAX=1`).
//! - `overload`: the capacity-bounded `/bounded/` deployment (4 ongoing + 16 queued, 2 ms of
//!   work) unloaded (1 connection), at capacity (20) and overloaded (`BENCH_OVERLOAD_CONNECTIONS`,
//!   2,000), `BENCH_DURATION` seconds each: admitted and shed counts and latencies, server RSS
//!   before, at most during, and after.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{env_num, fmt_mib, rss_kib, Config, Result, Server};

/// The `BENCH_ONLY` names this module knows.
pub(crate) const NAMES: [&str; 2] = ["soak_mix", "overload"];

/// How long the server is left idle before its RSS is read: past one of its memory trims (every
/// 1 s by default, `ferroserve::memory`), so the figure is what the heap holds, not what the
/// last burst of traffic freed a moment ago.
const SETTLE: Duration = Duration::from_millis(1500);

/// The server's RSS (KiB) sampled every 20 ms during a client run.
#[derive(Default, Clone, Copy)]
struct Samples {
    /// The first sample at least 1 s into the run (0 if the run was shorter).
    after_1s: u64,
    max: u64,
    last: u64,
}

/// Runs `soak_mix ARGS` to completion; its output line (starting with `tag`) and the server's
/// RSS sampled meanwhile.
fn client(cfg: &Config, server: &Server, args: &[String], tag: &str) -> Result<(String, Samples)> {
    let t0 = Instant::now();
    let mut child = Command::new(cfg.bin_dir.join("soak_mix"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running soak_mix: {e}"))?;
    let mut samples = Samples::default();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if let Ok((rss, _)) = rss_kib(server.pid()) {
            samples.max = samples.max.max(rss);
            samples.last = rss;
            if samples.after_1s == 0 && t0.elapsed() >= Duration::from_secs(1) {
                samples.after_1s = rss;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with(tag)).ok_or_else(|| {
        format!(
            "soak_mix {args:?} printed no {tag} line ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((line.to_owned(), samples))
}

/// The number after `key=` in a client's output line.
fn field(line: &str, key: &str) -> Result<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key}= in {line:?}"))
}

fn start_server(cfg: &Config, label: &str) -> Result<(Server, u64)> {
    let t0 = Instant::now();
    let mut server = Server::spawn(cfg, label, "fs_mixed", &[])?;
    server.wait_ready("/-/healthz", t0)?;
    std::thread::sleep(SETTLE);
    let (idle, _) = rss_kib(server.pid())?;
    Ok((server, idle))
}

/// `soak_mix`: the mixed 1M-operation soak. Returns its report section.
pub(crate) fn soak_mix(cfg: &Config) -> Result<String> {
    let target = env_num("BENCH_SOAK_MIX_REQUESTS", 1_000_000).max(4);
    let conns = cfg.connections.to_string();
    eprintln!("soak_mix: fs_mixed, {target} mixed operations, {conns} workers");
    let (mut server, idle) = start_server(cfg, "ferroserve-mixed-soak")?;
    let port = server.port.to_string();
    let warm_n = (target / 2).max(4);
    let args = |n: u64| vec!["mix".into(), port.clone(), n.to_string(), conns.clone()];
    let (warm, _) = client(cfg, &server, &args(warm_n), "FSMIX")?;
    std::thread::sleep(SETTLE);
    let (warmed, _) = rss_kib(server.pid())?;
    // In quarters, the RSS idle after each: a leak grows with the count, warm-up levels off.
    let mut quarters = Vec::new();
    let (mut ops, mut secs, mut errors, mut during) = (0.0, 0.0, field(&warm, "errors")?, 0);
    let mut kinds = [0.0; 4];
    for q in 0..4 {
        let n = target / 4 + u64::from(q < target % 4);
        let (run, samples) = client(cfg, &server, &args(n), "FSMIX")?;
        server.ensure_alive()?;
        eprintln!("  {run}");
        ops += field(&run, "ops")?;
        secs += field(&run, "secs")?;
        errors += field(&run, "errors")?;
        for (k, key) in kinds.iter_mut().zip(["json", "stream", "cancelled", "ws"]) {
            *k += field(&run, key)?;
        }
        during = during.max(samples.max);
        std::thread::sleep(SETTLE);
        quarters.push((ops, rss_kib(server.pid())?.0));
    }
    let (_, peak) = rss_kib(server.pid())?;
    let after = quarters.last().map_or(warmed, |&(_, rss)| rss);
    let pct = |from: u64| (after as f64 - from as f64) / from as f64 * 100.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### soak_mix — {target} mixed operations against one `fs_mixed` process, {conns} workers (`soak_mix mix`)\n"
    );
    let _ = writeln!(
        out,
        "A quarter each: `POST /mix/json`, `GET /mix/stream` (10 chunks), a request cancelled \
         mid-flight (`GET /mix/hold` on a fresh connection, closed after its first chunk), one \
         WebSocket message echoed on the worker's socket. Every answer is checked.\n"
    );
    let _ = writeln!(out, "| phase | server RSS |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| idle after start | {} |", fmt_mib(idle));
    let _ = writeln!(
        out,
        "| after warm-up ({warm_n} operations) | {} |",
        fmt_mib(warmed)
    );
    for &(done, rss) in &quarters {
        let _ = writeln!(out, "| idle after {done} operations | {} |", fmt_mib(rss));
    }
    let _ = writeln!(
        out,
        "| largest sample during the soak / peak (`VmHWM`) | {} / {} |",
        fmt_mib(during),
        fmt_mib(peak)
    );
    let _ = writeln!(
        out,
        "\n{ops} operations in {secs:.1} s ({:.0}/s: json {}, stream {}, cancelled {}, ws {}), \
         {errors} errors. Growth: **{:+.1} %** from after the warm-up (goal < 5 % → **{}**), \
         {:+.1} % from the cold start.\n",
        ops / secs,
        kinds[0],
        kinds[1],
        kinds[2],
        kinds[3],
        pct(warmed),
        if pct(warmed) < 5.0 { "met" } else { "missed" },
        pct(idle),
    );
    Ok(out)
}

/// `overload`: admitted vs shed requests at 1, 20 and 2,000 connections. Returns its section.
pub(crate) fn overload(cfg: &Config) -> Result<String> {
    let many = env_num("BENCH_OVERLOAD_CONNECTIONS", 2000).max(21);
    let secs = cfg.duration_s.to_string();
    eprintln!("overload: fs_mixed /bounded/ at 1, 20, {many} connections, {secs} s each");
    let (mut server, idle) = start_server(cfg, "ferroserve-overload")?;
    let port = server.port.to_string();
    let mut rows = String::new();
    let mut during_max = 0;
    for (what, conns) in [("unloaded", 1), ("at capacity", 20), ("overloaded", many)] {
        let args = vec![
            "overload".into(),
            port.clone(),
            secs.clone(),
            conns.to_string(),
        ];
        let (line, samples) = client(cfg, &server, &args, "FSOVER")?;
        server.ensure_alive()?;
        eprintln!("  {what}: {line}");
        during_max = during_max.max(samples.max);
        let elapsed = field(&line, "secs")?;
        let ms = |key: &str| field(&line, key).map(|us| format!("{:.1} ms", us / 1000.0));
        let _ = writeln!(
            rows,
            "| {what} | {conns} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} / {} / {} |",
            field(&line, "ok")? / elapsed,
            field(&line, "shed")? / elapsed,
            ms("ok_p50_us")?,
            ms("ok_p99_us")?,
            ms("shed_p50_us")?,
            ms("shed_p99_us")?,
            field(&line, "errors")?,
            fmt_mib(samples.after_1s),
            fmt_mib(samples.max),
            fmt_mib(samples.last),
        );
    }
    std::thread::sleep(SETTLE);
    let (after, peak) = rss_kib(server.pid())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### overload — `GET /bounded/` (1 replica, `max_ongoing_requests` 4, `max_queued_requests` 16, 2 ms of work) far beyond capacity (`soak_mix overload`, {secs} s per row)\n"
    );
    let _ = writeln!(
        out,
        "| load | connections | admitted/s | shed (503 + `Retry-After`)/s | admitted p50 | admitted p99 | 503 p50 | 503 p99 | other errors | server RSS at 1 s / max / end of the run |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    out.push_str(&rows);
    let _ = writeln!(
        out,
        "\nServer RSS: idle {} → largest sample under load {} → idle after {} (peak {}). \
         Client and server share the machine's 2 cores: under overload the latencies include \
         the wait for a CPU on both sides, not only the queue.\n",
        fmt_mib(idle),
        fmt_mib(during_max),
        fmt_mib(after),
        fmt_mib(peak)
    );
    Ok(out)
}
