//! `tollgate chaos`: run a fault scenario against a local cluster and check the invariants
//! (docs/chaos.md). Exit status 1 when any invariant was violated.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tollgate_chaos::{RunOptions, scenario};

#[derive(Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub command: ChaosCommand,
}

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Start a cluster, drive load, inject the scenario's faults, heal, check, report.
    Run {
        /// smoke, leader-churn, partitions, gateway-crash, clock-skew, disk-full, membership,
        /// nightly (`tollgate chaos list` describes them).
        #[arg(long)]
        scenario: String,
        /// Seed of the fault plan and the workload: the same seed replays the same plan.
        #[arg(long)]
        seed: Option<u64>,
        /// How long to run, e.g. `90s`, `5m`, `1h` (default: the scenario's).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Directory for report.json, summary.txt, timeline.html, history.jsonl and the
        /// cluster's data dirs and logs (default: ./chaos-report/<scenario>-<seed>).
        #[arg(long)]
        report: Option<PathBuf>,
        /// No progress lines on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// The scenarios and what each does.
    List,
}

/// `90`, `90s`, `5m`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 90s, 5m or 1h"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("'{s}': the unit must be ms, s, m or h")),
    };
    Ok(Duration::from_millis(ms))
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    match args.command {
        ChaosCommand::List => {
            for name in scenario::NAMES {
                if let Some(sc) = scenario::named(name) {
                    println!(
                        "{name:<14} {} s, {} store nodes, {} gateways: {}",
                        sc.default_duration.as_secs(),
                        sc.topology.stores,
                        sc.topology.gateways,
                        sc.about
                    );
                }
            }
            Ok(())
        }
        ChaosCommand::Run {
            scenario,
            seed,
            duration,
            report,
            quiet,
        } => {
            let seed = seed.unwrap_or_else(rand_seed);
            let report_dir =
                report.unwrap_or_else(|| PathBuf::from(format!("chaos-report/{scenario}-{seed}")));
            let bin = std::env::current_exe().context("finding the tollgate binary")?;
            let run = tollgate_chaos::run(RunOptions {
                scenario,
                seed,
                duration,
                report_dir: report_dir.clone(),
                bin,
                progress: !quiet,
            });
            // Ctrl-C or SIGTERM drops the run: its processes are killed and its small disks
            // unmounted by their destructors, which an exit by signal would skip
            let r = tokio::select! {
                r = run => r?,
                () = super::store_cmd::wait_for_signal() => bail!(
                    "stopped by a signal: the cluster's processes were stopped and its disks \
                     unmounted; the logs so far are in {}/cluster",
                    report_dir.display()
                ),
            };
            print!("{}", tollgate_chaos::report::summary(&r));
            println!(
                "report: {}/report.json, summary.txt, timeline.html",
                report_dir.display()
            );
            if !r.ok {
                bail!("invariants violated (see above)");
            }
            Ok(())
        }
    }
}

fn rand_seed() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}
