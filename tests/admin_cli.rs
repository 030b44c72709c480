//! The operator CLI against a real store process: every admin call validates and answers with a
//! precise error, nothing half-applies, roles are enforced, `apply --dry-run` changes nothing,
//! and the audit chain verifies.

mod harness;

use harness::{BIN, Cluster};
use serde_json::Value;
use std::process::Command;

struct Cli<'a> {
    store: String,
    token: &'a str,
}

impl Cli<'_> {
    /// Runs `tollgate <args>`; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let env = [
            ("TOLLGATE_STORE", self.store.as_str()),
            ("TOLLGATE_ADMIN_TOKEN", self.token),
        ];
        let out = harness::cli(args, &env);
        (out.ok, out.stdout, out.stderr)
    }

    fn ok_json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--output", "json"]);
        let (ok, out, err) = self.run(&all);
        assert!(ok, "{args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    fn fails_with(&self, args: &[&str], needle: &str) {
        let (ok, _, err) = self.run(args);
        assert!(!ok, "{args:?} should have failed");
        assert!(
            err.contains(needle),
            "{args:?}: expected '{needle}' in: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_validates_enforces_roles_and_audits() {
    let c = Cluster::start(1, 10_000);
    c.wait_ready().await;
    let cli = Cli {
        store: c.addrs().join(","),
        token: &c.token,
    };

    cli.ok_json(&["admin", "org", "create", "acme", "--name", "Acme"]);
    cli.ok_json(&["admin", "project", "create", "--org", "acme", "web"]);
    cli.ok_json(&[
        "admin",
        "model",
        "put",
        "m1",
        "--max-output-tokens",
        "100",
        "--endpoint",
        "http://127.0.0.1:9/v1",
    ]);
    let key = cli.ok_json(&[
        "admin",
        "key",
        "create",
        "--org",
        "acme",
        "--project",
        "web",
        "--models",
        "m1",
        "--scopes",
        "chat_completions,models",
    ]);
    let secret = key["secret"].as_str().expect("secret shown once");
    assert!(secret.starts_with("tg_live_"), "{key}");
    let keys = cli.ok_json(&["admin", "key", "list", "--org", "acme"]);
    assert!(
        !keys.to_string().contains("digest"),
        "digests never leave the store: {keys}"
    );
    assert_eq!(
        keys[0]["scopes"],
        serde_json::json!(["chat_completions", "models"]),
        "{keys}"
    );
    cli.fails_with(
        &[
            "admin",
            "key",
            "create",
            "--org",
            "acme",
            "--project",
            "web",
            "--scopes",
            "admin",
        ],
        "unknown scope",
    );

    // precise errors, nothing applied
    cli.fails_with(&["admin", "org", "create", "acme"], "already_exists");
    cli.fails_with(
        &["admin", "org", "create", "Not Valid"],
        "may only contain lowercase",
    );
    cli.fails_with(
        &["admin", "project", "create", "--org", "nope", "p"],
        "org nope does not exist",
    );
    cli.fails_with(
        &[
            "admin",
            "key",
            "create",
            "--org",
            "acme",
            "--project",
            "web",
            "--models",
            "ghost",
        ],
        "model ghost does not exist",
    );
    cli.fails_with(
        &[
            "admin",
            "model",
            "put",
            "m2",
            "--max-output-tokens",
            "0",
            "--endpoint",
            "http://x/v1",
        ],
        "max_output_tokens",
    );
    cli.fails_with(
        &[
            "admin",
            "limit",
            "put",
            "--org",
            "acme",
            "--dimension",
            "token-budget",
            "--limit",
            "5",
        ],
        "--period",
    );
    cli.fails_with(&["admin", "org", "delete", "acme"], "still has projects");

    // declarative apply: a bad document changes nothing; dry run changes nothing; apply does
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\norgs:\n  - {id: beta, name: Beta}\nprojects:\n  - {org: missing, id: p, name: P}\n").expect("write");
    cli.fails_with(
        &["admin", "apply", "-f", bad.to_str().expect("path")],
        "org missing does not exist",
    );
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "version: 1\norgs:\n  - {id: beta, name: Beta}\nprojects:\n  - {org: beta, id: api, name: API}\nlimits:\n  - scope: {org: {org: beta}}\n    dimension: requests_per_minute\n    limit: 600\n",
    )
    .expect("write");
    let diff = cli.ok_json(&[
        "admin",
        "apply",
        "-f",
        good.to_str().expect("path"),
        "--dry-run",
    ]);
    assert_eq!(diff.as_array().map(Vec::len), Some(3), "{diff}");
    assert!(
        diff.as_array()
            .expect("array")
            .iter()
            .all(|c| c["kind"] == "create")
    );
    let orgs = cli.ok_json(&["admin", "org", "list"]);
    assert!(
        !orgs.to_string().contains("beta"),
        "dry run and the bad document applied nothing: {orgs}"
    );
    let applied = cli.ok_json(&["admin", "apply", "-f", good.to_str().expect("path")]);
    assert_eq!(applied["changed"], 3);
    let again = cli.ok_json(&[
        "admin",
        "apply",
        "-f",
        good.to_str().expect("path"),
        "--dry-run",
    ]);
    assert!(
        again
            .as_array()
            .expect("array")
            .iter()
            .all(|c| c["kind"] == "unchanged"),
        "{again}"
    );

    // roles: a viewer reads but cannot write; a revoked token is refused
    let viewer = cli.ok_json(&[
        "admin", "token", "create", "--name", "v", "--role", "viewer",
    ]);
    let vtoken = viewer["secret"].as_str().expect("token secret").to_owned();
    let vcli = Cli {
        store: cli.store.clone(),
        token: &vtoken,
    };
    vcli.ok_json(&["admin", "org", "list"]);
    vcli.fails_with(&["admin", "org", "create", "gamma"], "permission_denied");
    cli.ok_json(&[
        "admin",
        "token",
        "revoke",
        viewer["id"].as_str().expect("id"),
    ]);
    vcli.fails_with(&["admin", "org", "list"], "invalid_api_key");
    let wrong = Cli {
        store: cli.store.clone(),
        token: "tg_admin_notreal",
    };
    wrong.fails_with(&["admin", "org", "list"], "admin token rejected");

    // every mutation is audited and the chain verifies
    let audit = cli.ok_json(&["admin", "audit", "list"]);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    for a in [
        "bootstrap",
        "org.create",
        "project.create",
        "model.put",
        "key.create",
        "config.apply",
        "token.create",
        "token.revoke",
    ] {
        assert!(actions.contains(&a), "audit has {a}: {actions:?}");
    }
    let verify = cli.ok_json(&["admin", "audit", "verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
}

/// Without `--bootstrap-admin-token`, the bootstrapping node generates the first admin token,
/// prints it once and writes it to `<data-dir>/bootstrap-admin-token` with mode 0600.
#[test]
fn a_generated_bootstrap_token_is_written_0600_and_works() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", harness::free_port());
    let log = std::fs::File::create(dir.path().join("store.log")).expect("log");
    let data = dir.path().join("data");
    let mut child = Command::new(BIN)
        .args(["store", "--node-id", "1", "--listen", &addr, "--data-dir"])
        .arg(&data)
        .args(["--initial-cluster", &format!("1={addr}")])
        .args(["--peer-token", &tollgate_types::secret::generate("peer")])
        .env_remove("TOLLGATE_BOOTSTRAP_ADMIN_TOKEN")
        .stdout(log.try_clone().expect("fd"))
        .stderr(log)
        .spawn()
        .expect("spawn store");
    let file = data.join("bootstrap-admin-token");
    let mut token = String::new();
    for _ in 0..300 {
        if let Ok(t) = std::fs::read_to_string(&file)
            && !t.trim().is_empty()
        {
            token = t.trim().to_owned();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let outcome = std::panic::catch_unwind(|| {
        assert!(
            token.starts_with("tg_admin_"),
            "token file written: {token:?}"
        );
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let cli = Cli {
            store: addr.clone(),
            token: &token,
        };
        cli.ok_json(&["admin", "org", "create", "first"]);
        // printed once the bootstrap entry is applied (shortly after the file is written)
        let mut printed = String::new();
        for _ in 0..100 {
            printed = std::fs::read_to_string(dir.path().join("store.log")).unwrap_or_default();
            if printed.contains(&token) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            printed.contains(&token),
            "the token is printed once at bootstrap: {printed}"
        );
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
