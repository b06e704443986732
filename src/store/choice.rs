//! Where the tokens live: SQLite in the data directory (the default), or a PostgreSQL database
//! that several instances share, named `postgres://USER@HOST:PORT/DB` (`--store`, or the
//! `MCPPROXY_OAUTH_STORE` environment variable). A password in the URL is a secret: it is
//! registered with the log scrubber and never shown; the store is shown without it.

use std::fmt;
use std::str::FromStr;

/// The environment variable that names the store (the way to pass a password without putting
/// it on a command line).
pub const STORE_ENV: &str = "MCPPROXY_OAUTH_STORE";

/// Where the tokens live.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreChoice {
    /// `DATA_DIR/tokens.db`.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by instances.
    Postgres(Box<PgUrl>),
}

/// A PostgreSQL store's address, parsed. `Debug` and `Display` show it without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    config: tokio_postgres::Config,
    shown: String,
}

impl PgUrl {
    /// The connection settings (password included: never log them).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.shown)
    }
}

impl fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Sqlite => f.write_str("Sqlite"),
            StoreChoice::Postgres(url) => write!(f, "Postgres({url})"),
        }
    }
}

impl fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Sqlite => f.write_str("sqlite (tokens.db in the data directory)"),
            StoreChoice::Postgres(url) => fmt::Display::fmt(url, f),
        }
    }
}

/// Why a store could not be understood. Never quotes the text (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the token store {problem}: give `sqlite` (tokens.db in the data directory, the default) or \
     postgres://USER@HOST:PORT/DB (a password goes in {STORE_ENV} rather than on a command line)"
)]
pub struct StoreChoiceError {
    problem: String,
}

fn refused(problem: impl Into<String>) -> StoreChoiceError {
    StoreChoiceError {
        problem: problem.into(),
    }
}

impl FromStr for StoreChoice {
    type Err = StoreChoiceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("sqlite") {
            return Ok(StoreChoice::Sqlite);
        }
        let scheme = text.split("://").next().unwrap_or_default();
        if !text.contains("://") || !matches!(scheme, "postgres" | "postgresql") {
            return Err(refused("is neither `sqlite` nor a postgres:// URL"));
        }
        let config = tokio_postgres::Config::from_str(text)
            .map_err(|_| refused("is a postgres:// URL that does not parse"))?;
        let user = config
            .get_user()
            .ok_or_else(|| refused("URL names no user (postgres://USER@HOST:PORT/DB)"))?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        if hosts.is_empty() {
            return Err(refused("URL names no host (postgres://USER@HOST:PORT/DB)"));
        }
        let database = config
            .get_dbname()
            .ok_or_else(|| refused("URL names no database (postgres://USER@HOST:PORT/DB)"))?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(refused(
                "URL asks for TLS (sslmode=require), which this build does not speak to \
                 PostgreSQL yet (reach the database over a private network or a TLS tunnel, \
                 with sslmode=disable)",
            ));
        }
        if let Some(password) = config.get_password() {
            crate::telemetry::secrets::register(&String::from_utf8_lossy(password));
        }
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        let port = match ports.as_slice() {
            [] => String::new(),
            ports => format!(":{}", ports.join(",")),
        };
        let shown = format!("postgres://{user}@{}{port}/{database}", hosts.join(","));
        Ok(StoreChoice::Postgres(Box::new(PgUrl { config, shown })))
    }
}

impl StoreChoice {
    /// The store `MCPPROXY_OAUTH_STORE` names, if it is set.
    pub fn from_env() -> Option<Result<Self, StoreChoiceError>> {
        let text = std::env::var_os(STORE_ENV)?;
        Some(text.to_string_lossy().parse())
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreChoice::Postgres(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_is_parsed_and_shown_without_its_password() {
        let choice: StoreChoice = "postgres://oauth:pw-0123456789@db.internal:5433/tokens"
            .parse()
            .unwrap();
        let StoreChoice::Postgres(url) = &choice else {
            panic!("{choice:?}");
        };
        assert_eq!(url.to_string(), "postgres://oauth@db.internal:5433/tokens");
        assert_eq!(url.config().get_dbname(), Some("tokens"));
        assert_eq!(url.config().get_password(), Some(&b"pw-0123456789"[..]));
        for shown in [
            format!("{choice:?}"),
            choice.to_string(),
            format!("{url:?}"),
        ] {
            assert!(!shown.contains("pw-0123456789"), "{shown}");
        }
        assert!(
            !crate::telemetry::secrets::scrub("password pw-0123456789").contains("pw-0123456789"),
            "the password is a registered secret"
        );
        let plain: StoreChoice = "postgresql://u@127.0.0.1/db".parse().unwrap();
        assert_eq!(plain.to_string(), "postgres://u@127.0.0.1:5432/db");
    }

    #[test]
    fn sqlite_is_the_default_and_anything_else_is_refused_with_the_forms_and_no_text() {
        assert_eq!(StoreChoice::default(), StoreChoice::Sqlite);
        assert_eq!(
            "sqlite".parse::<StoreChoice>().unwrap(),
            StoreChoice::Sqlite
        );
        assert_eq!("".parse::<StoreChoice>().unwrap(), StoreChoice::Sqlite);
        for (text, problem) in [
            ("mysql://u:secret-pw-000@h/db", "neither"),
            ("/var/lib/tokens.db", "neither"),
            ("postgres://h:5432/db", "no user"),
            ("postgres://u@h:5432", "no database"),
            ("postgres://u:secret-pw-000@h:notaport/db", "does not parse"),
            ("postgres://u:secret-pw-000@h/db?sslmode=require", "TLS"),
        ] {
            let e = text.parse::<StoreChoice>().unwrap_err().to_string();
            assert!(e.contains(problem), "{text}: {e}");
            assert!(e.contains("postgres://USER@HOST:PORT/DB"), "{e}");
            assert!(!e.contains("secret-pw-000"), "{e}");
        }
    }
}
