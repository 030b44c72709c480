//! `tollgate cluster`: status, add-node, remove-node.

use super::Conn;
use super::output::print;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, members and each member's commit/applied index and lag.
    Status {
        /// Ask this node instead of the leader (its own view).
        #[arg(long)]
        node: Option<String>,
        /// With --node: also show the node's state digest (equal on replicas at equal applied
        /// index; hashes the whole state).
        #[arg(long, requires = "node")]
        digest: bool,
    },
    /// Add a node: as a learner, wait until it caught up, then make it a voter.
    AddNode {
        #[arg(long)]
        node_id: u64,
        #[arg(long)]
        addr: String,
    },
    /// Remove a node from the cluster (never reuse its id afterwards).
    RemoveNode {
        #[arg(long)]
        node_id: u64,
    },
}

fn status_text(s: &Value) -> String {
    let g = |k: &str| s.get(k).map(|v| v.to_string()).unwrap_or_default();
    let mut out = format!(
        "node {} ({}), leader {}, term {}, last log {}, committed {}, applied {}, snapshot {}\n",
        g("node_id"),
        s.get("state").and_then(Value::as_str).unwrap_or("?"),
        g("leader"),
        g("term"),
        g("last_log_index"),
        g("committed_index"),
        g("applied_index"),
        g("snapshot_index")
    );
    for m in s
        .get("members")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mg = |k: &str| m.get(k).map(|v| v.to_string()).unwrap_or_default();
        let role = if m.get("voter").and_then(Value::as_bool) == Some(true) {
            "voter"
        } else {
            "learner"
        };
        out.push_str(&format!(
            "  member {} {} {role} matched={} lag={}\n",
            mg("id"),
            m.get("addr").and_then(Value::as_str).unwrap_or("?"),
            mg("matched_index"),
            mg("lag")
        ));
    }
    out.trim_end().to_owned()
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let status: Value = match args.command {
        ClusterCommand::Status {
            node: Some(n),
            digest,
        } => client.node_status_with(Some(&n), digest).await?,
        ClusterCommand::Status { node: None, .. } => client.leader_status().await?,
        ClusterCommand::AddNode { node_id, addr } => client.add_node(node_id, &addr).await?,
        ClusterCommand::RemoveNode { node_id } => client.remove_node(node_id).await?,
    };
    print(args.conn.output, &status, status_text);
    Ok(())
}
