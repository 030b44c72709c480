//! What the simulated upstream does: latency, pacing, chunking and injected faults. Changed at run
//! time with `POST /mock/behavior` (a partial JSON object), read back with `GET /mock/behavior`.

use serde::{Deserialize, Serialize};

/// The whole behaviour of one simulated upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behavior {
    /// Shown in the `x-mock-name` response header (which upstream served a request).
    pub name: String,
    /// Delay before the first token (streams) or before the response (non-streaming).
    pub ttft_ms: u64,
    /// Generation speed; 0 sends as fast as possible.
    pub tokens_per_sec: u64,
    /// Tokens per SSE chunk (at least 1).
    pub chunk_tokens: u32,
    /// Completion length when the request sets no `max_tokens`; with one, the smaller of the two.
    pub completion_tokens: u32,
    /// Fraction of completion/embedding requests answered with `fail_status` (deterministic per
    /// request number and `seed`).
    pub fail_rate: f64,
    pub fail_status: u16,
    /// Sent as `Retry-After` (seconds) on injected failures.
    pub retry_after_s: Option<u64>,
    /// Every request, probes included, gets 503: the upstream is down.
    pub down: bool,
    /// Streams stop sending after this many tokens and hold the connection open.
    pub stall_after_tokens: Option<u32>,
    /// Streams close the connection abruptly after this many tokens.
    pub drop_after_tokens: Option<u32>,
    pub embedding_dims: u32,
    pub seed: u64,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            name: "mock".into(),
            ttft_ms: 0,
            tokens_per_sec: 0,
            chunk_tokens: 1,
            completion_tokens: 16,
            fail_rate: 0.0,
            fail_status: 500,
            retry_after_s: None,
            down: false,
            stall_after_tokens: None,
            drop_after_tokens: None,
            embedding_dims: 8,
            seed: 0,
        }
    }
}

/// Largest accepted completion length, chunk size and embedding width.
pub const COMPLETION_TOKENS_MAX: u32 = 1_000_000;
pub const EMBEDDING_DIMS_MAX: u32 = 4096;

impl Behavior {
    /// Checks the values, naming the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err("fail_rate must be between 0 and 1".into());
        }
        if !(400..=599).contains(&self.fail_status) {
            return Err("fail_status must be an HTTP error status (400-599)".into());
        }
        if self.chunk_tokens == 0 || self.chunk_tokens > COMPLETION_TOKENS_MAX {
            return Err(format!("chunk_tokens must be 1..={COMPLETION_TOKENS_MAX}"));
        }
        if self.completion_tokens > COMPLETION_TOKENS_MAX {
            return Err(format!(
                "completion_tokens must be at most {COMPLETION_TOKENS_MAX}"
            ));
        }
        if self.embedding_dims == 0 || self.embedding_dims > EMBEDDING_DIMS_MAX {
            return Err(format!("embedding_dims must be 1..={EMBEDDING_DIMS_MAX}"));
        }
        Ok(())
    }

    /// Applies a partial JSON object on top of this behaviour (unknown fields are an error).
    pub fn patched(&self, patch: &serde_json::Value) -> Result<Behavior, String> {
        let mut base = serde_json::to_value(self).map_err(|e| e.to_string())?;
        let (Some(obj), Some(p)) = (base.as_object_mut(), patch.as_object()) else {
            return Err("the behaviour patch must be a JSON object".into());
        };
        for (k, v) in p {
            obj.insert(k.clone(), v.clone());
        }
        let next: Behavior = serde_json::from_value(base).map_err(|e| e.to_string())?;
        next.validate()?;
        Ok(next)
    }

    /// Whether request number `n` gets an injected failure.
    pub fn fails(&self, n: u64) -> bool {
        if self.fail_rate <= 0.0 {
            return false;
        }
        let r = crate::tokens::mix(self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // uniform in [0, 1): a rate of 1 always fails, a rate of 0 never does
        ((r >> 11) as f64 / (1u64 << 53) as f64) < self.fail_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_changes_only_named_fields_and_rejects_unknown_ones() {
        let b = Behavior::default();
        let p = b
            .patched(&serde_json::json!({"fail_rate": 1.0, "fail_status": 503}))
            .expect("valid patch");
        assert_eq!(p.fail_status, 503);
        assert_eq!(p.completion_tokens, b.completion_tokens);
        assert!(b.patched(&serde_json::json!({"nope": 1})).is_err());
        assert!(b.patched(&serde_json::json!({"fail_rate": 2.0})).is_err());
    }

    #[test]
    fn fail_rate_is_deterministic_and_close_to_the_rate() {
        let b = Behavior {
            fail_rate: 0.25,
            ..Behavior::default()
        };
        let fails = (0..10_000).filter(|n| b.fails(*n)).count();
        assert!((2_300..2_700).contains(&fails), "{fails}");
        let again = (0..10_000).filter(|n| b.fails(*n)).count();
        assert_eq!(fails, again);
        let all = Behavior {
            fail_rate: 1.0,
            ..Behavior::default()
        };
        assert!((0..100).all(|n| all.fails(n)));
        assert!(!(0..100).any(|n| Behavior::default().fails(n)));
    }
}
