//! HTTP: routing, request parsing and the error contract. The core (`service`) never sees
//! HTTP types.

pub mod create_body;
pub mod error;
pub mod routes;
pub mod server;
