//! A Weft node: one agency's store of children's success plans, its client API, its audit
//! log, and its consent-scoped replication with peer agencies.
//!
//! The server is a library; `main.rs` is a thin CLI over it. See ARCHITECTURE.md for the map.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = weft_node::config::Config::load("weft.toml".as_ref())?;
//! let node = weft_node::server::Node::bind(config).await?;
//! println!("client API on {}", node.api_addr());
//! node.join().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod backup;
pub mod catalogue;
#[allow(missing_docs)] // clap turns doc comments into help texts; flattened fields need none
pub mod cli;
pub mod config;
pub mod error;
pub mod family;
pub mod fhir;
pub mod gate;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod section;
pub mod seed;
pub mod server;
pub mod service;
pub mod storage;
pub mod tls;
