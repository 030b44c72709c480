//! The chaos harness behind `tollgate chaos run` (docs/chaos.md): starts a real cluster as
//! processes on loopback with a fault proxy on every link ([`cluster`], [`proxy`]), drives a
//! recorded workload ([`workload`]), injects faults planned from a seed ([`nemesis`],
//! [`scenario`]), heals, and checks the invariants on what it observed ([`observe`],
//! [`checker`]), writing a report ([`report`]).

pub mod checker;
pub mod cluster;
pub mod disk;
pub mod http;
pub mod membership;
pub mod nemesis;
pub mod observe;
pub mod procs;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod tenants;
pub mod workload;

use anyhow::{Context, bail};
use checker::{Observed, RateSpec};
use cluster::Cluster;
use nemesis::{Applied, FaultKind};
use rand::SeedableRng;
use rand::rngs::StdRng;
use report::{Report, Sample};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

pub struct RunOptions {
    pub scenario: String,
    pub seed: u64,
    /// None: the scenario's default.
    pub duration: Option<Duration>,
    /// Report, data dirs and logs go here.
    pub report_dir: PathBuf,
    /// The `tollgate` binary to start the processes from.
    pub bin: PathBuf,
    /// Print a progress line every few seconds (stderr).
    pub progress: bool,
}

/// Runs a scenario end to end; the report says whether every invariant held.
pub async fn run(opts: RunOptions) -> anyhow::Result<Report> {
    let (sc, duration) = validate(&opts)?;
    let dir = opts.report_dir.join("cluster");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let mounts = Mounts::new(&dir, &sc)?;
    let say = |s: String| {
        if opts.progress {
            eprintln!("{s}");
        }
    };
    say(format!(
        "chaos: scenario {} seed {} for {} s; starting the cluster in {}",
        sc.name,
        opts.seed,
        duration.as_secs(),
        dir.display()
    ));
    let cluster = Cluster::start(&opts.bin, &dir, sc.topology).await?;
    let plan = nemesis::plan(
        opts.seed,
        &sc.menu,
        sc.warmup_ms,
        duration.as_millis() as u64 - sc.cooldown_ms,
        sc.every_ms,
        sc.hold_ms,
    );
    let start = Instant::now();
    let start_wall_ms = tollgate_types::faults::wall_ms();
    let gateways: Vec<String> = cluster.gateways.iter().map(|g| g.addr.clone()).collect();
    let load = workload::Workload::start(
        gateways,
        cluster.tenants.keys.clone(),
        sc.clients,
        Duration::from_millis(sc.think_ms),
        opts.seed,
        start,
    );
    let cluster = Arc::new(Mutex::new(cluster));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_leader(cluster.clone(), done.clone(), start));
    let progress = opts
        .progress
        .then(|| spawn_progress(load.attempts.clone(), done.clone(), start));
    let faults = inject(&cluster, &plan, opts.seed, start, &say).await;
    tokio::time::sleep_until((start + duration).into()).await;
    let attempts = load.stop().await;
    let ran = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap_or_default();
    if let Some(p) = progress {
        p.abort();
    }
    say("chaos: load stopped; healing and checking".into());
    let mut c = cluster.lock().await;
    let observed = heal_and_observe(&mut c, &sc, attempts, &faults, start_wall_ms).await;
    let checks = checker::check_all(&observed);
    let mut counts = report::counts(&observed.attempts, &faults);
    counts.ledger_entries = observed.ledger.len() as u64;
    counts.served_by_upstreams = observed.oracle.len() as u64;
    let report = Report {
        scenario: sc.name.into(),
        seed: opts.seed,
        duration_s: ran.as_secs_f64(),
        topology: sc.topology,
        replay: format!(
            "tollgate chaos run --scenario {} --seed {} --duration {}s",
            sc.name,
            opts.seed,
            duration.as_secs()
        ),
        ok: checks.iter().all(|c| c.ok),
        counts,
        checks,
        plan,
        faults,
        samples,
        cluster_dir: dir.display().to_string(),
    };
    report::write(&opts.report_dir, &report, &observed.attempts)?;
    std::fs::write(
        opts.report_dir.join("observed.json"),
        serde_json::to_vec(&observed)?,
    )?;
    drop(c);
    drop(cluster);
    drop(mounts);
    Ok(report)
}

/// The scenario and the run's duration, or what to fix in the options.
fn validate(opts: &RunOptions) -> anyhow::Result<(scenario::Scenario, Duration)> {
    let sc = scenario::named(&opts.scenario).with_context(|| {
        format!(
            "unknown scenario '{}'; choose one of: {}",
            opts.scenario,
            scenario::NAMES.join(", ")
        )
    })?;
    let duration = opts.duration.unwrap_or(sc.default_duration);
    let min = Duration::from_millis(sc.warmup_ms + sc.cooldown_ms + 5_000);
    if duration < min {
        bail!(
            "--duration must be at least {} s for scenario {} (warm-up, one fault, cool-down)",
            min.as_secs(),
            sc.name
        );
    }
    if sc.small_disks && !disk::can_mount() {
        bail!(
            "scenario {} fills disks: it mounts a small tmpfs per store node and needs root",
            sc.name
        );
    }
    Ok((sc, duration))
}

/// Runs the planned faults in order, each at its time.
async fn inject(
    cluster: &Mutex<Cluster>,
    plan: &[nemesis::Planned],
    seed: u64,
    start: Instant,
    say: &impl Fn(String),
) -> Vec<Applied> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut faults = Vec::new();
    for p in plan {
        tokio::time::sleep_until((start + Duration::from_millis(p.at_ms)).into()).await;
        let clock = || start.elapsed().as_millis() as u64;
        let a = nemesis::run_one(cluster, p, &mut rng, clock).await;
        say(format!(
            "chaos: {:>5.1} s – {:>5.1} s  {}{}",
            a.at_ms as f64 / 1e3,
            a.healed_ms as f64 / 1e3,
            a.note,
            if a.ok { "" } else { " (not applied)" }
        ));
        faults.push(a);
    }
    faults
}

/// A progress line on stderr every 5 s until `done`.
fn spawn_progress(
    attempts: Arc<std::sync::Mutex<Vec<workload::Attempt>>>,
    done: Arc<AtomicBool>,
    start: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let c = {
                let v = attempts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                report::counts(&v, &[])
            };
            eprintln!(
                "chaos: {:>5.0} s  {} requests, {} complete, {} limited, {} failed",
                start.elapsed().as_secs_f64(),
                c.attempts,
                c.complete,
                c.rate_limited + c.quota_exhausted,
                c.failed
            );
        }
    })
}

/// Heals everything, waits for recovery, for the ledger and for the replicas, and gathers what
/// the checker judges.
async fn heal_and_observe(
    c: &mut Cluster,
    sc: &scenario::Scenario,
    attempts: Vec<workload::Attempt>,
    faults: &[Applied],
    start_wall_ms: u64,
) -> Observed {
    let healed_at = Instant::now();
    heal_all(c).await;
    let recovery = observe::recovery(c).await.map(|_| healed_at.elapsed());
    let read = async {
        let (l, o) = observe::settled_ledger(c).await?;
        anyhow::Ok((l, o, observe::buckets(c).await?))
    };
    let (ledger, oracle, buckets, observe_error) = match read.await {
        Ok((l, o, b)) => (l, o, b, None),
        Err(e) => (
            Vec::new(),
            Default::default(),
            Vec::new(),
            Some(format!("{e:#}")),
        ),
    };
    // after the ledger caught up: the replicas are compared on the final state
    let replicas = observe::replicas(c).await;
    Observed {
        attempts,
        ledger,
        oracle,
        buckets,
        replicas,
        rates: rate_specs(c),
        clock_jump_ms: sc.clock_jump_ms(),
        start_wall_ms,
        recovery_ms: recovery.map(|d| d.as_millis() as u64),
        recovery_bound_ms: observe::RECOVERY_BOUND.as_millis() as u64,
        gateway_restarts: gateway_restarts(faults),
        crashed: crashed(c),
        observe_error,
        // strict policies everywhere, and the simulated upstream counts a token per word,
        // exactly as the gateway estimates
        exact_estimates: true,
    }
}

/// Small tmpfs mounts for the store data dirs of a disk-filling scenario; unmounted on drop.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn new(dir: &std::path::Path, sc: &scenario::Scenario) -> anyhow::Result<Mounts> {
        let mut m = Mounts(Vec::new());
        if sc.small_disks {
            let ids = 1..=sc.topology.stores + sc.topology.spare_stores;
            let stores = ids.map(|id| dir.join(format!("store-{id}")));
            let gateways = (0..sc.topology.gateways).map(|g| dir.join(format!("gateway-{g}")));
            for d in stores.chain(gateways) {
                disk::mount_small(&d)?;
                m.0.push(d);
            }
        }
        Ok(m)
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for d in &self.0 {
            disk::unmount(d);
        }
    }
}

/// Every link passes again, paused processes resume, stopped ones start again.
async fn heal_all(c: &mut Cluster) {
    c.heal_links();
    let _ = c.upstream_behavior(&tenants::mock_behavior()).await;
    for s in c.stores.iter_mut().filter(|s| s.member && !s.removed) {
        if s.proc.is_paused() {
            s.proc.resume();
        }
        if !s.proc.is_running() {
            let _ = s.proc.start();
        }
    }
    for g in 0..c.gateways.len() {
        let gw = &mut c.gateways[g];
        if gw.proc.is_paused() {
            gw.proc.resume();
        }
        if !gw.proc.is_running() {
            let _ = gw.proc.start();
            let _ = c.wait_gateway_ready(g).await;
        }
    }
}

fn rate_specs(c: &Cluster) -> Vec<RateSpec> {
    use tollgate_types::limits::{Dimension, Scope};
    c.tenants
        .limits
        .iter()
        .filter(|l| l.dimension == Dimension::RequestsPerMinute)
        .map(|l| RateSpec {
            scope: match &l.scope {
                Scope::Org { org } => org.to_string(),
                Scope::Project { org, project } => format!("{org}/{project}"),
                Scope::Key { org, key } => format!("{org}/key:{key}"),
            },
            per_minute: l.limit,
            burst: l.burst,
        })
        .collect()
}

fn gateway_restarts(faults: &[Applied]) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    for f in faults.iter().filter(|f| f.ok) {
        match f.fault {
            FaultKind::KillGateway { gateway } | FaultKind::GatewayDiskFull { gateway } => {
                out.push((gateway, f.healed_ms))
            }
            FaultKind::GatewayDrift { gateway, .. } => {
                out.push((gateway, f.at_ms));
                out.push((gateway, f.healed_ms));
            }
            _ => {}
        }
    }
    out
}

/// Processes that exited on their own, and panics anywhere in the logs.
fn crashed(c: &mut Cluster) -> Vec<String> {
    let mut out = Vec::new();
    let procs = c
        .stores
        .iter_mut()
        .filter(|s| !s.removed)
        .map(|s| &mut s.proc)
        .chain(c.gateways.iter_mut().map(|g| &mut g.proc))
        .chain(c.upstreams.iter_mut().map(|u| &mut u.proc));
    for p in procs {
        let now = p.exited();
        for st in p.exits.iter().chain(now.as_ref()) {
            out.push(format!("{} exited on its own: {st}", p.name));
        }
    }
    let logs = c
        .stores
        .iter()
        .map(|s| &s.proc)
        .chain(c.gateways.iter().map(|g| &g.proc));
    for p in logs {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("panicked at")) {
            out.push(format!("{}: {line}", p.name));
        }
    }
    out
}

async fn sample_leader(
    c: Arc<Mutex<Cluster>>,
    done: Arc<AtomicBool>,
    start: Instant,
) -> Vec<Sample> {
    let mut out = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let t_ms = start.elapsed().as_millis() as u64;
        let client = {
            let g = c.lock().await;
            g.client().ok()
        };
        let leader = match client {
            Some(cl) => tokio::time::timeout(
                Duration::from_secs(1),
                cl.leader_status::<serde_json::Value>(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|s| s["leader"].as_u64()),
            None => None,
        };
        out.push(Sample { t_ms, leader });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    out
}
