//! HTTP: routing, request parsing and the error contract. The core (`service`) never sees
//! HTTP types.

pub(crate) mod action;
pub(crate) mod answer;
pub(crate) mod auth;
pub mod create_body;
pub(crate) mod create_meta;
pub mod error;
pub(crate) mod fleet;
pub(crate) mod images;
pub(crate) mod list_filter;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod pool_body;
pub(crate) mod pools;
pub(crate) mod query;
pub(crate) mod routes;
pub mod server;
pub(crate) mod vms;
