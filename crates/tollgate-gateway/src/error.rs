//! The gateway's error type: an [`ApiError`] (one `ErrorCode` table for status, OpenAI
//! `type`/`code`, source, retryability) plus what the response needs (retry hints), rendered as
//! OpenAI's `{"error": {"message", "type", "param", "code"}}`.

use crate::body::{Body, json};
use hyper::Response;
use hyper::header::{HeaderName, HeaderValue};
use std::time::Duration;
use tollgate_types::{ApiError, ErrorCode};

#[derive(Debug, Clone)]
pub struct GwError {
    pub api: ApiError,
    /// Sent as `retry-after` / `retry-after-ms`.
    pub retry_after: Option<Duration>,
    /// Extra response headers (`x-ratelimit-*` on a 429).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl From<ApiError> for GwError {
    fn from(api: ApiError) -> Self {
        GwError {
            api,
            retry_after: None,
            headers: Vec::new(),
        }
    }
}

impl GwError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> GwError {
        ApiError::new(code, message).into()
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> GwError {
        ApiError::invalid(param, message).into()
    }

    /// Names the offending request field.
    pub fn with_param(mut self, param: &str) -> GwError {
        self.api.param = Some(param.to_owned());
        self
    }

    pub fn retry_after(mut self, d: Duration) -> GwError {
        self.retry_after = Some(d);
        self
    }

    pub fn with_headers(mut self, headers: Vec<(HeaderName, HeaderValue)>) -> GwError {
        self.headers = headers;
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.api.code
    }

    /// The OpenAI-shaped JSON body.
    pub fn body_json(&self) -> serde_json::Value {
        let info = self.api.code.info();
        serde_json::json!({"error": {
            "message": self.api.message,
            "type": info.openai_type,
            "param": self.api.param,
            "code": info.code,
        }})
    }

    pub fn into_response(self) -> Response<Body> {
        let status = hyper::StatusCode::from_u16(self.api.code.info().http_status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = json(status, &self.body_json());
        let h = r.headers_mut();
        for (k, v) in self.headers {
            h.insert(k, v);
        }
        if let Some(d) = self.retry_after {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                h.insert("retry-after", v);
            }
            if let Ok(v) = HeaderValue::from_str(&d.as_millis().to_string()) {
                h.insert("retry-after-ms", v);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use tollgate_types::ErrorCode;

    /// docs/api.md's error table must list every code with its status and type.
    #[test]
    fn the_api_reference_lists_every_error_code() {
        let doc = include_str!("../../../docs/api.md");
        for code in ErrorCode::ALL {
            let i = code.info();
            let row = format!("| `{}` | {} | `{}` |", i.code, i.http_status, i.openai_type);
            assert!(
                doc.contains(&row),
                "docs/api.md lacks the row for {code:?}: {row}"
            );
        }
    }
}
