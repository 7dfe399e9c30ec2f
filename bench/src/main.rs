//! The load-benchmark orchestrator behind `bash bench/run.sh`.
//!
//! For each scenario it starts a bare axum server (A) and a ferroserve server (B) doing the same
//! work, checks they answer alike, then drives them with a closed-loop load client — `wrk` (1
//! thread), or `ws_echo_client` for WebSockets — with a 1 s warm-up before each 5 s measurement,
//! alternating A B A B … so that machine drift hits both sides alike, and reports medians and the
//! ferroserve / axum ratio. Scenarios: `counter`, `handle_hop`, `fastapi_hello`, `streaming`
//! (plus time to first byte with `stream_ttfb`), `websocket_echo`, `json_to_ndarray` (1 MB and
//! 10 MB bodies), `dag_fanout` (two hops with fan-out), `counter_h2c` (HTTP/2 with `h2_load`).
//! It also runs `cancel_latency`, the `iris` ONNX app (ferroserve alone), measures RSS (idle,
//! under load, and after a 1M-request soak) and start-up time (spawn → first 200).
//!
//! The markdown report goes to stdout, to `bench/RESULTS.md`, and into `bench/README.md`
//! between the `<!-- results:start -->` / `<!-- results:end -->` markers; progress goes to
//! stderr. Knobs (environment): `BENCH_ROUNDS` (5, at least 2), `BENCH_DURATION` (5 s),
//! `BENCH_ONLY` (`observability`: only the metrics/access-log/log-level cost section, printed
//! and not written to RESULTS.md; `metrics`: only its metrics row; a comma-separated list of
//! `dag`, `h2`, `soak`, `iris`, and the opt-in `soak_mix`, `overload` of [`reliability`]: only
//! those, printed only), `BENCH_H2_CONNECTIONS` (4),
//! `BENCH_H2_STREAMS` (16), `BENCH_SOAK_REQUESTS` (1000000, 0 skips the soak), `BENCH_WARMUP` (1 s), `BENCH_CONNECTIONS` (16), `BENCH_JSON_CONNECTIONS` (4),
//! `BENCH_TTFB_REQUESTS` (1000), `BENCH_CANCELS` (1000), `BENCH_STARTUP_RUNS` (5),
//! `BENCH_MAX_OTHER` (0.1 cores), `BENCH_QUIET_BUDGET` (300 s), `BENCH_PIDFILE` (where the live
//! server PIDs are kept, so the calling script can kill them on exit).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod reliability;

type Result<T, E = String> = std::result::Result<T, E>;

/// PIDs of the servers currently alive, mirrored to `$BENCH_PIDFILE`.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn sync_pidfile() {
    if let Ok(path) = std::env::var("BENCH_PIDFILE") {
        let pids = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        let _ = std::fs::write(path, text);
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Benchmark settings.
struct Config {
    bin_dir: PathBuf,
    work_dir: PathBuf,
    bench_dir: PathBuf,
    rounds: usize,
    duration_s: u64,
    warmup_s: u64,
    connections: u64,
    startup_runs: usize,
    /// `wrk` connections of the `json_to_ndarray` scenario.
    json_connections: u64,
    /// Measured requests per server of the streaming TTFB client.
    ttfb_requests: u64,
    /// Cancels measured by `cancel_latency`.
    cancels: u64,
    /// Other processes' CPU (cores) above which a run counts as disturbed.
    max_other: f64,
    /// Seconds still available for waiting for a quiet machine and re-running disturbed rounds.
    quiet_budget_s: std::cell::Cell<f64>,
}

/// A server process; killed (SIGKILL) and reaped when dropped.
struct Server {
    label: String,
    child: Child,
    port: u16,
    log: PathBuf,
}

/// Whether `BENCH_ACCESS_LOG=1` keeps ferroserve's access log on in every scenario.
fn access_log_on() -> bool {
    std::env::var("BENCH_ACCESS_LOG").as_deref() == Ok("1")
}

impl Server {
    fn spawn(cfg: &Config, label: &str, bin: &str, args: &[&str]) -> Result<Server> {
        let port = free_port()?;
        let log = cfg.work_dir.join(format!("{label}.stderr.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = Command::new(cfg.bin_dir.join(bin));
        command.env_remove("RUST_LOG");
        // Same work on both sides: bare axum logs nothing per request, so ferroserve's access
        // log is filtered out, except where its cost is the measurement (section 10) or
        // `BENCH_ACCESS_LOG=1` asks to keep it.
        let measures_logging = label.contains("-obs");
        if bin.starts_with("fs_") && !measures_logging && !access_log_on() {
            command.env("RUST_LOG", "info,ferroserve::access=off");
        }
        let child = command
            .args(args)
            .arg(port.to_string())
            .env("FERROSERVE_PORT", port.to_string())
            .env("FERROSERVE_HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawning {bin}: {e}"))?;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        sync_pidfile();
        Ok(Server {
            label: label.to_owned(),
            child,
            port,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `path` until it answers 200; returns the time since `since`.
    fn wait_ready(&mut self, path: &str, since: Instant) -> Result<Duration> {
        let deadline = since + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http(self.port, "GET", path, None) {
                return Ok(since.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited with {status} before answering; see {}",
                    self.label,
                    self.log.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready after 30 s", self.label));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn ensure_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} died ({status}); see {}",
                self.label,
                self.log.display()
            )),
            Err(e) => Err(format!("{}: {e}", self.label)),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != pid);
        sync_pidfile();
    }
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// A minimal HTTP/1.1 request over a fresh loopback connection: `(status, body)`.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, rest) = raw.split_once("\r\n\r\n").ok_or("no header end")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `VmRSS` (and `VmHWM`, the peak) of a process, in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU time a process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    // After the command name: field 3 (state) is index 0; utime/stime are fields 14/15.
    stat_ticks(&format!("/proc/{pid}/stat"), 11)
}

/// User + system CPU time of this process's reaped children so far, in clock ticks.
fn children_ticks() -> u64 {
    // cutime/cstime are fields 16/17.
    stat_ticks("/proc/self/stat", 13)
}

/// The sum of two adjacent tick fields of a `/proc/*/stat` file, counted from the first field
/// after the command name (`index` 0 is field 3); 0 when unreadable.
fn stat_ticks(path: &str, index: usize) -> u64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0;
    };
    let Some((_, after_comm)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(index) + get(index + 1)
}

fn clock_ticks_per_s() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// One wrk run.
#[derive(Clone, Debug, Default)]
struct WrkRun {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// Server CPU time per request, µs (from `/proc/PID/stat` around the run).
    cpu_us_per_req: f64,
    /// CPU used by everything but the server and wrk during the run (incl. steal), in cores.
    other_cores: f64,
}

const LUA_REPORT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "FSBENCH %d %d %.1f %.1f %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"#;

/// How a scenario loads a server: `wrk` with a Lua script, or the WebSocket echo client.
enum Load<'a> {
    Wrk {
        script: &'a Path,
        path: &'a str,
        connections: u64,
    },
    WsEcho {
        connections: u64,
    },
    /// `h2_load`: HTTP/2 over h2c (prior knowledge), `connections` × `streams` closed loops,
    /// each response checked against `expected`.
    H2 {
        path: &'a str,
        connections: u64,
        streams: u64,
        expected: &'a str,
    },
}

impl Load<'_> {
    /// Concurrent requests in flight (connections, or connections × streams for HTTP/2).
    fn connections(&self) -> u64 {
        match self {
            Load::Wrk { connections, .. } | Load::WsEcho { connections } => *connections,
            Load::H2 {
                connections,
                streams,
                ..
            } => connections * streams,
        }
    }
}

/// A load client's (or any measured helper's) run: its output and the CPU accounting.
struct ClientRun {
    stdout: String,
    /// CPU time of `pids` (the servers) during the run, in seconds.
    server_cpu_s: f64,
    /// CPU used by everything but `pids` and the client during the run (incl. steal), in cores.
    other_cores: f64,
    /// Wall time of the run, seconds.
    elapsed_s: f64,
}

impl ClientRun {
    /// Whether other processes disturbed the run. Runs shorter than 1 s are judged by the CPU
    /// time others used as if spread over 1 s, since a few clock ticks of rounding in
    /// `/proc/stat` would otherwise look like a disturbance.
    fn disturbed(&self, cfg: &Config) -> bool {
        self.other_cores * self.elapsed_s / self.elapsed_s.max(1.0) > cfg.max_other
    }
}

/// Runs `cmd` to completion, sampling its CPU time, and accounts the machine's CPU meanwhile.
fn run_client(cfg: &Config, mut cmd: Command, pids: &[u32]) -> Result<ClientRun> {
    let out_path = cfg.work_dir.join("client.stdout");
    let err_path = cfg.work_dir.join("client.stderr");
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let servers = || pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let (busy_before, server_before) = (machine_busy_ticks(), servers());
    let t0 = Instant::now();
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&out_path)?)
        .stderr(file(&err_path)?)
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    // The client's own CPU time: it is added to this process's `cutime`/`cstime` when
    // `try_wait` reaps it (no other child is reaped meanwhile: the servers live on).
    let children_before = children_ticks();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let client_ticks = children_ticks().saturating_sub(children_before);
    let elapsed = t0.elapsed().as_secs_f64();
    let server_ticks = servers().saturating_sub(server_before);
    let busy = machine_busy_ticks().saturating_sub(busy_before);
    let tck = clock_ticks_per_s();
    let other_cores = busy.saturating_sub(server_ticks + client_ticks) as f64 / tck / elapsed;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        return Err(format!("{program} failed ({status}): {stderr}{stdout}"));
    }
    Ok(ClientRun {
        stdout: format!("{stdout}{stderr}"),
        server_cpu_s: server_ticks as f64 / tck,
        other_cores,
        elapsed_s: elapsed,
    })
}

/// One load run of `secs` seconds against `server`; the raw output goes to `log` if given.
fn load_run(
    cfg: &Config,
    server: &Server,
    load: &Load<'_>,
    secs: u64,
    log: Option<&Path>,
) -> Result<WrkRun> {
    let (cmd, shown) = match load {
        Load::Wrk {
            script,
            path,
            connections,
        } => {
            let url = format!("http://127.0.0.1:{}{path}", server.port);
            let mut cmd = Command::new("wrk");
            cmd.arg("-t1")
                .arg(format!("-c{connections}"))
                .arg(format!("-d{secs}s"))
                .arg("--latency")
                .arg("-s")
                .arg(script)
                .arg(&url);
            (
                cmd,
                format!("wrk -t1 -c{connections} -d{secs}s --latency {url}"),
            )
        }
        Load::WsEcho { connections } => {
            let url = format!("ws://127.0.0.1:{}/", server.port);
            let mut cmd = Command::new(cfg.bin_dir.join("ws_echo_client"));
            cmd.arg(&url)
                .arg(connections.to_string())
                .arg(secs.to_string());
            (cmd, format!("ws_echo_client {url} {connections} {secs}"))
        }
        Load::H2 {
            path,
            connections,
            streams,
            expected,
        } => {
            let url = format!("http://127.0.0.1:{}{path}", server.port);
            let mut cmd = Command::new(cfg.bin_dir.join("h2_load"));
            cmd.arg(&url)
                .arg(connections.to_string())
                .arg(streams.to_string())
                .arg(secs.to_string())
                .arg(expected);
            (
                cmd,
                format!("h2_load {url} {connections} {streams} {secs} {expected}"),
            )
        }
    };
    let run = run_client(cfg, cmd, &[server.pid()])?;
    if let Some(log) = log {
        let _ = std::fs::write(log, format!("$ {shown}\n{}", run.stdout));
    }
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("FSBENCH "))
        .ok_or_else(|| format!("no FSBENCH line in the output of {shown}:\n{}", run.stdout))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() != 5 {
        return Err(format!("bad FSBENCH line: {line}"));
    }
    let requests = v[0] as u64;
    let duration_s = v[1] / 1e6;
    Ok(WrkRun {
        requests,
        rps: requests as f64 / duration_s,
        p50_us: v[2],
        p99_us: v[3],
        errors: v[4] as u64,
        cpu_us_per_req: if requests > 0 {
            run.server_cpu_s * 1e6 / requests as f64
        } else {
            0.0
        },
        other_cores: run.other_cores,
    })
}

/// Busy CPU time of the whole machine so far (all CPUs: user, nice, system and steal; not idle,
/// iowait, or interrupt time, which the kernel does not charge to any process), in clock ticks.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are already in user/nice).
    [0, 1, 2, 7].iter().filter_map(|&i| f.get(i)).sum()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn fmt_us(us: f64) -> String {
    if us.abs() >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_signed_us(us: f64) -> String {
    if us >= 0.0 {
        format!("+{}", fmt_us(us))
    } else {
        format!("−{}", fmt_us(-us))
    }
}

fn fmt_rps(rps: f64) -> String {
    let n = rps.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One line of the memory table (KiB, and requests).
struct MemRow {
    label: String,
    idle: u64,
    round1: u64,
    after: u64,
    peak: u64,
    served: u64,
}

/// What one A/B scenario produced.
struct AbResult {
    a: Vec<WrkRun>,
    b: Vec<WrkRun>,
    served_a: u64,
    served_b: u64,
    /// Rounds kept although other processes used more than `max_other` cores.
    disturbed: usize,
    /// VmRSS (KiB) of A and B right after the first round, to tell warm-up from a leak.
    rss_after_round1: (u64, u64),
}

/// Other processes' CPU use (cores) over the next `window`, not counting `pids`.
fn other_load(pids: &[u32], window: Duration) -> f64 {
    let ticks = || pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let (busy0, own0, t0) = (machine_busy_ticks(), ticks(), Instant::now());
    std::thread::sleep(window);
    let busy = machine_busy_ticks().saturating_sub(busy0);
    let own = ticks().saturating_sub(own0);
    busy.saturating_sub(own) as f64 / clock_ticks_per_s() / t0.elapsed().as_secs_f64()
}

/// Waits (within the remaining quiet budget) until other processes use at most `max_other`
/// cores, so that a measurement does not share the 2 CPUs with, say, a compile.
fn wait_quiet(cfg: &Config, pids: &[u32]) {
    let mut announced = false;
    loop {
        let t0 = Instant::now();
        let load = other_load(pids, Duration::from_millis(500));
        if load <= cfg.max_other {
            return;
        }
        let left = cfg.quiet_budget_s.get() - t0.elapsed().as_secs_f64();
        cfg.quiet_budget_s.set(left.max(0.0));
        if left <= 0.0 {
            if !announced {
                eprintln!("  machine busy ({load:.2} cores used by other processes); quiet-wait budget spent, measuring anyway");
            }
            return;
        }
        if !announced {
            eprintln!("  waiting for a quiet machine ({load:.2} cores used by other processes; {left:.0} s of budget left)");
            announced = true;
        }
    }
}

/// Warm-up + measurement on A, then on B, `rounds` times.
fn run_ab(cfg: &Config, a: &mut Server, b: &mut Server, load: &Load<'_>) -> Result<AbResult> {
    let mut res = AbResult {
        a: Vec::new(),
        b: Vec::new(),
        served_a: 0,
        served_b: 0,
        disturbed: 0,
        rss_after_round1: (0, 0),
    };
    let pids = [a.pid(), b.pid()];
    for round in 1..=cfg.rounds {
        loop {
            wait_quiet(cfg, &pids);
            let started = Instant::now();
            let mut pair = Vec::new();
            for (side, server) in [("A", &mut *a), ("B", &mut *b)] {
                let warm = load_run(cfg, server, load, cfg.warmup_s, None)?;
                let log = cfg
                    .work_dir
                    .join(format!("{}-round{round}.load.txt", server.label));
                let run = load_run(cfg, server, load, cfg.duration_s, Some(&log))?;
                server.ensure_alive()?;
                eprintln!(
                    "  round {round} {side} {:<11} {:>9} req/s  p50 {:>8}  p99 {:>8}  \
                     cpu {:.1} µs/req  other procs {:.2} cores{}",
                    server.label.split('-').next().unwrap_or(""),
                    fmt_rps(run.rps),
                    fmt_us(run.p50_us),
                    fmt_us(run.p99_us),
                    run.cpu_us_per_req,
                    run.other_cores,
                    if run.errors > 0 {
                        format!("  ({} errors!)", run.errors)
                    } else {
                        String::new()
                    }
                );
                pair.push((warm.requests + run.requests, run));
            }
            let disturbed = pair.iter().any(|(_, r)| r.other_cores > cfg.max_other);
            if disturbed && cfg.quiet_budget_s.get() > 0.0 {
                let left = cfg.quiet_budget_s.get() - started.elapsed().as_secs_f64();
                cfg.quiet_budget_s.set(left.max(0.0));
                eprintln!("  round {round} disturbed by other processes: measuring it again");
                continue;
            }
            res.disturbed += usize::from(disturbed);
            let (served_b, run_b) = pair.pop().unwrap_or_default();
            let (served_a, run_a) = pair.pop().unwrap_or_default();
            res.served_a += served_a;
            res.served_b += served_b;
            res.a.push(run_a);
            res.b.push(run_b);
            if round == 1 {
                res.rss_after_round1 = (rss_kib(a.pid())?.0, rss_kib(b.pid())?.0);
            }
            break;
        }
    }
    Ok(res)
}

/// How to present one A/B scenario.
struct TableSpec {
    /// What one unit of load is: `req` or `msg`.
    unit: &'static str,
    /// An extra throughput column derived from the rate: its header and the factor.
    derived: Option<(&'static str, f64)>,
    /// Goal for B's derived throughput (e.g. chunks/s), if the project sets one (README, Performance).
    derived_goal: Option<f64>,
    /// Goal for B / A throughput, if the project sets one (README, Performance).
    goal_ratio: Option<f64>,
    /// Goal for the p99 added latency, µs.
    p99_goal_us: Option<f64>,
}

/// The markdown table for one A/B scenario, plus a goal line.
fn ab_table(out: &mut String, cfg: &Config, res: &AbResult, spec: &TableSpec) {
    let unit = spec.unit;
    let med = |runs: &[WrkRun], f: fn(&WrkRun) -> f64| median(runs.iter().map(f).collect());
    let rounds = |runs: &[WrkRun]| {
        runs.iter()
            .map(|r| fmt_rps(r.rps))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let (a_rps, b_rps) = (med(&res.a, |r| r.rps), med(&res.b, |r| r.rps));
    let (a50, b50) = (med(&res.a, |r| r.p50_us), med(&res.b, |r| r.p50_us));
    let (a99, b99) = (med(&res.a, |r| r.p99_us), med(&res.b, |r| r.p99_us));
    let (acpu, bcpu) = (
        med(&res.a, |r| r.cpu_us_per_req),
        med(&res.b, |r| r.cpu_us_per_req),
    );
    let round_ratios: Vec<f64> = res
        .a
        .iter()
        .zip(&res.b)
        .map(|(a, b)| b.rps / a.rps)
        .collect();
    let mut per_round: Vec<String> = round_ratios.iter().map(|r| format!("{r:.2}×")).collect();
    per_round.push(format!("(median {:.2}×)", median(round_ratios.clone())));
    let (aoth, both) = (
        med(&res.a, |r| r.other_cores),
        med(&res.b, |r| r.other_cores),
    );
    let ratio = b_rps / a_rps;
    let errors: u64 = res.a.iter().chain(&res.b).map(|r| r.errors).sum();
    let disturbed = res.disturbed;
    let (dh, da, db, dr) = match spec.derived {
        Some((header, k)) => (
            format!(" {header} (median) |"),
            format!(" {} |", fmt_rps(a_rps * k)),
            format!(" {} |", fmt_rps(b_rps * k)),
            format!(" **{ratio:.2}×** |"),
        ),
        None => Default::default(),
    };
    let dsep = if spec.derived.is_some() { "---:|" } else { "" };
    let _ = writeln!(
        out,
        "| server | {unit}/s (median) |{dh} p50 | p99 | server CPU / {unit} | other procs' CPU | {unit}/s per round |"
    );
    let _ = writeln!(out, "|---|---:|{dsep}---:|---:|---:|---:|---|");
    let _ = writeln!(
        out,
        "| A: bare axum | {} |{da} {} | {} | {acpu:.1} µs | {aoth:.2} cores | {} |",
        fmt_rps(a_rps),
        fmt_us(a50),
        fmt_us(a99),
        rounds(&res.a)
    );
    let _ = writeln!(
        out,
        "| B: ferroserve | {} |{db} {} | {} | {bcpu:.1} µs | {both:.2} cores | {} |",
        fmt_rps(b_rps),
        fmt_us(b50),
        fmt_us(b99),
        rounds(&res.b)
    );
    let _ = writeln!(
        out,
        "| **B / A** | **{ratio:.2}×** |{dr} {} | {} | {:.2}× | | {} |",
        fmt_signed_us(b50 - a50),
        fmt_signed_us(b99 - a99),
        bcpu / acpu,
        per_round.join(" / ").replace("/ (", "(")
    );
    let _ = writeln!(out);
    let mut verdicts = Vec::new();
    if let Some(goal_ratio) = spec.goal_ratio {
        let mut verdict = format!(
            "throughput ≥ {goal_ratio}× bare axum → **{}** ({ratio:.2}×",
            if ratio >= goal_ratio { "met" } else { "missed" }
        );
        if ratio < goal_ratio {
            let _ = write!(
                verdict,
                ", {:.0} % short of the goal",
                (1.0 - ratio / goal_ratio) * 100.0
            );
        }
        verdict.push(')');
        verdicts.push(verdict);
    }
    if let (Some(goal), Some((header, k))) = (spec.derived_goal, spec.derived) {
        verdicts.push(format!(
            "ferroserve ≥ {} {header} → **{}** ({})",
            fmt_rps(goal),
            if b_rps * k >= goal { "met" } else { "missed" },
            fmt_rps(b_rps * k)
        ));
    }
    if let Some(goal) = spec.p99_goal_us {
        let added = b99 - a99;
        verdicts.push(format!(
            "p99 added latency < {} → **{}** ({})",
            fmt_us(goal),
            if added < goal { "met" } else { "missed" },
            fmt_signed_us(added)
        ));
    }
    if !verdicts.is_empty() {
        let _ = writeln!(out, "Goal: {}.", verdicts.join("; "));
    }
    if disturbed > 0 {
        let _ = writeln!(
            out,
            "\n⚠ {disturbed} of {} rounds ran while other processes used more than {} cores \
             (the quiet-wait budget was spent): this table is less trustworthy.",
            res.a.len(),
            cfg.max_other
        );
    }
    if errors > 0 {
        let _ = writeln!(out, "\n⚠ the load client reported {errors} errors (socket errors, non-2xx responses or wrong echoes) in the measured runs.");
    }
    let _ = writeln!(out);
}

fn check_same(
    a: &Server,
    b: &Server,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String> {
    let (sa, ba) = http(a.port, method, path, body)?;
    let (sb, bb) = http(b.port, method, path, body)?;
    // JSON answers are compared as values, anything else (a stream's text) byte for byte.
    let same = match (
        serde_json::from_str::<serde_json::Value>(&ba),
        serde_json::from_str::<serde_json::Value>(&bb),
    ) {
        (Ok(va), Ok(vb)) => va == vb,
        _ => ba == bb,
    };
    if sa != 200 || sb != 200 || !same {
        return Err(format!("servers disagree: A {sa} {ba:?}, B {sb} {bb:?}"));
    }
    Ok(bb)
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn machine_header(cfg: &Config) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let rustc = command_line("rustc", &["--version"]);
    let wrk_v = command_line("wrk", &["-v"]);
    let commit = command_line(
        "git",
        &[
            "-C",
            &cfg.bench_dir.to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = Command::new("git")
        .args([
            "-C",
            &cfg.bench_dir.to_string_lossy(),
            "status",
            "--porcelain",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let mut h = String::new();
    let _ = writeln!(h, "- date: {date}");
    let _ = writeln!(h, "- machine: {nproc} CPUs (nproc), {cpu}, Linux {kernel}");
    let _ = writeln!(
        h,
        "- build: release, {rustc}; commit {commit}{}",
        if dirty { " + uncommitted changes" } else { "" }
    );
    let _ = writeln!(
        h,
        "- load: `{wrk_v}` (HTTP) or `ws_echo_client` (WebSocket) — closed loop, 1 thread, \
         {} connections ({} for `json_to_ndarray`; HTTP/1.1 keep-alive), {} s warm-up then {} s \
         measured per run; A B A B … alternation, {} rounds per side, medians",
        cfg.connections, cfg.json_connections, cfg.warmup_s, cfg.duration_s, cfg.rounds
    );
    let _ = writeln!(
        h,
        "- each A B round starts only when other processes use ≤ {} cores (checked over 0.5 s) \
         and is measured again if they used more meanwhile, within a {:.0} s budget",
        cfg.max_other,
        cfg.quiet_budget_s.get()
    );
    let _ = writeln!(
        h,
        "- load average before the run (1/5/15 min): {}",
        loadavg()
    );
    let _ = writeln!(h, "- client and servers share the machine: the load client takes one core, the server's tokio runtime has one worker per core");
    h
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn write_lua(cfg: &Config, name: &str, prelude: &str) -> Result<PathBuf> {
    let path = cfg.work_dir.join(name);
    std::fs::write(&path, format!("{prelude}{LUA_REPORT}"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// One A/B scenario: which servers, the request both must answer alike, and the load.
struct Scenario<'a> {
    /// Label in logs, file names and the memory table.
    name: &'a str,
    /// `bare_axum`'s scenario argument.
    axum_mode: &'a str,
    /// The ferroserve server binary.
    fs_bin: &'a str,
    /// `(method, path, body)` both servers must answer with the same `200` body; `None` for the
    /// WebSocket scenario, whose echo the client itself checks.
    probe: Option<(&'a str, &'a str, Option<&'a str>)>,
    load: Load<'a>,
}

/// An A/B scenario's results and its two servers, still running.
struct AbOutcome {
    res: AbResult,
    a: Server,
    b: Server,
}

/// Starts both servers of `sc`, checks them, runs the A B rounds, and records memory.
fn ab_scenario(cfg: &Config, sc: &Scenario<'_>, mem_rows: &mut Vec<MemRow>) -> Result<AbOutcome> {
    let settle = Duration::from_millis(500);
    let name = sc.name;
    match sc.probe {
        Some((method, path, _)) => eprintln!(
            "{name}: {method} {path}, {} connections",
            sc.load.connections()
        ),
        None => eprintln!("{name}: WebSocket, {} connections", sc.load.connections()),
    }
    let label = name.replace(' ', "_");
    let t0 = Instant::now();
    let mut a = Server::spawn(cfg, &format!("axum-{label}"), "bare_axum", &[sc.axum_mode])?;
    match sc.probe {
        Some((method, path, body)) => a.wait_ready_for(method, path, body, t0)?,
        None => a.wait_listening("/", t0)?,
    };
    let t0 = Instant::now();
    let mut b = Server::spawn(cfg, &format!("ferroserve-{label}"), sc.fs_bin, &[])?;
    b.wait_ready("/-/healthz", t0)?;
    match sc.probe {
        Some((method, path, body)) => {
            let answer = check_same(&a, &b, method, path, body)?;
            let shown: String = answer.chars().take(60).collect();
            let more = if answer.len() > shown.len() {
                "…"
            } else {
                ""
            };
            eprintln!("  both answer {shown:?}{more} ({} bytes)", answer.len());
        }
        None => {
            let check = Load::WsEcho { connections: 1 };
            for server in [&a, &b] {
                let run = load_run(cfg, server, &check, 1, None)?;
                if run.requests == 0 || run.errors > 0 {
                    return Err(format!(
                        "{}: WebSocket echo check failed ({} echoes, {} errors)",
                        server.label, run.requests, run.errors
                    ));
                }
            }
            eprintln!("  both echo (1 connection, 1 s each)");
        }
    }
    std::thread::sleep(settle);
    let (a_idle, _) = rss_kib(a.pid())?;
    let (b_idle, _) = rss_kib(b.pid())?;
    let res = run_ab(cfg, &mut a, &mut b, &sc.load)?;
    std::thread::sleep(settle);
    let (a_after, a_peak) = rss_kib(a.pid())?;
    let (b_after, b_peak) = rss_kib(b.pid())?;
    mem_rows.push(MemRow {
        label: format!("bare axum, `{name}`"),
        idle: a_idle,
        round1: res.rss_after_round1.0,
        after: a_after,
        peak: a_peak,
        served: res.served_a,
    });
    mem_rows.push(MemRow {
        label: format!("ferroserve, `{name}`"),
        idle: b_idle,
        round1: res.rss_after_round1.1,
        after: b_after,
        peak: b_peak,
        served: res.served_b,
    });
    Ok(AbOutcome { res, a, b })
}

/// Number of rows of 100 floats per `json_to_ndarray` body row.
const ND_COLS: usize = 100;

/// A `{"array": [[100 floats], ...]}` body of at most `target` bytes (as many whole rows as
/// fit), formatted like Python's `json.dumps` (", " separators); floats in [-10, 10) with 6
/// decimals, from a fixed-seed generator. Returns the body and its number of rows.
fn ndarray_body(target: usize) -> (String, usize) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut body = String::from("{\"array\": [");
    let mut rows = 0;
    loop {
        let mut row = String::with_capacity(ND_COLS * 12);
        row.push('[');
        for j in 0..ND_COLS {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let x = (state >> 11) as f64 / (1u64 << 53) as f64 * 20.0 - 10.0;
            if j > 0 {
                row.push_str(", ");
            }
            let _ = write!(row, "{x:.6}");
        }
        row.push(']');
        let sep = if rows > 0 { 2 } else { 0 };
        if body.len() + sep + row.len() + 2 > target {
            break;
        }
        if rows > 0 {
            body.push_str(", ");
        }
        body.push_str(&row);
        rows += 1;
    }
    body.push_str("]}");
    (body, rows)
}

/// TTFB percentiles of one side, from `stream_ttfb`.
struct Ttfb {
    n: u64,
    p50: f64,
    p99: f64,
    max: f64,
    total_p50: f64,
    total_p99: f64,
    bytes: u64,
    chunks: u64,
}

/// Runs `stream_ttfb` against both streaming servers; returns A's, B's and other processes' CPU.
fn measure_ttfb(cfg: &Config, a: &Server, b: &Server, path: &str) -> Result<(Ttfb, Ttfb, f64)> {
    let pids = [a.pid(), b.pid()];
    let mut attempt = 0;
    loop {
        attempt += 1;
        wait_quiet(cfg, &pids);
        let started = Instant::now();
        let mut cmd = Command::new(cfg.bin_dir.join("stream_ttfb"));
        cmd.arg(a.port.to_string())
            .arg(b.port.to_string())
            .arg(path)
            .arg(cfg.ttfb_requests.to_string());
        let run = run_client(cfg, cmd, &pids)?;
        let _ = std::fs::write(cfg.work_dir.join("stream_ttfb.txt"), &run.stdout);
        let side = |s: &str| -> Result<Ttfb> {
            let line = run
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("TTFB {s} ")))
                .ok_or_else(|| format!("no TTFB {s} line in:\n{}", run.stdout))?;
            let v: Vec<f64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() != 8 {
                return Err(format!("bad TTFB line: {line}"));
            }
            Ok(Ttfb {
                n: v[0] as u64,
                p50: v[1],
                p99: v[2],
                max: v[3],
                total_p50: v[4],
                total_p99: v[5],
                bytes: v[6] as u64,
                chunks: v[7] as u64,
            })
        };
        let (ta, tb) = (side("A")?, side("B")?);
        eprintln!(
            "  TTFB A p50 {} p99 {} | B p50 {} p99 {}  other procs {:.2} cores",
            fmt_us(ta.p50),
            fmt_us(ta.p99),
            fmt_us(tb.p50),
            fmt_us(tb.p99),
            run.other_cores
        );
        if run.disturbed(cfg) && cfg.quiet_budget_s.get() > 0.0 && attempt < 5 {
            let left = cfg.quiet_budget_s.get() - started.elapsed().as_secs_f64();
            cfg.quiet_budget_s.set(left.max(0.0));
            eprintln!("  TTFB run disturbed by other processes: measuring it again");
            continue;
        }
        return Ok((ta, tb, run.other_cores));
    }
}

/// Runs `cancel_latency`; returns its markdown table and other processes' CPU meanwhile.
fn measure_cancel(cfg: &Config) -> Result<(String, f64)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        wait_quiet(cfg, &[]);
        let started = Instant::now();
        let mut cmd = Command::new(cfg.bin_dir.join("cancel_latency"));
        cmd.arg(cfg.cancels.to_string());
        let run = run_client(cfg, cmd, &[])?;
        let table: String = run
            .stdout
            .lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        eprintln!(
            "  {}  other procs {:.2} cores",
            table.lines().last().unwrap_or(""),
            run.other_cores
        );
        if run.disturbed(cfg) && cfg.quiet_budget_s.get() > 0.0 && attempt < 5 {
            let left = cfg.quiet_budget_s.get() - started.elapsed().as_secs_f64();
            cfg.quiet_budget_s.set(left.max(0.0));
            eprintln!("  cancel_latency disturbed by other processes: measuring it again");
            continue;
        }
        if table.lines().count() < 3 {
            return Err(format!("unexpected cancel_latency output:\n{}", run.stdout));
        }
        return Ok((table, run.other_cores));
    }
}

/// The value in µs of a table cell like `123 µs`.
fn parse_us_cell(cell: &str) -> Option<f64> {
    cell.trim().strip_suffix("µs")?.trim().parse().ok()
}

fn run(cfg: &Config) -> Result<String> {
    let mut report = String::new();
    let _ = writeln!(report, "{}", machine_header(cfg));
    let get_lua = write_lua(cfg, "get.lua", "")?;
    let post_lua = write_lua(
        cfg,
        "post.lua",
        "wrk.method = \"POST\"\nwrk.body = \"[1,2,3.5]\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;
    let conns = cfg.connections;
    let wrk_get = |path| Load::Wrk {
        script: &get_lua,
        path,
        connections: conns,
    };

    // ── the A/B scenarios, with memory measured on their servers ────────────────────────────
    let mut mem_rows = Vec::new();
    let counter = ab_scenario(
        cfg,
        &Scenario {
            name: "counter",
            axum_mode: "counter",
            fs_bin: "fs_counter",
            probe: Some(("GET", "/?a=b&c=d", None)),
            load: wrk_get("/?a=b&c=d"),
        },
        &mut mem_rows,
    )?
    .res;
    let hop = ab_scenario(
        cfg,
        &Scenario {
            name: "handle_hop",
            axum_mode: "handle_hop",
            fs_bin: "fs_handle_hop",
            probe: Some(("POST", "/", Some("[1,2,3.5]"))),
            load: Load::Wrk {
                script: &post_lua,
                path: "/",
                connections: conns,
            },
        },
        &mut mem_rows,
    )?
    .res;
    let hello = ab_scenario(
        cfg,
        &Scenario {
            name: "fastapi_hello",
            axum_mode: "fastapi_hello",
            fs_bin: "fs_fastapi_hello",
            probe: Some(("GET", "/hello", None)),
            load: wrk_get("/hello"),
        },
        &mut mem_rows,
    )?
    .res;
    let streaming = ab_scenario(
        cfg,
        &Scenario {
            name: "streaming",
            axum_mode: "streaming",
            fs_bin: "fs_streaming",
            probe: Some(("GET", "/stream", None)),
            load: wrk_get("/stream"),
        },
        &mut mem_rows,
    )?;
    eprintln!(
        "streaming TTFB: {} requests each, alternating A B, one at a time",
        cfg.ttfb_requests
    );
    let (ttfb_a, ttfb_b, ttfb_other) = measure_ttfb(cfg, &streaming.a, &streaming.b, "/stream")?;
    let streaming = {
        let AbOutcome { res, a, b } = streaming;
        drop((a, b));
        res
    };
    let ws = ab_scenario(
        cfg,
        &Scenario {
            name: "websocket_echo",
            axum_mode: "websocket_echo",
            fs_bin: "fs_websocket_echo",
            probe: None,
            load: Load::WsEcho { connections: conns },
        },
        &mut mem_rows,
    )?
    .res;
    let mut nd_results = Vec::new();
    for (size_name, target) in [("1 MB", 1_000_000), ("10 MB", 10_000_000)] {
        let (body, rows) = ndarray_body(target);
        let file = cfg
            .work_dir
            .join(format!("ndarray-{}.json", size_name.replace(' ', "")));
        std::fs::write(&file, &body).map_err(|e| format!("{}: {e}", file.display()))?;
        let script = write_lua(
            cfg,
            &format!("ndarray-{}.lua", size_name.replace(' ', "")),
            &format!(
                "local f = assert(io.open({:?}, \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\n\
                 wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
                file.to_string_lossy()
            ),
        )?;
        let name = format!("json_to_ndarray {size_name}");
        let res = ab_scenario(
            cfg,
            &Scenario {
                name: &name,
                axum_mode: "json_to_ndarray",
                fs_bin: "fs_json_to_ndarray",
                probe: Some(("POST", "/ndarray", Some(&body))),
                load: Load::Wrk {
                    script: &script,
                    path: "/ndarray",
                    connections: cfg.json_connections,
                },
            },
            &mut mem_rows,
        )?
        .res;
        nd_results.push((size_name, body.len(), rows, res));
    }

    // ── issue 9's later scenarios: DAG fan-out, HTTP/2, the 1M-request soak, iris ──────────
    let extras = extra_scenarios(cfg, &get_lua, &post_lua, &mut mem_rows, &|_| true)?;
    let soak_note = extras.soak_note;

    // ── cancellation latency (standalone, in-process) ───────────────────────────────────────
    eprintln!("cancel_latency: {} cancels", cfg.cancels);
    let (cancel_table, cancel_other) = measure_cancel(cfg)?;

    // ── start-up time, last (the A/B rounds get the quiet-wait budget first) ────────────────
    eprintln!("startup: {} runs each", cfg.startup_runs);
    let startup_cases: [(&str, &str, &str, &[&str], &str); 3] = [
        (
            "axum-counter",
            "bare axum, `counter`",
            "bare_axum",
            &["counter"],
            "/",
        ),
        (
            "ferroserve-counter",
            "ferroserve, `counter`",
            "fs_counter",
            &[],
            "/-/healthz",
        ),
        (
            "ferroserve-handle_hop",
            "ferroserve, `handle_hop`",
            "fs_handle_hop",
            &[],
            "/-/healthz",
        ),
    ];
    let mut startup_rows = Vec::new();
    for (label, display, bin, args, path) in startup_cases {
        let mut times = Vec::new();
        for _ in 0..cfg.startup_runs {
            wait_quiet(cfg, &[]);
            let t0 = Instant::now();
            let mut s = Server::spawn(cfg, label, bin, args)?;
            let dt = s.wait_ready(path, t0)?;
            times.push(dt.as_secs_f64() * 1e6);
            drop(s);
        }
        eprintln!(
            "  {label}: {}",
            times
                .iter()
                .map(|t| fmt_us(*t))
                .collect::<Vec<_>>()
                .join(", ")
        );
        startup_rows.push((display, path, times));
    }

    // ── the report ──────────────────────────────────────────────────────────────────────────
    let plain = |goal_ratio, p99_goal_us| TableSpec {
        unit: "req",
        derived: None,
        derived_goal: None,
        goal_ratio,
        p99_goal_us,
    };
    let _ = writeln!(
        report,
        "### 1. `counter` — `GET /?a=b&c=d` → `{{\"a\":\"b\",\"c\":\"d\"}}`, {conns} connections\n"
    );
    ab_table(&mut report, cfg, &counter, &plain(Some(0.9), Some(1000.0)));
    let _ = writeln!(
        report,
        "### 2. `handle_hop` — `POST /` `[1,2,3.5]` → ingress → `DeploymentHandle` → model (2 replicas) → `{{\"sum\":6.5}}`, {conns} connections\n"
    );
    ab_table(&mut report, cfg, &hop, &plain(Some(0.8), None));
    let _ = writeln!(
        report,
        "### 3. `fastapi_hello` — `GET /hello` → `\"Hello, world!\"` (`ApiIngress` + `ApiRouter`, route prefix `/hello`), {conns} connections\n"
    );
    ab_table(&mut report, cfg, &hello, &plain(Some(0.9), None));

    let _ = writeln!(
        report,
        "### 4. `streaming` — `GET /stream` → 100 chunks `chunk NN\\n` (chunked, produced immediately), {conns} connections\n"
    );
    ab_table(
        &mut report,
        cfg,
        &streaming,
        &TableSpec {
            unit: "req",
            derived: Some(("chunks/s", 100.0)),
            derived_goal: Some(100_000.0),
            goal_ratio: None,
            p99_goal_us: None,
        },
    );
    let _ = writeln!(
        report,
        "Time to first byte, `stream_ttfb`: one keep-alive connection per server, one request at \
         a time alternating A B, {} measured requests each (after {} warm-up each); TTFB = request \
         written → first body chunk read, total = → terminating chunk read. Other processes' CPU \
         meanwhile: {ttfb_other:.2} cores.\n",
        ttfb_a.n,
        cfg.ttfb_requests / 10
    );
    let _ = writeln!(
        report,
        "| server | requests | TTFB p50 | TTFB p99 | TTFB max | total p50 | total p99 | body |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---|");
    for (label, t) in [("A: bare axum", &ttfb_a), ("B: ferroserve", &ttfb_b)] {
        let _ = writeln!(
            report,
            "| {label} | {} | {} | {} | {} | {} | {} | {} bytes in {} chunks |",
            fmt_rps(t.n as f64),
            fmt_us(t.p50),
            fmt_us(t.p99),
            fmt_us(t.max),
            fmt_us(t.total_p50),
            fmt_us(t.total_p99),
            t.bytes,
            t.chunks
        );
    }
    let _ = writeln!(
        report,
        "| **B − A** | | {} | {} | | {} | {} | |",
        fmt_signed_us(ttfb_b.p50 - ttfb_a.p50),
        fmt_signed_us(ttfb_b.p99 - ttfb_a.p99),
        fmt_signed_us(ttfb_b.total_p50 - ttfb_a.total_p50),
        fmt_signed_us(ttfb_b.total_p99 - ttfb_a.total_p99),
    );
    let _ = writeln!(
        report,
        "\nGoal: first chunk leaves within 1 ms of being produced → **{}** (ferroserve TTFB \
         median {}, p99 {}; TTFB includes the request's trip in, its routing and the handler, so \
         it bounds the produced → sent time from above).\n",
        if ttfb_b.p50 < 1000.0 {
            "met"
        } else {
            "not shown"
        },
        fmt_us(ttfb_b.p50),
        fmt_us(ttfb_b.p99)
    );

    let _ = writeln!(
        report,
        "### 5. `websocket_echo` — text message → echo, closed loop per connection, {conns} connections (`ws_echo_client`)\n"
    );
    ab_table(
        &mut report,
        cfg,
        &ws,
        &TableSpec {
            unit: "msg",
            derived: None,
            derived_goal: None,
            goal_ratio: None,
            p99_goal_us: None,
        },
    );

    let _ = writeln!(
        report,
        "### 6. `json_to_ndarray` — `POST /ndarray` `{{\"array\": [[{ND_COLS} floats], …]}}` → `{{\"sum\": …}}`, {} connections\n",
        cfg.json_connections
    );
    let _ = writeln!(
        report,
        "A parses the body with `serde_json::from_slice::<Nd>` (`Nd {{ array: Vec<Vec<f64>> }}`) and \
         sums; B is the `JsonToNdarray` adapter (JSON decoded as it is read into a shape and one \
         typed vector, dtype inference → `ArrayD<f64>`) and sums. MB = 10⁶ bytes of JSON body.\n"
    );
    for (size_name, bytes, rows, res) in &nd_results {
        let _ = writeln!(
            report,
            "#### {size_name} body ({} bytes, {rows} × {ND_COLS} floats)\n",
            fmt_rps(*bytes as f64)
        );
        ab_table(
            &mut report,
            cfg,
            res,
            &TableSpec {
                unit: "req",
                derived: Some(("MB/s decoded", *bytes as f64 / 1e6)),
                derived_goal: None,
                goal_ratio: None,
                p99_goal_us: None,
            },
        );
    }

    let _ = writeln!(
        report,
        "### 7. Cancellation latency (`cancel_latency {}`: client closes → handler's `on_cancel` runs)\n",
        cfg.cancels
    );
    let _ = write!(report, "{cancel_table}");
    let median_us = cancel_table
        .lines()
        .nth(2)
        .and_then(|row| row.split('|').nth(2))
        .and_then(parse_us_cell);
    match median_us {
        Some(m) => {
            let _ = writeln!(
                report,
                "\nGoal: median ≤ 1 ms → **{}** ({}). Other processes' CPU meanwhile: {cancel_other:.2} cores.\n",
                if m <= 1000.0 { "met" } else { "missed" },
                fmt_us(m)
            );
        }
        None => {
            let _ = writeln!(report, "\n(could not read the median from the table)\n");
        }
    }

    report.push_str(&memory_table(&mem_rows, &soak_note));
    let _ = writeln!(report);

    let _ = writeln!(
        report,
        "### 9. Start-up time (spawn → first 200), {} runs\n",
        cfg.startup_runs
    );
    let _ = writeln!(report, "| server | probe | median | min | max |");
    let _ = writeln!(report, "|---|---|---:|---:|---:|");
    for (label, path, times) in startup_rows {
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            report,
            "| {} | `GET {path}` | {} | {} | {} |",
            label,
            fmt_us(median(times)),
            fmt_us(min),
            fmt_us(max)
        );
    }
    let _ = writeln!(report);
    report.push_str(&observability_cost(cfg, &get_lua)?);
    report.push_str(&extras.sections);
    let _ = writeln!(
        report,
        "\nLoad average after the run (1/5/15 min): {}.",
        loadavg()
    );
    Ok(report)
}

/// The report text of [`extra_scenarios`].
struct Extras {
    /// `### 11.` … `### 13.` (those that ran).
    sections: String,
    /// The soak's goal line, printed under the memory table (empty if the soak did not run).
    soak_note: String,
}

/// Whether `BENCH_ONLY` (a comma-separated list) names `what`; `None` when it is unset or empty.
fn bench_only() -> Option<Vec<String>> {
    let v = std::env::var("BENCH_ONLY").ok()?;
    let names: Vec<String> = v
        .split(',')
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    (!names.is_empty()).then_some(names)
}

/// The `BENCH_ONLY` names [`extra_scenarios`] knows.
const EXTRA_NAMES: [&str; 4] = ["dag", "h2", "soak", "iris"];

/// The scenarios issue 9 added after the first ones, each run if `selected(name)` (`dag`, `h2`,
/// `soak`, `iris`): `dag_fanout` and `counter_h2c` (A/B, their servers' memory into
/// `mem_rows`), the 1M-request soak (rows into `mem_rows`), and `iris` (ferroserve alone).
fn extra_scenarios(
    cfg: &Config,
    get_lua: &Path,
    post_lua: &Path,
    mem_rows: &mut Vec<MemRow>,
    selected: &dyn Fn(&str) -> bool,
) -> Result<Extras> {
    let mut out = String::new();
    let mut soak_note = String::new();
    let conns = cfg.connections;
    let plain = TableSpec {
        unit: "req",
        derived: None,
        derived_goal: None,
        goal_ratio: None,
        p99_goal_us: None,
    };
    if selected("dag") {
        let res = ab_scenario(
            cfg,
            &Scenario {
                name: "dag_fanout",
                axum_mode: "dag_fanout",
                fs_bin: "fs_dag_fanout",
                probe: Some(("POST", "/", Some("[1,2,3.5]"))),
                load: Load::Wrk {
                    script: post_lua,
                    path: "/",
                    connections: conns,
                },
            },
            mem_rows,
        )?
        .res;
        let _ = writeln!(
            out,
            "### 11. `dag_fanout` — `POST /` `[1,2,3.5]` → ingress → two models concurrently \
             (`tokio::join!` of two `handle.remote(..)`) → `{{\"sum\":6.5,\"sumsq\":17.25}}`, {conns} connections\n"
        );
        let _ = writeln!(
            out,
            "A: one axum handler awaiting two async functions with `tokio::join!`. B: an ingress \
             with `DeploymentHandle`s to two model deployments (1 replica each), two hops per \
             request in flight at once.\n"
        );
        ab_table(&mut out, cfg, &res, &plain);
    }
    if selected("h2") {
        let h2_conns = env_num("BENCH_H2_CONNECTIONS", 4).max(1);
        let streams = env_num("BENCH_H2_STREAMS", 16).max(1);
        let res = ab_scenario(
            cfg,
            &Scenario {
                name: "counter_h2c",
                axum_mode: "counter",
                fs_bin: "fs_counter",
                probe: Some(("GET", "/?a=b&c=d", None)),
                load: Load::H2 {
                    path: "/?a=b&c=d",
                    connections: h2_conns,
                    streams,
                    expected: r#"{"a":"b","c":"d"}"#,
                },
            },
            mem_rows,
        )?
        .res;
        let _ = writeln!(
            out,
            "### 12. `counter_h2c` — `counter` over HTTP/2 cleartext (prior knowledge), \
             {h2_conns} connections × {streams} concurrent streams (`h2_load`)\n"
        );
        let _ = writeln!(
            out,
            "The same servers as `counter` (both serve HTTP/1.1 and h2c on one port). `h2_load`: \
             one thread, closed loop per stream, every body checked against \
             `{{\"a\":\"b\",\"c\":\"d\"}}`.\n"
        );
        ab_table(&mut out, cfg, &res, &plain);
    }
    if selected("soak") {
        let target = env_num("BENCH_SOAK_REQUESTS", 1_000_000);
        if target > 0 {
            soak_note = soak(cfg, get_lua, target, mem_rows)?;
        }
    }
    if selected("iris") {
        out.push_str(&iris(cfg)?);
    }
    Ok(Extras {
        sections: out,
        soak_note,
    })
}

/// The memory soak: for bare axum and ferroserve `counter` in turn, RSS idle after start, after
/// a warm-up run, and idle after `target` requests (`wrk` runs until the count is reached).
/// Returns the goal line for under the memory table.
fn soak(cfg: &Config, get_lua: &Path, target: u64, mem_rows: &mut Vec<MemRow>) -> Result<String> {
    let settle = Duration::from_millis(500);
    let load = Load::Wrk {
        script: get_lua,
        path: "/?a=b&c=d",
        connections: cfg.connections,
    };
    let mut notes = Vec::new();
    for (label, display, bin, args, ready) in [
        ("axum-soak", "bare axum", "bare_axum", &["counter"][..], "/"),
        (
            "ferroserve-soak",
            "ferroserve",
            "fs_counter",
            &[][..],
            "/-/healthz",
        ),
    ] {
        eprintln!("soak: {display} `counter`, {target} requests");
        let t0 = Instant::now();
        let mut server = Server::spawn(cfg, label, bin, args)?;
        server.wait_ready(ready, t0)?;
        std::thread::sleep(settle);
        let (idle, _) = rss_kib(server.pid())?;
        wait_quiet(cfg, &[server.pid()]);
        let warm = load_run(cfg, &server, &load, cfg.warmup_s, None)?;
        let mut served = warm.requests;
        let mut errors = warm.errors;
        std::thread::sleep(settle);
        let (warmed, _) = rss_kib(server.pid())?;
        let mut rate = warm.rps.max(1000.0);
        let soak_t0 = Instant::now();
        while served < target {
            let secs = (((target - served) as f64 / rate).ceil() as u64).clamp(1, 10);
            let run = load_run(cfg, &server, &load, secs, None)?;
            server.ensure_alive()?;
            served += run.requests;
            errors += run.errors;
            rate = run.rps.max(1000.0);
        }
        let soak_s = soak_t0.elapsed().as_secs_f64();
        std::thread::sleep(settle);
        let (after, peak) = rss_kib(server.pid())?;
        let pct = |from: u64| (after as f64 - from as f64) / from as f64 * 100.0;
        eprintln!(
            "  {display}: idle {} → after warm-up {} → after {served} requests {} ({:+.1} % from \
             warm-up, {:+.1} % from start; {soak_s:.1} s; {errors} errors)",
            fmt_mib(idle),
            fmt_mib(warmed),
            fmt_mib(after),
            pct(warmed),
            pct(idle)
        );
        mem_rows.push(MemRow {
            label: format!(
                "{display}, `counter`, soak to {} requests",
                fmt_rps(target as f64)
            ),
            idle,
            round1: warmed,
            after,
            peak,
            served,
        });
        notes.push((display, pct(warmed), pct(idle), served, errors));
    }
    let mut note = format!(
        "Soak (`BENCH_SOAK_REQUESTS`={}): each `counter` server alone, `wrk` {} connections until \
         the count is reached; the \"after round 1\" column of the soak rows is after the {} s \
         warm-up run.",
        fmt_rps(target as f64),
        cfg.connections,
        cfg.warmup_s
    );
    for &(display, from_warm, from_start, served, errors) in &notes {
        let _ = write!(
            note,
            " {display}: {from_warm:+.1} % after warm-up → end, {from_start:+.1} % start → end \
             ({} requests{}).",
            fmt_rps(served as f64),
            if errors > 0 {
                format!(", ⚠ {errors} errors")
            } else {
                String::new()
            }
        );
    }
    if let Some(&(_, from_warm, from_start, ..)) = notes.last() {
        let _ = write!(
            note,
            " Goal: ferroserve RSS growth over {} requests < 5 % → **{}** ({from_warm:+.1} % from \
             after the warm-up; {from_start:+.1} % from the cold start, which includes allocator \
             and buffer warm-up).",
            fmt_rps(target as f64),
            if from_warm < 5.0 { "met" } else { "missed" }
        );
    }
    Ok(note)
}

/// `### 13.`: the iris classifier (`fs_iris`, ferroserve alone: no bare-axum counterpart),
/// `POST /iris/predict` with two rows, `rounds` warm-up + measured `wrk` runs, medians.
fn iris(cfg: &Config) -> Result<String> {
    let body = r#"{"array": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}"#;
    let script = write_lua(
        cfg,
        "iris.lua",
        &format!(
            "wrk.method = \"POST\"\nwrk.body = {body:?}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )?;
    let path = "/iris/predict";
    let load = Load::Wrk {
        script: &script,
        path,
        connections: cfg.connections,
    };
    eprintln!("iris: POST {path}, {} connections", cfg.connections);
    let t0 = Instant::now();
    let mut server = Server::spawn(cfg, "ferroserve-iris", "fs_iris", &[])?;
    let startup = server.wait_ready("/-/healthz", t0)?;
    let (status, answer) = http(server.port, "POST", path, Some(body))?;
    let labels = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .map(|v| v["labels"].clone());
    if status != 200 || labels != Some(serde_json::json!(["setosa", "virginica"])) {
        return Err(format!("iris answered {status} {answer:?}"));
    }
    eprintln!("  answers {answer}");
    let mut runs = Vec::new();
    for round in 1..=cfg.rounds {
        wait_quiet(cfg, &[server.pid()]);
        load_run(cfg, &server, &load, cfg.warmup_s, None)?;
        let log = cfg
            .work_dir
            .join(format!("ferroserve-iris-round{round}.load.txt"));
        let run = load_run(cfg, &server, &load, cfg.duration_s, Some(&log))?;
        server.ensure_alive()?;
        eprintln!(
            "  round {round} {:>9} req/s  p50 {:>8}  p99 {:>8}  cpu {:.1} µs/req  other procs {:.2} cores",
            fmt_rps(run.rps),
            fmt_us(run.p50_us),
            fmt_us(run.p99_us),
            run.cpu_us_per_req,
            run.other_cores
        );
        runs.push(run);
    }
    let (rss, peak) = rss_kib(server.pid())?;
    let med = |f: fn(&WrkRun) -> f64| median(runs.iter().map(f).collect());
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    let disturbed = runs
        .iter()
        .filter(|r| r.other_cores > cfg.max_other)
        .count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### 13. `iris` — `POST /iris/predict` (2 rows) → labels + probabilities, \
         `apps/iris/serve.yaml` (Preprocess ingress → `DeploymentHandle` → tract ONNX model, 2 \
         replicas), {} connections\n",
        cfg.connections
    );
    let _ = writeln!(
        out,
        "ferroserve alone (`fs_iris`: what `ferroserve run apps/iris/serve.yaml` does): there is \
         **no bare-axum counterpart**, so no ratio. Body `{body}`; answer checked \
         (`[\"setosa\",\"virginica\"]`).\n"
    );
    let _ = writeln!(
        out,
        "| server | req/s (median) | p50 | p99 | server CPU / req | other procs' CPU | req/s per round | RSS after | peak | start-up |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| ferroserve, `iris` | {} | {} | {} | {:.1} µs | {:.2} cores | {} | {} | {} | {} |",
        fmt_rps(med(|r| r.rps)),
        fmt_us(med(|r| r.p50_us)),
        fmt_us(med(|r| r.p99_us)),
        med(|r| r.cpu_us_per_req),
        med(|r| r.other_cores),
        runs.iter()
            .map(|r| fmt_rps(r.rps))
            .collect::<Vec<_>>()
            .join(" / "),
        fmt_mib(rss),
        fmt_mib(peak),
        fmt_us(startup.as_secs_f64() * 1e6)
    );
    if disturbed > 0 {
        let _ = writeln!(
            out,
            "\n⚠ {disturbed} of {} runs ran while other processes used more than {} cores.",
            runs.len(),
            cfg.max_other
        );
    }
    if errors > 0 {
        let _ = writeln!(
            out,
            "\n⚠ `wrk` reported {errors} errors in the measured runs."
        );
    }
    let _ = writeln!(out);
    Ok(out)
}

/// `### 8.`: the memory table, then the `counter` idle goal and the soak note (if any).
fn memory_table(mem_rows: &[MemRow], soak_note: &str) -> String {
    let mut report = String::new();
    let _ = writeln!(report, "### 8. Memory (VmRSS)\n");
    let _ = writeln!(
        report,
        "| server | after start (idle) | after round 1 | after all rounds (idle) | \
         growth start → end | growth round 1 → end | peak (VmHWM) | requests (messages) served |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |kib: i64| kib as f64 / 1024.0;
    for r in mem_rows {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} | {:+.1} MiB | {:+.1} MiB | {} | {} |",
            r.label,
            fmt_mib(r.idle),
            fmt_mib(r.round1),
            fmt_mib(r.after),
            mib(r.after as i64 - r.idle as i64),
            mib(r.after as i64 - r.round1 as i64),
            fmt_mib(r.peak),
            fmt_rps(r.served as f64)
        );
    }
    if let Some(r) = mem_rows
        .iter()
        .find(|r| r.label.starts_with("ferroserve, `counter`"))
    {
        let _ = writeln!(
            report,
            "\nGoal: idle `counter` RSS < 30 MB → **{}** ({}). Growth from start is allocator and \
             buffer warm-up (bare axum shows the same); a leak would show as growth from round 1 on.",
            if (r.idle as f64) * 1024.0 < 30e6 {
                "met"
            } else {
                "missed"
            },
            fmt_mib(r.idle)
        );
    }
    if !soak_note.is_empty() {
        let _ = writeln!(report, "\n{soak_note}");
    }
    report
}

/// The cost of metrics and of the access log: the `counter` scenario on ferroserve with the
/// feature on (A) against the same binary with it off (B), A B A B; `### 10.` of the report,
/// or all of it with `BENCH_ONLY=observability`.
fn observability_cost(cfg: &Config, get_lua: &Path) -> Result<String> {
    let load = Load::Wrk {
        script: get_lua,
        path: "/?a=b&c=d",
        connections: cfg.connections,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### 10. Observability cost (`counter` on ferroserve, A B A B, {} rounds of {} s, {} connections)\n",
        cfg.rounds, cfg.duration_s, cfg.connections
    );
    let _ = writeln!(
        out,
        "| A (on) | B (off) | A req/s | B req/s | A/B per round | A/B median | A cpu | B cpu |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---|---:|---:|---:|");
    // (A label, A binary and arguments, B label, B binary and arguments).
    type Side<'a> = (&'a str, &'a str, &'a [&'a str]);
    let pairs: [(Side<'_>, Side<'_>); 4] = [
        (
            ("metrics on", "fs_counter", &["no-access-log"]),
            (
                "metrics off",
                "fs_counter",
                &["no-access-log", "no-metrics"],
            ),
        ),
        (
            ("access log on", "fs_counter", &[]),
            ("access log off", "fs_counter", &["no-access-log"]),
        ),
        (
            ("`INFO` (replica labels)", "fs_counter", &["no-access-log"]),
            ("`WARNING`", "fs_counter", &["no-access-log", "log-warn"]),
        ),
        (
            ("ferroserve, default config", "fs_counter", &[]),
            ("bare axum", "bare_axum", &["counter"]),
        ),
    ];
    let only_metrics = std::env::var("BENCH_ONLY").as_deref() == Ok("metrics");
    for (i, ((a_name, a_bin, a_args), (b_name, b_bin, b_args))) in pairs.into_iter().enumerate() {
        if only_metrics && i > 0 {
            break;
        }
        eprintln!("observability {i}: {a_name} (A) vs {b_name} (B)");
        let t0 = Instant::now();
        let mut a = Server::spawn(cfg, &format!("on-obs{i}"), a_bin, a_args)?;
        a.wait_ready("/?a=b&c=d", t0)?;
        let t0 = Instant::now();
        let mut b = Server::spawn(cfg, &format!("off-obs{i}"), b_bin, b_args)?;
        b.wait_ready("/?a=b&c=d", t0)?;
        check_same(&a, &b, "GET", "/?a=b&c=d", None)?;
        let res = run_ab(cfg, &mut a, &mut b, &load)?;
        let med = |runs: &[WrkRun], f: fn(&WrkRun) -> f64| median(runs.iter().map(f).collect());
        let ratios: Vec<f64> = res
            .a
            .iter()
            .zip(&res.b)
            .map(|(a, b)| a.rps / b.rps)
            .collect();
        let _ = writeln!(
            out,
            "| {a_name} | {b_name} | {} | {} | {} | **{:.3}** | {:.1} µs/req | {:.1} µs/req |",
            fmt_rps(med(&res.a, |r| r.rps)),
            fmt_rps(med(&res.b, |r| r.rps)),
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" / "),
            median(ratios.clone()),
            med(&res.a, |r| r.cpu_us_per_req),
            med(&res.b, |r| r.cpu_us_per_req),
        );
    }
    let _ = writeln!(
        out,
        "\nGoals: metrics cost < 3% of `counter` throughput (A/B ≥ 0.97 on the first row); the default \
         configuration (metrics and access log on) ≥ 0.85× of bare axum (the last row). The access \
         log writes one line per request to stderr (here a file), in batches. The third row is \
         what logging at `INFO` costs a request that logs nothing (replica labels)."
    );
    Ok(out)
}

impl Server {
    /// Like [`Server::wait_ready`] but for any method/body (the axum `handle_hop` server has
    /// only `POST /`).
    fn wait_ready_for(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        since: Instant,
    ) -> Result<Duration> {
        if method == "GET" {
            return self.wait_ready(path, since);
        }
        self.poll_until(since, |port| {
            matches!(http(port, method, path, body), Ok((200, _)))
        })
    }

    /// Waits until the server answers `GET path` with any HTTP status (the axum WebSocket
    /// server has only an upgrade route, which refuses a plain `GET`).
    fn wait_listening(&mut self, path: &str, since: Instant) -> Result<Duration> {
        self.poll_until(since, |port| http(port, "GET", path, None).is_ok())
    }

    fn poll_until(&mut self, since: Instant, ready: impl Fn(u16) -> bool) -> Result<Duration> {
        let deadline = since + Duration::from_secs(30);
        loop {
            if ready(self.port) {
                return Ok(since.elapsed());
            }
            self.ensure_alive()?;
            if Instant::now() > deadline {
                return Err(format!("{} not ready after 30 s", self.label));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn update_readme(bench_dir: &Path, report: &str) -> Result<()> {
    let path = bench_dir.join("README.md");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (start, end) = ("<!-- results:start -->", "<!-- results:end -->");
    let (Some(i), Some(j)) = (text.find(start), text.find(end)) else {
        return Err(format!("{} has no {start} … {end} markers", path.display()));
    };
    let new = format!("{}{start}\n{report}{}", &text[..i], &text[j..]);
    std::fs::write(&path, new).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() {
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let work_dir = std::env::temp_dir().join("ferroserve-bench");
    if let Err(e) = std::fs::create_dir_all(&work_dir) {
        eprintln!("{}: {e}", work_dir.display());
        std::process::exit(1);
    }
    let cfg = Config {
        bin_dir,
        work_dir,
        bench_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        rounds: env_num("BENCH_ROUNDS", 5).max(2) as usize,
        duration_s: env_num("BENCH_DURATION", 5).max(1),
        warmup_s: env_num("BENCH_WARMUP", 1).max(1),
        connections: env_num("BENCH_CONNECTIONS", 16).max(1),
        startup_runs: env_num("BENCH_STARTUP_RUNS", 5).max(1) as usize,
        json_connections: env_num("BENCH_JSON_CONNECTIONS", 4).max(1),
        ttfb_requests: env_num("BENCH_TTFB_REQUESTS", 1000).max(10),
        cancels: env_num("BENCH_CANCELS", 1000).max(10),
        max_other: std::env::var("BENCH_MAX_OTHER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.1),
        quiet_budget_s: std::cell::Cell::new(env_num("BENCH_QUIET_BUDGET", 300) as f64),
    };
    if matches!(
        std::env::var("BENCH_ONLY").as_deref(),
        Ok("observability" | "metrics")
    ) {
        let report = write_lua(&cfg, "get.lua", "").and_then(|lua| observability_cost(&cfg, &lua));
        match report {
            Ok(report) => println!("{report}"),
            Err(e) => {
                eprintln!("benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Some(names) = bench_only() {
        let known = |n: &String| {
            EXTRA_NAMES.contains(&n.as_str()) || reliability::NAMES.contains(&n.as_str())
        };
        if names.iter().all(known) {
            let report = write_lua(&cfg, "get.lua", "").and_then(|get_lua| {
                let post_lua = write_lua(
                    &cfg,
                    "post.lua",
                    "wrk.method = \"POST\"\nwrk.body = \"[1,2,3.5]\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
                )?;
                let mut mem_rows = Vec::new();
                let extras = extra_scenarios(&cfg, &get_lua, &post_lua, &mut mem_rows, &|n| {
                    names.iter().any(|m| m == n)
                })?;
                let mut report = format!("{}{}", machine_header(&cfg), extras.sections);
                if !mem_rows.is_empty() {
                    report.push_str(&memory_table(&mem_rows, &extras.soak_note));
                }
                if names.iter().any(|n| n == "soak_mix") {
                    report.push_str(&reliability::soak_mix(&cfg)?);
                }
                if names.iter().any(|n| n == "overload") {
                    report.push_str(&reliability::overload(&cfg)?);
                }
                Ok(report)
            });
            match report {
                Ok(report) => println!("{report}"),
                Err(e) => {
                    eprintln!("benchmark failed: {e}");
                    std::process::exit(1);
                }
            }
            return;
        }
    }
    match run(&cfg) {
        Ok(report) => {
            println!("{report}");
            let results = format!("# ferroserve load benchmark — latest results\n\nProduced by `bash bench/run.sh`; see README.md for what each scenario measures.\n\n{report}");
            if let Err(e) = std::fs::write(cfg.bench_dir.join("RESULTS.md"), results) {
                eprintln!("writing RESULTS.md: {e}");
            }
            if let Err(e) = update_readme(&cfg.bench_dir, &report) {
                eprintln!("not updating README.md: {e}");
            }
            eprintln!("raw wrk output and server logs: {}", cfg.work_dir.display());
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
