//! `midge-bench all`: starts Mosquitto and Midge on free loopback ports, runs every scenario against
//! both, stops both, and prints one table. See BENCHMARKS.md for what the numbers mean.

mod api;
mod certs;
mod cluster;
mod flood;
mod latency;
mod mqtt;
mod proc;
mod restart;
mod scenarios;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use midge_broker::protocol::QoS;
use mqtt::{Endpoint, Transport};
use scenarios::{find_max, idle, Load, Step, Target};

#[derive(Parser)]
#[command(name = "midge-bench")]
struct Cli {
    /// The midge-broker binary to measure.
    #[arg(long, default_value = "target/release/midge-broker")]
    midge: PathBuf,
    /// The midge-mgmt binary, for the API's latency.
    #[arg(long, default_value = "target/release/midge-mgmt")]
    mgmt: PathBuf,
    /// Idle MQTT clients connected while the API is timed.
    #[arg(long, default_value_t = 10_000)]
    api_clients: usize,
    /// Requests timed per API route.
    #[arg(long, default_value_t = 1_000)]
    api_requests: usize,
    /// The mosquitto binary to compare with.
    #[arg(long, default_value = "mosquitto")]
    mosquitto: String,
    /// A rumqttd binary to compare with too, on the throughput and idle scenarios (`scripts/bench.sh`
    /// installs one).
    #[arg(long)]
    rumqttd: Option<PathBuf>,
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Alternating rounds of the latency scenario (one second each, per broker and QoS).
    #[arg(long, default_value_t = 20)]
    latency_rounds: usize,
    /// Connections opened for the TLS and WebSocket connect rates.
    #[arg(long, default_value_t = 2_000)]
    transport_connections: usize,
    /// Retained messages for the restart scenario.
    #[arg(long, default_value_t = 100_000)]
    restart_retained: usize,
    /// Persistent sessions for the restart scenario, each with 100 messages queued.
    #[arg(long, default_value_t = 10_000)]
    restart_sessions: usize,
    /// Only these scenarios (fanin0, fanin1, fanin2, fanout0, fanin1-persistent, fanin2-persistent, restart, sessions, latency, wake, idle, overload, flood, tls,
    /// ws, wss, api, cluster, and fanin0-v5, fanin1-v5, fanout0-v5, or mqtt5 for those three); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Profiling: run each selected throughput scenario on Midge alone at this one rate, step after
    /// step, for its whole time budget, instead of searching both brokers for the highest passing rate.
    #[arg(long)]
    at: Option<f64>,
}

/// A broker process, stopped when dropped.
struct Broker {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    /// Its other listeners: MQTT/TLS, and WebSocket plain and secure where it has them.
    tls: SocketAddr,
    ws: Option<SocketAddr>,
    wss: Option<SocketAddr>,
    _dir: PathBuf,
    /// How it was started, to start it again on the same ports and files.
    launch: Launch,
}

/// A broker's command line.
struct Launch {
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(String, String)>,
    /// Mosquitto's stderr says nothing we read; Midge's warnings are worth seeing.
    quiet: bool,
}

impl Launch {
    fn new(program: impl Into<std::ffi::OsString>, quiet: bool) -> Launch {
        Launch { program: program.into(), args: Vec::new(), envs: Vec::new(), quiet }
    }

    fn arg(&mut self, arg: impl Into<std::ffi::OsString>) -> &mut Launch {
        self.args.push(arg.into());
        self
    }

    fn env(&mut self, key: &str, value: &str) -> &mut Launch {
        self.envs.push((key.into(), value.into()));
        self
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let mut command = Command::new(&self.program);
        command.args(&self.args).envs(self.envs.iter().map(|(k, v)| (k, v))).stdout(Stdio::null());
        if self.quiet {
            command.stderr(Stdio::null());
        }
        command.spawn()
    }
}

impl Broker {
    /// Stops it with SIGTERM (it saves what it keeps) and starts it again: how long the stop took.
    fn restart(&mut self) -> anyhow::Result<Duration> {
        let stopping = Instant::now();
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        self.child.wait()?;
        let stopped = stopping.elapsed();
        self.child = self.launch.spawn().with_context(|| format!("cannot start {} again", self.name))?;
        Ok(stopped)
    }

    fn target(&self) -> Target {
        Target { endpoint: Endpoint::tcp(self.addr), pid: self.child.id(), publish: None }
    }

    /// Its listener for `transport`, if it has one.
    fn target_over(&self, transport: &Transport) -> Option<Target> {
        let addr = match transport {
            Transport::Tcp => Some(self.addr),
            Transport::Tls(_) => Some(self.tls),
            Transport::Ws => self.ws,
            Transport::Wss(_) => self.wss,
        }?;
        let endpoint = Endpoint { transport: transport.clone(), ..Endpoint::tcp(addr) };
        Some(Target { endpoint, pid: self.child.id(), publish: None })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn loopback() -> anyhow::Result<SocketAddr> {
    Ok(format!("127.0.0.1:{}", free_port()?).parse()?)
}

/// rumqttd with its own default configuration but for its addresses, no metrics endpoint, and room
/// for the idle scenario's connections: MQTT 3.1.1 only (its MQTT 5 server is not complete).
fn start_rumqttd(binary: &PathBuf) -> anyhow::Result<Broker> {
    let addr = loopback()?;
    let dir = std::env::temp_dir().join(format!("midge-bench-rumqttd-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("rumqttd.toml");
    std::fs::write(
        &conf,
        format!(
            "id = 0\n\n[router]\nid = 0\nmax_connections = 100010\nmax_outgoing_packet_count = 200\n\
             max_segment_size = 104857600\nmax_segment_count = 10\n\n[v4.1]\nname = \"v4-1\"\n\
             listen = \"{addr}\"\nnext_connection_delay_ms = 1\n\n[v4.1.connections]\n\
             connection_timeout_ms = 60000\nmax_payload_size = 20480\nmax_inflight_count = 100\n\
             dynamic_filters = true\n"
        ),
    )?;
    let mut launch = Launch::new(binary, true);
    launch.arg("-c").arg(&conf);
    let child = launch.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
    wait_listening(addr)?;
    Ok(Broker { name: "rumqttd", child, addr, tls: addr, ws: None, wss: None, _dir: dir, launch })
}

/// Midge, keeping nothing on disk unless given a directory for its store (default sync policy).
fn start_midge(binary: &PathBuf, certs: &certs::Certs, store: Option<&std::path::Path>) -> anyhow::Result<Broker> {
    start_midge_with(binary, certs, store, &[])
}

/// Midge with further flags (`--cluster`, `--node`).
fn start_midge_with(
    binary: &PathBuf,
    certs: &certs::Certs,
    store: Option<&std::path::Path>,
    extra: &[&str],
) -> anyhow::Result<Broker> {
    let (addr, tls, ws, wss) = (loopback()?, loopback()?, loopback()?, loopback()?);
    let mut launch = Launch::new(binary, false);
    for arg in extra {
        launch.arg(arg);
    }
    // MIDGE_BENCH_WORKERS sets the broker's worker threads without touching the generator's.
    if let Ok(workers) = std::env::var("MIDGE_BENCH_WORKERS") {
        launch.env("TOKIO_WORKER_THREADS", &workers);
    }
    match store {
        Some(dir) => launch.arg("--persistence").arg("true").arg("--data-dir").arg(dir),
        // Like for like: the Mosquitto it runs against keeps nothing on disk either.
        None => launch.arg("--persistence").arg("false"),
    };
    launch.env("MIDGE_MGMT_SECRET", api::MGMT_SECRET);
    for arg in ["--listen", &addr.to_string(), "--log-level", "warn", "--ssl-listen", &tls.to_string()] {
        launch.arg(arg);
    }
    for arg in ["--ws-listen", &ws.to_string(), "--wss-listen", &wss.to_string()] {
        launch.arg(arg);
    }
    launch.arg("--certfile").arg(&certs.cert).arg("--keyfile").arg(&certs.key);
    let child = launch.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
    wait_listening(addr)?;
    Ok(Broker { name: "midge", child, addr, tls, ws: Some(ws), wss: Some(wss), _dir: PathBuf::new(), launch })
}

/// Mosquitto with the same listeners as Midge but WebSocket: Debian's mosquitto 2.0.11 is built without
/// libwebsockets, and a `protocol websockets` listener fails to start.
/// With `persistence`, its own (`persistence true`, the default `autosave_interval` of 30 minutes and
/// a save at exit).
fn start_mosquitto(binary: &str, certs: &certs::Certs, persistence: bool) -> anyhow::Result<Broker> {
    let (addr, tls) = (loopback()?, loopback()?);
    let dir = std::env::temp_dir().join(format!("midge-bench-mosquitto-{}-{persistence}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Started as root, Mosquitto drops to its own user, which must be able to write its database here.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let conf = dir.join("mosquitto.conf");
    let (port, tls_port) = (addr.port(), tls.port());
    let (cert, key) = (certs.cert.display(), certs.key.display());
    let persist = if persistence {
        format!("persistence true\npersistence_location {}/\n", dir.display())
    } else {
        String::new()
    };
    std::fs::write(
        &conf,
        format!(
            "allow_anonymous true\nlistener {port} 127.0.0.1\nmax_connections -1\n\
             listener {tls_port} 127.0.0.1\nmax_connections -1\ncertfile {cert}\nkeyfile {key}\n{persist}"
        ),
    )?;
    let mut launch = Launch::new(binary, true);
    launch.arg("-c").arg(&conf);
    let child = launch.spawn().with_context(|| format!("cannot start {binary} (apt-get install mosquitto)"))?;
    wait_listening(addr)?;
    wait_listening(tls)?;
    Ok(Broker { name: "mosquitto", child, addr, tls, ws: None, wss: None, _dir: dir, launch })
}

struct Row {
    scenario: String,
    unit: &'static str,
    mosquitto: f64,
    midge: f64,
    /// True when smaller is better (latency, memory).
    lower_is_better: bool,
    note: String,
}

/// One publisher, a hundred subscribers on `bench/fanout/+`.
fn fan_out() -> Load {
    Load {
        subscribers: 100,
        filter: "bench/fanout/+",
        publishers: 1,
        prefix: "bench/fanout",
        qos: QoS::AtMostOnce,
        persistent: false,
    }
}

/// Ten publishers on `bench/fanin/{i}`, one subscriber on the wildcard.
fn fan_in(qos: QoS) -> Load {
    Load { subscribers: 1, filter: "bench/fanin/+", publishers: 10, prefix: "bench/fanin", qos, persistent: false }
}

/// The latency probes' rate: low, and evenly spaced with tokio's 1 ms timer (at 1000/s, half a period
/// of slack is less than the timer's granularity).
const LATENCY_RATE: f64 = 500.0;
/// One message every 3 s: long enough for idle connections to rest between messages.
const WAKE_RATE: f64 = 1.0 / 3.0;

/// A rate as the table names it: `500`, or `1/3`.
fn rate_label(rate: f64) -> String {
    if rate >= 1.0 {
        format!("{rate}")
    } else {
        format!("1/{}", (1.0 / rate).round())
    }
}

/// How long the flood scenario's publishers flood.
const FLOOD_TIME: Duration = Duration::from_secs(5);

fn rate_of(step: &Option<Step>) -> f64 {
    step.as_ref().map_or(0.0, |s| s.delivered_rate)
}

/// Per broker: the best step's p99 and CPU, or that none passed.
fn step_notes(results: &[Option<Step>], brokers: &[&Broker]) -> String {
    let notes = results.iter().zip(brokers).map(|(r, b)| match r {
        Some(s) => format!(
            "{}: p99 {} µs, broker {:.2} cores, generator {:.2} cores",
            b.name, s.p99_us, s.broker_cpu, s.generator_cpu
        ),
        None => format!("{}: no passing step", b.name),
    });
    notes.collect::<Vec<_>>().join("; ")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let wanted = |name: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == name);
    let certs = certs::Certs::make()?;
    let mosquitto = start_mosquitto(&cli.mosquitto, &certs, false)?;
    let midge = start_midge(&cli.midge, &certs, None)?;
    let rumqttd = cli.rumqttd.as_ref().map(start_rumqttd).transpose()?;
    let brokers = [&mosquitto, &midge];
    // rumqttd's figures, by scenario, for the rows that have one.
    let mut peer: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    let budget = Duration::from_secs(55);
    let mut rows = Vec::new();
    // Each broker's best paced fan-in QoS 1, which the flood's goodput is measured against.
    let mut paced_fanin1: Option<Vec<f64>> = None;

    let fan_out = fan_out();
    let throughput = [
        ("fanin0", "fan-in QoS 0 (10 → 1, wildcard)", fan_in(QoS::AtMostOnce), 40_000.0),
        ("fanin1", "fan-in QoS 1 (10 → 1, wildcard)", fan_in(QoS::AtLeastOnce), 10_000.0),
        ("fanin2", "fan-in QoS 2 (10 → 1, wildcard)", fan_in(QoS::ExactlyOnce), 10_000.0),
        ("fanout0", "fan-out QoS 0 (1 → 100)", fan_out, 300.0),
        // The same with MQTT 5 clients on both brokers.
        ("fanin0-v5", "MQTT 5 fan-in QoS 0 (10 → 1, wildcard)", fan_in(QoS::AtMostOnce), 40_000.0),
        ("fanin1-v5", "MQTT 5 fan-in QoS 1 (10 → 1, wildcard)", fan_in(QoS::AtLeastOnce), 10_000.0),
        ("fanout0-v5", "MQTT 5 fan-out QoS 0 (1 → 100)", fan_out, 300.0),
    ];
    for (key, name, load, start) in throughput {
        let v5 = key.ends_with("-v5");
        let selected = wanted(key) || (v5 && cli.only.iter().any(|o| o == "mqtt5"));
        if !selected {
            continue;
        }
        let target = |broker: &Broker| {
            let target = broker.target();
            if v5 {
                Target { endpoint: target.endpoint.mqtt5(), ..target }
            } else {
                target
            }
        };
        if let Some(rate) = cli.at {
            eprintln!("{name} on midge at {rate}/s");
            scenarios::hold(&target(&midge), load, rate, budget).await?;
            continue;
        }
        let mut results = Vec::new();
        for broker in brokers {
            eprintln!("{name} on {}", broker.name);
            results.push(find_max(&target(broker), load, start, budget).await?);
        }
        let mut note = step_notes(&results, &brokers);
        if let (Some(rumqttd), false) = (&rumqttd, v5) {
            eprintln!("{name} on rumqttd");
            let result = find_max(&rumqttd.target(), load, start, budget).await?;
            note = format!("{note}; {}", step_notes(std::slice::from_ref(&result), &[rumqttd]));
            peer.insert(name.to_string(), rate_of(&result));
        }
        if key == "fanin1" {
            paced_fanin1 = Some(results.iter().map(rate_of).collect());
        }
        rows.push(Row {
            scenario: name.into(),
            unit: "deliveries/s",
            mosquitto: rate_of(&results[0]),
            midge: rate_of(&results[1]),
            lower_is_better: false,
            note,
        });
    }

    // The same probe at two rates: 500 msg/s, and one message every 3 s, between which both clients
    // are idle (Midge's rest in its dormitory after `dormant_after_ms`, 1 s): what waking costs.
    for (key, rate) in [("latency", LATENCY_RATE), ("wake", WAKE_RATE)] {
        if !wanted(key) {
            continue;
        }
        let targets = [mosquitto.target(), midge.target()];
        for (label, qos) in [("QoS 0", QoS::AtMostOnce), ("QoS 1", QoS::AtLeastOnce)] {
            eprintln!("latency {label} at {rate:.2} msg/s: {} alternating rounds on both", cli.latency_rounds);
            let rounds = cli.latency_rounds.max(1);
            let results = latency::interleaved(&targets, qos, rate, rounds, Duration::from_secs(1)).await?;
            let (theirs, ours) = (&results[0], &results[1]);
            for (round, (m, o)) in theirs.round_p50s.iter().zip(&ours.round_p50s).enumerate() {
                eprintln!("    round {round:>2}: p50 mosquitto {m:>5} µs  midge {o:>5} µs");
            }
            eprintln!("    p10/p25/p50/p75/p90: mosquitto {:?}  midge {:?}", theirs.spread, ours.spread);
            let pairs = || theirs.round_p50s.iter().zip(&ours.round_p50s);
            let lower = pairs().filter(|(m, o)| o < m).count();
            let higher = pairs().filter(|(m, o)| o > m).count();
            let note = format!(
                "{} samples each; Midge's round median lower than Mosquitto's in {lower}, higher in {higher}, \
                 equal in {} of {rounds} rounds (sign test p = {:.2}); round medians Mosquitto {:?}, Midge {:?}",
                ours.samples,
                rounds - lower - higher,
                latency::sign_test(lower, higher),
                theirs.round_p50s,
                ours.round_p50s
            );
            for (quantile, pick) in [("p50", 0usize), ("p99", 1)] {
                let value = |l: &latency::Latency| if pick == 0 { l.p50_us } else { l.p99_us } as f64;
                rows.push(Row {
                    scenario: format!("latency {label} {quantile} (1 → 1, {} msg/s, interleaved)", rate_label(rate)),
                    unit: "µs",
                    mosquitto: value(theirs),
                    midge: value(ours),
                    lower_is_better: true,
                    note: if pick == 0 { note.clone() } else { String::new() },
                });
            }
        }
    }

    // A persistent subscriber, on brokers that persist: Mosquitto with its persistence, Midge with its
    // store (default sync: acknowledgements wait for the next commit); Midge without a store beside.
    let persistent_loads = [
        ("fanin1-persistent", QoS::AtLeastOnce, 10_000.0),
        // A QoS 2 message to a kept session waits for two commits (README, "Persistence").
        ("fanin2-persistent", QoS::ExactlyOnce, 2_000.0),
    ];
    for (key, qos, start) in persistent_loads {
        if !wanted(key) {
            continue;
        }
        let qos_label = qos as u8;
        let store = std::env::temp_dir().join(format!("midge-bench-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        let persisting =
            [start_mosquitto(&cli.mosquitto, &certs, true)?, start_midge(&cli.midge, &certs, Some(&store))?];
        let load = Load { persistent: true, ..fan_in(qos) };
        let mut results = Vec::new();
        for broker in &persisting {
            eprintln!("fan-in QoS {qos_label} to a persistent subscriber on {} (persisting)", broker.name);
            results.push(find_max(&broker.target(), load, start, budget).await?);
        }
        eprintln!("fan-in QoS {qos_label} to a persistent subscriber on midge (in memory)");
        // In memory it is at least as fast: the search starts where the store's ended, to reach its own
        // limit within the budget.
        let in_memory = find_max(&midge.target(), load, rate_of(&results[1]).max(start), budget).await?;
        let note = format!(
            "{}; Midge in memory {:.0}/s, so persistence costs {:.0} %",
            step_notes(&results, &[&persisting[0], &persisting[1]]),
            rate_of(&in_memory),
            100.0 * (1.0 - rate_of(&results[1]) / rate_of(&in_memory))
        );
        rows.push(Row {
            scenario: format!("fan-in QoS {qos_label} to a persistent subscriber, both persisting (10 → 1)"),
            unit: "deliveries/s",
            mosquitto: rate_of(&results[0]),
            midge: rate_of(&results[1]),
            lower_is_better: false,
            note,
        });
        drop(persisting);
        let _ = std::fs::remove_dir_all(&store);
    }

    if wanted("restart") {
        // Both persisting, filled alike, stopped with SIGTERM (each saves what it keeps) and started
        // again: how long until a client is served, and everything is checked back.
        let fill = restart::Fill { retained: cli.restart_retained, sessions: cli.restart_sessions, per_session: 100 };
        let store = std::env::temp_dir().join(format!("midge-bench-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        let mut persisting =
            [start_mosquitto(&cli.mosquitto, &certs, true)?, start_midge(&cli.midge, &certs, Some(&store))?];
        let mut figures = Vec::new();
        for broker in &mut persisting {
            let endpoint = broker.target().endpoint;
            eprintln!(
                "restart of {}: filling with {} retained, {} sessions, {} queued",
                broker.name,
                fill.retained,
                fill.sessions,
                fill.queued()
            );
            let filling = Instant::now();
            restart::fill(&endpoint, fill).await?;
            let filled = filling.elapsed();
            let rss_before = proc::rss_bytes(broker.child.id());
            let stopped = broker.restart()?;
            let started = Instant::now();
            let ready = restart::ready(&endpoint, started).await?;
            let rss = proc::rss_bytes(broker.child.id());
            let retained_rate = restart::check(&endpoint, fill).await?;
            eprintln!(
                "    filled in {filled:.1?}, stopped in {stopped:.2?}, serving again in {ready:.2?}, RSS {} MB (before: {} MB), \
                 retained back at {retained_rate:.0}/s",
                rss >> 20,
                rss_before >> 20
            );
            figures.push((stopped, ready, rss, retained_rate));
        }
        let label = format!("{} retained, {} sessions, {} queued", fill.retained, fill.sessions, fill.queued());
        let (theirs, ours) = (figures[0], figures[1]);
        rows.push(Row {
            scenario: format!("restart: SIGTERM to serving again ({label})"),
            unit: "s",
            mosquitto: (theirs.0 + theirs.1).as_secs_f64(),
            midge: (ours.0 + ours.1).as_secs_f64(),
            lower_is_better: true,
            note: format!(
                "stop {:.2} s / start {:.2} s against {:.2} s / {:.2} s; RSS after start {} MB against {} MB",
                ours.0.as_secs_f64(),
                ours.1.as_secs_f64(),
                theirs.0.as_secs_f64(),
                theirs.1.as_secs_f64(),
                ours.2 >> 20,
                theirs.2 >> 20
            ),
        });
        rows.push(Row {
            scenario: format!("restart: retained messages to a `ret/#` subscriber after it ({label})"),
            unit: "msg/s",
            mosquitto: theirs.3,
            midge: ours.3,
            lower_is_better: false,
            note: String::new(),
        });
        drop(persisting);
        let _ = std::fs::remove_dir_all(&store);
    }

    if wanted("sessions") {
        // Kept sessions, away, one subscription each: what each costs the broker in memory. Midge in
        // memory against Mosquitto at its defaults (in memory until it saves); Midge keeping them in
        // its store beside.
        let n = cli.idle_connections;
        let store = std::env::temp_dir().join(format!("midge-bench-sessions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        let persisting = start_midge(&cli.midge, &certs, Some(&store))?;
        let mut figures = Vec::new();
        let measured = [("mosquitto", &mosquitto), ("midge", &midge), ("midge, persisting", &persisting)];
        // (Not rumqttd: it closes connections of this scenario part-way, "connection closed".)
        for (label, broker) in measured {
            eprintln!("{n} kept sessions on {label}");
            figures.push(restart::session_memory(&broker.target().endpoint, broker.child.id(), n).await?);
        }
        rows.push(Row {
            scenario: format!("broker RSS per kept session ({n} away, one subscription each)"),
            unit: "bytes",
            mosquitto: figures[0],
            midge: figures[1],
            lower_is_better: true,
            note: format!("Midge keeping them in its store: {:.0} bytes each", figures[2]),
        });
        drop(persisting);
        let _ = std::fs::remove_dir_all(&store);
    }

    if wanted("idle") {
        let mut results = Vec::new();
        for broker in brokers {
            eprintln!("{} idle connections on {}", cli.idle_connections, broker.name);
            results.push(idle(&broker.target(), cli.idle_connections, 200).await?);
        }
        if let Some(rumqttd) = &rumqttd {
            eprintln!("{} idle connections on rumqttd", cli.idle_connections);
            let theirs = idle(&rumqttd.target(), cli.idle_connections, 200).await?;
            peer.insert(format!("connect rate ({} idle connections)", results[0].connections), theirs.connect_rate);
            peer.insert("broker RSS per idle connection".into(), theirs.rss_per_connection);
        }
        rows.push(Row {
            scenario: format!("connect rate ({} idle connections)", results[0].connections),
            unit: "connections/s",
            mosquitto: results[0].connect_rate,
            midge: results[1].connect_rate,
            lower_is_better: false,
            note: String::new(),
        });
        rows.push(Row {
            scenario: "broker RSS per idle connection".into(),
            unit: "bytes",
            mosquitto: results[0].rss_per_connection,
            midge: results[1].rss_per_connection,
            lower_is_better: true,
            note: String::new(),
        });
    }

    // The same generator over the other transports: fan-in QoS 0 and the connect rate, each on the
    // brokers that have such a listener.
    let connector = certs.connector()?;
    let transports = [
        ("tls", "TLS", Transport::Tls(connector.clone())),
        ("ws", "WebSocket", Transport::Ws),
        ("wss", "secure WebSocket", Transport::Wss(connector)),
    ];
    for (key, label, transport) in transports {
        if !wanted(key) {
            continue;
        }
        // Per broker: its best fan-in step and its connect rate, or `None` without such a listener.
        let mut measured: Vec<Option<(Option<Step>, f64)>> = Vec::new();
        for broker in brokers {
            let Some(target) = broker.target_over(&transport) else {
                measured.push(None);
                continue;
            };
            eprintln!("fan-in QoS 0 over {label} on {}", broker.name);
            let fanin = find_max(&target, fan_in(QoS::AtMostOnce), 40_000.0, budget).await?;
            eprintln!("{} connections over {label} on {}", cli.transport_connections, broker.name);
            let connect_rate = idle(&target, cli.transport_connections, 200).await?.connect_rate;
            measured.push(Some((fanin, connect_rate)));
        }
        let (steps, named): (Vec<Option<Step>>, Vec<&Broker>) = measured
            .iter()
            .zip(brokers)
            .filter_map(|(m, broker)| m.as_ref().map(|(step, _)| (step.clone(), broker)))
            .unzip();
        let mut note = step_notes(&steps, &named);
        for (m, broker) in measured.iter().zip(brokers) {
            if m.is_none() {
                note.push_str(&format!("; {} has no {label} listener", broker.name));
            }
        }
        let fanin = |i: usize| measured[i].as_ref().map_or(f64::NAN, |(step, _)| rate_of(step));
        let connects = |i: usize| measured[i].as_ref().map_or(f64::NAN, |(_, rate)| *rate);
        rows.push(Row {
            scenario: format!("fan-in QoS 0 over {label} (10 → 1, wildcard)"),
            unit: "deliveries/s",
            mosquitto: fanin(0),
            midge: fanin(1),
            lower_is_better: false,
            note,
        });
        rows.push(Row {
            scenario: format!("connect rate over {label} ({} connections, 200 at a time)", cli.transport_connections),
            unit: "connections/s",
            mosquitto: connects(0),
            midge: connects(1),
            lower_is_better: false,
            note: String::new(),
        });
    }

    if wanted("api") {
        eprintln!("API latency on midge, {} idle clients", cli.api_clients);
        let routes = api::measure(&cli.mgmt, &midge.target(), cli.api_clients, cli.api_requests).await?;
        for route in routes {
            for (quantile, value) in [("p50", route.p50_us), ("p99", route.p99_us)] {
                rows.push(Row {
                    scenario: format!("API GET {} {quantile} ({} idle clients)", route.route, cli.api_clients),
                    unit: "µs",
                    mosquitto: f64::NAN,
                    midge: value as f64,
                    lower_is_better: true,
                    note: String::new(),
                });
            }
        }
    }

    if wanted("flood") {
        let mut results = Vec::new();
        for broker in brokers {
            eprintln!("flood (fan-in QoS 1, publishers unpaced and unwindowed) on {}", broker.name);
            let result = flood::flood(&broker.target(), FLOOD_TIME).await?;
            eprintln!(
                "    goodput {:.0}/s  taken {:.0}/s  acknowledged and lost {}  RSS peak +{} KiB  probe p50 {} µs p99 {} µs max {} µs lost {}  broker {:.2} cores",
                result.goodput,
                result.offered,
                result.acknowledged_lost,
                result.peak_rss_growth / 1024,
                result.probe_p50_us,
                result.probe_p99_us,
                result.probe_max_us,
                result.probe_lost,
                result.broker_cpu
            );
            results.push(result);
        }
        let paced = |i: usize| paced_fanin1.as_ref().map(|p: &Vec<f64>| p[i]);
        let notes: Vec<String> = results
            .iter()
            .zip(brokers)
            .enumerate()
            .map(|(i, (r, b))| {
                let of_paced =
                    paced(i).map_or(String::new(), |p| format!("{:.0} % of its paced best, ", 100.0 * r.goodput / p));
                format!(
                    "{}: {of_paced}{} acknowledged and lost, RSS peak +{} KiB, broker {:.2} cores",
                    b.name,
                    r.acknowledged_lost,
                    r.peak_rss_growth / 1024,
                    r.broker_cpu
                )
            })
            .collect();
        rows.push(Row {
            scenario: "flood: fan-in QoS 1 goodput (10 unpaced → 1)".into(),
            unit: "deliveries/s",
            mosquitto: results[0].goodput,
            midge: results[1].goodput,
            lower_is_better: false,
            note: notes.join("; "),
        });
        rows.push(Row {
            scenario: "flood: another client's latency p99".into(),
            unit: "µs",
            mosquitto: results[0].probe_p99_us as f64,
            midge: results[1].probe_p99_us as f64,
            lower_is_better: true,
            note: format!(
                "max {} and {} µs; probes lost {} and {}",
                results[0].probe_max_us, results[1].probe_max_us, results[0].probe_lost, results[1].probe_lost
            ),
        });
    }

    if wanted("overload") {
        let mut growth = Vec::new();
        for broker in brokers {
            eprintln!("overload (a subscriber that never reads) on {}", broker.name);
            growth.push(scenarios::overload(&broker.target(), 200_000.0).await? as f64);
        }
        rows.push(Row {
            scenario: "RSS growth, 1M messages to a subscriber that never reads".into(),
            unit: "bytes",
            mosquitto: growth[0],
            midge: growth[1],
            lower_is_better: true,
            note: String::new(),
        });
    }

    let mut across_rows = Vec::new();
    if wanted("cluster") {
        match cluster::Nats::start(free_port()?) {
            Err(e) => eprintln!("cluster scenarios skipped: {e:#}"),
            Ok(nats) => across_rows = across_nodes(&cli, &certs, &midge, &nats, budget).await?,
        }
    }

    drop(midge);
    drop(mosquitto);
    drop(rumqttd);
    let figure = |value: f64| if value.is_nan() { "n/a".to_string() } else { format!("{value:.0}") };
    let ratio = |ours: f64, theirs: f64| if theirs > 0.0 { format!("{:.2}", ours / theirs) } else { "—".into() };
    if peer.is_empty() {
        println!("| scenario | unit | Mosquitto | Midge | Midge ÷ Mosquitto |");
        println!("|---|---|---:|---:|---:|");
    } else {
        println!("| scenario | unit | Mosquitto | rumqttd | Midge | Midge ÷ Mosquitto | Midge ÷ rumqttd |");
        println!("|---|---|---:|---:|---:|---:|---:|");
    }
    for row in &rows {
        let better = if row.lower_is_better { " (lower is better)" } else { "" };
        let (mosquitto, midge) = (figure(row.mosquitto), figure(row.midge));
        let against_mosquitto = ratio(row.midge, row.mosquitto);
        let scenario = format!("{} | {}{}", row.scenario, row.unit, better);
        match (peer.is_empty(), peer.get(&row.scenario)) {
            (true, _) => println!("| {scenario} | {mosquitto} | {midge} | {against_mosquitto} |"),
            (false, Some(theirs)) => println!(
                "| {scenario} | {mosquitto} | {} | {midge} | {against_mosquitto} | {} |",
                figure(*theirs),
                ratio(row.midge, *theirs)
            ),
            (false, None) => println!("| {scenario} | {mosquitto} | — | {midge} | {against_mosquitto} | — |"),
        }
    }
    for row in rows.iter().filter(|r| !r.note.is_empty()) {
        println!("\n- {}: {}", row.scenario, row.note);
    }
    if !across_rows.is_empty() {
        cluster::print(&across_rows);
    }
    Ok(())
}

/// Two Midge nodes clustered through `nats`, publishers on the first and subscribers on the second,
/// against `single` alone: latency (interleaved rounds), fan-in and fan-out.
async fn across_nodes(
    cli: &Cli,
    certs: &certs::Certs,
    single: &Broker,
    nats: &cluster::Nats,
    budget: Duration,
) -> anyhow::Result<Vec<cluster::Row>> {
    let node = |name: &str| start_midge_with(&cli.midge, certs, None, &["--cluster", &nats.url, "--node", name]);
    let (first, second) = (node("bench-a@127.0.0.1")?, node("bench-b@127.0.0.1")?);
    // Each hears the other's heartbeats before anything is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let across = Target { publish: Some(first.target().endpoint), ..second.target() };
    let mut rows = Vec::new();
    for (label, qos) in [("QoS 0", QoS::AtMostOnce), ("QoS 1", QoS::AtLeastOnce)] {
        eprintln!("latency {label}, one node and across two: {} alternating rounds", cli.latency_rounds);
        let targets = [single.target(), across.clone()];
        let results =
            latency::interleaved(&targets, qos, LATENCY_RATE, cli.latency_rounds.max(1), Duration::from_secs(1))
                .await?;
        for (quantile, p99) in [("p50", false), ("p99", true)] {
            let value = |l: &latency::Latency| if p99 { l.p99_us } else { l.p50_us } as f64;
            rows.push(cluster::Row {
                scenario: format!("latency {label} {quantile} (1 → 1, {LATENCY_RATE} msg/s)"),
                unit: "µs",
                one_node: value(&results[0]),
                across: value(&results[1]),
                note: String::new(),
            });
        }
    }
    let fan_out = fan_out();
    let loads = [
        ("fan-in QoS 0 (10 → 1, wildcard)", fan_in(QoS::AtMostOnce), 40_000.0),
        ("fan-in QoS 1 (10 → 1, wildcard)", fan_in(QoS::AtLeastOnce), 10_000.0),
        ("fan-out QoS 0 (1 → 100)", fan_out, 300.0),
    ];
    for (name, load, start) in loads {
        eprintln!("{name} on one node");
        let alone = find_max(&single.target(), load, start, budget).await?;
        eprintln!("{name} across two nodes");
        let crossing = find_max(&across, load, start, budget).await?;
        let note = match &crossing {
            Some(step) => format!("across: p99 {} µs, subscribers' node {:.2} cores", step.p99_us, step.broker_cpu),
            None => "across: no passing step".into(),
        };
        rows.push(cluster::Row {
            scenario: name.into(),
            unit: "deliveries/s",
            one_node: rate_of(&alone),
            across: rate_of(&crossing),
            note,
        });
    }
    Ok(rows)
}
