//! Builds the sidecar: database (migrated, seeded), the broker link, and the Rocket application.

use std::net::SocketAddr;

use anyhow::Context as _;
use midge_shared::control::MIN_SECRET_LEN;
use rocket::fairing::AdHoc;
use rocket::{catchers, routes, Build, Rocket};

use crate::config::Config;
use crate::desired::Desired;
use crate::link::Link;
use crate::passwords::Passwords;
use crate::{api, auth, db, App};
use midge_passwords::Limits;

/// Everything up to the HTTP listener: ready to `launch()`.
pub async fn build(config: Config) -> anyhow::Result<Rocket<Build>> {
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
        .merge(("limits.string", 1024 * 1024));
    Ok(rocket::custom(figment)
        .manage(App { db, link, desired, passwords })
        .mount("/api/v2", api::routes())
        .mount("/", routes![api::status])
        .register("/", catchers![auth::unauthorized, auth::not_found, auth::unavailable])
        .attach(AdHoc::on_response("log", |request, response| {
            Box::pin(async move {
                // Method, path and status only: never headers, which carry credentials.
                tracing::debug!(method = %request.method(), path = %request.uri().path(), status = %response.status(), "request");
            })
        }))
        .attach(AdHoc::on_liftoff("announce", |rocket| {
            Box::pin(async move {
                let config = rocket.config();
                let addr = SocketAddr::new(config.address, config.port);
                tracing::info!(listen = %addr, "midge-mgmt listening");
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
