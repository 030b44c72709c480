//! Phase 6, stream and meter. Streams are relayed event by event as they arrive (the upstream
//! was asked for usage; its usage chunk is removed again when the client did not ask), the usage
//! is captured for settlement, and every stream ends in a terminal event: the upstream's
//! `[DONE]`, or an `error` event when the upstream fails, stalls past the idle timeout or closes
//! early. A client that goes away cancels the upstream request. Non-streaming responses are read
//! whole (bounded) and their `usage` taken from the body.

use crate::Gw;
use crate::body::{Body, full};
use crate::error::GwError;
use crate::phases::admit::Usage;
use crate::phases::settle::Settlement;
use crate::phases::upstream::Forwarded;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tollgate_types::ErrorCode;
use tollgate_types::usage::UsageStatus;

#[derive(Deserialize)]
struct UsageJson {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<UsageJson>,
    #[serde(default)]
    choices: Vec<serde::de::IgnoredAny>,
}

impl UsageJson {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            estimated: false,
        }
    }
}

/// What a whole (non-streaming) upstream answer became.
pub struct Whole {
    pub status: hyper::StatusCode,
    pub body: Bytes,
    pub usage: Option<Usage>,
}

/// Reads a non-streaming response, bounded in size and by the deadline.
pub async fn read_whole(gw: &Gw, fwd: Forwarded, deadline: Instant) -> Result<Whole, GwError> {
    let status = fwd.resp.status();
    let limit = gw.settings.limits.upstream_body_bytes_max;
    let read = http_body_util::Limited::new(fwd.resp.into_body(), limit).collect();
    let body = match tokio::time::timeout_at(deadline.into(), read).await {
        Err(_) => {
            return Err(GwError::new(
                ErrorCode::UpstreamTimeout,
                "The model server did not finish its answer in time.",
            ));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading upstream body");
            return Err(GwError::new(
                ErrorCode::UpstreamError,
                "The model server's answer could not be read completely.",
            ));
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    let usage = serde_json::from_slice::<WithUsage>(&body)
        .ok()
        .and_then(|w| w.usage)
        .map(|u| u.usage());
    drop(fwd.picked);
    Ok(Whole {
        status,
        body,
        usage,
    })
}

type Tx = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// Starts relaying an upstream SSE stream; returns the client response at once.
pub fn relay(
    gw: Arc<Gw>,
    fwd: Forwarded,
    include_usage: bool,
    settlement: Settlement,
    deadline: Instant,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel(64);
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (k, v) in settlement.headers() {
        h.insert(k.clone(), v.clone());
    }
    let relay = Relay {
        gw,
        include_usage,
        usage: None,
        content_events: 0,
        done: false,
        first_at: None,
    };
    tokio::spawn(relay.run(fwd, tx, settlement, deadline));
    r
}

struct Relay {
    gw: Arc<Gw>,
    include_usage: bool,
    usage: Option<Usage>,
    content_events: u64,
    done: bool,
    first_at: Option<Instant>,
}

/// How a relay ended.
enum End {
    Done,
    ClientGone,
    Failed(&'static str, GwError),
}

impl Relay {
    async fn run(mut self, fwd: Forwarded, tx: Tx, settlement: Settlement, deadline: Instant) {
        let Forwarded {
            resp,
            picked,
            sent_at,
            ..
        } = fwd;
        let mut body = resp.into_body();
        let idle = self.gw.settings.timeouts.stream_idle;
        let mut buf = BytesMut::new();
        let end = loop {
            let until = (Instant::now() + idle).min(deadline);
            let next = tokio::select! {
                f = tokio::time::timeout_at(until.into(), body.frame()) => f,
                // the client went away while the upstream is silent: stop now, not at the timeout
                _ = tx.closed() => break End::ClientGone,
            };
            let frame = match next {
                Err(_) => break timeout_end(until >= deadline, idle),
                Ok(None) => {
                    break End::Failed(
                        "upstream_closed",
                        GwError::new(
                            ErrorCode::UpstreamError,
                            "The model server ended the stream before it was complete.",
                        ),
                    );
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(endpoint = %picked.endpoint.state.url, error = %e, "upstream stream broke");
                    break End::Failed(
                        "upstream_broken",
                        GwError::new(
                            ErrorCode::UpstreamError,
                            "The connection to the model server broke during the stream.",
                        ),
                    );
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if self.first_at.is_none() {
                self.first_at = Some(Instant::now());
                self.gw.metrics.ttft(sent_at.elapsed());
            }
            buf.extend_from_slice(&data);
            let out = self.take_events(&mut buf);
            if !out.is_empty() && tx.send(Ok(Frame::data(out))).await.is_err() {
                break End::ClientGone;
            }
            if self.done {
                break End::Done;
            }
        };
        // dropping the upstream body cancels the upstream request when it is not finished
        drop(body);
        drop(picked);
        self.finish(end, &tx, settlement).await;
    }

    async fn finish(self, end: End, tx: &Tx, settlement: Settlement) {
        let usage = self.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: self.content_events,
            estimated: true,
        });
        match end {
            End::Done => settlement.finish(usage, UsageStatus::Completed),
            End::ClientGone => {
                self.gw.metrics.stream_end("client_gone");
                settlement.finish(usage, UsageStatus::ClientAborted);
            }
            End::Failed(reason, err) => {
                self.gw.metrics.stream_end(reason);
                let event = format!("event: error\ndata: {}\n\n", err.body_json());
                let _ = tx.send(Ok(Frame::data(Bytes::from(event)))).await;
                settlement.finish(usage, UsageStatus::UpstreamFailed);
            }
        }
    }

    /// Takes the complete events out of `buf`, returning the bytes to forward.
    fn take_events(&mut self, buf: &mut BytesMut) -> Bytes {
        let mut out = BytesMut::with_capacity(buf.len());
        while let Some((len, sep)) = event_end(buf) {
            let event = buf.split_to(len + sep).freeze();
            if self.done {
                continue;
            }
            self.inspect(&event[..len], &event, &mut out);
        }
        out.freeze()
    }

    fn inspect(&mut self, event: &[u8], raw: &Bytes, out: &mut BytesMut) {
        let data = sse_data(event);
        if data.as_deref() == Some(b"[DONE]".as_slice()) {
            self.done = true;
            out.extend_from_slice(raw);
            return;
        }
        let Some(data) = data else {
            out.extend_from_slice(raw);
            return;
        };
        if has_usage_object(&data)
            && let Ok(w) = serde_json::from_slice::<WithUsage>(&data)
            && let Some(u) = &w.usage
        {
            self.usage = Some(u.usage());
            if !self.include_usage {
                if w.choices.is_empty() {
                    return;
                }
                out.extend_from_slice(&strip_usage(&data));
                return;
            }
        } else {
            self.content_events += 1;
        }
        if !self.include_usage
            && let Some(i) = memchr::memmem::find(raw, USAGE_NULL)
        {
            // the client did not ask for usage: drop the `"usage":null` we caused
            out.extend_from_slice(&raw[..i]);
            out.extend_from_slice(&raw[i + USAGE_NULL.len()..]);
            return;
        }
        out.extend_from_slice(raw);
    }
}

const USAGE_NULL: &[u8] = b",\"usage\":null";

/// Whether a chunk carries a usage object (most carry `"usage":null` or nothing: no parse).
fn has_usage_object(data: &[u8]) -> bool {
    memchr::memmem::find(data, b"\"usage\":{").is_some()
        || memchr::memmem::find(data, b"\"usage\": {").is_some()
}

fn timeout_end(total: bool, idle: std::time::Duration) -> End {
    if total {
        End::Failed(
            "total_timeout",
            GwError::new(
                ErrorCode::UpstreamTimeout,
                "The request exceeded its total time limit.",
            ),
        )
    } else {
        End::Failed(
            "idle_timeout",
            GwError::new(
                ErrorCode::UpstreamTimeout,
                format!(
                    "The model server sent nothing for {} ms during the stream.",
                    idle.as_millis()
                ),
            ),
        )
    }
}

/// The end of the first complete event in `buf`: (length, separator length).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| (i, 2));
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The joined `data:` lines of an event, if it has any.
fn sse_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            let d = data.get_or_insert_with(Vec::new);
            if !d.is_empty() {
                d.push(b'\n');
            }
            d.extend_from_slice(rest);
        }
    }
    data
}

/// Re-encodes a chunk without its `usage` field.
fn strip_usage(data: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(data) else {
        return [b"data: ".as_slice(), data, b"\n\n"].concat();
    };
    obj.remove("usage");
    let json = serde_json::to_vec(&obj).unwrap_or_default();
    [b"data: ".as_slice(), &json, b"\n\n"].concat()
}

/// A whole response to the client (used for non-streaming answers and replays).
pub fn whole_response(status: hyper::StatusCode, body: Bytes) -> Response<Body> {
    let mut r = full(status, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_either_separator_and_data_lines_join() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(event_end(b"data: a\n"), None);
        assert_eq!(
            sse_data(b"event: x\ndata: a\ndata: b"),
            Some(b"a\nb".to_vec())
        );
        assert_eq!(sse_data(b": comment"), None);
    }

    #[test]
    fn usage_is_stripped_but_the_rest_kept() {
        let out = strip_usage(br#"{"id":"x","choices":[{"index":0}],"usage":{"prompt_tokens":1}}"#);
        let s = String::from_utf8(out).expect("utf8");
        assert!(s.starts_with("data: {") && s.ends_with("\n\n"));
        assert!(!s.contains("usage") && s.contains("choices"));
    }
}
