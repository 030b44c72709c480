//! The fast path of validation for the common chat request: read borrowed from the client's
//! bytes into a typed struct (no JSON tree, no map, no owned strings unless escaped), accepted
//! only when every field it reads is valid. Anything else — another shape, a content-part array,
//! `stream_options`, a duplicate key, any invalid value — returns `None` and the full check
//! (`super::validate_full`) runs, which names the exact `param`. So the fast path decides
//! nothing on its own: it only skips building a tree for a request the full check would accept
//! with the same numbers (a test compares the two on many bodies).

use super::{ITEMS_MAX, ROLES, words};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Chat<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    messages: Vec<Message<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    /// Present at all (even `null`): left to the full check.
    #[serde(default, deserialize_with = "present")]
    stream_options: bool,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// What the fast path read from an acceptable chat request.
#[derive(Debug, PartialEq, Eq)]
pub struct Common<'a> {
    pub model: Cow<'a, str>,
    pub input_estimate: u64,
    /// Per choice, as the client gave it (`max_completion_tokens` before `max_tokens`), before
    /// the model's limit is applied.
    pub max_tokens: Option<u64>,
    pub choices: u64,
    pub stream: bool,
}

fn within(x: Option<f64>, lo: f64, hi: f64) -> bool {
    x.is_none_or(|x| (lo..=hi).contains(&x))
}

/// The common chat request, when every field read is valid; `None` sends it to the full check.
pub fn chat(raw: &[u8]) -> Option<Common<'_>> {
    let c: Chat<'_> = serde_json::from_slice(raw).ok()?;
    let ok = !c.model.is_empty()
        && !c.messages.is_empty()
        && c.messages.len() <= ITEMS_MAX
        && !c.stream_options
        && within(c.temperature, 0.0, 2.0)
        && within(c.top_p, 0.0, 1.0)
        && within(c.presence_penalty, -2.0, 2.0)
        && within(c.frequency_penalty, -2.0, 2.0)
        && c.n.is_none_or(|n| (1..=128).contains(&n));
    if !ok {
        return None;
    }
    let mut input_estimate = 0;
    for m in &c.messages {
        if !ROLES.contains(&m.role.as_ref()) {
            return None;
        }
        input_estimate += match &m.content {
            Some(s) => words(s),
            None if m.role == "assistant" => 0,
            None => return None,
        };
    }
    Some(Common {
        model: c.model,
        input_estimate,
        max_tokens: c.max_completion_tokens.or(c.max_tokens),
        choices: c.n.unwrap_or(1).max(1),
        stream: c.stream.unwrap_or(false),
    })
}

/// The client's bytes with `"stream_options":{"include_usage":true}` added as the last member
/// of the top-level object (the fast path saw no `stream_options`, so there is no duplicate).
pub fn with_usage_request(raw: &[u8]) -> Option<Vec<u8>> {
    let end = raw.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if raw[end] != b'}' {
        return None;
    }
    let mut out = Vec::with_capacity(end + 48);
    out.extend_from_slice(&raw[..end]);
    out.extend_from_slice(br#","stream_options":{"include_usage":true}}"#);
    Some(out)
}
