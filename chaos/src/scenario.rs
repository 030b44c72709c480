//! Named scenarios: the cluster's size, the faults the nemesis draws from, their cadence, and
//! the workload's intensity. `docs/chaos.md` describes each.

use crate::cluster::Topology;
use crate::nemesis::{FaultKind, Target};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub topology: Topology,
    pub default_duration: Duration,
    pub menu: Vec<FaultKind>,
    /// Quiet time between faults and how long each is held (both ± a quarter, seeded).
    pub every_ms: u64,
    pub hold_ms: u64,
    /// Load before the first fault and after the last heal.
    pub warmup_ms: u64,
    pub cooldown_ms: u64,
    pub clients: u32,
    pub think_ms: u64,
    /// Store data dirs on small tmpfs mounts (needs root).
    pub small_disks: bool,
}

pub const NAMES: [&str; 8] = [
    "smoke",
    "leader-churn",
    "partitions",
    "gateway-crash",
    "clock-skew",
    "disk-full",
    "membership",
    "nightly",
];

fn topo(stores: u64, spare_stores: u64, gateways: usize) -> Topology {
    Topology {
        stores,
        spare_stores,
        gateways,
        upstreams: 2,
    }
}

use FaultKind::*;
use Target::{Follower, Leader};

fn all_faults(disks: bool) -> Vec<FaultKind> {
    let mut v = vec![
        KillStore { target: Leader },
        KillStore { target: Follower },
        KillGateway { gateway: 0 },
        KillGateway { gateway: 1 },
        PauseStore { target: Leader },
        PauseGateway { gateway: 1 },
        Isolate { target: Leader },
        Isolate { target: Follower },
        SplitMinority,
        CutGateway { gateway: 0 },
        OneWay { target: Leader },
        SlowLinks { ms: 40 },
        FlakyLinks { per_mille: 5 },
        UpstreamFail,
        UpstreamStall,
        ClockSkew {
            target: Follower,
            offset_ms: 1_500,
            drift_ppm: 500,
        },
        GatewayDrift {
            gateway: 0,
            drift_ppm: -800,
        },
        ReplaceNode,
    ];
    if disks {
        v.extend([
            DiskFull { target: Follower },
            GatewayDiskFull { gateway: 1 },
        ]);
    }
    v
}

pub fn named(name: &str) -> Option<Scenario> {
    let base = Scenario {
        name: "smoke",
        about: "",
        topology: topo(3, 0, 2),
        default_duration: Duration::from_secs(60),
        menu: vec![],
        every_ms: 3_000,
        hold_ms: 5_000,
        warmup_ms: 5_000,
        cooldown_ms: 5_000,
        clients: 8,
        think_ms: 60,
        small_disks: false,
    };
    Some(match name {
        "smoke" => Scenario {
            name: "smoke",
            about: "a minute of the common faults: kill the leader, kill a gateway mid-stream, isolate the leader, pause a node, cut a gateway from the store, failing upstreams",
            menu: vec![
                KillStore { target: Leader },
                KillGateway { gateway: 1 },
                Isolate { target: Leader },
                PauseStore { target: Follower },
                CutGateway { gateway: 0 },
                UpstreamFail,
            ],
            every_ms: 2_500,
            hold_ms: 4_000,
            ..base
        },
        "leader-churn" => Scenario {
            name: "leader-churn",
            about: "the leader killed, paused or isolated again and again",
            default_duration: Duration::from_secs(180),
            menu: vec![
                KillStore { target: Leader },
                PauseStore { target: Leader },
                Isolate { target: Leader },
            ],
            every_ms: 2_000,
            hold_ms: 4_000,
            ..base
        },
        "partitions" => Scenario {
            name: "partitions",
            about: "five store nodes: isolated leader and follower, minority splits with a gateway on the small side, gateways cut from the store, one-way cuts, slow and flaky links",
            topology: topo(5, 0, 2),
            default_duration: Duration::from_secs(240),
            menu: vec![
                Isolate { target: Leader },
                Isolate { target: Follower },
                SplitMinority,
                CutGateway { gateway: 0 },
                CutGateway { gateway: 1 },
                OneWay { target: Leader },
                SlowLinks { ms: 60 },
                FlakyLinks { per_mille: 10 },
            ],
            ..base
        },
        "gateway-crash" => Scenario {
            name: "gateway-crash",
            about: "gateways killed and paused mid-stream, upstreams failing and stalling",
            default_duration: Duration::from_secs(180),
            menu: vec![
                KillGateway { gateway: 0 },
                KillGateway { gateway: 1 },
                PauseGateway { gateway: 0 },
                UpstreamFail,
                UpstreamStall,
            ],
            ..base
        },
        "clock-skew" => Scenario {
            name: "clock-skew",
            about: "store nodes restarted with offset and drifting wall clocks (and elected: the leader is killed in between), gateways with drifting monotonic clocks",
            default_duration: Duration::from_secs(180),
            menu: vec![
                ClockSkew {
                    target: Follower,
                    offset_ms: 2_000,
                    drift_ppm: 500,
                },
                ClockSkew {
                    target: Follower,
                    offset_ms: -3_000,
                    drift_ppm: -500,
                },
                KillStore { target: Leader },
                GatewayDrift {
                    gateway: 0,
                    drift_ppm: 800,
                },
                GatewayDrift {
                    gateway: 1,
                    drift_ppm: -800,
                },
            ],
            ..base
        },
        "disk-full" => Scenario {
            name: "disk-full",
            about: "a store node's or a gateway's data dir fills up (ENOSPC), then is freed and the process restarted if it stopped (needs root for the tmpfs mounts)",
            default_duration: Duration::from_secs(120),
            menu: vec![
                DiskFull { target: Follower },
                DiskFull { target: Leader },
                GatewayDiskFull { gateway: 0 },
            ],
            hold_ms: 6_000,
            small_disks: true,
            ..base
        },
        "membership" => Scenario {
            name: "membership",
            about: "spare nodes join and followers leave for good while load runs, with a follower killed in between",
            topology: topo(3, 6, 2),
            default_duration: Duration::from_secs(120),
            menu: vec![ReplaceNode, KillStore { target: Follower }, ReplaceNode],
            every_ms: 4_000,
            ..base
        },
        "nightly" => Scenario {
            name: "nightly",
            about: "every fault kind, mixed, for half an hour (disk-full only when run as root)",
            topology: topo(3, 6, 2),
            default_duration: Duration::from_secs(1800),
            menu: all_faults(crate::disk::can_mount()),
            every_ms: 4_000,
            hold_ms: 6_000,
            small_disks: crate::disk::can_mount(),
            ..base
        },
        _ => return None,
    })
}

impl Scenario {
    /// How far the store clock may jump forward (the sum of positive injected offsets).
    pub fn clock_jump_ms(&self) -> u64 {
        self.menu
            .iter()
            .map(|f| match f {
                ClockSkew { offset_ms, .. } => (*offset_ms).max(0) as u64,
                _ => 0,
            })
            .sum()
    }
}
