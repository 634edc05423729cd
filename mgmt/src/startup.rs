//! Builds the sidecar: database (migrated, seeded), the broker link, the Rocket application and the HTTP
//! listener, bound and ready to serve.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use midge_shared::control::MIN_SECRET_LEN;
use rocket::fairing::AdHoc;
use rocket::local::asynchronous::Client;
use rocket::{catchers, routes, Build, Rocket};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dashboard::{self, Dashboard};
use crate::desired::Desired;
use crate::history::{self, History};
use crate::link::Link;
use crate::passwords::Passwords;
use crate::request_metrics::{self, RequestMetrics};
use crate::{api, auth, db, error, http, App};
use midge_passwords::Limits;

/// The sidecar, bound to its port (0 picks one), not yet serving.
pub struct Sidecar {
    listener: TcpListener,
    /// The dashboard's own port, while `emq_dashboard` is on.
    dashboard_listener: Option<TcpListener>,
    app: Arc<Client>,
    limits: http::Limits,
}

impl Sidecar {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.dashboard_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(listen = %self.local_addr()?, "midge-mgmt listening");
        let state = self.app.rocket().state::<App>().context("the application has its state")?;
        let link = Arc::downgrade(&state.link);
        tokio::spawn(history::record(state.history.clone(), link.clone(), shutdown.clone()));
        tokio::spawn(dashboard::follow(state.dashboard.clone(), link, shutdown.clone()));
        let dashboard = self.dashboard_listener.map(|listener| {
            let (app, dashboard) = (self.app.clone(), state.dashboard.clone());
            tokio::spawn(dashboard::serve(listener, app, self.limits, dashboard, shutdown.clone()))
        });
        http::serve(self.listener, self.app.clone(), self.limits, shutdown).await;
        if let Some(dashboard) = dashboard {
            let _ = dashboard.await;
        }
        Ok(())
    }
}

/// Everything: the application, and the listener bound.
pub async fn build(config: Config) -> anyhow::Result<Sidecar> {
    let limits = http::Limits {
        request_timeout: Duration::from_millis(config.http_request_timeout_ms),
        max_connections: config.http_max_connections,
        max_body: MAX_BODY,
    };
    let rocket = application(config.clone()).await?;
    let app = Client::untracked(rocket).await.context("cannot start the application")?;
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let dashboard_listener = match config.dashboard_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot open the dashboard's port {addr} (--dashboard-listen off disables it)")
        })?),
        None => None,
    };
    Ok(Sidecar { listener, dashboard_listener, app: Arc::new(app), limits })
}

/// The largest request body: larger ones get 413 with the API's JSON envelope.
const MAX_BODY: usize = 1024 * 1024;

/// The Rocket application: routes, catchers and the state they share.
async fn application(config: Config) -> anyhow::Result<Rocket<Build>> {
    check_secret(config.mgmt_secret.as_deref())?;
    let db = db::open(&config.db).await.with_context(|| format!("cannot open database {}", config.db.display()))?;
    let passwords = Passwords::new(Limits { burst: config.auth_fail_burst });
    seed_admin(&db, &passwords, config.admin_password.clone()).await?;
    let (link, appeared) = Link::start(&config).map_err(anyhow::Error::msg)?;
    let desired = Desired::start(db.clone(), link.clone(), appeared);
    let figment = rocket::Config::figment()
        .merge(("address", config.listen.ip()))
        .merge(("port", config.listen.port()))
        .merge(("ident", "midge-mgmt"))
        .merge(("log_level", "off"))
        .merge(("cli_colors", false))
        // The client's address is the socket's: a client-sent X-Real-IP must not choose the source that
        // failed logins are throttled by.
        .merge(("ip_header", false))
        .merge(("limits.string", MAX_BODY));
    let requests = Arc::new(RequestMetrics::default());
    let dashboard = Arc::new(Dashboard::default());
    let history = Arc::new(History::new(config.history_interval()));
    Ok(rocket::custom(figment)
        .manage(App { db, link, desired, passwords, dashboard: dashboard.clone(), history })
        .manage(dashboard)
        .manage(requests.clone())
        .attach(request_metrics::Recorder(requests))
        .mount("/api/v2", api::routes())
        .mount("/", routes![api::status, crate::prometheus::metrics])
        .mount("/", dashboard::routes())
        .mount("/", api::docs_routes())
        .register("/", catchers![auth::unauthorized, error::catch_all])
        .attach(AdHoc::on_response("log", |request, response| {
            Box::pin(async move {
                // Method, path and status only: never headers, which carry credentials.
                tracing::debug!(method = %request.method(), path = %request.uri().path(), status = %response.status(), "request");
            })
        })))
}

/// The sidecar exists to use the control channel, so without a usable secret it does not start: an empty or
/// short one is what the broker refuses too (it closes the channel rather than open it to guessers).
fn check_secret(secret: Option<&str>) -> anyhow::Result<()> {
    match secret {
        None => anyhow::bail!(
            "MIDGE_MGMT_SECRET (--mgmt-secret) is not set; set the same secret for the broker and the sidecar"
        ),
        Some(secret) if secret.len() < MIN_SECRET_LEN => anyhow::bail!(
            "MIDGE_MGMT_SECRET (--mgmt-secret) is shorter than {MIN_SECRET_LEN} bytes: no control channel; \
             use a long random string, e.g. `openssl rand -hex 24`, for the broker and the sidecar alike"
        ),
        Some(_) => Ok(()),
    }
}

/// Creates `admin` on first start, so a fresh install can be logged into.
async fn seed_admin(db: &db::Db, passwords: &Passwords, password: Option<String>) -> anyhow::Result<()> {
    if db::user_count(db).await? > 0 {
        return Ok(());
    }
    let password = match password {
        Some(p) if !p.is_empty() => p,
        _ => {
            tracing::warn!("created admin user with the default password; change it (PUT /api/v2/change_pwd/admin)");
            "public".to_string()
        }
    };
    let hash = passwords.hash(&password).await.map_err(|e| anyhow::anyhow!(e.message))?;
    db::insert_user(db, "admin", &hash, "administrator").await?;
    Ok(())
}
