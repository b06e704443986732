//! The flow history: flows of processes that died are closed as abandoned, the others kept.

use super::support::temp_dir;
use crate::store::TokenStore;

#[tokio::test]
async fn running_flows_with_a_free_lock_are_closed_as_abandoned() {
    let path = temp_dir("abandoned").join("tokens.db");
    let locks = crate::store::lock::lock_dir_beside(&path);
    let mut store = TokenStore::open(&path).unwrap();
    store
        .begin_flow("dead", "a_1", "a", "login", "pid 1", 60_000)
        .unwrap();
    store
        .begin_flow("alive", "b_1", "b", "refresh", "pid 2", 60_000)
        .unwrap();
    store
        .begin_flow("done", "a_1", "a", "refresh", "pid 1", 60_000)
        .unwrap();
    store.finish_flow("done", None).unwrap();
    let held = crate::store::lock::acquire(&locks, "b_1", std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(store.close_abandoned_flows(&locks).unwrap(), ["dead"]);
    let states: Vec<(String, String)> = store
        .recent_flows(10)
        .unwrap()
        .into_iter()
        .map(|f| (f.flow_id, f.state))
        .collect();
    assert!(
        states.contains(&("dead".into(), "abandoned".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("alive".into(), "running".into())),
        "its lock is held: {states:?}"
    );
    assert!(
        states.contains(&("done".into(), "succeeded".into())),
        "{states:?}"
    );
    drop(held);
    // A process forked by a concurrent test holds a duplicate of every open descriptor,
    // the lock's too, until its exec closes them: wait for that (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let closed = loop {
        let closed = store.close_abandoned_flows(&locks).unwrap();
        if !closed.is_empty() || std::time::Instant::now() > deadline {
            break closed;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(closed, ["alive"]);
}
