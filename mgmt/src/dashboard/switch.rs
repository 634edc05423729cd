//! Whether the dashboard is on, following the `emq_dashboard` plugin on the nodes, and its own port
//! opened and closed to match.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use midge_shared::control::Request;
use rocket::local::asynchronous::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http;
use crate::link::Link;

pub const PLUGIN: &str = "emq_dashboard";

/// How often the nodes are asked, to follow a switch made elsewhere (another sidecar, a node restored
/// with its stored state); a switch through this sidecar's API applies at once.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

pub struct Dashboard {
    active: watch::Sender<bool>,
}

impl Default for Dashboard {
    /// On, as the plugin is by default, until a node says otherwise.
    fn default() -> Self {
        Dashboard { active: watch::Sender::new(true) }
    }
}

impl Dashboard {
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    fn set(&self, active: bool) {
        self.active.send_if_modified(|current| std::mem::replace(current, active) != active);
    }

    /// Asks the answering nodes: on while any of them has the plugin on. With no node answering, the
    /// dashboard stays as it was (an operator needs it most when the broker is in trouble).
    pub async fn refresh(&self, link: &Link) {
        let Ok(nodes) = link.answering() else { return };
        let mut answered = false;
        let mut active = false;
        for node in nodes {
            if let Ok(plugins) = link.call(&node, Request::list_plugins()).await {
                answered = true;
                active |= plugins.iter().any(|p| p.name == PLUGIN && p.active);
            }
        }
        if answered {
            self.set(active);
        }
    }
}

/// Keeps `dashboard` in step with the nodes until the link goes away.
pub async fn follow(dashboard: Arc<Dashboard>, link: std::sync::Weak<Link>, shutdown: CancellationToken) {
    crate::link::every(link, FOLLOW_EVERY, shutdown, move |link| {
        let dashboard = dashboard.clone();
        Box::pin(async move { dashboard.refresh(&link).await })
    })
    .await;
}

/// Serves the application on the dashboard's own port while the dashboard is on; closes the port while
/// it is off, and binds the same address again when it comes back on.
pub async fn serve(
    listener: TcpListener,
    app: Arc<Client>,
    limits: http::Limits,
    dashboard: Arc<Dashboard>,
    shutdown: CancellationToken,
) {
    let Ok(addr) = listener.local_addr() else { return };
    let mut active = dashboard.active.subscribe();
    let mut bound = Some(listener);
    loop {
        let on = *active.borrow_and_update();
        if on {
            if let Some(listener) = take_or_bind(&mut bound, addr).await {
                tracing::info!(listen = %addr, "dashboard listening");
                let stop = shutdown.child_token();
                let serving = tokio::spawn(http::serve(listener, app.clone(), limits, stop.clone()));
                let changed = wait_for_change(&mut active, &shutdown).await;
                stop.cancel();
                let _ = serving.await;
                if !changed {
                    return;
                }
                tracing::info!(listen = %addr, "dashboard stopped: emq_dashboard is off");
                continue;
            }
        }
        bound = None;
        if !wait_for_change(&mut active, &shutdown).await {
            return;
        }
    }
}

async fn take_or_bind(bound: &mut Option<TcpListener>, addr: SocketAddr) -> Option<TcpListener> {
    if let Some(listener) = bound.take() {
        return Some(listener);
    }
    match TcpListener::bind(addr).await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::error!(listen = %addr, error = %e, "cannot open the dashboard's port");
            None
        }
    }
}

/// False once the sidecar is stopping.
async fn wait_for_change(active: &mut watch::Receiver<bool>, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        changed = active.changed() => changed.is_ok(),
    }
}
