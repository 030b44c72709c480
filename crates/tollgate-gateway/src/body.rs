//! Response body type shared by every phase: whole bodies and relayed streams alike.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use std::convert::Infallible;

pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    json_bytes(status, v.to_string())
}

/// An already-encoded JSON body (a relayed or replayed upstream answer, an error body).
pub fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = full(status, body);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
