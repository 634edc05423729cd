//! Idle connections rest in the dormitory without a task of their own (`dormant_after_ms`) and lose
//! nothing by it: driven over the real socket, with `emq_recon` telling how many rest.

mod helpers;

use std::time::Duration;

use helpers::*;
use midge_broker::protocol::*;
use midge_shared::control::{Recon, Request};

const NODE: &str = "midge@127.0.0.1";

/// Asks `emq_recon` until at least `n` connections rest (or the wait is over); the last answer.
async fn resting(mgmt: &mut Mgmt, n: u64) -> Recon {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let recon: Recon = mgmt.ok(Request::Recon { top: 0 }).await;
        if recon.connections.dormant >= n || tokio::time::Instant::now() > deadline {
            return recon;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_connections_rest_without_a_task_and_wake_for_their_work() {
    let broker = start(Config { dormant_after_ms: 100, ..mgmt_config() }).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut subscriber = Raw::connected(broker.addr, "subscriber").await;
    subscriber.subscribe(1, &[("rest/#", QoS::AtLeastOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "publisher").await;
    let mut idle = Vec::new();
    for n in 0..20 {
        idle.push(Raw::connected(broker.addr, &format!("idle-{n}")).await);
    }

    let recon = resting(&mut mgmt, 22).await;
    assert_eq!(recon.connections.count, 22, "{:?}", recon.connections);
    assert!(recon.connections.dormant >= 22, "every idle connection rests: {:?}", recon.connections);
    assert!(
        recon.runtime.tasks < recon.connections.count,
        "resting connections hold no task: {:?} {:?}",
        recon.runtime,
        recon.connections
    );
    let info: midge_shared::control::NodeInfo = mgmt.ok(Request::NodeInfo).await;
    assert!(info.process_used >= 22, "a resting connection is still a process, as a hibernating one is: {info:?}");

    // Work wakes them: the publisher by its socket, the subscriber by its outbox (QoS 1) or a write
    // straight to its socket (a lone QoS 0 message), in order.
    publisher.publish_acked("rest/a", 1..=3).await;
    subscriber.expect_acking(1..=3).await;
    publisher.send(&publish("rest/b", b"zero", QoS::AtMostOnce, 0)).await;
    assert_eq!(&subscriber.recv_publish().await.payload[..], b"zero");
    for client in &mut idle {
        client.ping().await;
    }

    // Resting again, a client taken over wakes to end; the one that took over is served.
    resting(&mut mgmt, 22).await;
    let (mut again, _) = Raw::connect(broker.addr, connect_packet("idle-0", true)).await;
    idle[0].expect_closed().await;
    again.ping().await;

    // Shutdown reaches the resting too.
    resting(&mut mgmt, 22).await;
    broker.stop().await;
    for client in &mut idle[1..] {
        client.expect_closed().await;
    }
    subscriber.expect_closed().await;
}

#[tokio::test]
async fn a_resting_client_is_kept_alive_by_its_pings_and_closed_when_silent() {
    let broker = start(Config { dormant_after_ms: 100, ..config() }).await;
    // A ping every 0.6 s: it rests between them, and each wakes it before 1.5 × keep-alive passes.
    pings_keep_alive_and_silence_closes(broker.addr, Duration::from_millis(600)).await;
    broker.stop().await;
}

#[tokio::test]
async fn with_dormant_after_zero_no_connection_rests() {
    let broker = start(Config { dormant_after_ms: 0, ..mgmt_config() }).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut idle = Vec::new();
    for n in 0..5 {
        idle.push(Raw::connected(broker.addr, &format!("idle-{n}")).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recon: Recon = mgmt.ok(Request::Recon { top: 0 }).await;
    assert_eq!(recon.connections.dormant, 0);
    assert!(recon.runtime.tasks > recon.connections.count, "a task each: {:?}", recon.runtime);
    for client in &mut idle {
        client.ping().await;
    }
    broker.stop().await;
}
