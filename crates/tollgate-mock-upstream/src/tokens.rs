//! Deterministic token accounting, shared with anyone who needs to predict the mock's counts:
//! a token is a whitespace-separated word of the input; token-id arrays count one per id; the
//! generated text is a sequence of words, one token each.

use serde_json::Value;

const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];

/// splitmix64: a fast, well-mixed hash for deterministic choices.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Words in a string.
pub fn count_text(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Tokens of a prompt/input value: a string, an array of strings, token ids or arrays of ids.
pub fn count_input(v: &Value) -> u64 {
    match v {
        Value::String(s) => count_text(s),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(count_input).sum(),
        _ => 0,
    }
}

/// Tokens of a chat `messages` array: the words of every text content.
pub fn count_messages(messages: &Value) -> u64 {
    let Some(list) = messages.as_array() else {
        return 0;
    };
    list.iter()
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => count_text(s),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(count_text)
                .sum(),
            _ => 0,
        })
        .sum()
}

/// The text of generated tokens `from..to` (each a word followed by a space).
pub fn generate(seed: u64, from: u64, to: u64) -> String {
    let mut out = String::with_capacity(((to - from) as usize) * 8);
    for i in from..to {
        out.push_str(WORDS[(mix(seed ^ i) % WORDS.len() as u64) as usize]);
        out.push(' ');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_are_words_and_ids() {
        assert_eq!(count_text("  hello  big world "), 3);
        assert_eq!(count_input(&json!(["a b", "c"])), 3);
        assert_eq!(count_input(&json!([1, 2, 3])), 3);
        assert_eq!(count_input(&json!([[1, 2], [3]])), 3);
        let msgs = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one two three"}]},
            {"role": "assistant", "content": null}
        ]);
        assert_eq!(count_messages(&msgs), 5);
    }

    #[test]
    fn generated_text_has_one_word_per_token_and_is_deterministic() {
        let t = generate(7, 0, 10);
        assert_eq!(count_text(&t), 10);
        assert_eq!(t, generate(7, 0, 10));
        assert_eq!(generate(7, 0, 5) + &generate(7, 5, 10), t);
    }
}
