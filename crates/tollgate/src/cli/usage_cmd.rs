//! `tollgate usage`: the ledger for billing — `export` (ordered by sequence number, resumable
//! with `--since-seq`, JSON Lines or CSV) and `summary` (totals by org, project, key or model and
//! time bucket). Reads are linearizable (served by the leader after a ReadIndex).

use super::Conn;
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use tollgate_client::StoreClient;
use tollgate_types::OrgId;
use tollgate_types::admin::{AdminQuery, READ_PAGE_MAX};

#[derive(Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: UsageCmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum By {
    Org,
    Project,
    Key,
    Model,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TimeBucket {
    Hour,
    Day,
    Month,
    All,
}

#[derive(Subcommand)]
pub enum UsageCmd {
    /// Ledger entries with sequence number > --since-seq, in order. Resume from the last `seq`
    /// printed (also printed on stderr as the next cursor).
    Export {
        #[arg(long, default_value_t = 0)]
        since_seq: u64,
        /// Most entries to print (default: all).
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        org: Option<String>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
    /// Compares the ledger with an external count of what was served (the simulated upstream's
    /// `GET /mock/served`, or a provider's usage export converted to JSON Lines of
    /// `{"request_id", "prompt_tokens", "completion_tokens"}`) and prints every difference.
    /// Exits with status 1 when there is one.
    Reconcile {
        /// A JSON object `{request_id: {prompt_tokens, completion_tokens}}` or JSON Lines.
        #[arg(long)]
        upstream_counts: std::path::PathBuf,
        #[arg(long)]
        org: Option<String>,
        #[arg(long, default_value_t = 0)]
        since_seq: u64,
    },
    /// Totals (requests, tokens, cost) grouped by --by and store-time bucket.
    Summary {
        #[arg(long, value_enum, default_value = "org")]
        by: By,
        #[arg(long, value_enum, default_value = "day")]
        bucket: TimeBucket,
        #[arg(long)]
        org: Option<String>,
        #[arg(long, default_value_t = 0)]
        since_seq: u64,
    },
}

pub const CSV_HEADER: &str = "seq,ts_ms,request_id,org,project,key,model,gateway,prompt_tokens,completion_tokens,cost_micros,price_version,status,estimated,unbacked,started_at_ms,ended_at_ms";

/// One ledger entry as a CSV line (ids are validated slugs: no commas or quotes).
pub fn csv_line(e: &Value) -> String {
    let r = &e["record"];
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    [
        s(&e["seq"]),
        s(&e["ts_ms"]),
        s(&r["request_id"]),
        s(&r["org"]),
        s(&r["project"]),
        s(&r["key"]),
        s(&r["model"]),
        s(&r["gateway"]),
        s(&r["prompt_tokens"]),
        s(&r["completion_tokens"]),
        s(&r["cost_micros"]),
        s(&r["price_version"]),
        s(&r["status"]),
        s(&r["estimated"]),
        s(&r["unbacked"]),
        s(&r["started_at_ms"]),
        s(&r["ended_at_ms"]),
    ]
    .join(",")
}

/// Pages through the ledger from `since` (exclusive), calling `f` per entry of `org` (if
/// given), until `limit` entries or the end; returns the cursor to resume from.
async fn pages(
    client: &StoreClient,
    since: u64,
    org: Option<&OrgId>,
    limit: u64,
    mut f: impl FnMut(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let (mut cursor, mut n) = (since, 0u64);
    while n < limit {
        let page: Vec<Value> = client
            .read(&AdminQuery::UsageExport {
                since_seq: cursor,
                limit: READ_PAGE_MAX,
            })
            .await?;
        let Some(last) = page.last().and_then(|e| e["seq"].as_u64()) else {
            break;
        };
        for e in &page {
            let seq = e["seq"].as_u64().unwrap_or(cursor);
            if org.is_some_and(|o| e["record"]["org"].as_str() != Some(o.as_str())) {
                cursor = seq;
                continue;
            }
            if n >= limit {
                return Ok(cursor);
            }
            f(e)?;
            cursor = seq;
            n += 1;
        }
        cursor = cursor.max(last);
    }
    Ok(cursor)
}

fn bucket_of(ts_ms: u64, b: TimeBucket) -> String {
    let days = (ts_ms / 86_400_000) as i64;
    let (y, m, d) = tollgate_types::limits::civil_from_days(days);
    match b {
        TimeBucket::Hour => format!("{y:04}-{m:02}-{d:02}T{:02}", (ts_ms / 3_600_000) % 24),
        TimeBucket::Day => format!("{y:04}-{m:02}-{d:02}"),
        TimeBucket::Month => format!("{y:04}-{m:02}"),
        TimeBucket::All => "all".to_owned(),
    }
}

#[derive(Default, serde::Serialize)]
struct Totals {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_micros: u64,
    estimated: u64,
}

/// The `--org` filter, validated.
fn org_arg(org: Option<&str>) -> anyhow::Result<Option<OrgId>> {
    org.map(OrgId::parse).transpose().context("--org")
}

pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    match args.command {
        UsageCmd::Export {
            since_seq,
            limit,
            org,
            format,
        } => {
            let org = org_arg(org.as_deref())?;
            let mut out = std::io::stdout().lock();
            if matches!(format, ExportFormat::Csv) {
                writeln!(out, "{CSV_HEADER}")?;
            }
            let next = pages(
                &client,
                since_seq,
                org.as_ref(),
                limit.unwrap_or(u64::MAX),
                |e| {
                    match format {
                        ExportFormat::Jsonl => writeln!(out, "{e}")?,
                        ExportFormat::Csv => writeln!(out, "{}", csv_line(e))?,
                    }
                    Ok(())
                },
            )
            .await?;
            eprintln!("next --since-seq {next}");
            Ok(())
        }
        UsageCmd::Reconcile {
            upstream_counts,
            org,
            since_seq,
        } => {
            let org = org_arg(org.as_deref())?;
            let text = std::fs::read_to_string(&upstream_counts)
                .with_context(|| format!("reading {}", upstream_counts.display()))?;
            let upstream = parse_counts(&text)?;
            let mut ledger: BTreeMap<String, Value> = BTreeMap::new();
            pages(&client, since_seq, org.as_ref(), u64::MAX, |e| {
                let id = e["record"]["request_id"].as_str().unwrap_or("").to_owned();
                ledger.insert(id, e["record"].clone());
                Ok(())
            })
            .await?;
            let report = reconcile(&ledger, &upstream);
            super::output::print(args.conn.output, &report, |r| {
                serde_json::to_string_pretty(r).unwrap_or_default()
            });
            if report["differences"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
            {
                std::process::exit(1);
            }
            Ok(())
        }
        UsageCmd::Summary {
            by,
            bucket,
            org,
            since_seq,
        } => {
            let org = org_arg(org.as_deref())?;
            let mut sums: BTreeMap<(String, String), Totals> = BTreeMap::new();
            pages(&client, since_seq, org.as_ref(), u64::MAX, |e| {
                let r = &e["record"];
                let who = match by {
                    By::Org => r["org"].as_str().unwrap_or("").to_owned(),
                    By::Project => format!(
                        "{}/{}",
                        r["org"].as_str().unwrap_or(""),
                        r["project"].as_str().unwrap_or("")
                    ),
                    By::Key => r["key"].as_str().unwrap_or("").to_owned(),
                    By::Model => r["model"].as_str().unwrap_or("").to_owned(),
                };
                let t = sums
                    .entry((who, bucket_of(e["ts_ms"].as_u64().unwrap_or(0), bucket)))
                    .or_default();
                t.requests += 1;
                t.prompt_tokens += r["prompt_tokens"].as_u64().unwrap_or(0);
                t.completion_tokens += r["completion_tokens"].as_u64().unwrap_or(0);
                t.cost_micros += r["cost_micros"].as_u64().unwrap_or(0);
                t.estimated += u64::from(r["estimated"] == Value::Bool(true));
                Ok(())
            })
            .await?;
            let rows: Vec<Value> = sums
                .into_iter()
                .map(|((who, when), t)| {
                    let mut v = serde_json::json!({"group": who, "bucket": when});
                    if let (Value::Object(m), Ok(Value::Object(t))) =
                        (&mut v, serde_json::to_value(&t))
                    {
                        m.extend(t);
                    }
                    v
                })
                .collect();
            let value = Value::Array(rows);
            super::output::print(args.conn.output, &value, |v| {
                super::output::lines(
                    v,
                    &[
                        "group",
                        "bucket",
                        "requests",
                        "prompt_tokens",
                        "completion_tokens",
                        "cost_micros",
                        "estimated",
                    ],
                )
            });
            Ok(())
        }
    }
}

/// Upstream counts by request id: (prompt, completion).
fn parse_counts(text: &str) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let counts = |v: &Value| {
        (
            v["prompt_tokens"].as_u64().unwrap_or(0),
            v["completion_tokens"].as_u64().unwrap_or(0),
        )
    };
    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) {
        return Ok(m.iter().map(|(k, v)| (k.clone(), counts(v))).collect());
    }
    let mut out = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        let id = v["request_id"]
            .as_str()
            .with_context(|| format!("line {}: no request_id", i + 1))?;
        out.insert(id.to_owned(), counts(&v));
    }
    Ok(out)
}

/// Every request id whose counts differ between the ledger and the upstream, or that only one
/// side has; totals of both sides.
pub fn reconcile(
    ledger: &BTreeMap<String, Value>,
    upstream: &BTreeMap<String, (u64, u64)>,
) -> Value {
    let mut diffs = Vec::new();
    let mut totals = [0u64; 4];
    for (id, r) in ledger {
        let mine = (
            r["prompt_tokens"].as_u64().unwrap_or(0),
            r["completion_tokens"].as_u64().unwrap_or(0),
        );
        totals[0] += mine.0;
        totals[1] += mine.1;
        match upstream.get(id) {
            Some(theirs) if *theirs == mine => {}
            Some(theirs) => diffs.push(serde_json::json!({
                "request_id": id, "kind": "counts_differ", "ledger": [mine.0, mine.1],
                "upstream": [theirs.0, theirs.1], "status": r["status"], "estimated": r["estimated"],
            })),
            None => diffs.push(serde_json::json!({
                "request_id": id, "kind": "not_upstream", "ledger": [mine.0, mine.1],
                "status": r["status"], "estimated": r["estimated"],
            })),
        }
    }
    for (id, theirs) in upstream {
        totals[2] += theirs.0;
        totals[3] += theirs.1;
        if !ledger.contains_key(id) {
            diffs.push(serde_json::json!({
                "request_id": id, "kind": "not_in_ledger", "upstream": [theirs.0, theirs.1],
            }));
        }
    }
    serde_json::json!({
        "ledger": {"records": ledger.len(), "prompt_tokens": totals[0], "completion_tokens": totals[1]},
        "upstream": {"records": upstream.len(), "prompt_tokens": totals[2], "completion_tokens": totals[3]},
        "differences": diffs,
    })
}
