//! The request path, one module per phase, composed in [`crate::pipeline`]:
//! authenticate → validate → admit → route + upstream → stream and meter → settle → log.

pub mod admit;
pub mod auth;
pub mod log;
pub mod settle;
pub mod stream;
pub mod upstream;
pub mod validate;
