//! The Tiercache service: configuration from the environment, start-up, and the HTTP API
//! (the domain routes and the voice agent's webhook).

pub mod auth;
pub mod calls;
pub mod cli;
pub mod config;
pub mod db_error;
pub mod error;
pub mod http;
pub mod logging;
pub mod routes;
pub mod startup;
pub mod state;

pub use config::Config;
pub use routes::router;
pub use state::AppState;
