-- Admin users of the management API. Passwords are argon2id PHC strings, never plain text.
CREATE TABLE admin_users (
    username      TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,
    tags          TEXT NOT NULL DEFAULT '',
    created_at    TEXT NOT NULL
);

-- Hot-config overrides: the desired state, pushed to a broker whenever it (re)appears.
-- node '*' holds changes made for every node (PUT /configs/{app}).
CREATE TABLE config_overrides (
    node       TEXT NOT NULL,
    app        TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (node, app, key)
);

-- Plugin configs as the broker reported them after applying (passwords already hashed by the broker).
CREATE TABLE plugin_configs (
    node   TEXT NOT NULL,
    plugin TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (node, plugin, key)
);

-- Plugins switched on or off through the API.
CREATE TABLE plugin_states (
    node   TEXT NOT NULL,
    plugin TEXT NOT NULL,
    active INTEGER NOT NULL,
    PRIMARY KEY (node, plugin)
);
