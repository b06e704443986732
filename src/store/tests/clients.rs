//! Clients: a server keeps a client per authorization server, each with its own secret,
//! through encryption in place and a rekey; a refresh uses the client of its token's issuer.

use std::fs;

use rusqlite::Connection;

use super::support::{SECRET, client, made_dir, token, with_key_file};
use crate::store::cipher::StoreKey;
use crate::store::keys::{self, KeySource};
use crate::store::{Sealing, StoredClient, TokenStore};

/// A client of `key` at the authorization server `issuer`, with a secret of its own.
fn client_at(key: &str, issuer: &str) -> StoredClient {
    StoredClient {
        issuer: issuer.into(),
        client_id: format!("cid-at-{issuer}"),
        client_secret: Some(format!("{SECRET}-at-{issuer}").into()),
        ..client(key)
    }
}

#[test]
fn a_server_keeps_a_client_per_issuer_through_encryption_in_place_and_rekey() {
    let dir = made_dir("issuers");
    let db = dir.join("tokens.db");
    let mut plain = TokenStore::open_with(&db, &Sealing::Plaintext).unwrap();
    plain.save_client(&client_at("k1", "https://as-a")).unwrap();
    plain.save_client(&client_at("k1", "https://as-b")).unwrap();
    // Saving again for one issuer replaces that issuer's row only.
    plain.save_client(&client_at("k1", "https://as-a")).unwrap();
    drop(plain);
    let key_file = dir.join("key");
    let mut store = TokenStore::open_with(&db, &with_key_file(&key_file)).unwrap();
    let new_file = dir.join("new.key");
    let new = StoreKey::generate();
    keys::write_new_key_file(&new_file, &new).unwrap();
    store.rekey(new, KeySource::File(new_file)).unwrap();
    for issuer in ["https://as-a", "https://as-b"] {
        let c = store.load_client_for("k1", issuer).unwrap().unwrap();
        assert_eq!(c.client_id, format!("cid-at-{issuer}"));
        assert_eq!(
            c.client_secret,
            Some(format!("{SECRET}-at-{issuer}").into()),
            "each row kept its own secret through the sealing and the rekey"
        );
    }
    assert_eq!(store.load_client_for("k1", "https://as-c").unwrap(), None);
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE oauth_clients SET updated_at = 1 WHERE issuer = 'https://as-a'",
            [],
        )
        .unwrap();
    assert_eq!(
        store.load_client("k1").unwrap().unwrap().issuer,
        "https://as-b",
        "without a token to go by, the newest client"
    );
    let mut token = token("k1");
    token.issuer = Some("https://as-b".into());
    assert_eq!(
        store
            .client_for_token("k1", Some(&token))
            .unwrap()
            .unwrap()
            .issuer,
        "https://as-b",
        "a token is refreshed with the client of its own issuer"
    );
    let _ = fs::remove_dir_all(&dir);
}
