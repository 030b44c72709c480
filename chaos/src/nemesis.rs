//! The nemesis: faults planned from the seed (same seed, same plan), applied one at a time to
//! the running cluster, each held for a while and then healed. Targets such as "the leader" are
//! resolved when the fault starts; the timeline records what they resolved to.

use crate::cluster::Cluster;
use crate::proxy::Fault;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// A store node to hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Leader,
    /// A member that is not the leader.
    Follower,
}

/// One kind of fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// `kill -9` a store node; restarted on its data dir at heal.
    KillStore {
        target: Target,
    },
    /// `kill -9` a gateway (requests, streams among them, in flight); restarted at heal.
    KillGateway {
        gateway: usize,
    },
    /// `SIGSTOP` a store node until heal (`SIGCONT`).
    PauseStore {
        target: Target,
    },
    PauseGateway {
        gateway: usize,
    },
    /// Every link of a node swallowed (a silent partition).
    Isolate {
        target: Target,
    },
    /// A minority of the members cut from the majority, gateway 0 on the minority side.
    SplitMinority,
    /// A gateway cut from every store node.
    CutGateway {
        gateway: usize,
    },
    /// The target's outgoing store links deliver requests but lose every answer.
    OneWay {
        target: Target,
    },
    /// Every store↔store link delayed.
    SlowLinks {
        ms: u64,
    },
    /// Store and gateway→store links reset at random (per mille of chunks).
    FlakyLinks {
        per_mille: u32,
    },
    /// Upstreams fail a share of requests with 503, and the link to them resets at random.
    UpstreamFail,
    /// The link to the upstreams goes silent: requests and streams stall.
    UpstreamStall,
    /// A store node restarted with its wall clock offset and drifting.
    ClockSkew {
        target: Target,
        offset_ms: i64,
        drift_ppm: i64,
    },
    /// A gateway restarted with its clocks drifting (within the ρ the bounds assume).
    GatewayDrift {
        gateway: usize,
        drift_ppm: i64,
    },
    /// A store node's data dir fills up (ENOSPC); freed and the node restarted at heal.
    DiskFull {
        target: Target,
    },
    /// A gateway's data dir (its usage journal) fills up; freed at heal.
    GatewayDiskFull {
        gateway: usize,
    },
    /// A spare node joins as a voter, then a follower leaves for good.
    ReplaceNode,
}

/// A fault at a time, held for a duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    pub at_ms: u64,
    pub hold_ms: u64,
    pub fault: FaultKind,
}

/// What happened when a planned fault ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub at_ms: u64,
    pub healed_ms: u64,
    pub fault: FaultKind,
    /// What the target resolved to, or why the fault was skipped.
    pub note: String,
    pub ok: bool,
}

/// Plans faults from `seed`: one every `every_ms` (± a quarter), from `start_ms` until `end_ms`,
/// each held for `hold_ms` (± a quarter), going through the menu in rounds, each round in a
/// seeded order (so a short run still sees every kind of fault once the run covers a round).
pub fn plan(
    seed: u64,
    menu: &[FaultKind],
    start_ms: u64,
    end_ms: u64,
    every_ms: u64,
    hold_ms: u64,
) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut t = start_ms;
    let mut round: Vec<FaultKind> = Vec::new();
    while !menu.is_empty() {
        let hold = hold_ms + rng.random_range(0..=hold_ms / 2) - hold_ms / 4;
        if t + hold > end_ms {
            break;
        }
        if round.is_empty() {
            round = menu.to_vec();
            round.shuffle(&mut rng);
        }
        let Some(f) = round.pop() else { break };
        out.push(Planned {
            at_ms: t,
            hold_ms: hold,
            fault: f.clone(),
        });
        t += hold + every_ms + rng.random_range(0..=every_ms / 2) - every_ms / 4;
    }
    out
}

/// How a fault is undone.
enum Undo {
    Nothing,
    RestartStore(u64, Vec<String>),
    RestartGateway(usize, Vec<String>),
    ResumeStore(u64),
    ResumeGateway(usize),
    HealLinks,
    UpstreamOk,
    FreeDisk(u64, std::path::PathBuf),
    FreeGatewayDisk(usize, std::path::PathBuf),
}

/// Resolves a target now; waits up to 10 s for a leader (the last fault's heal may have left an
/// election running).
async fn resolve(c: &Cluster, t: Target, rng: &mut StdRng) -> Option<u64> {
    let mut leader = None;
    for _ in 0..20 {
        leader = c.leader().await;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match t {
        Target::Leader => leader,
        Target::Follower => {
            let f: Vec<u64> = c
                .member_ids()
                .into_iter()
                .filter(|id| Some(*id) != leader)
                .collect();
            f.choose(rng).copied()
        }
    }
}

/// Applies `f`; returns a note and how to undo it.
async fn apply(c: &mut Cluster, f: &FaultKind, rng: &mut StdRng) -> Result<(String, Undo), String> {
    let node = |t: Option<u64>| t.ok_or_else(|| "no such node now (no leader?)".to_owned());
    Ok(match f {
        FaultKind::KillStore { target } => {
            let id = node(resolve(c, *target, rng).await)?;
            let s = c.store(id).ok_or("unknown node")?;
            s.proc.kill();
            (format!("killed store {id}"), Undo::RestartStore(id, vec![]))
        }
        FaultKind::KillGateway { gateway } => {
            let g = gateway % c.gateways.len();
            c.gateways[g].proc.kill();
            (
                format!("killed gateway {g}"),
                Undo::RestartGateway(g, vec![]),
            )
        }
        FaultKind::PauseStore { target } => {
            let id = node(resolve(c, *target, rng).await)?;
            c.store(id).ok_or("unknown node")?.proc.pause();
            (format!("paused store {id}"), Undo::ResumeStore(id))
        }
        FaultKind::PauseGateway { gateway } => {
            let g = gateway % c.gateways.len();
            c.gateways[g].proc.pause();
            (format!("paused gateway {g}"), Undo::ResumeGateway(g))
        }
        FaultKind::Isolate { target } => {
            let id = node(resolve(c, *target, rng).await)?;
            for p in c.links_of(id) {
                p.set(Fault::Blackhole);
            }
            (format!("isolated store {id}"), Undo::HealLinks)
        }
        FaultKind::SplitMinority => {
            let mut members = c.member_ids();
            let k = (members.len() - 1) / 2;
            let mut minority = Vec::new();
            for _ in 0..k {
                let i = rng.random_range(0..members.len());
                minority.push(members.remove(i));
            }
            for ((a, b), p) in &c.store_links {
                if minority.contains(a) != minority.contains(b) {
                    p.set(Fault::Blackhole);
                }
            }
            for ((_, b), p) in c.gateway_links.range((0, 0)..(1, 0)) {
                if !minority.contains(b) {
                    p.set(Fault::Blackhole);
                }
            }
            (
                format!("split {minority:?} (with gateway 0) from {members:?}"),
                Undo::HealLinks,
            )
        }
        FaultKind::CutGateway { gateway } => {
            let g = gateway % c.gateways.len();
            for ((gi, _), p) in &c.gateway_links {
                if *gi == g {
                    p.set(Fault::Blackhole);
                }
            }
            (format!("cut gateway {g} from the store"), Undo::HealLinks)
        }
        FaultKind::OneWay { target } => {
            let id = node(resolve(c, *target, rng).await)?;
            for ((a, _), p) in &c.store_links {
                if *a == id {
                    p.set(Fault::OneWay { to_target: true });
                }
            }
            (
                format!("store {id}'s requests arrive, answers lost"),
                Undo::HealLinks,
            )
        }
        FaultKind::SlowLinks { ms } => {
            for p in c.store_links.values() {
                p.set(Fault::Delay {
                    ms: *ms,
                    jitter_ms: ms / 2,
                });
            }
            (format!("store links +{ms} ms"), Undo::HealLinks)
        }
        FaultKind::FlakyLinks { per_mille } => {
            for p in c.store_links.values().chain(c.gateway_links.values()) {
                p.set(Fault::Drop {
                    per_mille: *per_mille,
                });
            }
            (
                format!("store links reset {per_mille}‰ of chunks"),
                Undo::HealLinks,
            )
        }
        FaultKind::UpstreamFail => {
            c.upstream_behavior(&json!({"fail_rate": 0.3, "fail_status": 503}))
                .await
                .map_err(|e| e.to_string())?;
            for u in &c.upstreams {
                u.proxy.set(Fault::Drop { per_mille: 20 });
            }
            (
                "upstreams fail 30% and links reset".into(),
                Undo::UpstreamOk,
            )
        }
        FaultKind::UpstreamStall => {
            for u in &c.upstreams {
                u.proxy.set(Fault::Blackhole);
            }
            ("upstream links silent".into(), Undo::HealLinks)
        }
        FaultKind::ClockSkew {
            target,
            offset_ms,
            drift_ppm,
        } => {
            let id = node(resolve(c, *target, rng).await)?;
            let extra = vec![
                format!("--clock-offset-ms={offset_ms}"),
                format!("--clock-drift-ppm={drift_ppm}"),
            ];
            let s = c.store(id).ok_or("unknown node")?;
            s.proc.start_with(&extra).map_err(|e| e.to_string())?;
            (
                format!("store {id} restarted with clock {offset_ms:+} ms, {drift_ppm:+} ppm"),
                Undo::RestartStore(id, vec![]),
            )
        }
        FaultKind::GatewayDrift { gateway, drift_ppm } => {
            let g = gateway % c.gateways.len();
            let extra = vec![format!("--clock-drift-ppm={drift_ppm}")];
            c.gateways[g]
                .proc
                .start_with(&extra)
                .map_err(|e| e.to_string())?;
            (
                format!("gateway {g} restarted with clocks {drift_ppm:+} ppm"),
                Undo::RestartGateway(g, vec![]),
            )
        }
        FaultKind::DiskFull { target } => {
            let id = node(resolve(c, *target, rng).await)?;
            let s = c.store(id).ok_or("unknown node")?;
            let filler = crate::disk::fill(&s.data_dir).map_err(|e| e.to_string())?;
            (
                format!("store {id}'s disk full"),
                Undo::FreeDisk(id, filler),
            )
        }
        FaultKind::GatewayDiskFull { gateway } => {
            let g = gateway % c.gateways.len();
            let filler = crate::disk::fill(&c.gateways[g].data_dir).map_err(|e| e.to_string())?;
            (
                format!("gateway {g}'s disk full"),
                Undo::FreeGatewayDisk(g, filler),
            )
        }
        FaultKind::ReplaceNode => {
            let note = crate::membership::replace_follower(c, rng).await?;
            (note, Undo::Nothing)
        }
    })
}

async fn undo(c: &mut Cluster, u: Undo) -> Result<(), String> {
    match u {
        Undo::Nothing => {}
        Undo::RestartStore(id, extra) => {
            let s = c.store(id).ok_or("unknown node")?;
            if !s.removed {
                s.proc.start_with(&extra).map_err(|e| e.to_string())?;
            }
        }
        Undo::RestartGateway(g, extra) => {
            c.gateways[g]
                .proc
                .start_with(&extra)
                .map_err(|e| e.to_string())?;
            c.wait_gateway_ready(g).await.map_err(|e| e.to_string())?;
        }
        Undo::ResumeStore(id) => {
            c.store(id).ok_or("unknown node")?.proc.resume();
        }
        Undo::ResumeGateway(g) => {
            c.gateways[g].proc.resume();
        }
        Undo::HealLinks => c.heal_links(),
        Undo::UpstreamOk => {
            c.upstream_behavior(&json!({"fail_rate": 0.0}))
                .await
                .map_err(|e| e.to_string())?;
            c.heal_links();
        }
        Undo::FreeGatewayDisk(g, filler) => {
            let _ = std::fs::remove_file(&filler);
            c.gateways[g].proc.reap_expected_exit();
            if !c.gateways[g].proc.is_running() {
                c.gateways[g].proc.start().map_err(|e| e.to_string())?;
                c.wait_gateway_ready(g).await.map_err(|e| e.to_string())?;
            }
        }
        Undo::FreeDisk(id, filler) => {
            let _ = std::fs::remove_file(&filler);
            let s = c.store(id).ok_or("unknown node")?;
            // the node stops on the write error (Raft's fatal storage error) — sometimes only
            // after the space is back, when a buffered write fails — so do what the runbook
            // says: free the disk, then restart the node on its data dir
            if !s.removed {
                s.proc.restart_expected().map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// Runs one planned fault: apply, hold, heal. Never fails the run: a fault that cannot be
/// applied is recorded as skipped.
pub async fn run_one(
    c: &tokio::sync::Mutex<Cluster>,
    p: &Planned,
    rng: &mut StdRng,
    clock: impl Fn() -> u64,
) -> Applied {
    let at_ms = clock();
    let applied = {
        let mut g = c.lock().await;
        apply(&mut g, &p.fault, rng).await
    };
    let (note, ok) = match applied {
        Err(e) => (format!("skipped: {e}"), false),
        Ok((note, u)) => {
            tokio::time::sleep(Duration::from_millis(p.hold_ms)).await;
            let mut g = c.lock().await;
            match undo(&mut g, u).await {
                Ok(()) => (note, true),
                Err(e) => (format!("{note}; heal failed: {e}"), false),
            }
        }
    };
    Applied {
        at_ms,
        healed_ms: clock(),
        fault: p.fault.clone(),
        note,
        ok,
    }
}
