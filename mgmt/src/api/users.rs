//! Admin users of the API, stored in SQLite with argon2id hashes.

use rocket::{delete, get, post, put, routes, Route, State};

use std::net::{IpAddr, Ipv4Addr};

use super::docs::{Credentials, NewUser, Nothing, PasswordChange, Reply, UserChange, UserRow};
use crate::auth::Admin;
use crate::body::Body;
use crate::db;
use crate::error::{code, done, ok, ApiError, ApiResult};
use crate::passwords::Login;
use crate::App;

pub fn routes() -> Vec<Route> {
    routes![list, get_user, create, update, remove, authenticate, change_password]
}

/// The user that cannot be deleted.
const ADMIN: &str = "admin";

#[utoipa::path(get, path = "/users", tag = "users", responses((status = 200, description = "Every admin user", body = Reply<Vec<UserRow>>)))]
#[get("/users")]
async fn list(_admin: Admin, app: &State<App>) -> ApiResult {
    let users = db::users(&app.db).await?;
    done(users.into_iter().map(|u| UserRow { username: u.username, tags: u.tags }).collect::<Vec<_>>())
}

#[utoipa::path(get, path = "/users/{username}", tag = "users", params(("username" = String, Path, description = "An admin user")), responses((status = 200, description = "The user; 105 if there is none", body = Reply<UserRow>)))]
#[get("/users/<username>")]
async fn get_user(_admin: Admin, app: &State<App>, username: &str) -> ApiResult {
    let user = db::user(&app.db, username).await?.ok_or_else(no_such_user)?;
    done(UserRow { username: user.username, tags: user.tags })
}

fn no_such_user() -> ApiError {
    ApiError::new(code::NO_SUCH_USER, "user does not exist")
}

/// The longest username, in bytes.
const MAX_USERNAME: usize = 256;

/// A username Basic auth can carry (no `:`) and logs can show (no control characters), of sane length.
fn valid_username(username: String) -> Result<String, ApiError> {
    let username = non_empty(username)?;
    if username.len() > MAX_USERNAME || username.contains(':') || username.chars().any(char::is_control) {
        return Err(ApiError::new(
            code::WRONG_TYPE,
            format!("username must be at most {MAX_USERNAME} bytes, without ':' or control characters"),
        ));
    }
    Ok(username)
}

fn non_empty(value: String) -> Result<String, ApiError> {
    if value.is_empty() {
        Err(ApiError::new(code::EMPTY_CREDENTIALS, "username and password must not be empty"))
    } else {
        Ok(value)
    }
}

#[utoipa::path(post, path = "/users", tag = "users", request_body = NewUser, responses((status = 200, description = "Created; 104 empty username or password, 113 exists", body = Reply<Nothing>)))]
#[post("/users", data = "<body>")]
async fn create(_admin: Admin, app: &State<App>, body: String) -> ApiResult {
    let body = Body::parse(&body)?;
    let username = valid_username(body.string("username")?)?;
    let password = non_empty(body.string("password")?)?;
    let tags = body.opt_string("tags")?.unwrap_or_default();
    if db::user(&app.db, &username).await?.is_some() {
        return Err(ApiError::new(code::USER_EXISTS, "user already exists"));
    }
    let hash = app.passwords.hash(&password).await?;
    if !db::insert_user(&app.db, &username, &hash, &tags).await? {
        return Err(ApiError::new(code::USER_EXISTS, "user already exists"));
    }
    tracing::info!(username = %username.escape_debug(), "admin user created");
    ok()
}

/// Changes a user's tags, password, or both (a password given here is never ignored).
#[utoipa::path(put, path = "/users/{username}", tag = "users", params(("username" = String, Path, description = "An admin user")), request_body = UserChange, responses((status = 200, description = "Changed; 105 no such user", body = Reply<Nothing>)))]
#[put("/users/<username>", data = "<body>")]
async fn update(_admin: Admin, app: &State<App>, username: &str, body: String) -> ApiResult {
    let body = Body::parse(&body)?;
    let tags = body.opt_string("tags")?;
    let password = body.opt_string("password")?.map(non_empty).transpose()?;
    if tags.is_none() && password.is_none() {
        return Err(ApiError::new(code::MISSING_PARAMETER, "missing parameter tags (or password)"));
    }
    if db::user(&app.db, username).await?.is_none() {
        return Err(no_such_user());
    }
    if let Some(password) = password {
        let hash = app.passwords.hash(&password).await?;
        if !db::set_password(&app.db, username, &hash).await? {
            return Err(no_such_user());
        }
        app.passwords.forget(username);
        tracing::info!(username = %username.escape_debug(), "admin password changed");
    }
    if let Some(tags) = tags {
        if !db::set_tags(&app.db, username, &tags).await? {
            return Err(no_such_user());
        }
    }
    ok()
}

#[utoipa::path(delete, path = "/users/{username}", tag = "users", params(("username" = String, Path, description = "An admin user")), responses((status = 200, description = "Deleted; 105 no such user, 106 for admin", body = Reply<Nothing>)))]
#[delete("/users/<username>")]
async fn remove(_admin: Admin, app: &State<App>, username: &str) -> ApiResult {
    if username == ADMIN {
        return Err(ApiError::new(code::ADMIN_UNDELETABLE, "admin cannot be deleted"));
    }
    if !db::delete_user(&app.db, username).await? {
        return Err(no_such_user());
    }
    app.passwords.forget(username);
    tracing::info!(username = %username.escape_debug(), "admin user deleted");
    ok()
}

/// Checks a username and password; needs no Basic auth (and is throttled as Basic auth is).
#[utoipa::path(post, path = "/auth", tag = "users", summary = "Check a username and password (no Basic auth)", request_body = Credentials, responses((status = 200, description = "Accepted; 103 wrong username or password (throttled like Basic auth)", body = Reply<Nothing>)), security(()))]
#[post("/auth", data = "<body>")]
async fn authenticate(app: &State<App>, source: Option<IpAddr>, body: String) -> ApiResult {
    let body = Body::parse(&body)?;
    let username = non_empty(body.string("username")?)?;
    let password = non_empty(body.string("password")?)?;
    let source = source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    match app.passwords.login(&app.db, source, &username, &password).await? {
        Login::Accepted => ok(),
        Login::Refused | Login::Throttled => Err(ApiError::new(code::WRONG_CREDENTIALS, "wrong username or password")),
        Login::Busy => Err(ApiError::new(code::UNKNOWN, "too many logins being checked; try again")),
    }
}

#[utoipa::path(put, path = "/change_pwd/{username}", tag = "users", params(("username" = String, Path, description = "An admin user")), request_body = PasswordChange, responses((status = 200, description = "Changed; 105 no such user, 114 old password wrong", body = Reply<Nothing>)))]
#[put("/change_pwd/<username>", data = "<body>")]
async fn change_password(_admin: Admin, app: &State<App>, username: &str, body: String) -> ApiResult {
    let body = Body::parse(&body)?;
    let old = body.string("old_pwd")?;
    let new = non_empty(body.string("new_pwd")?)?;
    let user = db::user(&app.db, username).await?.ok_or_else(no_such_user)?;
    if !app.passwords.matches(&user.password_hash, &old).await? {
        return Err(ApiError::new(code::OLD_PASSWORD_WRONG, "old password is wrong"));
    }
    let hash = app.passwords.hash(&new).await?;
    if !db::set_password(&app.db, username, &hash).await? {
        return Err(no_such_user());
    }
    app.passwords.forget(username);
    ok()
}
