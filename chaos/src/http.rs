//! A small HTTP/1.1 client for the workload and the control endpoints of the simulated upstreams:
//! whole responses (streams included) read under one deadline.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Largest response body read (streams of the workload are a few KiB).
const BODY_BYTES_MAX: usize = 4 << 20;

pub fn client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(10))
        .build(c)
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What went wrong before a whole response arrived.
#[derive(Debug, Clone)]
pub enum HttpError {
    /// No response head (connect refused, reset, timeout before the head).
    NoResponse(String),
    /// A head arrived (status, headers) but the body broke off or timed out.
    BodyCut { head: Resp, error: String },
}

pub async fn request(
    c: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<Resp, HttpError> {
    let mut b = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| HttpError::NoResponse(format!("building the request: {e}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let resp = match tokio::time::timeout_at(deadline, c.request(req)).await {
        Err(_) => {
            return Err(HttpError::NoResponse(
                "timeout before the response head".into(),
            ));
        }
        Ok(Err(e)) => return Err(HttpError::NoResponse(e.to_string())),
        Ok(Ok(r)) => r,
    };
    let mut head = Resp {
        status: resp.status().as_u16(),
        headers: resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: String::new(),
    };
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                head.body = String::from_utf8_lossy(&buf).into_owned();
                return Err(HttpError::BodyCut {
                    head,
                    error: "timeout in the body".into(),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                head.body = String::from_utf8_lossy(&buf).into_owned();
                return Err(HttpError::BodyCut {
                    head,
                    error: e.to_string(),
                });
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > BODY_BYTES_MAX {
                        head.body = String::from_utf8_lossy(&buf).into_owned();
                        return Err(HttpError::BodyCut {
                            head,
                            error: "response too large".into(),
                        });
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    head.body = String::from_utf8_lossy(&buf).into_owned();
    Ok(head)
}

/// GET/POST a JSON control endpoint; the parsed body on 2xx.
pub async fn json(
    c: &HttpClient,
    method: &str,
    url: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let r = request(
        c,
        method,
        url,
        &[("content-type", "application/json")],
        &text,
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| format!("{method} {url}: {e:?}"))?;
    if !(200..300).contains(&r.status) {
        return Err(format!("{method} {url}: {} {}", r.status, r.body));
    }
    serde_json::from_str(&r.body).map_err(|e| format!("{method} {url}: not JSON: {e}"))
}
