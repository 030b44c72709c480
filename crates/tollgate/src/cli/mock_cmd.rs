//! `tollgate mock-upstream`: the simulated OpenAI-compatible model server.

use super::store_cmd::wait_for_signal;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use tollgate_mock_upstream::{Behavior, MockServer};

#[derive(Args)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1:7801")]
    pub listen: SocketAddr,
    /// Name in the x-mock-name response header.
    #[arg(long, default_value = "mock")]
    pub name: String,
    /// Delay before the first token.
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Generation speed (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub tokens_per_sec: u64,
    /// Tokens per SSE chunk.
    #[arg(long, default_value_t = 1)]
    pub chunk_tokens: u32,
    /// Completion length without max_tokens (with it: the smaller).
    #[arg(long, default_value_t = 16)]
    pub completion_tokens: u32,
    /// Fraction of requests answered with --fail-status.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    #[arg(long, default_value_t = 500)]
    pub fail_status: u16,
    /// Retry-After seconds on injected failures.
    #[arg(long)]
    pub retry_after_s: Option<u64>,
    /// Streams stall (hold the connection silently) after this many tokens.
    #[arg(long)]
    pub stall_after_tokens: Option<u32>,
    /// Streams drop the connection after this many tokens.
    #[arg(long)]
    pub drop_after_tokens: Option<u32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl MockArgs {
    fn behavior(&self) -> Behavior {
        Behavior {
            name: self.name.clone(),
            ttft_ms: self.ttft_ms,
            tokens_per_sec: self.tokens_per_sec,
            chunk_tokens: self.chunk_tokens,
            completion_tokens: self.completion_tokens,
            fail_rate: self.fail_rate,
            fail_status: self.fail_status,
            retry_after_s: self.retry_after_s,
            stall_after_tokens: self.stall_after_tokens,
            drop_after_tokens: self.drop_after_tokens,
            seed: self.seed,
            ..Behavior::default()
        }
    }
}

pub async fn run(args: MockArgs) -> anyhow::Result<()> {
    let behavior = args.behavior();
    behavior
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid mock behaviour: {e}"))?;
    let server = MockServer::start(args.listen, behavior)
        .await
        .with_context(|| format!("starting the mock upstream on {}", args.listen))?;
    eprintln!(
        "tollgate mock-upstream: listening on http://{}/v1 (control: /mock/behavior, /mock/stats, /mock/served)",
        server.addr
    );
    wait_for_signal().await;
    server.shutdown().await;
    Ok(())
}
