//! End-to-end tests: the real `capstan` binary, real clients, over HTTP.

mod auth;
mod cli;
mod client_cmds;
mod clients;
mod compose;
mod degrade;
mod distributed;
mod federation;
mod fleet;
mod gc;
mod layout;
mod oci;
mod retention;
mod s3;
mod sandbox;
mod search;
mod sessions;
mod spec;
mod sync;
mod traces;
mod trust;
