//! The fast path against the full check: on thousands of generated chat bodies — valid ones and
//! every way of being wrong the fields allow — the fast path either declines or reads exactly
//! what the full check reads, and `validate` answers as the full check does.

use super::*;
use crate::router::Router;
use crate::settings::Routing;
use serde_json::json;
use tollgate_types::amount::Price;
use tollgate_types::config::{
    ApiKeyRecord, Endpoint, GatewayConfig, KeyStatus, ModelDef, Org, OrgStatus, Project, Tier,
};
use tollgate_types::secret::ClusterSecret;
use tollgate_types::{KeyId, ModelName, OrgId, ProjectId};

fn setup() -> (Snapshot, Caller) {
    let secret = ClusterSecret::generate();
    let org = Org {
        id: OrgId::parse("acme").expect("org"),
        name: "Acme".into(),
        status: OrgStatus::Active,
        tier: 0,
    };
    let key = ApiKeyRecord {
        id: KeyId::parse("test_abcdefghijkl").expect("key"),
        org: org.id.clone(),
        project: ProjectId::parse("p").expect("project"),
        name: "k".into(),
        digest: secret.digest("x"),
        status: KeyStatus::Active,
        allowed_models: vec![ModelName::parse("m").expect("model")],
        scopes: vec![],
        expires_at_ms: None,
        created_at_ms: 0,
    };
    let model = |name: &str| ModelDef {
        name: ModelName::parse(name).expect("model"),
        max_output_tokens: 100,
        default_output_tokens: 10,
        price: Price::default(),
        price_version: 0,
        tiers: vec![Tier {
            endpoints: vec![Endpoint {
                url: "http://127.0.0.1:1/v1".into(),
                weight: 1,
                upstream_model: None,
            }],
        }],
    };
    let cfg = GatewayConfig {
        version: 1,
        secret,
        orgs: vec![org.clone()],
        projects: vec![Project {
            org: org.id.clone(),
            id: key.project.clone(),
            name: "P".into(),
        }],
        keys: vec![key.clone()],
        // `other` exists but the key may not use it
        models: vec![model("m"), model("other")],
        limits: vec![],
    };
    let snap = Snapshot::build(cfg, &Router::new(Routing::default()));
    let caller = Caller {
        key: Arc::new(key),
        org: Arc::new(org),
    };
    (snap, caller)
}

/// A deterministic stream of choices (xorshift).
struct Pick(u64);

impl Pick {
    fn of<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        &xs[(self.0 % xs.len() as u64) as usize]
    }
}

/// A chat body: each field absent (`None`), valid, or wrong in one of several ways.
fn body(p: &mut Pick) -> Vec<u8> {
    let msg = |role: &str, content: Value| json!({"role": role, "content": content});
    // (field, how many of the first options are valid, options)
    let fields: Vec<(&str, usize, Vec<Option<Value>>)> = vec![
        (
            "model",
            2,
            vec![
                Some(json!("m")),
                Some(json!("m")),
                Some(json!("")),
                Some(json!("nope")),
                Some(json!("other")),
                Some(json!(5)),
                None,
            ],
        ),
        (
            "messages",
            4,
            vec![
                Some(json!([msg("user", json!("hello there world"))])),
                Some(json!([
                    msg("system", json!("be \"brief\"\nplease")),
                    msg("user", json!("hi"))
                ])),
                Some(json!([{"role": "assistant", "content": null}, msg("user", json!("a b"))])),
                Some(json!([{"role": "assistant"}, msg("user", json!("a b"))])),
                Some(json!([{"role": "user"}])),
                Some(json!([msg("wizard", json!("x"))])),
                Some(json!([msg(
                    "user",
                    json!([{"type": "text", "text": "two words"}])
                )])),
                Some(json!([msg("user", json!(7))])),
                Some(json!([])),
                Some(json!("hello")),
                None,
            ],
        ),
        (
            "max_tokens",
            2,
            vec![
                None,
                Some(json!(16)),
                Some(json!(0)),
                Some(json!(1000)),
                Some(json!("x")),
                Some(Value::Null),
                Some(json!(100)),
            ],
        ),
        (
            "max_completion_tokens",
            3,
            vec![
                None,
                None,
                Some(json!(20)),
                Some(json!(0)),
                Some(Value::Null),
            ],
        ),
        (
            "n",
            3,
            vec![
                None,
                None,
                Some(json!(2)),
                Some(json!(0)),
                Some(json!(200)),
                Some(json!(1.5)),
                Some(Value::Null),
            ],
        ),
        (
            "stream",
            3,
            vec![
                None,
                Some(json!(true)),
                Some(json!(false)),
                Some(json!("yes")),
                Some(Value::Null),
            ],
        ),
        (
            "temperature",
            3,
            vec![
                None,
                Some(json!(0.5)),
                Some(json!(2)),
                Some(json!(3)),
                Some(json!("hot")),
            ],
        ),
        (
            "top_p",
            3,
            vec![None, None, Some(json!(1)), Some(json!(-0.1))],
        ),
        (
            "presence_penalty",
            3,
            vec![None, None, Some(json!(-2)), Some(json!(2.5))],
        ),
        (
            "stream_options",
            3,
            vec![
                None,
                None,
                None,
                Some(json!({"include_usage": true})),
                Some(Value::Null),
            ],
        ),
        (
            "user",
            3,
            vec![None, Some(json!("u-1")), Some(json!({"nested": [1, 2]}))],
        ),
    ];
    // mostly valid bodies with at most one field drawn from all its options (wrong ones too)
    let anything = *p.of(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]);
    let mut obj = Map::new();
    for (i, (name, valid, choices)) in fields.iter().enumerate() {
        let from = if i == anything {
            &choices[..]
        } else {
            &choices[..*valid]
        };
        if let Some(v) = p.of(from) {
            obj.insert((*name).to_owned(), v.clone());
        }
    }
    let mut out = serde_json::to_vec(&obj).expect("encode");
    if *p.of(&[false, false, false, true]) {
        // a duplicate key: serde_json's map keeps the last, the fast path must decline
        out.pop();
        out.extend_from_slice(br#","model":"m"}"#);
    }
    out
}

/// What a validated request decides.
fn summary(v: &Validated) -> (String, bool, bool, u64, bool, u64, u64, usize, Value) {
    let sent = v.upstream_body(None).expect("upstream body");
    (
        v.model.def.name.to_string(),
        v.stream,
        v.include_usage,
        v.max_output,
        v.max_tokens_given,
        v.max_tokens,
        v.input_estimate,
        v.priority,
        serde_json::from_slice(&sent).expect("the upstream body is JSON"),
    )
}

#[test]
fn the_fast_path_declines_or_agrees_with_the_full_check() {
    let (snap, caller) = setup();
    let mut p = Pick(0x9e37_79b9_7f4a_7c15);
    let (mut fast_taken, mut valid) = (0, 0);
    for _ in 0..20_000 {
        let raw = Bytes::from(body(&mut p));
        let full = validate_full(Kind::Chat, &raw, &snap, &caller);
        let fast = fast::chat(&raw).and_then(|c| accept_fast(c, &raw, &snap, &caller));
        let both = validate(Kind::Chat, &raw, &snap, &caller);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some(f) = &fast {
            fast_taken += 1;
            let full = full
                .as_ref()
                .expect("the fast path accepted what the full check refuses");
            assert_eq!(summary(f), summary(full), "{text}");
            if !f.stream {
                assert_eq!(
                    f.upstream_body(None).expect("body"),
                    raw,
                    "sent as sent: {text}"
                );
            }
        }
        match (&full, &both) {
            (Ok(a), Ok(b)) => {
                valid += 1;
                assert_eq!(summary(a), summary(b), "{text}");
            }
            (Err(a), Err(b)) => assert_eq!(a.body_json(), b.body_json(), "{text}"),
            _ => panic!("validate and the full check disagree on {text}"),
        }
    }
    // the generator reaches both paths often (a fast path that never runs proves nothing)
    assert!(fast_taken > 1_000, "fast path taken {fast_taken} times");
    assert!(valid > fast_taken, "valid {valid}, fast {fast_taken}");
}

#[test]
fn streams_ask_upstream_for_usage_and_edits_keep_the_rest() {
    let (snap, caller) = setup();
    let raw = Bytes::from_static(
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"x":1} "#,
    );
    let mut v = validate(Kind::Chat, &raw, &snap, &caller).expect("valid");
    let sent: Value = serde_json::from_slice(&v.upstream_body(None).expect("body")).expect("json");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["x"], json!(1));
    v.body_mut()
        .expect("object")
        .insert("max_tokens".into(), json!(10));
    let renamed: Value =
        serde_json::from_slice(&v.upstream_body(Some("served-as")).expect("body")).expect("json");
    assert_eq!(renamed["model"], json!("served-as"));
    assert_eq!(renamed["max_tokens"], json!(10));
    assert_eq!(renamed["stream_options"], json!({"include_usage": true}));
    assert_eq!(fast::with_usage_request(b"[1]"), None);
}
