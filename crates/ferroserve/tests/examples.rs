//! The examples are the contract (each one of Ray Serve's HTTP guide's snippets, in Rust): each
//! is started as its own process on an ephemeral port and driven by a real client.
//! `cargo build --examples` must have run (`.ci/run` does).

use ferroserve_test_support as common;

use common::{Example, Fetch};

#[tokio::test]
async fn counter_returns_the_query_params_and_exits_0_on_sigterm() {
    let ex = Example::start("counter");
    let r = reqwest::get(format!("{}/?a=b&c=d", ex.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"a":"b","c":"d"}"#);
    let status = tokio::task::spawn_blocking(move || ex.terminate())
        .await
        .unwrap();
    assert!(status.success(), "drains and exits 0, got {status}");
}

#[tokio::test]
async fn composition_sums_through_a_handle_on_two_replicas() {
    let ex = Example::start("composition");
    let c = reqwest::Client::new();
    let mut replicas = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let v: serde_json::Value = c
            .post(format!("{}/", ex.base))
            .body("[1, 2, 3.5]")
            .fetch_json()
            .await;
        assert_eq!(v["sum"], 6.5);
        replicas.insert(v["replica"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        replicas.into_iter().collect::<Vec<_>>(),
        ["Adder#0", "Adder#1"]
    );
    let r = c
        .post(format!("{}/", ex.base))
        .body("[1, \"x\"]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .starts_with("Invalid JSON body: invalid type: string"));
}
