//! One client connection, from CONNECT to the end: authentication, session hand-over with the router,
//! and the packet loop that reads, writes and delivers at the same time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};

use crate::acl::{Access, AclCache, ClientInfo, Decision};
use crate::codec::*;
use crate::connection::{self, ConnectionError, PacketReader, PacketWriter, WRITE_HIGH_WATER};
use crate::router::{self, ConnectOutcome, Outbound, OutboxReceiver, Request};
use crate::server::Context;
use crate::session::{AckResult, Delivery, Message, Outgoing, Session};
use crate::subscriptions::ClientId;
use crate::topic;

/// Why a connection ended; everything but a DISCONNECT from the client (or a broker shutdown)
/// publishes the will.
#[derive(Debug)]
enum Exit {
    Disconnect,
    Shutdown,
    TakenOver,
    KeepaliveTimeout,
    Error(ConnectionError),
    ProtocolViolation(&'static str),
}

impl Exit {
    fn publishes_will(&self) -> bool {
        !matches!(self, Exit::Disconnect | Exit::Shutdown)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Disconnect => f.write_str("client sent DISCONNECT"),
            Exit::Shutdown => f.write_str("broker shutting down"),
            Exit::TakenOver => f.write_str("taken over by a new connection"),
            Exit::KeepaliveTimeout => f.write_str("keepalive timeout"),
            Exit::Error(e) => write!(f, "{e}"),
            Exit::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
        }
    }
}

impl From<ConnectionError> for Exit {
    fn from(e: ConnectionError) -> Self {
        Exit::Error(e)
    }
}

impl From<DecodeError> for Exit {
    fn from(e: DecodeError) -> Self {
        Exit::Error(ConnectionError::Decode(e))
    }
}

/// Serves one TCP connection until it ends. Never panics on peer input; every error ends only this
/// connection.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<Context>) {
    let (mut reader, mut writer) = connection::split(stream, ctx.config.max_packet_size);
    let connect_timeout = Duration::from_secs(ctx.config.connect_timeout);
    let connect = match timeout(connect_timeout, reader.read_packet()).await {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(other)) => {
            tracing::debug!(%peer, packet = other.name(), "first packet is not CONNECT");
            return;
        }
        Ok(Err(ConnectionError::Decode(DecodeError::UnsupportedProtocol { name, level }))) => {
            tracing::debug!(%peer, %name, level, "unsupported protocol");
            refuse(&mut writer, ConnectReturnCode::UnacceptableProtocol).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bad CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
    };
    let Some(mut conn) = accept(connect, peer, &ctx, reader, writer).await else {
        return;
    };
    let exit = conn.run().await;
    conn.finish(exit).await;
}

async fn refuse(writer: &mut PacketWriter, code: ConnectReturnCode) {
    writer.queue(&Packet::Connack(Connack {
        session_present: false,
        code,
    }));
    let _ = timeout(Duration::from_secs(1), writer.flush()).await;
    writer.shutdown().await;
}

/// Validates and authenticates a CONNECT, obtains the session from the router and sends CONNACK.
async fn accept(
    mut connect: Connect,
    peer: SocketAddr,
    ctx: &Arc<Context>,
    reader: PacketReader,
    mut writer: PacketWriter,
) -> Option<ClientConnection> {
    if connect.client_id.is_empty() {
        // 3.1 requires an id; 3.1.1 lets a clean session have one assigned.
        if connect.protocol == Protocol::V31 || !connect.clean_session {
            refuse(&mut writer, ConnectReturnCode::IdentifierRejected).await;
            return None;
        }
        connect.client_id = format!("midge-{:016x}", rand::random::<u64>());
    }
    if connect.client_id.len() > ctx.config.max_clientid_len {
        refuse(&mut writer, ConnectReturnCode::IdentifierRejected).await;
        return None;
    }
    if let Some(will) = &connect.will {
        if !topic::valid_topic_name(&will.topic) {
            tracing::debug!(%peer, "invalid will topic");
            return None;
        }
    }
    if let Some(code) = authenticate(&connect, ctx).await {
        tracing::info!(%peer, client_id = %connect.client_id, "connection refused: {code:?}");
        refuse(&mut writer, code).await;
        return None;
    }

    let client_id: ClientId = Arc::from(connect.client_id.as_str());
    let conn_id = ctx.next_conn_id();
    let (outbox, outbox_rx) = router::outbox(conn_id);
    let (reply, outcome) = tokio::sync::oneshot::channel();
    let request = Request::Connect {
        client_id: client_id.clone(),
        clean_session: connect.clean_session,
        outbox,
        reply,
    };
    ctx.router.send(request).await.ok()?;
    let (session, present) = match outcome.await.ok()? {
        ConnectOutcome::Accepted { session, present } => (session, present),
        ConnectOutcome::Superseded => return None,
    };
    // 3.1 has no session-present flag.
    let session_present = present && connect.protocol == Protocol::V311;
    writer.queue(&Packet::Connack(Connack {
        session_present,
        code: ConnectReturnCode::Accepted,
    }));
    tracing::debug!(%peer, client_id = %client_id, clean = connect.clean_session, present, "connected");

    let mut conn = ClientConnection {
        ctx: ctx.clone(),
        info: ClientInfo {
            client_id: connect.client_id,
            username: connect.username,
            ip: peer.ip(),
        },
        client_id,
        conn_id,
        keep_alive: connect.keep_alive,
        will: connect.will,
        session,
        acl_cache: AclCache::new(
            ctx.config.acl_cache_max_size,
            Duration::from_secs(ctx.config.acl_cache_ttl),
        ),
        reader,
        writer,
        outbox: outbox_rx,
        last_received: Instant::now(),
    };
    let mut resend = Vec::new();
    conn.session.resume(&mut resend);
    conn.write_outgoing(resend);
    Some(conn)
}

/// `None` when the client may connect, else the CONNACK code that refuses it.
async fn authenticate(connect: &Connect, ctx: &Context) -> Option<ConnectReturnCode> {
    let Some(username) = &connect.username else {
        return (!ctx.config.allow_anonymous).then_some(ConnectReturnCode::NotAuthorized);
    };
    match &ctx.users {
        Some(users) => {
            let password = connect.password.as_deref().unwrap_or_default();
            (!users.verify(username, password).await)
                .then_some(ConnectReturnCode::BadUsernameOrPassword)
        }
        // Nothing to check a username against: it is as good as anonymous.
        None => (!ctx.config.allow_anonymous).then_some(ConnectReturnCode::BadUsernameOrPassword),
    }
}

struct ClientConnection {
    ctx: Arc<Context>,
    info: ClientInfo,
    client_id: ClientId,
    conn_id: u64,
    keep_alive: u16,
    will: Option<LastWill>,
    session: Box<Session>,
    acl_cache: AclCache,
    reader: PacketReader,
    writer: PacketWriter,
    outbox: OutboxReceiver,
    last_received: Instant,
}

impl ClientConnection {
    async fn run(&mut self) -> Exit {
        // 1.5 × keepalive of silence ends the connection (3.1.1 §3.1.2.10).
        let grace = Duration::from_millis(self.keep_alive as u64 * 1500);
        let keepalive = sleep_until(self.last_received + grace);
        tokio::pin!(keepalive);
        let shutdown = self.ctx.shutdown.clone();
        loop {
            let backlog = self.writer.pending();
            tokio::select! {
                _ = shutdown.cancelled() => return Exit::Shutdown,
                read = self.reader.fill(), if backlog < 2 * WRITE_HIGH_WATER => {
                    if let Err(e) = read {
                        return e.into();
                    }
                    self.last_received = Instant::now();
                    if let Err(exit) = self.handle_buffered().await {
                        return exit;
                    }
                }
                outbound = self.outbox.rx.recv(), if backlog < WRITE_HIGH_WATER => {
                    let Some(outbound) = outbound else { return Exit::Shutdown };
                    if let Err(exit) = self.handle_outbound(outbound) {
                        return exit;
                    }
                    // Take whatever else is waiting, so it leaves in the same write.
                    for _ in 0..256 {
                        let Ok(outbound) = self.outbox.rx.try_recv() else { break };
                        if let Err(exit) = self.handle_outbound(outbound) {
                            return exit;
                        }
                    }
                }
                written = self.writer.write_some(), if backlog > 0 => {
                    if let Err(e) = written {
                        return e.into();
                    }
                }
                _ = &mut keepalive, if self.keep_alive > 0 => {
                    let deadline = self.last_received + grace;
                    if Instant::now() >= deadline {
                        return Exit::KeepaliveTimeout;
                    }
                    keepalive.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Publishes the will if the exit calls for it, flushes what it can and hands the session back.
    async fn finish(self, exit: Exit) {
        let ClientConnection {
            ctx,
            info,
            client_id,
            conn_id,
            will,
            session,
            mut writer,
            outbox,
            mut acl_cache,
            ..
        } = self;
        match &exit {
            Exit::Disconnect | Exit::Shutdown | Exit::TakenOver => {
                tracing::debug!(client_id = %client_id, reason = %exit, "disconnected")
            }
            _ => tracing::info!(client_id = %client_id, reason = %exit, "connection closed"),
        }
        if exit.publishes_will() {
            if let Some(will) = will {
                if check_publish(&ctx, &info, &mut acl_cache, &will.topic) == Decision::Allow {
                    let message = Message {
                        topic: will.topic.into_bytes().into(),
                        payload: will.payload,
                        qos: will.qos,
                        retain: will.retain,
                    };
                    let _ = ctx.router.send(Request::Publish(Arc::new(message))).await;
                }
            }
        }
        if writer.pending() > 0 && !matches!(exit, Exit::Error(_)) {
            let _ = timeout(Duration::from_millis(500), writer.flush()).await;
        }
        writer.shutdown().await;
        let request = Request::Disconnected {
            client_id,
            conn_id,
            session,
            rest: outbox.rx,
        };
        let _ = ctx.router.send(request).await;
    }

    async fn handle_buffered(&mut self) -> Result<(), Exit> {
        while let Some(packet) = self.reader.next_buffered()? {
            self.handle_packet(packet).await?;
        }
        Ok(())
    }

    async fn handle_packet(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish).await?,
            Packet::Puback(pkid) => {
                let result = self.session.puback(pkid);
                self.acked(result, "PUBACK");
            }
            Packet::Pubrec(pkid) => {
                if self.session.pubrec(pkid) == AckResult::Done {
                    self.writer.queue(&Packet::Pubrel(pkid));
                } else {
                    tracing::debug!(client_id = %self.client_id, pkid, "PUBREC for a packet id not in flight");
                }
            }
            Packet::Pubcomp(pkid) => {
                let result = self.session.pubcomp(pkid);
                self.acked(result, "PUBCOMP");
            }
            Packet::Pubrel(pkid) => {
                if self.session.pubrel(pkid) == AckResult::Missed {
                    tracing::debug!(client_id = %self.client_id, pkid, "PUBREL for a packet id not awaited");
                }
                // Always completed, so a client that lost our PUBCOMP can finish.
                self.writer.queue(&Packet::Pubcomp(pkid));
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe).await?,
            Packet::Unsubscribe(unsubscribe) => {
                let request = Request::Unsubscribe {
                    client_id: self.client_id.clone(),
                    conn_id: self.conn_id,
                    pkid: unsubscribe.pkid,
                    filters: unsubscribe.filters,
                };
                self.ctx
                    .router
                    .send(request)
                    .await
                    .map_err(|_| Exit::Shutdown)?;
            }
            Packet::Pingreq => self.writer.queue(&Packet::Pingresp),
            Packet::Disconnect => return Err(Exit::Disconnect),
            Packet::Connect(_) => return Err(Exit::ProtocolViolation("second CONNECT")),
            Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => {
                return Err(Exit::ProtocolViolation(
                    "server-to-client packet from a client",
                ))
            }
        }
        Ok(())
    }

    fn acked(&mut self, result: AckResult, kind: &str) {
        match result {
            AckResult::Done => {
                let mut out = Vec::new();
                self.session.drain_queue(&mut out);
                self.write_outgoing(out);
            }
            AckResult::Missed => {
                tracing::debug!(client_id = %self.client_id, kind, "acknowledgement for a packet id not in flight")
            }
        }
    }

    async fn handle_publish(&mut self, publish: Publish) -> Result<(), Exit> {
        let topic = publish.topic_str();
        if !topic::valid_topic_name(topic) {
            return Err(Exit::ProtocolViolation("invalid topic name in PUBLISH"));
        }
        let allowed =
            check_publish(&self.ctx, &self.info, &mut self.acl_cache, topic) == Decision::Allow;
        if !allowed {
            tracing::debug!(client_id = %self.client_id, topic, "publish denied by ACL");
        }
        let route = match publish.qos {
            QoS::AtMostOnce => allowed,
            QoS::AtLeastOnce => {
                self.writer.queue(&Packet::Puback(publish.pkid));
                allowed
            }
            QoS::ExactlyOnce => match self.session.incoming_qos2(publish.pkid) {
                Some(is_new) => {
                    self.writer.queue(&Packet::Pubrec(publish.pkid));
                    is_new && allowed
                }
                None => {
                    tracing::warn!(client_id = %self.client_id, "too many QoS 2 messages awaiting PUBREL; dropped");
                    false
                }
            },
        };
        if route {
            let message = Message {
                topic: publish.topic,
                payload: publish.payload,
                qos: publish.qos,
                retain: publish.retain,
            };
            self.ctx
                .router
                .send(Request::Publish(Arc::new(message)))
                .await
                .map_err(|_| Exit::Shutdown)?;
        }
        Ok(())
    }

    async fn handle_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Exit> {
        let filters = subscribe
            .filters
            .into_iter()
            .map(|(filter, qos)| {
                let granted = if !topic::valid_topic_filter(&filter) {
                    None
                } else if self.ctx.acl.check(&self.info, Access::Subscribe, &filter) == Decision::Deny {
                    tracing::debug!(client_id = %self.client_id, %filter, "subscribe denied by ACL");
                    None
                } else {
                    Some(qos)
                };
                (filter, granted)
            })
            .collect();
        let request = Request::Subscribe {
            client_id: self.client_id.clone(),
            conn_id: self.conn_id,
            pkid: subscribe.pkid,
            filters,
        };
        self.ctx
            .router
            .send(request)
            .await
            .map_err(|_| Exit::Shutdown)
    }

    fn handle_outbound(&mut self, outbound: Outbound) -> Result<(), Exit> {
        match outbound {
            Outbound::Deliver(delivery) => {
                self.outbox.took_delivery();
                self.deliver(delivery);
            }
            Outbound::Subscribed { suback, retained } => {
                self.writer.queue(&Packet::Suback(suback));
                for delivery in retained {
                    self.deliver(delivery);
                }
            }
            Outbound::Unsubscribed(pkid) => self.writer.queue(&Packet::Unsuback(pkid)),
            Outbound::TakenOver => return Err(Exit::TakenOver),
        }
        Ok(())
    }

    fn deliver(&mut self, delivery: Delivery) {
        let mut dropped = false;
        if let Some(publish) = self.session.deliver(delivery, &mut dropped) {
            self.writer.queue(&Packet::Publish(publish));
        }
        if dropped {
            tracing::debug!(client_id = %self.client_id, "message queue full, oldest dropped");
        }
    }

    fn write_outgoing(&mut self, out: Vec<Outgoing>) {
        for outgoing in out {
            match outgoing {
                Outgoing::Publish(publish) => self.writer.queue(&Packet::Publish(publish)),
                Outgoing::Pubrel(pkid) => self.writer.queue(&Packet::Pubrel(pkid)),
            }
        }
    }
}

fn check_publish(ctx: &Context, info: &ClientInfo, cache: &mut AclCache, topic: &str) -> Decision {
    if !ctx.config.cache_acl {
        return ctx.acl.check(info, Access::Publish, topic);
    }
    if let Some(decision) = cache.get(topic) {
        return decision;
    }
    let decision = ctx.acl.check(info, Access::Publish, topic);
    cache.put(topic, decision);
    decision
}
