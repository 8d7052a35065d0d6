//! The JetStream helpers on real servers, where a cluster answers
//! differently from a single server.

use super::claim::fetch;
use super::messages::delete;
use super::*;
use crate::queue::conformance::nats_server::NatsServer;

/// A delete tried again after its first try went through finds nothing:
/// that is done, not a failure. A cluster says so with a failed delete
/// (10057) rather than a single server's "no message found"; taken as an
/// error, an engine kept trying to record a sent delivery forever.
#[tokio::test]
async fn deleting_a_message_twice_on_a_cluster_is_done() {
    let nodes = NatsServer::cluster(3);
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let js = jetstream::new(async_nats::connect(urls).await.unwrap());
    let stream = js
        .create_stream(stream::Config {
            name: "TWICE".into(),
            subjects: vec!["twice".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let ack = js
        .publish("twice", "one".into())
        .await
        .unwrap()
        .await
        .unwrap();
    delete(&stream, ack.sequence).await.unwrap();
    delete(&stream, ack.sequence)
        .await
        .expect("gone already is done");
}

/// A fetch nobody answers (a consumer whose leader changed under it)
/// ends on its own instead of holding the claim, and with it every
/// delivery after, forever.
#[tokio::test]
async fn a_fetch_nobody_answers_ends() {
    let server = NatsServer::start();
    let client = async_nats::connect(&server.url).await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: "SILENT".into(),
            subjects: vec!["silent".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("c".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // Gone from JetStream, its requests taken by one who never answers.
    stream.delete_consumer("c").await.unwrap();
    let _silent = client
        .subscribe("$JS.API.CONSUMER.MSG.NEXT.SILENT.c")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let fetched = tokio::time::timeout(
        Duration::from_secs(30),
        fetch(&consumer, "a.test:80", 10, None),
    )
    .await
    .expect("the fetch ends by itself");
    assert!(fetched.is_none(), "{fetched:?}");
}
