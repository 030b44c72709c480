//! Maps `ApiError` to a gRPC status: the status code from `ErrorCode`'s table, the client-safe
//! message, and the error code name (and leader address) in metadata.

use tollgate_proto::{ERROR_CODE_METADATA, LEADER_METADATA};
use tollgate_types::error::{ApiError, ErrorCode};
use tonic::Status;
use tonic::metadata::MetadataValue;

pub fn api_status(e: ApiError) -> Status {
    let code = tonic::Code::from_i32(e.code.info().grpc as i32);
    let msg = match &e.param {
        Some(p) => format!("{} (param: {p})", e.message),
        None => e.message.clone(),
    };
    let mut status = Status::new(code, msg);
    if let Ok(v) = MetadataValue::try_from(e.code.as_str()) {
        status.metadata_mut().insert(ERROR_CODE_METADATA, v);
    }
    if let Some(p) = e
        .param
        .as_deref()
        .and_then(|p| MetadataValue::try_from(p).ok())
    {
        status.metadata_mut().insert("x-tollgate-param", p);
    }
    status
}

pub fn not_leader(leader_addr: Option<String>) -> Status {
    let msg = match &leader_addr {
        Some(a) => format!("this node is not the leader; the leader is at {a}"),
        None => "this node is not the leader and no leader is known yet; retry shortly".to_owned(),
    };
    let mut status = api_status(ApiError::new(ErrorCode::NotLeader, msg));
    if let Some(v) = leader_addr.and_then(|a| MetadataValue::try_from(a).ok()) {
        status.metadata_mut().insert(LEADER_METADATA, v);
    }
    status
}

pub fn bad_json(what: &str, e: &serde_json::Error) -> Status {
    api_status(ApiError::invalid(what, format!("{what} is not valid: {e}")))
}
