//! `truce-torture`: runs a seeded torture campaign against a `truce serve`
//! child and exits non-zero if the history shows an anomaly.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use truce_torture::nemesis::NemesisKind;
use truce_torture::workloads::Workload;
use truce_torture::{CLIENTS_DEFAULT, Config, run};

/// Jepsen-style torture of a real `truce serve`: concurrent clients, kill -9,
/// pauses and storage failpoints, and a checked history.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Seeds the schedule and the clients' choices (random if not given; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the clients run: `90s`, `5m`, or seconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Workloads to run at once (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "list-append,register,counter,set,feed,replica"
    )]
    workloads: Vec<Workload>,
    /// Faults to inflict (comma-separated): kill, pause, failpoint; `none` for none.
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,failpoint")]
    nemesis: Vec<String>,
    /// Quiet time between faults, `MIN..MAX` (each `2s`, `500ms`, …).
    #[arg(long, default_value = "2s..5s")]
    fault_interval: String,
    /// The `truce` binary; build it with `--features failpoints` for the failpoint nemesis.
    /// Default: `truce` next to this program.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Concurrent clients per workload.
    #[arg(long, default_value_t = CLIENTS_DEFAULT)]
    clients: usize,
    /// How long a request may take before its outcome is unknown (`info`).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Keep the data, server log, history (`history.jsonl`) and report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Soak: run campaigns of `--duration` back to back (seeds SEED, SEED+1, …)
    /// until this much time has passed, then print the totals; stops at the
    /// first campaign that finds an anomaly.
    #[arg(long, value_parser = parse_duration)]
    total: Option<Duration>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `250ms`, `90s`, `5m`, `1h`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("not a duration: {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("unknown unit in {text:?} (ms, s, m, h)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(rand::random);
    // First thing, so a run that dies still says how to replay it.
    eprintln!("truce-torture seed {seed}");
    let total = cli.total;
    let (config, json) = match configure(cli, seed) {
        Ok(configured) => configured,
        Err(message) => {
            eprintln!("truce-torture: {message}");
            return ExitCode::from(2);
        }
    };
    let result = match total {
        None => run(&config).map(|report| {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report serializes")
                );
            } else {
                print!("{}", report.summary());
            }
            report.passed()
        }),
        Some(total) => soak(config, total, json),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("truce-torture: {message}");
            ExitCode::from(2)
        }
    }
}

/// Campaigns back to back until `total` has passed; whether all passed.
fn soak(config: Config, total: Duration, json: bool) -> Result<bool, String> {
    let started = std::time::Instant::now();
    let mut totals = Totals::default();
    let mut campaign = 0u64;
    while started.elapsed() < total {
        let seed = config.seed.wrapping_add(campaign);
        eprintln!("campaign {campaign}: seed {seed}");
        let mut this = config.clone();
        this.seed = seed;
        this.out = config.out.as_ref().map(|dir| dir.join(format!("seed-{seed}")));
        let report = run(&this)?;
        eprint!("{}", report.summary());
        totals.add(&report);
        campaign += 1;
        if !report.passed() {
            eprintln!("truce-torture: anomalies found; replay with --seed {seed}");
            break;
        }
    }
    totals.wall_s = started.elapsed().as_secs();
    let text = serde_json::to_string_pretty(&totals).expect("totals serialize");
    if let Some(dir) = &config.out {
        std::fs::write(dir.join("soak.json"), &text).map_err(|e| format!("cannot write soak.json: {e}"))?;
    }
    if json {
        println!("{text}");
    } else {
        print!("{}", totals.summary());
    }
    Ok(totals.anomalies.is_empty())
}

/// A soak's figures, summed over its campaigns.
#[derive(Default, serde::Serialize)]
struct Totals {
    first_seed: Option<u64>,
    campaigns: u64,
    wall_s: u64,
    ran_s: u64,
    workloads: std::collections::BTreeMap<String, truce_torture::Counts>,
    kills: u64,
    pauses: u64,
    purge_refusals: u64,
    failpoints_armed: std::collections::BTreeMap<String, u64>,
    failpoints_fired: std::collections::BTreeMap<String, u64>,
    anomalies: Vec<truce_torture::check::Anomaly>,
}

impl Totals {
    fn add(&mut self, report: &truce_torture::Report) {
        self.first_seed.get_or_insert(report.seed);
        self.campaigns += 1;
        self.ran_s += report.ran_ms / 1000;
        for (name, c) in &report.workloads {
            let t = self.workloads.entry(name.clone()).or_default();
            t.ok += c.ok;
            t.fail += c.fail;
            t.info += c.info;
        }
        let n = &report.nemesis;
        self.kills += n.kills;
        self.pauses += n.pauses;
        self.purge_refusals += report.purge_refusals;
        for (name, count) in &n.failpoints_armed {
            *self.failpoints_armed.entry(name.clone()).or_default() += count;
        }
        for (name, count) in &n.failpoints_fired {
            *self.failpoints_fired.entry(name.clone()).or_default() += count;
        }
        self.anomalies.extend(report.anomalies.iter().cloned());
    }

    fn summary(&self) -> String {
        let mut out = format!(
            "soak: {} campaigns from seed {}, {} s of load in {} s\n",
            self.campaigns,
            self.first_seed.unwrap_or(0),
            self.ran_s,
            self.wall_s
        );
        for (name, c) in &self.workloads {
            out.push_str(&format!(
                "  {name:<12} {:>8} ok {:>7} fail {:>7} info\n",
                c.ok, c.fail, c.info
            ));
        }
        out.push_str(&format!(
            "  {} kills, {} pauses, failpoints armed {:?}, fired {:?}\n",
            self.kills, self.pauses, self.failpoints_armed, self.failpoints_fired,
        ));
        if self.workloads.contains_key(Workload::Replica.name()) {
            out.push_str(&format!(
                "  {} replica pages refused for purged history\n",
                self.purge_refusals
            ));
        }
        out.push_str(&format!("  {} anomalies\n", self.anomalies.len()));
        out
    }
}

fn configure(cli: Cli, seed: u64) -> Result<(Config, bool), String> {
    let nemeses = cli
        .nemesis
        .iter()
        .filter(|n| n.as_str() != "none")
        .map(|n| n.parse())
        .collect::<Result<Vec<NemesisKind>, String>>()?;
    let (low, high) = cli
        .fault_interval
        .split_once("..")
        .ok_or_else(|| format!("--fault-interval is MIN..MAX, not {:?}", cli.fault_interval))?;
    let fault_interval = (parse_duration(low)?, parse_duration(high)?);
    if fault_interval.0 > fault_interval.1 || fault_interval.1.is_zero() {
        return Err(format!("--fault-interval {:?} is empty", cli.fault_interval));
    }
    let server_bin = match cli.server_bin {
        Some(bin) => bin,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program: {e}"))?
            .with_file_name("truce"),
    };
    let config = Config {
        seed,
        duration: cli.duration,
        workloads: cli.workloads,
        nemeses,
        fault_interval,
        server_bin,
        out: cli.out,
        clients: cli.clients.max(1),
        request_timeout: cli.request_timeout,
    };
    Ok((config, cli.json))
}
