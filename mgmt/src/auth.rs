//! HTTP Basic auth against the admin users: a request guard, and the 401 that goes with it.

use base64::Engine;
use rocket::http::{Header, Status};
use rocket::outcome::Outcome;
use rocket::request::{self, FromRequest, Request};
use rocket::State;

use crate::{db, passwords, App};

/// An authenticated admin user. Routes that take this need Basic auth.
pub struct Admin {
    #[allow(dead_code)]
    pub username: String,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Admin {
    type Error = ();

    async fn from_request(request: &'r Request<'_>) -> request::Outcome<Self, ()> {
        let Some((username, password)) = request.headers().get_one("Authorization").and_then(basic_credentials) else {
            return Outcome::Error((Status::Unauthorized, ()));
        };
        let app = match request.guard::<&State<App>>().await {
            Outcome::Success(app) => app,
            _ => return Outcome::Error((Status::InternalServerError, ())),
        };
        if app.verified.recently_verified(&username, &password) {
            return Outcome::Success(Admin { username });
        }
        let stored = match db::user(&app.db, &username).await {
            Ok(user) => user.map(|u| u.password_hash),
            Err(e) => {
                tracing::error!(error = %e, "cannot read admin users");
                return Outcome::Error((Status::InternalServerError, ()));
            }
        };
        if passwords::verify(stored, password.clone()).await {
            app.verified.remember(&username, &password);
            Outcome::Success(Admin { username })
        } else {
            Outcome::Error((Status::Unauthorized, ()))
        }
    }
}

fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[derive(rocket::Responder)]
#[response(status = 401, content_type = "json")]
pub struct Unauthorized {
    body: &'static str,
    challenge: Header<'static>,
}

#[rocket::catch(401)]
pub fn unauthorized() -> Unauthorized {
    Unauthorized {
        body: r#"{"code":401,"message":"unauthorized"}"#,
        challenge: Header::new("WWW-Authenticate", "Basic realm=\"emqx control center\""),
    }
}

#[rocket::catch(404)]
pub fn not_found() -> (Status, &'static str) {
    (Status::NotFound, r#"{"code":404,"message":"not found"}"#)
}
