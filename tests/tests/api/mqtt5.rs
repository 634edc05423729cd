//! MQTT 5 clients as the API shows them, driven by rumqttc's v5 client: `proto_ver` 5 and the session
//! expiry they chose; their messages reach 3.1.1 subscribers, and a kick reaches them as a DISCONNECT
//! with its reason.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use serde_json::json;
use tokio::sync::mpsc;

use crate::helpers::*;

/// A v5 client whose event loop reports what arrives: CONNACK and PUBLISH, and the reason of a
/// DISCONNECT from the broker (rumqttc ends its loop with it).
async fn connect_v5(
    port: u16,
    client_id: &str,
    expiry: u32,
) -> (AsyncClient, mpsc::UnboundedReceiver<Result<Packet, DisconnectReasonCode>>) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(expiry));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let sent = match eventloop.poll().await {
                Ok(Event::Incoming(packet @ (Packet::ConnAck(_) | Packet::Publish(_)))) => tx.send(Ok(packet)),
                Ok(_) => Ok(()),
                Err(ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. })) => {
                    let _ = tx.send(Err(reason_code));
                    return;
                }
                Err(_) => return,
            };
            if sent.is_err() {
                return;
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(Ok(Packet::ConnAck(_)))) => {}
        other => panic!("expected CONNACK, got {other:?}"),
    }
    (client, rx)
}

#[tokio::test]
async fn mqtt5_clients_in_the_api_and_among_3_1_1_ones() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let (v5, mut v5_events) = connect_v5(stack.mqtt_port(), "five", 120).await;
    let mut v311 = Client::connect(stack.mqtt_port(), "three").await;
    v311.subscribe(api, "three", "mixed/#").await;

    let client = &api.get("clients/five").await["objects"][0];
    assert_eq!(client["proto_ver"], 5);
    let session = &api.get("sessions/five").await["objects"][0];
    assert_eq!((&session["clean_sess"], &session["expiry_interval"]), (&json!(false), &json!(120)));
    // A 3.1.1 session shows EMQ 2.x's fields, and no more.
    assert!(api.get("sessions/three").await["objects"][0].get("expiry_interval").is_none());

    let properties = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    v5.publish_with_properties("mixed/a", QoS::AtLeastOnce, false, "from five", properties).await.unwrap();
    let got = v311.next_message().await;
    assert_eq!((&got.topic[..], &got.payload[..]), ("mixed/a", &b"from five"[..]));

    assert_eq!(api.ok(reqwest::Method::DELETE, "clients/five", None).await, json!([]));
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(5), v5_events.recv()).await {
            Ok(Some(Err(reason))) => break reason,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    };
    assert_eq!(reason, DisconnectReasonCode::AdministrativeAction);
}
