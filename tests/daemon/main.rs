//! The daemon through its sockets: a real `classifyd serve` process, real Unix sockets and real
//! QUIC on loopback, real signals.

mod bench;
mod cli;
#[path = "../common/mod.rs"]
mod common;
mod faults;
mod harness;
mod lifecycle;
mod metrics;
mod models;
mod quic;
mod reload;
mod security;
mod serving;
mod systemd;
mod terminal;
mod uds;
