//! An async HTTP client for Truce: typed calls for every route of the v1 API,
//! conflicts returned as values that carry the current document, and retries
//! that are safe because every write carries an idempotency key.
//!
//! ```no_run
//! use serde_json::json;
//! use truce_client::{Client, Precondition};
//!
//! # async fn run() -> Result<(), truce_client::ClientError> {
//! let client = Client::builder("http://127.0.0.1:7070").source("signup").build()?;
//! match client.put("users", "ada", json!({"name": "Ada"}), Precondition::Absent).await? {
//!     Ok(written) => println!("created version {}", written.version),
//!     Err(conflict) => println!("already there: {:?}", conflict.current),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Results of writes have the shape `Result<Result<WriteAnswer, Conflict>, ClientError>`:
//! the outer error is a failure (transport, bad request, server trouble), the inner
//! one an expected outcome the caller decides about.

#![warn(missing_docs)]

mod answer;
mod changes;
mod client;
mod conflict;
mod document;
mod documents;
mod error;
mod ops;
mod precondition;
mod query;
mod retry;
mod transport;
mod tx;
mod update;

pub use answer::{WriteAnswer, WriteResult};
pub use changes::{Change, Changes, ChangesOptions, Feed};
pub use client::{Client, ClientBuilder, SOURCE_DEFAULT, SOURCE_LEN_MAX};
pub use conflict::{Conflict, ConflictReason, OpConflict, TxConflict};
pub use document::Document;
pub use documents::Fetched;
pub use error::{ClientError, UNKNOWN_CODE};
pub use ops::{Outbox, Recount, RecountFix, RecountUnfixable};
pub use precondition::{DeletePrecondition, Precondition};
pub use query::{Cursor, IndexCreated, IndexInfo, IndexSpec, Order, Page, Query};
pub use retry::RetryPolicy;
pub use tx::{Transaction, TxAnswer, TxOp, TxResult};
