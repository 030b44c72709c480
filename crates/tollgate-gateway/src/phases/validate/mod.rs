//! Phase 2, validate: the body is checked field by field (each error names its `param`), and the
//! model resolved against the snapshot and the key's allow-list. The common chat request is read
//! by the fast path (`fast.rs`, borrowed, no JSON tree); every other body, and every invalid
//! one, by the full check on a JSON tree. The body goes upstream as the client's bytes until the
//! gateway edits it, so unknown fields reach the upstream untouched.

use crate::error::GwError;
use crate::phases::auth::Caller;
use crate::snapshot::{ModelEntry, Snapshot};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::sync::Arc;
use tollgate_types::ErrorCode;
use tollgate_types::config::KeyScope;

mod fast;
#[cfg(test)]
mod tests;

/// Which inference endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
    Embedding,
}

impl Kind {
    pub fn path(self) -> &'static str {
        match self {
            Kind::Chat => "/chat/completions",
            Kind::Completion => "/completions",
            Kind::Embedding => "/embeddings",
        }
    }

    pub fn scope(self) -> KeyScope {
        match self {
            Kind::Chat => KeyScope::ChatCompletions,
            Kind::Completion => KeyScope::Completions,
            Kind::Embedding => KeyScope::Embeddings,
        }
    }
}

/// A validated request, ready to route.
#[derive(Debug)]
pub struct Validated {
    pub kind: Kind,
    pub model: Arc<ModelEntry>,
    /// What goes upstream while nothing edits it: the client's bytes, plus the usage request
    /// for streams.
    raw: Bytes,
    /// The body as a JSON object once the gateway edits it; sent instead of `raw` then.
    edited: Option<Map<String, Value>>,
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Output tokens the request may produce: `n` choices of its `max_tokens` (or of the
    /// model's default).
    pub max_output: u64,
    /// The client set `max_tokens` / `max_completion_tokens` itself.
    pub max_tokens_given: bool,
    /// Per choice: the client's `max_tokens`, or the model's default.
    pub max_tokens: u64,
    /// Input size estimate in tokens (words, as the simulated upstream counts).
    pub input_estimate: u64,
    /// Priority class when queued for a saturated pool (the org's tier, 0 = highest).
    pub priority: usize,
}

fn object_of(raw: &[u8]) -> Result<Map<String, Value>, GwError> {
    match serde_json::from_slice(raw) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(GwError::new(
            ErrorCode::Internal,
            "A validated request body no longer parses.",
        )),
    }
}

impl Validated {
    /// The body as a JSON object to edit (parsed from the bytes on first use).
    pub fn body_mut(&mut self) -> Result<&mut Map<String, Value>, GwError> {
        let body = match self.edited.take() {
            Some(m) => m,
            None => object_of(&self.raw)?,
        };
        Ok(self.edited.insert(body))
    }

    /// The bytes to send to an endpoint; `model` replaces the client's model name (an endpoint
    /// serving it under another name).
    pub fn upstream_body(&self, model: Option<&str>) -> Result<Bytes, GwError> {
        let Some(name) = model else {
            return Ok(match &self.edited {
                None => self.raw.clone(),
                Some(m) => encode(m),
            });
        };
        let mut body = match &self.edited {
            None => object_of(&self.raw)?,
            Some(m) => m.clone(),
        };
        body.insert("model".into(), Value::String(name.to_owned()));
        Ok(encode(&body))
    }
}

fn encode(m: &Map<String, Value>) -> Bytes {
    Bytes::from(serde_json::to_vec(m).unwrap_or_default())
}

/// Most messages, prompts or embedding inputs in one request.
pub const ITEMS_MAX: usize = 4096;
pub(super) const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

pub fn validate(
    kind: Kind,
    raw: &Bytes,
    snap: &Snapshot,
    caller: &Caller,
) -> Result<Validated, GwError> {
    if kind == Kind::Chat
        && let Some(v) = fast::chat(raw).and_then(|c| accept_fast(c, raw, snap, caller))
    {
        return Ok(v);
    }
    validate_full(kind, raw, snap, caller)
}

/// A request the fast path read: the same checks against the snapshot and the key as the full
/// path; anything it would refuse goes back to the full path, which says why.
fn accept_fast(
    c: fast::Common<'_>,
    raw: &Bytes,
    snap: &Snapshot,
    caller: &Caller,
) -> Option<Validated> {
    let model = snap.models.get(c.model.as_ref())?.clone();
    if !caller.may_use(&c.model) {
        return None;
    }
    let (max_tokens, max_tokens_given) = match c.max_tokens {
        Some(n) if n == 0 || n > model.def.max_output_tokens => return None,
        Some(n) => (n, true),
        None => (model.def.default_output_tokens, false),
    };
    let raw = if c.stream {
        Bytes::from(fast::with_usage_request(raw)?)
    } else {
        raw.clone()
    };
    Some(Validated {
        kind: Kind::Chat,
        model,
        raw,
        edited: None,
        stream: c.stream,
        include_usage: false,
        max_output: max_tokens.saturating_mul(c.choices),
        max_tokens_given,
        max_tokens,
        input_estimate: c.input_estimate,
        priority: crate::router::class_of(caller.org.tier),
    })
}

/// The full check: the body parsed into a JSON tree, every field checked, each error naming
/// its `param`.
fn validate_full(
    kind: Kind,
    raw: &Bytes,
    snap: &Snapshot,
    caller: &Caller,
) -> Result<Validated, GwError> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        GwError::new(
            ErrorCode::InvalidRequest,
            format!("We could not parse the JSON body of your request: {e}"),
        )
    })?;
    let Value::Object(mut body) = value else {
        return Err(GwError::new(
            ErrorCode::InvalidRequest,
            "The request body must be a JSON object.",
        ));
    };
    let name = required_str(&body, "model")?;
    let model = snap.models.get(name).cloned().ok_or_else(|| {
        GwError::new(
            ErrorCode::ModelNotFound,
            format!("The model `{name}` does not exist or you do not have access to it."),
        )
        .with_param("model")
    })?;
    if !caller.may_use(name) {
        return Err(GwError::new(
            ErrorCode::PermissionDenied,
            format!("This API key is not allowed to use the model `{name}`."),
        )
        .with_param("model"));
    }
    let input_estimate = match kind {
        Kind::Chat => messages(&body)?,
        Kind::Completion => input(&body, "prompt")?,
        Kind::Embedding => input(&body, "input")?,
    };
    let (max_tokens, max_tokens_given) = match kind {
        Kind::Embedding => {
            embedding_options(&body)?;
            (0, true)
        }
        _ => max_tokens(&body, &model)?,
    };
    sampling(&body)?;
    let choices = opt_u64(&body, "n")?.unwrap_or(1).max(1);
    let max_output = max_tokens.saturating_mul(choices);
    let stream = opt_bool(&body, "stream")?.unwrap_or(false) && kind != Kind::Embedding;
    let include_usage = stream_options(&body, stream)?;
    if stream {
        // always ask the upstream for usage; the relay strips it when the client did not ask
        let opts = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = opts {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    Ok(Validated {
        kind,
        model,
        raw: raw.clone(),
        // a stream's usage request was added to the tree, which is sent instead
        edited: stream.then_some(body),
        stream,
        include_usage,
        max_output,
        max_tokens_given,
        max_tokens,
        input_estimate,
        priority: crate::router::class_of(caller.org.tier),
    })
}

fn required_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, GwError> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(Value::Null) => Err(GwError::invalid(
            field,
            format!("Missing required parameter: '{field}'."),
        )),
        Some(_) => Err(GwError::invalid(
            field,
            format!("Invalid type for '{field}': expected a non-empty string."),
        )),
    }
}

/// An optional field read with `get`; absent or null is `None`, another type names `expected`.
fn optional<T>(
    body: &Map<String, Value>,
    field: &str,
    expected: &str,
    get: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>, GwError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| {
            GwError::invalid(
                field,
                format!("Invalid type for '{field}': expected {expected}."),
            )
        }),
    }
}

fn opt_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, GwError> {
    optional(body, field, "a boolean", Value::as_bool)
}

fn opt_u64(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, GwError> {
    optional(body, field, "a non-negative integer", Value::as_u64)
}

fn number_in(body: &Map<String, Value>, field: &str, lo: f64, hi: f64) -> Result<(), GwError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(()),
            _ => Err(GwError::invalid(
                field,
                format!("Invalid '{field}': expected a number between {lo} and {hi}."),
            )),
        },
    }
}

fn messages(body: &Map<String, Value>) -> Result<u64, GwError> {
    let list = match body.get("messages") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => {
            return Err(GwError::invalid(
                "messages",
                "Missing required parameter: 'messages'.",
            ));
        }
        Some(_) => {
            return Err(GwError::invalid(
                "messages",
                "Invalid type for 'messages': expected an array of message objects.",
            ));
        }
    };
    if list.is_empty() {
        return Err(GwError::invalid(
            "messages",
            "'messages' must contain at least one message.",
        ));
    }
    if list.len() > ITEMS_MAX {
        return Err(GwError::invalid(
            "messages",
            format!(
                "'messages' has {} items; the maximum is {ITEMS_MAX}.",
                list.len()
            ),
        ));
    }
    let mut words = 0u64;
    for (i, m) in list.iter().enumerate() {
        words += message(i, m)?;
    }
    Ok(words)
}

fn message(i: usize, m: &Value) -> Result<u64, GwError> {
    let Some(obj) = m.as_object() else {
        return Err(GwError::invalid(
            format!("messages[{i}]"),
            format!("Invalid type for 'messages[{i}]': expected an object."),
        ));
    };
    let role = obj.get("role").and_then(Value::as_str).ok_or_else(|| {
        GwError::invalid(
            format!("messages[{i}].role"),
            format!("Missing required parameter: 'messages[{i}].role'."),
        )
    })?;
    if !ROLES.contains(&role) {
        return Err(GwError::invalid(
            format!("messages[{i}].role"),
            format!(
                "Invalid value for 'messages[{i}].role': '{role}'. Supported values are: {}.",
                ROLES.join(", ")
            ),
        ));
    }
    // named only when it is wrong: formatting it for every valid message costs an allocation
    let param = || format!("messages[{i}].content");
    match obj.get("content") {
        Some(Value::String(s)) => Ok(words(s)),
        Some(Value::Array(parts)) => {
            let mut n = 0;
            for (j, p) in parts.iter().enumerate() {
                if !p.is_object() {
                    let param = param();
                    return Err(GwError::invalid(
                        format!("{param}[{j}]"),
                        format!("Invalid type for '{param}[{j}]': expected a content part object."),
                    ));
                }
                n += p.get("text").and_then(Value::as_str).map_or(0, words);
            }
            Ok(n)
        }
        None | Some(Value::Null) if role == "assistant" => Ok(0),
        None | Some(Value::Null) => {
            let param = param();
            Err(GwError::invalid(
                &param,
                format!("Missing required parameter: '{param}'."),
            ))
        }
        Some(_) => {
            let param = param();
            Err(GwError::invalid(
                &param,
                format!(
                    "Invalid type for '{param}': expected a string or an array of content parts."
                ),
            ))
        }
    }
}

pub(super) fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// `prompt` / `input`: a string, an array of strings, of token ids, or of token-id arrays.
fn input(body: &Map<String, Value>, field: &str) -> Result<u64, GwError> {
    let bad = || {
        GwError::invalid(
            field,
            format!(
                "Invalid '{field}': expected a non-empty string, array of strings, array of token ids or array of token-id arrays."
            ),
        )
    };
    match body.get(field) {
        None | Some(Value::Null) => Err(GwError::invalid(
            field,
            format!("Missing required parameter: '{field}'."),
        )),
        Some(Value::String(s)) if !s.is_empty() => Ok(words(s)),
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= ITEMS_MAX => {
            let mut n = 0u64;
            for item in items {
                n += match item {
                    Value::String(s) if !s.is_empty() => words(s),
                    Value::Number(x) if x.is_u64() => 1,
                    Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => {
                        ids.len() as u64
                    }
                    _ => return Err(bad()),
                };
            }
            Ok(n)
        }
        Some(_) => Err(bad()),
    }
}

/// The per-choice output cap and whether the client gave it.
fn max_tokens(body: &Map<String, Value>, model: &ModelEntry) -> Result<(u64, bool), GwError> {
    let limit = model.def.max_output_tokens;
    for field in ["max_completion_tokens", "max_tokens"] {
        if let Some(n) = opt_u64(body, field)? {
            if n == 0 || n > limit {
                return Err(GwError::invalid(
                    field,
                    format!(
                        "Invalid '{field}': {n}. It must be between 1 and {limit} for model `{}`.",
                        model.def.name
                    ),
                ));
            }
            return Ok((n, true));
        }
    }
    Ok((model.def.default_output_tokens, false))
}

fn sampling(body: &Map<String, Value>) -> Result<(), GwError> {
    number_in(body, "temperature", 0.0, 2.0)?;
    number_in(body, "top_p", 0.0, 1.0)?;
    number_in(body, "presence_penalty", -2.0, 2.0)?;
    number_in(body, "frequency_penalty", -2.0, 2.0)?;
    if let Some(n) = opt_u64(body, "n")?
        && !(1..=128).contains(&n)
    {
        return Err(GwError::invalid(
            "n",
            "Invalid 'n': it must be between 1 and 128.",
        ));
    }
    Ok(())
}

fn stream_options(body: &Map<String, Value>, stream: bool) -> Result<bool, GwError> {
    match body.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(o)) => {
            if !stream {
                return Err(GwError::invalid(
                    "stream_options",
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(GwError::invalid(
                    "stream_options.include_usage",
                    "Invalid type for 'stream_options.include_usage': expected a boolean.",
                )),
            }
        }
        Some(_) => Err(GwError::invalid(
            "stream_options",
            "Invalid type for 'stream_options': expected an object.",
        )),
    }
}

fn embedding_options(body: &Map<String, Value>) -> Result<(), GwError> {
    match body.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "float" || s == "base64" => {}
        Some(_) => {
            return Err(GwError::invalid(
                "encoding_format",
                "Invalid 'encoding_format': use 'float' or 'base64'.",
            ));
        }
    }
    if let Some(d) = opt_u64(body, "dimensions")?
        && d == 0
    {
        return Err(GwError::invalid(
            "dimensions",
            "Invalid 'dimensions': it must be at least 1.",
        ));
    }
    Ok(())
}
