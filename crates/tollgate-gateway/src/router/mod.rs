//! Routing: a model's route is ordered tiers of weighted endpoint pools. Within a tier the router
//! picks with power-of-two-choices over peak-EWMA cost among available endpoints below their
//! concurrency cap; an empty tier falls through to the next. When every endpoint is merely
//! saturated the request waits in a bounded queue with a deadline; when every endpoint is ejected
//! the first attempt goes to the one that recovers soonest (panic routing, so recovery never
//! depends on timers alone).

pub mod budget;
pub mod endpoint;
pub mod probe;

use crate::error::GwError;
use crate::settings::Routing;
use endpoint::EndpointState;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::Notify;
use tollgate_types::ErrorCode;
use tollgate_types::config::ModelDef;

/// One endpoint as a route uses it.
#[derive(Debug, Clone)]
pub struct RouteEndpoint {
    pub state: Arc<EndpointState>,
    pub weight: u32,
    /// Model name to send upstream (default: the client's).
    pub upstream_model: Option<String>,
}

/// A model's tiers, primary first.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub tiers: Vec<Vec<RouteEndpoint>>,
}

/// Endpoint states by URL, kept across config changes so health survives a route edit.
pub struct Router {
    endpoints: RwLock<HashMap<String, Arc<EndpointState>>>,
    pub cfg: Routing,
    released: Notify,
    queued: AtomicUsize,
    /// Queued requests per priority class (0 = highest).
    waiting: [AtomicUsize; PRIORITY_CLASSES],
    pub budget: budget::RetryBudget,
}

/// Priority classes for queued requests: an org's `tier`, 0 (highest) to 3 (and above).
pub const PRIORITY_CLASSES: usize = 4;

/// The priority class of an org tier.
pub fn class_of(tier: u8) -> usize {
    usize::from(tier).min(PRIORITY_CLASSES - 1)
}

/// A chosen endpoint; holds an in-flight slot until dropped.
#[derive(Debug)]
pub struct Picked {
    pub endpoint: RouteEndpoint,
    pub tier: usize,
    router: Arc<Router>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.endpoint.state.sub_inflight();
        self.router.released.notify_waiters();
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

enum Choice {
    Picked(usize, RouteEndpoint),
    Saturated,
    Unavailable,
}

impl Router {
    pub fn new(cfg: Routing) -> Arc<Router> {
        Arc::new(Router {
            endpoints: RwLock::new(HashMap::new()),
            budget: budget::RetryBudget::new(cfg.retry_budget_ratio, cfg.retry_budget_min_per_sec),
            cfg,
            released: Notify::new(),
            queued: AtomicUsize::new(0),
            waiting: Default::default(),
        })
    }

    /// Builds a model's route, reusing the live state of endpoints already known.
    pub fn route_for(&self, model: &ModelDef) -> Route {
        let tiers = model
            .tiers
            .iter()
            .map(|t| {
                t.endpoints
                    .iter()
                    .map(|e| RouteEndpoint {
                        state: self.endpoint(&e.url),
                        weight: e.weight.max(1),
                        upstream_model: e.upstream_model.clone(),
                    })
                    .collect()
            })
            .collect();
        Route { tiers }
    }

    fn endpoint(&self, url: &str) -> Arc<EndpointState> {
        let url = url.trim_end_matches('/');
        if let Ok(m) = self.endpoints.read()
            && let Some(e) = m.get(url)
        {
            return e.clone();
        }
        let Ok(mut m) = self.endpoints.write() else {
            return Arc::new(EndpointState::new(url.to_owned()));
        };
        m.entry(url.to_owned())
            .or_insert_with(|| Arc::new(EndpointState::new(url.to_owned())))
            .clone()
    }

    /// Drops endpoints no route uses any more.
    pub fn retain(&self, used: &std::collections::HashSet<String>) {
        if let Ok(mut m) = self.endpoints.write() {
            m.retain(|url, _| used.contains(url));
        }
    }

    pub fn all(&self) -> Vec<Arc<EndpointState>> {
        let mut v: Vec<_> = self
            .endpoints
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.url.cmp(&b.url));
        v
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Picks an endpoint not in `tried`, waiting in the queue (until `deadline`) when every
    /// candidate is at its concurrency cap. A request of priority `class` never takes a slot
    /// while a request of a higher class (lower number) waits: freed capacity goes to the
    /// highest class first.
    pub async fn pick(
        self: &Arc<Self>,
        route: &Route,
        tried: &[usize],
        deadline: Instant,
        class: usize,
    ) -> Result<Picked, GwError> {
        let class = class.min(PRIORITY_CLASSES - 1);
        let queue_deadline = deadline.min(Instant::now() + self.cfg.queue_timeout);
        let mut queued = None;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let choice = if self.outranked(class) {
                Choice::Saturated
            } else {
                self.choose(route, tried)
            };
            match choice {
                Choice::Picked(tier, endpoint) => {
                    endpoint.state.begin();
                    return Ok(Picked {
                        endpoint,
                        tier,
                        router: self.clone(),
                    });
                }
                Choice::Unavailable => return self.panic_pick(route, tried),
                Choice::Saturated => {}
            }
            if queued.is_none() {
                queued = Some(QueueSlot::take(self, class)?);
            }
            if tokio::time::timeout_at(queue_deadline.into(), released)
                .await
                .is_err()
            {
                return Err(overloaded("every endpoint for this model is at capacity"));
            }
        }
    }

    /// Whether a request of a higher priority class is waiting.
    fn outranked(&self, class: usize) -> bool {
        self.waiting[..class]
            .iter()
            .any(|w| w.load(Ordering::Acquire) > 0)
    }

    fn choose(&self, route: &Route, tried: &[usize]) -> Choice {
        let now = Instant::now();
        let cap = self.cfg.endpoint_inflight_max;
        let mut saturated = false;
        let mut cands: Vec<&RouteEndpoint> = Vec::with_capacity(8);
        for (i, tier) in route.tiers.iter().enumerate() {
            cands.clear();
            for e in tier {
                if tried.contains(&(Arc::as_ptr(&e.state) as usize)) || !e.state.available(now) {
                    continue;
                }
                if e.state.inflight() >= cap {
                    saturated = true;
                    continue;
                }
                cands.push(e);
            }
            if let Some(e) = p2c(&cands) {
                return Choice::Picked(i, e.clone());
            }
        }
        if saturated {
            Choice::Saturated
        } else {
            Choice::Unavailable
        }
    }

    /// Nothing is available: a first attempt goes to the endpoint that recovers soonest; a retry
    /// gives up.
    fn panic_pick(self: &Arc<Self>, route: &Route, tried: &[usize]) -> Result<Picked, GwError> {
        let none = || {
            GwError::new(
                ErrorCode::UpstreamError,
                "no upstream endpoint of this model is available",
            )
        };
        if !tried.is_empty() {
            return Err(none());
        }
        let (tier, endpoint) = route
            .tiers
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.iter().map(move |e| (i, e)))
            .filter(|(_, e)| e.state.inflight() < self.cfg.endpoint_inflight_max)
            .min_by_key(|(_, e)| e.state.available_at())
            .ok_or_else(none)?;
        endpoint.state.add_inflight();
        Ok(Picked {
            endpoint: endpoint.clone(),
            tier,
            router: self.clone(),
        })
    }
}

fn overloaded(msg: &str) -> GwError {
    GwError::new(ErrorCode::Overloaded, msg).retry_after(std::time::Duration::from_secs(1))
}

/// A place in the bounded queue (of one priority class), given back on drop.
struct QueueSlot<'a>(&'a Router, usize);

impl<'a> QueueSlot<'a> {
    fn take(r: &'a Router, class: usize) -> Result<QueueSlot<'a>, GwError> {
        let prev = r.queued.fetch_add(1, Ordering::Relaxed);
        if prev >= r.cfg.queue_max {
            r.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(overloaded("the gateway is overloaded; retry later"));
        }
        r.waiting[class].fetch_add(1, Ordering::AcqRel);
        Ok(QueueSlot(r, class))
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
        self.0.waiting[self.1].fetch_sub(1, Ordering::AcqRel);
        // lower classes held back by this waiter look again
        self.0.released.notify_waiters();
    }
}

/// Power of two choices: two distinct weighted-random candidates, the cheaper wins.
fn p2c<'a>(cands: &[&'a RouteEndpoint]) -> Option<&'a RouteEndpoint> {
    match cands.len() {
        0 => None,
        1 => Some(cands[0]),
        n => {
            let mut rng = rand::rng();
            let a = weighted(cands, &mut rng);
            let mut b = weighted(cands, &mut rng);
            if a == b {
                b = (a + 1 + rng.random_range(0..n - 1)) % n;
            }
            let (ea, eb) = (cands[a], cands[b]);
            Some(if ea.state.cost() <= eb.state.cost() {
                ea
            } else {
                eb
            })
        }
    }
}

fn weighted(cands: &[&RouteEndpoint], rng: &mut impl Rng) -> usize {
    let total: u64 = cands.iter().map(|c| u64::from(c.weight)).sum();
    let mut x = rng.random_range(0..total.max(1));
    for (i, c) in cands.iter().enumerate() {
        let w = u64::from(c.weight);
        if x < w {
            return i;
        }
        x -= w;
    }
    cands.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use endpoint::Outcome;
    use std::time::Duration;

    fn route(r: &Router, tiers: &[&[&str]]) -> Route {
        Route {
            tiers: tiers
                .iter()
                .map(|t| {
                    t.iter()
                        .map(|u| RouteEndpoint {
                            state: r.endpoint(u),
                            weight: 1,
                            upstream_model: None,
                        })
                        .collect()
                })
                .collect(),
        }
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn ejected_endpoints_are_skipped_and_the_next_tier_takes_over() {
        let r = Router::new(Routing {
            eject_after_failures: 1,
            ..Routing::default()
        });
        let rt = route(&r, &[&["http://a/v1", "http://b/v1"], &["http://c/v1"]]);
        r.endpoint("http://a/v1")
            .record(Outcome::Failure, Duration::ZERO, &r.cfg);
        for _ in 0..20 {
            let p = r.pick(&rt, &[], deadline(), 0).await.expect("pick");
            assert_eq!(p.endpoint.state.url, "http://b/v1");
        }
        r.endpoint("http://b/v1")
            .record(Outcome::Failure, Duration::ZERO, &r.cfg);
        let p = r.pick(&rt, &[], deadline(), 0).await.expect("pick");
        assert_eq!((p.tier, p.endpoint.state.url.as_str()), (1, "http://c/v1"));
    }

    #[tokio::test]
    async fn retries_exclude_tried_endpoints_and_give_up_when_none_is_left() {
        let r = Router::new(Routing::default());
        let rt = route(&r, &[&["http://a/v1"]]);
        let first = r.pick(&rt, &[], deadline(), 0).await.expect("pick");
        let tried = [Arc::as_ptr(&first.endpoint.state) as usize];
        let again = r.pick(&rt, &tried, deadline(), 0).await;
        assert_eq!(
            again.map(|_| ()).map_err(|e| e.code()),
            Err(ErrorCode::UpstreamError)
        );
    }

    #[tokio::test]
    async fn all_ejected_still_tries_the_soonest_to_recover_once() {
        let r = Router::new(Routing {
            eject_after_failures: 1,
            ..Routing::default()
        });
        let rt = route(&r, &[&["http://a/v1"], &["http://b/v1"]]);
        r.endpoint("http://a/v1")
            .record(Outcome::Failure, Duration::ZERO, &r.cfg);
        r.endpoint("http://b/v1")
            .record(Outcome::Failure, Duration::ZERO, &r.cfg);
        assert!(r.pick(&rt, &[], deadline(), 0).await.is_ok());
    }

    #[tokio::test]
    async fn a_saturated_pool_queues_then_sheds() {
        let r = Router::new(Routing {
            endpoint_inflight_max: 1,
            queue_max: 1,
            queue_timeout: Duration::from_millis(200),
            ..Routing::default()
        });
        let rt = route(&r, &[&["http://a/v1"]]);
        let held = r.pick(&rt, &[], deadline(), 0).await.expect("pick");
        // a waiter gets the slot when it is released
        let r2 = r.clone();
        let rt2 = rt.clone();
        let waiter =
            tokio::spawn(async move { r2.pick(&rt2, &[], deadline(), 0).await.map(|p| p.tier) });
        while r.queued() == 0 {
            tokio::task::yield_now().await;
        }
        // the queue (1 place) is full: the next one is shed at once
        let shed = r.pick(&rt, &[], deadline(), 0).await;
        assert_eq!(
            shed.map(|_| ()).map_err(|e| e.code()),
            Err(ErrorCode::Overloaded)
        );
        drop(held);
        assert_eq!(waiter.await.expect("join").map_err(|e| e.code()), Ok(0));
    }

    #[tokio::test]
    async fn freed_capacity_goes_to_the_highest_priority_class_first() {
        let r = Router::new(Routing {
            endpoint_inflight_max: 1,
            queue_max: 8,
            queue_timeout: Duration::from_secs(5),
            ..Routing::default()
        });
        let rt = route(&r, &[&["http://a/v1"]]);
        let held = r.pick(&rt, &[], deadline(), 0).await.expect("pick");
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let spawn = |class: usize| {
            let (r, rt, order) = (r.clone(), rt.clone(), order.clone());
            tokio::spawn(async move {
                let p = r.pick(&rt, &[], deadline(), class).await.expect("pick");
                order.lock().expect("order").push(class);
                // hold the slot briefly so the next waiter has to wait for it
                tokio::task::yield_now().await;
                drop(p);
            })
        };
        // a low-priority request queues first, then a high-priority one
        let low = spawn(3);
        while r.queued() < 1 {
            tokio::task::yield_now().await;
        }
        let high = spawn(0);
        while r.queued() < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        high.await.expect("join");
        low.await.expect("join");
        assert_eq!(*order.lock().expect("order"), vec![0, 3]);
    }
}
