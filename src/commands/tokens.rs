//! `tokens rekey`: every stored secret re-encrypted with a new key, in one transaction. It
//! runs alone: while a daemon or an `auth` command has the database open (they keep the old
//! key in memory), it is refused with nothing changed (see `store::holder`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use mcpproxy_oauth::store::cipher::StoreKey;
use mcpproxy_oauth::store::keys::{self, KeySource};
use mcpproxy_oauth::store::{KeySpec, Sealing, TokenStore};
use mcpproxy_oauth::supervisor::{database_path, default_data_dir};
use mcpproxy_oauth::telemetry::inert::safe;

use super::{StoreArgs, fail};

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Re-encrypt every stored secret with a new random key. Refused while a daemon or an
    /// `auth` command has the database open (they hold the old key): stop them first.
    Rekey {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The current key file (default: MCPPROXY_OAUTH_KEY, else `key` beside tokens.db).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Where the new key goes (must not exist). Default: replaces the current key file.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn tokens(command: TokensCommand) -> ExitCode {
    let TokensCommand::Rekey {
        data_dir,
        key_file,
        new_key_file,
        store,
    } = command;
    match store.choice() {
        Ok(choice) if choice.is_postgres() => {
            return fail(format!(
                "tokens rekey works on the SQLite store only for now; the PostgreSQL store {choice} \
                 keeps its key (stop every instance and rekey there once this is supported)"
            ));
        }
        Ok(_) => {}
        Err(e) => return fail(e),
    }
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    let database = database_path(&data_dir);
    if !database.exists() {
        return fail(format!(
            "no token database at {}; nothing to rekey (pass --data-dir)",
            database.display()
        ));
    }
    let spec = KeySpec { key_file };
    let mut store = match TokenStore::open_alone(&database, &Sealing::Encrypted(spec)) {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    let current = match store.key_source() {
        Some(KeySource::File(path)) => Some(path.clone()),
        _ => None,
    };
    let (target, staged) = match (new_key_file, current) {
        (Some(new), _) => (new.clone(), new),
        (None, Some(current)) => (current.clone(), current.with_extension("new")),
        (None, None) => {
            return fail(format!(
                "the key comes from {}: pass --new-key-file for the new key, then set {} to it",
                keys::KEY_ENV,
                keys::KEY_ENV
            ));
        }
    };
    let key = StoreKey::generate();
    if let Err(e) = keys::write_new_key_file(&staged, &key) {
        return fail(format!(
            "cannot write the new key to {}: {e}; nothing was changed (a file left there by an \
             interrupted rekey: check which key opens the database, then remove the other)",
            staged.display()
        ));
    }
    if let Err(e) = store.rekey(key, KeySource::File(target.clone())) {
        let _ = std::fs::remove_file(&staged);
        return fail(e);
    }
    if staged != target
        && let Err(e) = std::fs::rename(&staged, &target)
    {
        return fail(format!(
            "the database now uses the key in {}, but it could not replace {}: {e}; move it there by hand",
            staged.display(),
            target.display()
        ));
    }
    println!(
        "re-encrypted every stored secret; the key is now in {}",
        safe(&target.display().to_string())
    );
    ExitCode::SUCCESS
}
