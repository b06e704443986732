//! What the integration tests share, one module a concern: folders (`dirs`), the OAuth test
//! server and the engine (`engine`), log capture and the secret scan (`logs`), a supervisor
//! to test (`daemon`), the binary and its config file (`cli`), a real PostgreSQL (`postgres`)
//! and a database of it for a store test (`stores`), stored rows (`tokens`), bounded waits
//! (`waits`) and the API's JSON answers (`json`).
//! Each `tests/*.rs` binary compiles all of it and uses a part.
#![allow(dead_code, unused_imports)]

mod cli;
mod daemon;
mod dirs;
mod engine;
mod grants;
mod json;
mod logs;
mod postgres;
mod stores;
mod tokens;
mod waits;

pub use cli::*;
pub use daemon::*;
pub use dirs::*;
pub use engine::*;
pub use grants::*;
pub use json::*;
pub use logs::*;
pub use postgres::*;
pub use stores::*;
pub use tokens::*;
pub use waits::*;
