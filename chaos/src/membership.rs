//! Membership changes under load: a spare node joins (learner, caught up, voter), then a
//! follower leaves for good (its id is never reused, its process stopped).

use crate::cluster::Cluster;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::Value;

/// Adds the next spare node, then removes one follower; a note on what happened.
pub async fn replace_follower(c: &mut Cluster, rng: &mut StdRng) -> Result<String, String> {
    let Some(spare) = c
        .stores
        .iter()
        .find(|s| !s.member && !s.removed && s.proc.starts == 0)
        .map(|s| (s.id, s.addr.clone()))
    else {
        return Err("no spare node left".into());
    };
    let (id, addr) = spare;
    c.store(id)
        .ok_or("unknown node")?
        .proc
        .start()
        .map_err(|e| e.to_string())?;
    let client = c.client().map_err(|e| e.to_string())?;
    let _: Value = client
        .add_node(id, &addr)
        .await
        .map_err(|e| format!("adding node {id}: {e}"))?;
    if let Some(s) = c.store(id) {
        s.member = true;
    }
    let leader = c.leader().await;
    let followers: Vec<u64> = c
        .member_ids()
        .into_iter()
        .filter(|m| Some(*m) != leader && *m != id)
        .collect();
    let Some(&gone) = followers.choose(rng) else {
        return Ok(format!("added node {id}; no follower to remove"));
    };
    let client = c.client().map_err(|e| e.to_string())?;
    let _: Value = client
        .remove_node(gone)
        .await
        .map_err(|e| format!("added node {id}; removing node {gone}: {e}"))?;
    if let Some(s) = c.store(gone) {
        s.member = false;
        s.removed = true;
        s.proc.kill();
    }
    Ok(format!("added node {id}, removed node {gone}"))
}
