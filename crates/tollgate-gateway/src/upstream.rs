//! The HTTP client to model endpoints: pooled keep-alive connections, `TCP_NODELAY`, a connect
//! timeout. Plain HTTP only for now (endpoints on the serving network); see docs/routing.md.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("upstream URL '{0}' is not a valid http URL")]
    BadUrl(String),
    #[error("{0}")]
    Http(#[from] hyper_util::client::legacy::Error),
    #[error("building the upstream request: {0}")]
    Build(#[from] hyper::http::Error),
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> UpstreamClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(http);
        UpstreamClient { client }
    }

    /// `POST {base}{path}` with a JSON body and extra headers.
    pub async fn post_json(
        &self,
        base: &str,
        path: &str,
        body: Bytes,
        headers: &[(&'static str, HeaderValue)],
    ) -> Result<Response<Incoming>, SendError> {
        let url = format!("{base}{path}");
        if !url.starts_with("http://") {
            return Err(SendError::BadUrl(url));
        }
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in headers {
            b = b.header(*k, v.clone());
        }
        let req = b.body(Full::new(body))?;
        Ok(self.client.request(req).await?)
    }

    /// Active health probe: `GET {base}/models` answers 2xx within `timeout`.
    pub async fn probe(&self, base: &str, timeout: Duration) -> bool {
        let url = format!("{base}/models");
        let Ok(req) = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .body(Full::new(Bytes::new()))
        else {
            return false;
        };
        let call = async {
            let resp = self.client.request(req).await.ok()?;
            let ok = resp.status().is_success();
            // drain so the connection goes back to the pool
            resp.into_body().collect().await.ok()?;
            Some(ok)
        };
        matches!(tokio::time::timeout(timeout, call).await, Ok(Some(true)))
    }
}
