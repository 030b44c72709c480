//! Phase 7, settle: every admitted request ends in exactly one settlement — its ticket goes back
//! to admission with the actual usage, and a usage record (the ledger entry to be) goes to the
//! [`Settler`]. A request that ends any other way (client gone, task dropped) is settled by
//! `Drop` as aborted, so a hold is never leaked.

use crate::phases::admit::{Ticket, Usage};
use crate::phases::auth::Caller;
use crate::quota::Quota;
use std::sync::Arc;
use tollgate_types::config::ModelDef;
use tollgate_types::usage::{UsageRecord, UsageStatus};
use tollgate_types::{ModelName, RequestId};

/// Receives one usage record per finished request: [`crate::quota::ship::Shipper`] queues it
/// for the next `Acquire` (the ledger work puts a durable journal under it); [`LogSettler`]
/// only logs it.
pub trait Settler: Send + Sync + 'static {
    fn settle(&self, record: UsageRecord);
}

/// Writes each usage record as a structured log line (target `tollgate::usage`).
#[derive(Debug, Default)]
pub struct LogSettler;

impl Settler for LogSettler {
    fn settle(&self, r: UsageRecord) {
        tracing::info!(
            target: "tollgate::usage",
            request_id = %r.request_id,
            org = %r.org,
            project = %r.project,
            key = %r.key,
            model = %r.model,
            prompt_tokens = r.prompt_tokens,
            completion_tokens = r.completion_tokens,
            cost_micros = r.cost_micros,
            status = ?r.status,
            estimated = r.estimated,
        );
    }
}

/// Wall-clock ms (skewed only under fault injection, see `tollgate_types::faults`).
pub fn now_ms() -> u64 {
    tollgate_types::faults::wall_ms()
}

/// The pending settlement of one admitted request.
pub struct Settlement {
    ticket: Option<Ticket>,
    quota: Arc<Quota>,
    settler: Arc<dyn Settler>,
    metrics: Arc<crate::metrics::Metrics>,
    request_id: RequestId,
    caller: Caller,
    model: ModelName,
    price: tollgate_types::amount::Price,
    price_version: u64,
    gateway: tollgate_types::CompactString,
    started_at_ms: u64,
    input_estimate: u64,
}

/// Everything a settlement needs besides the usage.
pub struct SettlementParts {
    pub quota: Arc<Quota>,
    pub settler: Arc<dyn Settler>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub gateway: tollgate_types::CompactString,
}

impl Settlement {
    pub fn new(
        parts: SettlementParts,
        ticket: Ticket,
        request_id: RequestId,
        caller: Caller,
        model: &ModelDef,
        input_estimate: u64,
    ) -> Settlement {
        Settlement {
            ticket: Some(ticket),
            quota: parts.quota,
            settler: parts.settler,
            metrics: parts.metrics,
            request_id,
            caller,
            model: model.name.clone(),
            price: model.price,
            price_version: model.price_version,
            gateway: parts.gateway,
            started_at_ms: now_ms(),
            input_estimate,
        }
    }

    /// The `x-ratelimit-*` headers admission produced.
    pub fn headers(&self) -> Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)> {
        self.ticket
            .as_ref()
            .map(|t| t.header_pairs())
            .unwrap_or_default()
    }

    /// Settles with the actual usage.
    pub fn finish(mut self, usage: Usage, status: UsageStatus) {
        self.settle(usage, status);
    }

    fn settle(&mut self, usage: Usage, status: UsageStatus) {
        let Some(mut ticket) = self.ticket.take() else {
            return;
        };
        let mut usage = usage;
        if usage.estimated && usage.prompt_tokens == 0 {
            // no usage from the upstream: the prompt was sent, charge its estimate
            usage.prompt_tokens = self.input_estimate;
        }
        self.quota.settle(&mut ticket, &usage);
        self.metrics
            .tokens(usage.prompt_tokens, usage.completion_tokens);
        self.settler.settle(UsageRecord {
            request_id: self.request_id.clone(),
            org: self.caller.key.org.clone(),
            project: self.caller.key.project.clone(),
            key: self.caller.key.id.clone(),
            model: self.model.clone(),
            gateway: self.gateway.clone(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_micros: self
                .price
                .cost_micros(usage.prompt_tokens, usage.completion_tokens),
            price_version: self.price_version,
            status,
            started_at_ms: self.started_at_ms,
            ended_at_ms: now_ms(),
            estimated: usage.estimated,
            unbacked: ticket.unbacked,
        });
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let usage = Usage {
                prompt_tokens: self.input_estimate,
                completion_tokens: 0,
                estimated: true,
            };
            self.settle(usage, UsageStatus::ClientAborted);
        }
    }
}
