//! rowcast: pushes every change to an Azure SQL table to the WebSocket subscribers of an
//! Azure Web PubSub hub, as an Azure Functions custom handler.
//!
//! The Functions host runs the `handler` binary and posts each batch the Azure SQL trigger
//! produces to `POST /{function}`. rowcast decodes the batch, gives every change an address
//! from the function's route, and sends it through the Web PubSub REST API.
//!
//! # Layout
//!
//! - [`settings`]: app settings, read and validated once at start.
//! - [`functions`]: the function folders (`function.json`) the app is made of.
//! - [`invocation`]: the host's request and response shapes, and the one error type.
//! - [`change`]: row changes and their three encodings.
//! - [`route`]: hubs, targets and column templates.
//! - [`message`]: what a subscriber receives, and its stable id.
//! - [`delivery`]: sending one batch with bounded concurrency.
//! - [`deadletter`]: changes kept in a queue when they cannot be delivered, and their redelivery format.
//! - [`retry`]: backoff, `Retry-After` and the invocation deadline.
//! - [`redeliver`]: the queue-triggered function that sends dead letters again.
//! - [`negotiate`]: the `negotiate` function, client access URLs for subscribers.
//! - [`webpubsub`]: connection strings, access keys, Entra tokens and the REST client.
//! - [`server`]: the HTTP server the host talks to.
//! - [`dev`]: `handler dev`, the whole pipeline on one machine.

#![forbid(unsafe_code)]

pub mod change;
pub mod deadletter;
pub mod delivery;
pub mod dev;
pub mod functions;
pub mod invocation;
pub mod message;
pub mod negotiate;
pub mod redeliver;
pub mod retry;
pub mod route;
pub mod server;
pub mod settings;
pub mod webpubsub;
