//! Flags shared by `tollgate store` and `tollgate gateway` that set the process-wide dial and
//! clock hooks (`tollgate_types::faults`) before anything connects or reads a clock.

use anyhow::anyhow;
use clap::Args;
use tollgate_types::faults::{self, Skew};

#[derive(Args, Clone, Default)]
pub struct HooksArgs {
    /// Connect to an advertised address at another one instead, `advertised=actual,…` (both
    /// host:port): for NAT, sidecars, and the chaos harness's fault proxies.
    #[arg(long)]
    pub dial_via: Option<String>,
    /// Fault injection (chaos runs only): offset of this process's wall clock, in ms.
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub clock_offset_ms: i64,
    /// Fault injection (chaos runs only): drift of this process's clocks, in ppm (+ runs fast).
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub clock_drift_ppm: i64,
}

impl HooksArgs {
    /// Installs the hooks; call first thing in the subcommand.
    pub fn install(&self) -> anyhow::Result<()> {
        if let Some(d) = &self.dial_via {
            let map = faults::parse_dial_via(d).map_err(|e| anyhow!("--dial-via: {e}"))?;
            faults::set_dial_via(map).map_err(|e| anyhow!(e))?;
        }
        let skew = Skew {
            offset_ms: self.clock_offset_ms,
            drift_ppm: self.clock_drift_ppm,
        };
        if skew != Skew::default() {
            faults::set_clock_skew(skew).map_err(|e| anyhow!("--clock-drift-ppm: {e}"))?;
        }
        Ok(())
    }
}
