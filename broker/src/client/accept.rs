//! A connection's first steps: its CONNECT read, validated and authenticated (enhanced authentication
//! included), its session obtained from the router (and claimed in a cluster), its CONNACK sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use midge_shared::control as ctl;
use midge_shared::sys::ClientConnected;
use thin_vec::ThinVec;
use tokio::time::{timeout, timeout_at, Instant};

use crate::auth::acl::{AclCache, ClientInfo};
use crate::auth::enhanced::{Method, Step};
use crate::auth::Principal;
use crate::cluster::Claim;
use crate::context::Context;
use crate::ops::sys;
use crate::protocol::*;
use crate::router::subscriptions::FastMap;
use crate::router::{self, ClientMeta, ConnectOutcome};
use crate::session::ClientId;
use crate::transport::{self, ConnectionError, Established, ListenerStats, PacketReader, PacketWriter};

use super::{ClientConnection, V5};

/// Reads the CONNECT and answers it: the connection, accepted, or what it ended with.
pub(super) async fn accept_connect(
    established: Established,
    connect_by: Instant,
    listener: &Arc<ListenerStats>,
    ctx: Arc<Context>,
) -> Result<ClientConnection, Option<&'static str>> {
    let Established { stream, peer, certificate_username, rate_limit } = established;
    let (mut reader, mut writer) = transport::split(stream, ctx.config.max_packet_size, rate_limit);
    // Whatever ends a connection before CONNECT is logged once, with the peer: at debug what any open
    // port sees (scanners, health checks, dropped sockets), at info what a client got wrong.
    let first_packet = async {
        tokio::select! {
            read = timeout_at(connect_by, reader.read_connect()) => Some(read),
            _ = ctx.shutdown.cancelled() => None,
        }
    };
    // Shutdown before CONNECT: nothing to count.
    let first_packet = first_packet.await.ok_or(None)?;
    let (connect, size) = match first_packet {
        Ok(Ok((Packet::Connect(connect), size))) => (connect, size),
        Ok(Ok((other, size))) => {
            ctx.metrics.packet_received(&other, size);
            tracing::info!(%peer, packet = other.name(), "connection closed: first packet is not CONNECT");
            return Err(Some("protocol_error"));
        }
        Ok(Err(ConnectionError::Decode(DecodeError::NotConnect(first)))) => {
            tracing::info!(%peer, first = format_args!("{first:#04x}"), "connection closed: first packet is not CONNECT");
            return Err(Some("protocol_error"));
        }
        Ok(Err(ConnectionError::Decode(DecodeError::UnsupportedProtocol { name, level }))) => {
            tracing::info!(%peer, name = %name.escape_debug(), level, "connection refused: unsupported protocol");
            refuse(&ctx, &mut writer, ReasonCode::UnsupportedProtocolVersion).await;
            return Err(Some("protocol_error"));
        }
        Ok(Err(ConnectionError::Decode(e))) => {
            tracing::info!(%peer, error = %e, "connection closed: malformed CONNECT");
            return Err(Some("protocol_error"));
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection closed before CONNECT");
            return Err(Some("closed"));
        }
        Err(_) => {
            tracing::debug!(%peer, "connection closed: no CONNECT in time");
            return Err(Some("connect_timeout"));
        }
    };
    // Everything after CONNECT is read and written as its protocol level says.
    reader.set_level(connect.protocol);
    writer.set_level(connect.protocol);
    reader.release_if_drained();
    let mut connect = connect;
    if let Some(username) = certificate_username {
        connect.username = username;
    }
    accept(connect, size, peer, listener, &ctx, reader, writer).await
}

/// Refuses a CONNECT with a CONNACK that says why (as its level can) and closes.
async fn refuse(ctx: &Context, writer: &mut PacketWriter, reason: impl Into<ReasonCode>) {
    let connack = Packet::Connack(Connack::refused(reason));
    let size = writer.queue(&connack);
    ctx.metrics.packet_sent(&connack, size);
    let _ = timeout(Duration::from_secs(1), writer.flush()).await;
    writer.shutdown().await;
}

/// Validates and authenticates a CONNECT (`size` bytes on the wire), obtains the session from the
/// router and sends CONNACK.
async fn accept(
    mut connect: Connect,
    size: usize,
    peer: SocketAddr,
    listener: &Arc<ListenerStats>,
    ctx: &Arc<Context>,
    mut reader: PacketReader,
    mut writer: PacketWriter,
) -> Result<ClientConnection, Option<&'static str>> {
    let v5 = connect.protocol == Protocol::V5;
    let method = connect.properties.authentication_method.clone().filter(|_| v5);
    // MQTT 5's enhanced authentication, if the client names a method, instead of the password checks.
    let (principal, authenticated) = match method {
        None => (ctx.auth.authenticate(&connect, peer.ip(), ctx.settings.allow_anonymous()).await, None),
        Some(name) => {
            ctx.metrics.connect_received(size);
            let Some(method) = ctx.auth.methods.find(&name) else {
                tracing::info!(%peer, method = %name.escape_debug(), "connection refused: unknown authentication method");
                refuse(ctx, &mut writer, ReasonCode::BadAuthenticationMethod).await;
                return Err(Some("refused"));
            };
            match Box::pin(authenticate_enhanced(ctx, &*method, &connect, &mut reader, &mut writer)).await {
                Ok((username, data)) => {
                    if username.is_some() {
                        connect.username = username;
                    }
                    (Ok(Principal::Client), Some((name, data)))
                }
                Err(reason) => {
                    tracing::info!(%peer, method = %name.escape_debug(), "connection refused: {reason:?}");
                    refuse(ctx, &mut writer, reason).await;
                    return Err(Some("refused"));
                }
            }
        }
    };
    // The management connection's traffic counts in no metric: users see their own traffic only.
    if principal != Ok(Principal::Management) && authenticated.is_none() {
        ctx.metrics.connect_received(size);
    }
    let mut assigned = false;
    if connect.client_id.is_empty() {
        // 3.1 requires an id; 3.1.1 lets a clean session have one assigned, 5.0 any session.
        if connect.protocol == Protocol::V31 || (!connect.clean_session && !v5) {
            refuse(ctx, &mut writer, ConnectReturnCode::IdentifierRejected).await;
            return Err(Some("refused"));
        }
        connect.client_id = format!("midge-{:016x}", rand::random::<u64>());
        assigned = true;
    }
    if connect.client_id.len() > ctx.config.max_clientid_len {
        refuse(ctx, &mut writer, ConnectReturnCode::IdentifierRejected).await;
        return Err(Some("refused"));
    }
    let client_id = connect.client_id.escape_debug();
    if let Some(will) = &connect.will {
        if !topic::valid_topic_name(&will.topic) {
            tracing::info!(%peer, %client_id, "connection closed: invalid will topic");
            return Err(Some("protocol_error"));
        }
    }
    let principal = match principal {
        Ok(principal) => principal,
        Err(code) => {
            // The username is not logged: it may be a password typed in the wrong field.
            tracing::info!(%peer, %client_id, "connection refused: {code:?}");
            refuse(ctx, &mut writer, code).await;
            return Err(Some("refused"));
        }
    };
    if ctl::is_management_client_id(&connect.client_id) != (principal == Principal::Management) {
        // The management namespace is the sidecar's alone, and the sidecar stays in it: nobody else can
        // take its session over, and its connection is known by its id (and hidden from users).
        tracing::warn!(%peer, %client_id, "connection refused: client id outside its principal's namespace");
        refuse(ctx, &mut writer, ConnectReturnCode::IdentifierRejected).await;
        return Err(Some("refused"));
    }
    if connect.will.as_ref().is_some_and(|will| topic::broker_owned(&will.topic)) {
        // A will is published when the broker drops the client; it must not be a way into $SYS or
        // the control channel.
        tracing::warn!(%peer, %client_id, "will on a broker-owned topic refused");
        refuse(ctx, &mut writer, ConnectReturnCode::NotAuthorized).await;
        return Err(Some("refused"));
    }

    let client_id: ClientId = Arc::from(connect.client_id.as_str());
    let conn_id = ctx.next_conn_id();
    let (outbox, outbox_rx) = router::outbox(conn_id);
    let expiry = session_expiry(&connect, ctx);
    let persistent = expiry != Some(Duration::ZERO) && principal != Principal::Management;
    if persistent && ctx.durable.as_ref().is_some_and(|durable| durable.failed()) {
        // Nothing it is sent could be kept: better refused, clearly, than kept in name only.
        tracing::warn!(%peer, client_id = %connect.client_id.escape_debug(), "persistent session refused: the store cannot write");
        refuse(ctx, &mut writer, ReasonCode::QuotaExceeded).await;
        return Err(Some("refused"));
    }
    // In a cluster the client id is this node's before the session is looked for: whichever node had
    // it ends its connection there. A persistent session must be found where it is, so without the
    // registry it is refused; a clean one starts here regardless.
    let claim = if principal == Principal::Management {
        Claim::default()
    } else {
        let resume = persistent && !connect.clean_session;
        match Box::pin(ctx.cluster.claim(&client_id, resume, &ctx.router)).await {
            Ok(claim) => claim,
            Err(error) if persistent && ctx.config.cluster_outage == crate::config::ClusterOutage::Refuse => {
                tracing::warn!(%peer, client_id = %client_id.escape_debug(), %error, "persistent session refused: the cluster's registry cannot be reached");
                refuse(ctx, &mut writer, ConnectReturnCode::ServerUnavailable).await;
                return Err(Some("refused"));
            }
            Err(error) => {
                tracing::debug!(%peer, client_id = %client_id.escape_debug(), %error, "client id not claimed cluster-wide");
                Claim::default()
            }
        }
    };
    // MQTT 5 lets the server choose the keep-alive (and says so in CONNACK).
    if v5 && ctx.config.server_keepalive > 0 {
        connect.keep_alive = ctx.config.server_keepalive;
    }
    let meta = ClientMeta {
        username: connect.username.clone().map(Into::into),
        peer: peer.into(),
        clean_session: connect.clean_session,
        expiry,
        proto_ver: connect.protocol.level(),
        keepalive: connect.keep_alive,
        connected_at: crate::store::now_wall_ms() as i64,
        hidden: principal == Principal::Management,
    };
    let outcome = ctx.router.connect(client_id.clone(), meta, outbox);
    // No router means the broker is stopping.
    let (session, present) = match outcome.await.map_err(|_| None)? {
        ConnectOutcome::Accepted { session, present } => (session, present),
        ConnectOutcome::Superseded => return Err(Some("discarded")),
    };
    if !ctx.cluster.holds(&client_id, claim) {
        // Another node took the id while this connect was under way: it ends as taken over.
        ctx.router.taken_over_elsewhere(&client_id);
    }
    tracing::debug!(%peer, client_id = %client_id.escape_debug(), clean = connect.clean_session, present, "connected");

    let mut session = session;
    let v5_state = v5.then(|| {
        session.set_receive_maximum(Some(connect.properties.receive_maximum.unwrap_or(u16::MAX)));
        let alias_out_max = ctx.config.max_topic_alias_out.min(connect.properties.topic_alias_maximum.unwrap_or(0));
        Box::new(V5 {
            aliases: FastMap::default(),
            aliases_out: FastMap::default(),
            alias_out_max,
            max_packet_size: connect.properties.maximum_packet_size,
            expiry_was_zero: expiry == Some(Duration::ZERO),
        })
    });
    let mut conn = ClientConnection {
        ctx: ctx.clone(),
        v5: v5_state,
        info: ClientInfo { client_id, username: connect.username, ip: peer.ip() },
        principal,
        conn_id,
        keep_alive: connect.keep_alive,
        will: connect.will.map(Box::new),
        session,
        acl_cache: AclCache::new(ctx.config.acl_cache_max_size, Duration::from_secs(ctx.config.acl_cache_ttl)),
        reader,
        writer,
        outbox: outbox_rx,
        last_received: Instant::now(),
        publishes: ThinVec::new(),
        durable: 0,
        control_jobs: ThinVec::new(),
        batch: VecDeque::new(),
        stalled: None,
        acks: 0,
        routes_added: false,
        claim,
        counted: None,
        slot: None,
        active: false,
    };
    if !conn.hidden() {
        conn.counted = Some(listener.client_connected());
    }
    conn.allow_direct_writes();
    // 3.1 has no session-present flag.
    let session_present = present && connect.protocol != Protocol::V31;
    let mut connack = Connack::accepted(session_present);
    if v5 {
        let assigned = assigned.then(|| conn.info.client_id.to_string());
        let mut properties = connack_properties(ctx, &connect.properties, assigned);
        if let Some((method, data)) = authenticated {
            properties.authentication_method = Some(method);
            properties.authentication_data = data;
        }
        connack.properties = Box::new(properties);
    }
    conn.send(&Packet::Connack(connack));
    if let (true, Some(will)) = (ctx.cluster.is_clustered(), conn.will.clone()) {
        // Should this node die, another fires it.
        if let Some(message) = conn.will_message(&will) {
            ctx.cluster.keep_will(
                &conn.info.client_id,
                conn.conn_id,
                &message,
                Duration::from_secs(will.delay_interval.into()),
            );
        }
    }
    if ctx.plugins.presence_enabled() && !conn.hidden() {
        let event = ClientConnected {
            clientid: conn.info.client_id.to_string(),
            username: conn.username(),
            ipaddress: peer.ip().to_string(),
            clean_sess: connect.clean_session,
            protocol: connect.protocol.level(),
            connack: 0,
            ts: chrono::Utc::now().timestamp(),
        };
        ctx.router.publish(sys::connected_event(&ctx.config.node, &event));
    }
    let mut resend = Vec::new();
    conn.session.resume(&mut resend);
    conn.write_outgoing(resend);
    Ok(conn)
}

/// Runs an enhanced authentication exchange (MQTT 5 §4.12) before CONNACK: the method's challenges go
/// out in AUTH packets (0x18) and the client's answers come back in AUTH packets, all within the
/// connect timeout. The username the method names, if any, and the data for the CONNACK; or the reason
/// to refuse.
async fn authenticate_enhanced(
    ctx: &Context,
    method: &dyn Method,
    connect: &Connect,
    reader: &mut PacketReader,
    writer: &mut PacketWriter,
) -> Result<(Option<String>, Option<Bytes>), ReasonCode> {
    let deadline = Instant::now() + Duration::from_secs(ctx.config.connect_timeout);
    let mut exchange = method.start();
    let mut data = connect.properties.authentication_data.clone();
    loop {
        let challenge = match exchange.step(data.as_deref()) {
            Step::Done { username, data } => return Ok((username, data)),
            Step::Refused => return Err(ReasonCode::NotAuthorized),
            Step::Continue(challenge) => challenge,
        };
        let auth = Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            authentication_method: Some(method.name().to_string()),
            authentication_data: Some(challenge),
            reason_string: None,
        });
        let size = writer.queue(&auth);
        ctx.metrics.packet_sent(&auth, size);
        writer.flush().await.map_err(|_| ReasonCode::UnspecifiedError)?;
        let answer = timeout_at(deadline, reader.read_packet()).await.map_err(|_| ReasonCode::NotAuthorized)?;
        match answer {
            Ok((Packet::Auth(auth), size)) => {
                ctx.metrics.packet_received(&Packet::Auth(auth.clone()), size);
                let same_method = auth.authentication_method.as_deref() == Some(method.name());
                if auth.reason != ReasonCode::ContinueAuthentication || !same_method {
                    return Err(ReasonCode::ProtocolError);
                }
                data = auth.authentication_data;
            }
            Ok(_) => return Err(ReasonCode::ProtocolError),
            Err(ConnectionError::Decode(e)) => return Err(e.reason_code()),
            Err(_) => return Err(ReasonCode::UnspecifiedError),
        }
    }
}

/// How long a session outlives its connection: MQTT 5 says so in CONNECT (0 by default, `u32::MAX`
/// for ever); 3.1/3.1.1 has the broker's interval for a persistent session.
fn session_expiry(connect: &Connect, ctx: &Context) -> Option<Duration> {
    if connect.protocol != Protocol::V5 {
        return if connect.clean_session { Some(Duration::ZERO) } else { ctx.config.session_expiry() };
    }
    expiry_interval(connect.properties.session_expiry_interval.unwrap_or(0))
}

pub(super) fn expiry_interval(secs: u32) -> Option<Duration> {
    (secs != u32::MAX).then(|| Duration::from_secs(secs.into()))
}

/// What an MQTT 5 client is told of the broker's limits in its CONNACK.
fn connack_properties(
    ctx: &Context,
    asked_by: &ConnectProperties,
    assigned_client_identifier: Option<String>,
) -> ConnackProperties {
    let config = &ctx.config;
    let asked = asked_by.request_response_information == Some(true);
    ConnackProperties {
        assigned_client_identifier,
        server_keep_alive: (config.server_keepalive > 0).then_some(config.server_keepalive),
        response_information: (asked && !config.response_information.is_empty())
            .then(|| config.response_information.clone()),
        topic_alias_maximum: (config.max_topic_alias > 0).then_some(config.max_topic_alias),
        // Only QoS 2 messages stay in flight from the client (QoS 1 is acknowledged at once), as many
        // as may await their PUBREL.
        receive_maximum: (config.max_awaiting_rel > 0).then(|| config.max_awaiting_rel.min(u16::MAX.into()) as u16),
        maximum_packet_size: u32::try_from(config.max_packet_size).ok(),
        ..ConnackProperties::default()
    }
}
