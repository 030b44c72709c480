//! Active health probes: `GET {endpoint}/models` on every known endpoint each interval. A failed
//! probe counts like a failed request (so an idle, dead endpoint is ejected before a customer
//! finds out); a good probe closes a circuit whose ejection time is over.

use super::Router;
use super::endpoint::Outcome;
use crate::upstream::UpstreamClient;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn run(
    router: Arc<Router>,
    client: UpstreamClient,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let interval = router.cfg.probe_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let probes = router.all().into_iter().map(|e| {
            let client = client.clone();
            let router = router.clone();
            async move {
                let start = Instant::now();
                let ok = client.probe(&e.url, router.cfg.probe_timeout).await;
                if ok {
                    e.probe_ok();
                } else {
                    e.record(Outcome::Failure, Duration::ZERO, &router.cfg);
                    tracing::debug!(endpoint = %e.url, ms = start.elapsed().as_millis() as u64, "probe failed");
                }
            }
        });
        futures::future::join_all(probes).await;
    }
}
