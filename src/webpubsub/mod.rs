//! Azure Web PubSub as a publisher sees it: the connection string, the tokens that
//! authenticate REST calls, and the REST client that sends messages.

mod client;
mod connection_string;
mod credential;
mod token;

pub use client::{ClientAccess, Publisher, SendError, WebPubSub, API_VERSION};
pub use connection_string::{ConnectionString, ConnectionStringError};
pub use credential::{
    IdentityError, Secret, TokenProvider, TokenSource, DEFAULT_AUTHORITY, WEB_PUBSUB_RESOURCE,
    WEB_PUBSUB_SCOPE,
};
pub(crate) use token::now;
pub use token::AccessKey;
