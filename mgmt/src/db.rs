//! SQLite: admin users, hot-config overrides, plugin configs and plugin states. The sidecar is the source
//! of truth for these; brokers get them pushed (see `link.rs`).

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::SqlitePool;

pub type Db = SqlitePool;

/// Opens (creating if needed) the database and brings its schema up to date.
pub async fn open(path: &Path) -> Result<Db, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        // WAL: a crash loses nothing that was committed, and readers do not block the writer.
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
    sqlx::migrate!("../migrations").run(&pool).await?;
    Ok(pool)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AdminUser {
    pub username: String,
    pub password_hash: String,
    pub tags: String,
}

pub async fn users(db: &Db) -> Result<Vec<AdminUser>, sqlx::Error> {
    sqlx::query_as("SELECT username, password_hash, tags FROM admin_users ORDER BY username").fetch_all(db).await
}

pub async fn user(db: &Db, username: &str) -> Result<Option<AdminUser>, sqlx::Error> {
    sqlx::query_as("SELECT username, password_hash, tags FROM admin_users WHERE username = ?")
        .bind(username)
        .fetch_optional(db)
        .await
}

/// Inserts a user; false if the name is taken.
pub async fn insert_user(db: &Db, username: &str, password_hash: &str, tags: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO admin_users (username, password_hash, tags, created_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT(username) DO NOTHING",
    )
    .bind(username)
    .bind(password_hash)
    .bind(tags)
    .bind(chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Returns false if there is no such user.
pub async fn set_tags(db: &Db, username: &str, tags: &str) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE admin_users SET tags = ? WHERE username = ?").bind(tags).bind(username).execute(db).await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_password(db: &Db, username: &str, password_hash: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE admin_users SET password_hash = ? WHERE username = ?")
        .bind(password_hash)
        .bind(username)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_user(db: &Db, username: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM admin_users WHERE username = ?").bind(username).execute(db).await?;
    Ok(done.rows_affected() == 1)
}

pub async fn user_count(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM admin_users").fetch_one(db).await
}

/// Node `*` stands for every node.
pub const ALL_NODES: &str = "*";

pub async fn save_config(db: &Db, node: &str, app: &str, key: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO config_overrides (node, app, key, value, updated_at) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT(node, app, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(node)
    .bind(app)
    .bind(key)
    .bind(value)
    .bind(chrono::Local::now().to_rfc3339())
    .execute(db)
    .await?;
    Ok(())
}

/// The overrides that apply to `node`, oldest first, so later changes win when replayed.
pub async fn configs_for(db: &Db, node: &str) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT app, key, value FROM config_overrides WHERE node = ? OR node = ? ORDER BY updated_at, node")
        .bind(ALL_NODES)
        .bind(node)
        .fetch_all(db)
        .await
}

pub async fn save_plugin_config(
    db: &Db,
    node: &str,
    plugin: &str,
    values: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM plugin_configs WHERE node = ? AND plugin = ?")
        .bind(node)
        .bind(plugin)
        .execute(&mut *tx)
        .await?;
    for (key, value) in values {
        sqlx::query("INSERT INTO plugin_configs (node, plugin, key, value) VALUES (?, ?, ?, ?)")
            .bind(node)
            .bind(plugin)
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// `(plugin, key, value)` rows stored for `node`.
pub async fn plugin_configs_for(db: &Db, node: &str) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT plugin, key, value FROM plugin_configs WHERE node = ? ORDER BY plugin, key")
        .bind(node)
        .fetch_all(db)
        .await
}

pub async fn save_plugin_state(db: &Db, node: &str, plugin: &str, active: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plugin_states (node, plugin, active) VALUES (?, ?, ?) \
         ON CONFLICT(node, plugin) DO UPDATE SET active = excluded.active",
    )
    .bind(node)
    .bind(plugin)
    .bind(active)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn plugin_states_for(db: &Db, node: &str) -> Result<Vec<(String, bool)>, sqlx::Error> {
    sqlx::query_as("SELECT plugin, active FROM plugin_states WHERE node = ? ORDER BY plugin")
        .bind(node)
        .fetch_all(db)
        .await
}
