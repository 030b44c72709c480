//! Phase 6, stream and meter. Streams are relayed event by event as they arrive (the upstream
//! was asked for usage; its usage chunk is removed again when the client did not ask), the usage
//! is captured for settlement, and every stream ends in a terminal event: the upstream's
//! `[DONE]`, or an `error` event when the upstream fails, stalls past the idle timeout or closes
//! early. A client that goes away cancels the upstream request. Non-streaming responses are read
//! whole (bounded) and their `usage` taken from the body.

use crate::Gw;
use crate::body::Body;
use crate::error::GwError;
use crate::phases::admit::Usage;
use crate::phases::settle::Settlement;
use crate::phases::upstream::Forwarded;
use crate::router::Picked;
use crate::upstream::UpResponse;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use memchr::memmem::FinderRev;
use serde::Deserialize;
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Instant;
use tokio::time::Sleep;
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

/// The top-level `usage` of a whole response: read from the last `"usage"` key (where OpenAI
/// and vLLM put it) without parsing the choices; the whole body is parsed only if that fails.
fn usage_of(body: &[u8]) -> Option<Usage> {
    let fast = || {
        let i = memchr::memmem::rfind(body, b"\"usage\"")?;
        if i > 0 && body[i - 1] == b'\\' {
            return None; // inside a string
        }
        let rest = body[i + 7..].trim_ascii_start().strip_prefix(b":")?;
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<UsageJson>();
        values.next()?.ok().map(|u| u.usage())
    };
    fast().or_else(|| {
        serde_json::from_slice::<WithUsage>(body)
            .ok()
            .and_then(|w| w.usage)
            .map(|u| u.usage())
    })
}

/// Reads a non-streaming response, bounded in size and by the deadline.
pub async fn read_whole(gw: &Gw, fwd: Forwarded, deadline: Instant) -> Result<Whole, GwError> {
    let Forwarded {
        mut resp, picked, ..
    } = fwd;
    let status = resp.status;
    let limit = gw.settings.limits.upstream_body_bytes_max;
    let read = resp.collect(limit);
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
        Ok(Ok(b)) => b,
    };
    gw.client.release(resp);
    let usage = usage_of(&body);
    drop(picked);
    Ok(Whole {
        status,
        body,
        usage,
    })
}

/// Starts relaying an upstream SSE stream; returns the client response at once. The relay is
/// polled by the client connection's own task (no extra task or channel per stream): each poll
/// reads upstream frames until complete events are ready, and dropping the body (client gone)
/// drops the upstream request and settles what was used.
pub fn relay(
    gw: Arc<Gw>,
    fwd: Forwarded,
    include_usage: bool,
    settlement: Settlement,
    deadline: Instant,
) -> Response<Body> {
    let headers = settlement.headers();
    let Forwarded {
        resp,
        picked,
        sent_at,
        ..
    } = fwd;
    let idle = gw.settings.timeouts.stream_idle;
    let relay = Relay {
        include_usage,
        usage: None,
        content_events: 0,
        done: false,
        first_seen: false,
        finished: false,
        upstream: Some(resp),
        picked: Some(picked),
        settlement: Some(settlement),
        buf: BytesMut::new(),
        timer: Box::pin(tokio::time::sleep_until(
            (Instant::now() + idle).min(deadline).into(),
        )),
        last_activity: Instant::now(),
        pending_end: None,
        sent_at,
        deadline,
        gw,
    };
    let stream = futures::stream::unfold(relay, |mut r| async move {
        let bytes = r.next_bytes().await?;
        Some((Ok::<_, std::io::Error>(Frame::data(bytes)), r))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (k, v) in headers {
        h.insert(k, v);
    }
    resp
}

struct Relay {
    gw: Arc<Gw>,
    include_usage: bool,
    usage: Option<Usage>,
    content_events: u64,
    /// `[DONE]` seen.
    done: bool,
    first_seen: bool,
    /// Settled; nothing more to send.
    finished: bool,
    /// The upstream response being relayed, on its connection.
    upstream: Option<UpResponse>,
    picked: Option<Picked>,
    settlement: Option<Settlement>,
    buf: BytesMut,
    timer: Pin<Box<Sleep>>,
    last_activity: Instant,
    /// An ending found while coalescing, reported on the next poll.
    pending_end: Option<End>,
    sent_at: Instant,
    deadline: Instant,
}

/// How a relay ended.
enum End {
    Done,
    ClientGone,
    Failed(&'static str, GwError),
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.finished {
            // the client went away (hyper dropped the body) before the stream ended
            self.end(End::ClientGone);
        }
    }
}

impl Relay {
    /// The next bytes for the client: complete events, a final error event, or None at the end.
    /// Frames the upstream already delivered are coalesced into one write (no added wait).
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if let Some(end) = self.pending_end.take() {
            return self.end(end);
        }
        let idle = self.gw.settings.timeouts.stream_idle;
        loop {
            let upstream = self.upstream.as_mut()?;
            let frame = tokio::select! {
                biased;
                f = upstream.chunk() => f,
                _ = self.timer.as_mut() => {
                    // the timer is re-armed lazily: only when it fires is activity checked
                    let due = (self.last_activity + idle).min(self.deadline);
                    if Instant::now() < due {
                        self.timer.as_mut().reset(due.into());
                        continue;
                    }
                    return self.end(timeout_end(due >= self.deadline, idle));
                }
            };
            let mut out = BytesMut::new();
            let mut next = Some(frame);
            // take what is ready now; stop at the first pending frame
            for _ in 0..COALESCE_FRAMES_MAX {
                let Some(frame) = next.take() else {
                    break;
                };
                if let Err(end) = self.absorb(frame, &mut out) {
                    if out.is_empty() {
                        return self.end(end);
                    }
                    self.pending_end = Some(end);
                    return Some(out.freeze());
                }
                if self.done {
                    self.end(End::Done);
                    return Some(out.freeze());
                }
                next = self.ready_frame();
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
        }
    }

    /// The next upstream piece if it is available without waiting for the network.
    fn ready_frame(&mut self) -> Option<Option<std::io::Result<Bytes>>> {
        self.upstream.as_mut()?.ready_chunk()
    }

    /// Takes one upstream frame: complete events go to `out`; the end of the body is an `End`.
    fn absorb(
        &mut self,
        frame: Option<std::io::Result<Bytes>>,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        let data = match frame {
            None => {
                return Err(failed(
                    "upstream_closed",
                    "The model server ended the stream before it was complete.",
                ));
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream stream broke");
                return Err(failed(
                    "upstream_broken",
                    "The connection to the model server broke during the stream.",
                ));
            }
            Some(Ok(d)) => d,
        };
        self.last_activity = Instant::now();
        if !self.first_seen {
            self.first_seen = true;
            self.gw.metrics.ttft(self.sent_at.elapsed());
        }
        if self.buf.is_empty() {
            // the usual case: the frame holds whole events; only a torn tail is copied
            let used = self.take_events(&data, out);
            self.buf.extend_from_slice(&data[used..]);
        } else {
            self.buf.extend_from_slice(&data);
            let buf = std::mem::take(&mut self.buf);
            let used = self.take_events(&buf, out);
            self.buf = buf;
            self.buf.advance(used);
        }
        let max = self.gw.settings.limits.upstream_body_bytes_max;
        if self.buf.len() > max {
            return Err(failed(
                "upstream_broken",
                &format!("The model server sent an event larger than {max} bytes."),
            ));
        }
        Ok(())
    }

    /// After `[DONE]`: the connection goes back to the pool once the body's end is here.
    fn release_connection(&mut self) {
        if let Some(done) = self.upstream.take() {
            self.gw.client.release_when_done(done);
        }
    }

    /// Settles once; returns the terminal error event to send, if any.
    fn end(&mut self, end: End) -> Option<Bytes> {
        self.finished = true;
        if matches!(end, End::Done) {
            self.release_connection();
        }
        // dropping the upstream body (and its connection) cancels an unfinished upstream request
        self.upstream = None;
        self.picked = None;
        let usage = self.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: self.content_events,
            estimated: true,
        });
        let settlement = self.settlement.take()?;
        match end {
            End::Done => {
                settlement.finish(usage, UsageStatus::Completed);
                None
            }
            End::ClientGone => {
                self.gw.metrics.stream_end("client_gone");
                settlement.finish(usage, UsageStatus::ClientAborted);
                None
            }
            End::Failed(reason, err) => {
                self.gw.metrics.stream_end(reason);
                settlement.finish(usage, UsageStatus::UpstreamFailed);
                let event = format!("event: error\ndata: {}\n\n", err.body_json());
                Some(Bytes::from(event))
            }
        }
    }

    /// Forwards the complete events at the start of `buf` to `out`; returns the bytes used.
    fn take_events(&mut self, buf: &[u8], out: &mut BytesMut) -> usize {
        let mut used = 0;
        while let Some((len, sep)) = event_end(&buf[used..]) {
            let raw = &buf[used..used + len + sep];
            used += len + sep;
            if !self.done {
                self.inspect(&raw[..len], raw, out);
            }
        }
        used
    }

    fn inspect(&mut self, event: &[u8], raw: &[u8], out: &mut BytesMut) {
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
        let key = usage_key(raw);
        if key.is_some_and(|(_, object)| object)
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
            && let Some(drop) = key.and_then(|(i, _)| null_usage(raw, i))
        {
            // the client did not ask for usage: drop the `"usage":null` we caused
            out.extend_from_slice(&raw[..drop.start]);
            out.extend_from_slice(&raw[drop.end..]);
            return;
        }
        out.extend_from_slice(raw);
    }
}

/// Most already-delivered upstream frames merged into one client write.
const COALESCE_FRAMES_MAX: usize = 64;

const USAGE_KEY: &[u8] = b"\"usage\":";
// built once: `memmem::find` builds a searcher per call, which costs more than the search on a
// chunk of a few hundred bytes
static USAGE_KEY_FINDER: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(USAGE_KEY));

/// Where a chunk's last `"usage":` key starts (usage comes last in OpenAI and vLLM chunks; the
/// text inside strings is escaped and cannot match), and whether an object follows it — most
/// chunks carry `"usage":null` or nothing, and are not parsed.
fn usage_key(chunk: &[u8]) -> Option<(usize, bool)> {
    let i = USAGE_KEY_FINDER.rfind(chunk)?;
    let object = chunk[i + USAGE_KEY.len()..].trim_ascii_start().first() == Some(&b'{');
    Some((i, object))
}

/// The `,"usage":null` around the key at `i`, if that is what is there.
fn null_usage(chunk: &[u8], i: usize) -> Option<std::ops::Range<usize>> {
    let start = i.checked_sub(1).filter(|&s| chunk[s] == b',')?;
    let end = i + USAGE_KEY.len() + 4;
    (chunk.get(i + USAGE_KEY.len()..end) == Some(b"null".as_slice())).then_some(start..end)
}

fn failed(reason: &'static str, msg: &str) -> End {
    End::Failed(reason, GwError::new(ErrorCode::UpstreamError, msg))
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

/// The end of the first complete event in `buf` (a blank line, `\n\n` or `\r\n\r\n`):
/// (length, separator length).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| {
        if buf.get(i + 1) == Some(&b'\n') {
            Some((i, 2))
        } else if i > 0 && buf[i - 1] == b'\r' && buf.get(i + 1..i + 3) == Some(b"\r\n") {
            Some((i - 1, 4))
        } else {
            None
        }
    })
}

/// The joined `data:` lines of an event, if it has any (borrowed when there is one).
fn sse_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    if memchr::memchr(b'\n', event).is_none() {
        // the usual event: one `data:` line
        return data_line(event.strip_suffix(b"\r").unwrap_or(event)).map(Cow::Borrowed);
    }
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in event.split(|b| *b == b'\n') {
        let Some(rest) = data_line(line.strip_suffix(b"\r").unwrap_or(line)) else {
            continue;
        };
        data = Some(match data {
            None => Cow::Borrowed(rest),
            Some(first) => {
                let mut d = first.into_owned();
                d.push(b'\n');
                d.extend_from_slice(rest);
                Cow::Owned(d)
            }
        });
    }
    data
}

/// The value of a `data:` line.
fn data_line(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data:")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_either_separator_and_data_lines_join() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(event_end(b"data: a\n"), None);
        assert_eq!(event_end(b"a\r\nb\r\n\r\nc\n\n"), Some((4, 4)));
        assert_eq!(event_end(b"a\r\n\nb"), Some((2, 2)));
        assert_eq!(event_end(b"\n\n"), Some((0, 2)));
        assert_eq!(event_end(b"a\r\n\r"), None);
        assert_eq!(
            sse_data(b"event: x\ndata: a\ndata: b").as_deref(),
            Some(b"a\nb".as_slice())
        );
        assert_eq!(sse_data(b"data:{}\r").as_deref(), Some(b"{}".as_slice()));
        assert_eq!(sse_data(b": comment"), None);
    }

    #[test]
    fn usage_is_found_without_parsing_the_choices() {
        let body = br#"{"choices":[{"message":{"content":"say \"usage\": {}"}}],"usage": {"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(
            usage_of(body),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                estimated: false
            })
        );
        // usage first, an escaped "usage" later in the text: the full parse still finds it
        let odd = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"choices":[{"text":"\"usage\""}]}"#;
        assert_eq!(usage_of(odd).map(|u| u.completion_tokens), Some(2));
        assert_eq!(usage_of(br#"{"choices":[],"usage":null}"#), None);
        assert_eq!(usage_of(b"not json"), None);
    }

    #[test]
    fn the_usage_key_is_found_once_and_its_null_dropped_exactly() {
        let chunk = br#"data: {"choices":[{"delta":{"content":"\"usage\": {"}}],"usage":null}"#;
        let (i, object) = usage_key(chunk).expect("key");
        assert!(!object);
        let drop = null_usage(chunk, i).expect("null usage");
        let kept = [&chunk[..drop.start], &chunk[drop.end..]].concat();
        assert_eq!(
            kept,
            br#"data: {"choices":[{"delta":{"content":"\"usage\": {"}}]}"#.to_vec()
        );
        let with = br#"{"choices":[],"usage": {"prompt_tokens":1}}"#;
        assert_eq!(usage_key(with).map(|(_, o)| o), Some(true));
        assert_eq!(null_usage(br#"{"usage":null}"#, 1), None); // no comma before: kept
        assert_eq!(usage_key(br#"{"choices":[]}"#), None);
    }

    #[test]
    fn usage_is_stripped_but_the_rest_kept() {
        let out = strip_usage(br#"{"id":"x","choices":[{"index":0}],"usage":{"prompt_tokens":1}}"#);
        let s = String::from_utf8(out).expect("utf8");
        assert!(s.starts_with("data: {") && s.ends_with("\n\n"));
        assert!(!s.contains("usage") && s.contains("choices"));
    }
}
