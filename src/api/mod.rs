//! HTTP: routing, request parsing and the error contract. The core (`service`) never sees
//! HTTP types.

pub mod action;
pub mod answer;
pub mod auth;
pub mod create_body;
pub mod create_meta;
pub mod error;
pub mod images;
pub mod list_filter;
pub mod openapi;
pub mod ops;
pub mod pool_body;
pub mod pools;
pub mod query;
pub mod routes;
pub mod server;
pub mod vms;
