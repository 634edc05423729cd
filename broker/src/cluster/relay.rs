//! Control requests between nodes. The sidecar is an MQTT client of one node; a request it sends for
//! another node (or to every node, the discovery) travels from there over NATS, on
//! `midge.ctl.<node>`, as NATS request and reply: the node it names answers it with its own control
//! service and the answer comes back the same way, for the first node to publish to the sidecar's reply
//! topic. A node that is not alive is not asked: the caller learns at once.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{subject, ClusterError};

/// How long another node has to answer a control request. The sidecar's own timeout is usually shorter.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// A control request from another node, and where its answer goes.
pub struct Asked {
    pub payload: Bytes,
    pub answer: oneshot::Sender<Bytes>,
}

fn control_subject(node: &str) -> String {
    format!("midge.ctl.{}", subject::token(node))
}

/// Hands the requests other nodes send this one to its control service, and their answers back.
pub async fn answer_asks(
    control: Client,
    node: &str,
    asked: mpsc::Sender<Asked>,
) -> Result<JoinHandle<()>, ClusterError> {
    let mut requests = control.subscribe(control_subject(node)).await.map_err(|e| ClusterError::Nats(e.to_string()))?;
    Ok(tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            let (answer, answered) = oneshot::channel();
            if asked.send(Asked { payload: request.payload, answer }).await.is_err() {
                return;
            }
            let control = control.clone();
            tokio::spawn(async move {
                if let Ok(body) = answered.await {
                    let _ = control.publish(reply, body).await;
                }
            });
        }
    }))
}

/// Sends `payload` to `node`'s control service and returns its answer.
pub async fn ask(control: &Client, node: &str, payload: Bytes) -> Result<Bytes, ClusterError> {
    match tokio::time::timeout(ASK_TIMEOUT, control.request(control_subject(node), payload)).await {
        Ok(Ok(answer)) => Ok(answer.payload),
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
            Err(ClusterError::Nats(format!("node {node} is not connected to the cluster")))
        }
        Ok(Err(e)) => Err(ClusterError::Nats(format!("node {node}: {e}"))),
        Err(_) => Err(ClusterError::Nats(format!("node {node} did not answer in time"))),
    }
}
