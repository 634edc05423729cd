// The Midge dashboard: one page, no framework, talking to the same /api/v2 as every other client with
// the admin's Basic credentials (kept for this tab only, in sessionStorage).
//
// Views are functions that fill <main> and may start one refresh timer; the hash (#/clients) picks the
// view. Every text that comes from the broker (client ids, topics, payloads) is set as text, never as
// HTML.
'use strict';

const state = {
  auth: sessionStorage.getItem('midge.auth'),
  user: sessionStorage.getItem('midge.user'),
  node: sessionStorage.getItem('midge.node'),
  nodes: [],
  timer: null,
  ws: { client: null, status: 'disconnected', subscriptions: [], messages: [] },
};

const VIEWS = [
  ['overview', 'Overview'],
  ['clients', 'Clients'],
  ['sessions', 'Sessions'],
  ['subscriptions', 'Subscriptions'],
  ['topics', 'Topics'],
  ['listeners', 'Listeners'],
  ['plugins', 'Plugins'],
  ['configs', 'Configs'],
  ['users', 'Users'],
  ['websocket', 'WebSocket'],
];

const $ = (selector) => document.querySelector(selector);
const enc = encodeURIComponent;

// --- DOM helpers ---------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'value') el.value = value;
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function toast(message, kind) {
  const box = $('#toast');
  box.textContent = message;
  box.className = `toast ${kind || 'ok'}`;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

function report(error) {
  if (error && error.code === 401) return; // already back at the login form
  toast(error && error.message ? error.message : String(error), 'bad');
}

// An event handler that may be async: its errors become a message on the page, never an unhandled
// rejection.
function act(fn) {
  return (event) => {
    Promise.resolve().then(() => fn(event)).catch(report);
  };
}

function confirmDialog(text) {
  const dialog = $('#confirm');
  $('#confirm-text').textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => () => {
      $('#confirm-yes').onclick = null;
      $('#confirm-no').onclick = null;
      dialog.close();
      resolve(answer);
    };
    $('#confirm-yes').onclick = done(true);
    $('#confirm-no').onclick = done(false);
    dialog.showModal();
  });
}

function table(columns, rows, actions, key) {
  const head = h('tr', {}, columns.map(([, label]) => h('th', {}, label)), actions ? h('th', {}, '') : null);
  const body = rows.length
    ? rows.map((row) => h('tr', { 'data-key': key ? key(row) : null },
      columns.map(([field, , format]) => h('td', { 'data-label': columns.find((c) => c[0] === field)[1] },
        format ? format(row[field], row) : cell(row[field]))),
      actions ? h('td', { class: 'actions' }, actions(row)) : null))
    : [h('tr', {}, h('td', { colspan: columns.length + (actions ? 1 : 0), class: 'muted' }, 'Nothing here.'))];
  return h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, head), h('tbody', {}, body)));
}

function cell(value) {
  if (value === true) return 'true';
  if (value === false) return 'false';
  if (value === null || value === undefined) return '';
  return String(value);
}

function figures(object) {
  const rows = Object.entries(object || {}).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => ({ k, v }));
  return table([['k', 'Name'], ['v', 'Value']], rows);
}

function number(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(0)}k`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

// --- the API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Basic ${state.auth}` };
  const init = { method, headers, credentials: 'omit', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`api/v2/${path}`, init);
  if (response.status === 401) {
    logout('Your login is no longer valid: log in again.');
    throw new ApiError(401, 'unauthorized');
  }
  if (!response.ok) throw new ApiError(response.status, `${method} ${path}: HTTP ${response.status}`);
  const reply = await response.json();
  if (reply.code !== 0) throw new ApiError(reply.code, `${reply.message || 'error'} (code ${reply.code})`);
  return reply.result;
}

function basic(username, password) {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  return btoa(String.fromCharCode(...bytes));
}

// --- login ---------------------------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  const username = $('#username').value.trim();
  const password = $('#password').value;
  const error = $('#login-error');
  error.textContent = '';
  // POST auth answers 200 either way, so a wrong password is not a failed request in the console.
  const response = await fetch('api/v2/auth', {
    method: 'POST',
    credentials: 'omit',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  const reply = await response.json();
  if (reply.code !== 0) {
    error.textContent = reply.code === 103 ? 'Wrong username or password.' : reply.message;
    return;
  }
  state.auth = basic(username, password);
  state.user = username;
  sessionStorage.setItem('midge.auth', state.auth);
  sessionStorage.setItem('midge.user', username);
  $('#password').value = '';
  await start();
}

function logout(message) {
  state.auth = null;
  sessionStorage.removeItem('midge.auth');
  sessionStorage.removeItem('midge.user');
  clearInterval(state.timer);
  if (state.ws.client) state.ws.client.end();
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message || '';
  $('#username').focus();
}

async function start() {
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#whoami').textContent = state.user || '';
  const nodes = await api('GET', 'management/nodes');
  state.nodes = nodes.map((n) => n.name);
  if (!state.nodes.includes(state.node)) state.node = state.nodes[0] || null;
  $('#node').replaceChildren(...state.nodes.map((n) => h('option', { value: n, selected: n === state.node }, n)));
  if (!location.hash) location.hash = '#/overview';
  else await route();
}

// --- routing -------------------------------------------------------------------------------------

async function route() {
  if (!state.auth) return;
  clearInterval(state.timer);
  state.timer = null;
  const name = location.hash.replace(/^#\//, '') || 'overview';
  const view = VIEWS.some(([v]) => v === name) ? name : 'overview';
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('active', link.dataset.view === view);
  }
  $('#nav').classList.remove('open');
  const main = h('main', { id: 'view', class: 'view', 'data-view': view });
  $('#view').replaceWith(main);
  await RENDER[view](main);
}

// A list the API pages (`curr_page`, `page_size`), with a search box that looks one key up instead.
function pagedList({ title, path, lookup, placeholder, columns, actions, key }) {
  return async (main) => {
    let page = 1;
    let size = 20;
    let query = '';
    const search = h('input', { type: 'search', placeholder, id: 'search', 'aria-label': placeholder });
    const body = h('div', { id: 'list' });
    const label = h('span', { class: 'muted', id: 'page-label' });
    const prev = h('button', { type: 'button', onclick: act(() => { page -= 1; return load(); }) }, '‹ Prev');
    const next = h('button', { type: 'button', onclick: act(() => { page += 1; return load(); }) }, 'Next ›');
    const sizes = h('select', { 'aria-label': 'Page size', onchange: act((e) => { size = Number(e.target.value); page = 1; return load(); }) },
      [10, 20, 50, 100].map((n) => h('option', { value: n, selected: n === size }, `${n} / page`)));
    const pager = h('div', { class: 'pager' }, prev, label, next, sizes);
    const form = h('form', { class: 'toolbar', onsubmit: act((e) => { e.preventDefault(); query = search.value.trim(); page = 1; return load(); }) },
      search, h('button', { type: 'submit', class: 'primary' }, 'Search'),
      h('button', { type: 'button', onclick: act(() => { search.value = ''; query = ''; return load(); }) }, 'Clear'),
      h('button', { type: 'button', onclick: act(() => load()) }, 'Refresh'));

    async function load() {
      let rows;
      if (query) {
        rows = (await api('GET', lookup(query))).objects;
        pager.hidden = true;
      } else {
        const result = await api('GET', `${path()}?curr_page=${page}&page_size=${size}`);
        rows = result.objects;
        page = result.current_page;
        label.textContent = `Page ${page} of ${Math.max(1, result.total_page)} · ${result.total_num} in all`;
        prev.disabled = page <= 1;
        next.disabled = page >= result.total_page;
        pager.hidden = false;
      }
      body.replaceChildren(table(columns, rows, actions && ((row) => actions(row, load)), key));
    }

    main.append(h('h1', {}, title), form, body, pager);
    await load();
  };
}

function node() {
  return enc(state.node || '');
}

// --- views ---------------------------------------------------------------------------------------

const RENDER = {
  async overview(main) {
    const cards = h('div', { class: 'cards', id: 'nodes' });
    const charts = h('div', { class: 'charts', id: 'charts' });
    const stats = h('div', { class: 'split' });
    main.append(h('h1', {}, 'Overview'), cards, h('h2', {}, 'The last minutes'), charts, stats);

    async function refresh() {
      const [managed, monitored, history, nodeStats, nodeMetrics] = await Promise.all([
        api('GET', 'management/nodes'),
        api('GET', 'monitoring/nodes'),
        api('GET', 'monitoring/history'),
        api('GET', `monitoring/stats/${node()}`),
        api('GET', `monitoring/metrics/${node()}`),
      ]);
      cards.replaceChildren(...monitored.map((n) => {
        const m = managed.find((x) => x.name === n.name) || {};
        const facts = [
          ['Status', n.node_status], ['Version', m.version], ['Uptime', m.uptime],
          ['Memory', `${n.memory_used} of ${n.memory_total}`], ['Load', `${n.load1} · ${n.load5} · ${n.load15}`],
          ['Connections', n.clients], ['Retained', n.name === state.node ? nodeStats['retained/count'] : '…'],
        ];
        return h('section', { class: 'card', 'data-node': n.name }, h('h3', {}, n.name),
          h('dl', {}, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, cell(v))])));
      }));
      const samples = history[state.node] || [];
      const rate = (field) => samples.slice(1).map((s, i) => {
        const before = samples[i];
        const seconds = Math.max(0.001, (s.ts - before.ts) / 1000);
        return [s.ts, Math.max(0, (s[field] - before[field]) / seconds)];
      });
      const level = (field) => samples.map((s) => [s.ts, s[field]]);
      charts.replaceChildren(
        chart('Messages per second', [
          { label: 'in', color: '#2f80ed', points: rate('received') },
          { label: 'out', color: '#27ae60', points: rate('sent') },
        ]),
        chart('Connections', [{ label: 'connections', color: '#9b51e0', points: level('connections') }]),
        chart('Subscriptions', [{ label: 'subscriptions', color: '#f2994a', points: level('subscriptions') }]),
      );
      stats.replaceChildren(
        h('section', {}, h('h2', {}, `Stats of ${state.node}`), figures(nodeStats)),
        h('section', {}, h('h2', {}, `Metrics of ${state.node}`), figures(nodeMetrics)),
      );
    }

    await refresh();
    state.timer = setInterval(() => refresh().catch(report), 5000);
  },

  clients: pagedList({
    title: 'Clients',
    path: () => `nodes/${node()}/clients`,
    lookup: (id) => `nodes/${node()}/clients/${enc(id)}`,
    placeholder: 'Client id',
    key: (c) => c.client_id,
    columns: [['client_id', 'Client id'], ['username', 'Username'], ['ipaddress', 'Address'], ['port', 'Port'],
      ['clean_sess', 'Clean session'], ['proto_ver', 'Protocol'], ['keepalive', 'Keep-alive'], ['connected_at', 'Connected at']],
    actions: (client, reload) => h('button', {
      type: 'button',
      class: 'danger',
      'data-kick': client.client_id,
      onclick: act(async () => {
        if (!(await confirmDialog(`Disconnect client ${client.client_id}?`))) return;
        await api('DELETE', `clients/${enc(client.client_id)}`);
        toast(`Client ${client.client_id} disconnected.`);
        await reload();
      }),
    }, 'Kick'),
  }),

  sessions: pagedList({
    title: 'Sessions',
    path: () => `nodes/${node()}/sessions`,
    lookup: (id) => `nodes/${node()}/sessions/${enc(id)}`,
    placeholder: 'Client id',
    key: (s) => s.client_id,
    columns: [['client_id', 'Client id'], ['clean_sess', 'Clean session'], ['subscriptions', 'Subscriptions'],
      ['max_inflight', 'Max inflight'], ['inflight_len', 'Inflight'], ['mqueue_len', 'Queued'],
      ['mqueue_dropped', 'Dropped'], ['awaiting_rel_len', 'Awaiting PUBREL'], ['deliver_msg', 'Delivered'],
      ['enqueue_msg', 'Enqueued'], ['created_at', 'Created at']],
  }),

  subscriptions: pagedList({
    title: 'Subscriptions',
    path: () => `nodes/${node()}/subscriptions`,
    lookup: (id) => `nodes/${node()}/subscriptions/${enc(id)}`,
    placeholder: 'Client id',
    key: (s) => `${s.client_id} ${s.topic}`,
    columns: [['client_id', 'Client id'], ['topic', 'Topic filter'], ['qos', 'QoS']],
    actions: (sub, reload) => h('button', {
      type: 'button',
      onclick: act(async () => {
        await api('POST', 'mqtt/unsubscribe', { topic: sub.topic, client_id: sub.client_id });
        toast(`${sub.client_id} unsubscribed from ${sub.topic}.`);
        await reload();
      }),
    }, 'Unsubscribe'),
  }),

  topics: pagedList({
    title: 'Topics',
    path: () => 'routes',
    lookup: (topic) => `routes/${enc(topic)}`,
    placeholder: 'Topic filter',
    key: (r) => `${r.topic} ${r.node}`,
    columns: [['topic', 'Topic filter'], ['node', 'Node']],
  }),

  async listeners(main) {
    const listeners = await api('GET', `monitoring/listeners/${node()}`);
    main.append(h('h1', {}, 'Listeners'), table([['protocol', 'Protocol'], ['listen', 'Address'],
      ['acceptors', 'Acceptors'], ['max_clients', 'Max clients'], ['current_clients', 'Clients'],
      ['shutdown_count', 'Shut down']], listeners));
  },

  async plugins(main) {
    const list = h('div', {});
    const editor = h('div', { id: 'plugin-config' });
    main.append(h('h1', {}, 'Plugins'), list, editor);

    async function load() {
      const plugins = await api('GET', `nodes/${node()}/plugins`);
      list.replaceChildren(table([['name', 'Name'], ['version', 'Version'], ['description', 'Description'],
        ['active', 'Status', (active) => h('span', { class: active ? 'badge on' : 'badge off' }, active ? 'running' : 'stopped')]],
      plugins, (plugin) => [
        h('button', {
          type: 'button',
          class: plugin.active ? '' : 'primary',
          'data-plugin': plugin.name,
          onclick: act(async () => {
            await api('PUT', `nodes/${node()}/plugins/${enc(plugin.name)}`, { active: !plugin.active });
            toast(`${plugin.name} ${plugin.active ? 'stopped' : 'started'}.`);
            await load();
          }),
        }, plugin.active ? 'Stop' : 'Start'),
        h('button', { type: 'button', 'data-plugin-config': plugin.name, onclick: act(() => edit(plugin.name)) }, 'Config'),
      ], (p) => p.name));
    }

    async function edit(name) {
      const rows = await api('GET', `nodes/${node()}/plugin_configs/${enc(name)}`);
      const inputs = rows.map((row) => [row.key, h('input', { value: row.value, 'aria-label': row.key })]);
      const newKey = h('input', { placeholder: 'new key', 'aria-label': 'New key' });
      const newValue = h('input', { placeholder: 'value', 'aria-label': 'New value' });
      const save = act(async (event) => {
        event.preventDefault();
        const values = Object.fromEntries(inputs.map(([key, input]) => [key, input.value]));
        if (newKey.value.trim()) values[newKey.value.trim()] = newValue.value;
        await api('PUT', `nodes/${node()}/plugin_configs/${enc(name)}`, values);
        toast(`${name}: config saved.`);
        await edit(name);
      });
      editor.replaceChildren(h('form', { class: 'panel', onsubmit: save },
        h('h2', {}, `Config of ${name}`),
        rows.length ? null : h('p', { class: 'muted' }, 'This plugin takes no settings.'),
        rows.map((row, i) => h('label', { class: 'field' },
          h('span', {}, row.key, row.required ? ' *' : ''), inputs[i][1], h('small', { class: 'muted' }, row.desc))),
        h('div', { class: 'row' }, newKey, newValue),
        h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, 'Save'),
          h('button', { type: 'button', onclick: () => editor.replaceChildren() }, 'Close'))));
      editor.scrollIntoView({ behavior: 'smooth' });
    }

    await load();
  },

  async configs(main) {
    const everywhere = h('input', { type: 'checkbox', id: 'everywhere' });
    const body = h('div', {});
    main.append(h('h1', {}, 'Configs'),
      h('label', { class: 'check' }, everywhere, ' Apply changes to every node'), body);

    async function load() {
      const rows = await api('GET', `nodes/${node()}/configs`);
      body.replaceChildren(table([['key', 'Key'], ['app', 'App'], ['datatpye', 'Type'],
        ['value', 'Value', (value, row) => h('input', { value, 'data-config': row.key, 'aria-label': row.key })]],
      rows, (row) => h('button', {
        type: 'button',
        onclick: act(async (event) => {
          const value = event.target.closest('tr').querySelector('input').value;
          const path = everywhere.checked ? `configs/${enc(row.app)}` : `nodes/${node()}/configs/${enc(row.app)}`;
          await api('PUT', path, { key: row.key, value });
          toast(`${row.key} = ${value}`);
          await load();
        }),
      }, 'Save'), (row) => row.key));
    }

    await load();
  },

  async users(main) {
    const list = h('div', {});
    const username = h('input', { id: 'user-username', autocomplete: 'off', required: true, 'aria-label': 'Username' });
    const password = h('input', { id: 'user-password', type: 'password', autocomplete: 'new-password', required: true, 'aria-label': 'Password' });
    const tags = h('input', { id: 'user-tags', 'aria-label': 'Tags', placeholder: 'e.g. viewer' });
    const pwUser = h('select', { id: 'pw-user', 'aria-label': 'User' });
    const oldPw = h('input', { id: 'pw-old', type: 'password', autocomplete: 'current-password', required: true, 'aria-label': 'Current password' });
    const newPw = h('input', { id: 'pw-new', type: 'password', autocomplete: 'new-password', required: true, 'aria-label': 'New password' });

    main.append(h('h1', {}, 'Users'), list,
      h('div', { class: 'split' },
        h('form', {
          class: 'panel',
          id: 'user-add-form',
          onsubmit: act(async (event) => {
            event.preventDefault();
            await api('POST', 'users', { username: username.value.trim(), password: password.value, tags: tags.value });
            toast(`User ${username.value.trim()} added.`);
            username.value = '';
            password.value = '';
            tags.value = '';
            await load();
          }),
        }, h('h2', {}, 'Add a user'),
        h('label', { class: 'field' }, 'Username', username),
        h('label', { class: 'field' }, 'Password', password),
        h('label', { class: 'field' }, 'Tags', tags),
        h('button', { type: 'submit', class: 'primary', id: 'user-add' }, 'Add user')),
        h('form', {
          class: 'panel',
          onsubmit: act(async (event) => {
            event.preventDefault();
            const who = pwUser.value;
            await api('PUT', `change_pwd/${enc(who)}`, { old_pwd: oldPw.value, new_pwd: newPw.value });
            if (who === state.user) {
              state.auth = basic(who, newPw.value);
              sessionStorage.setItem('midge.auth', state.auth);
            }
            toast(`Password of ${who} changed.`);
            oldPw.value = '';
            newPw.value = '';
          }),
        }, h('h2', {}, 'Change a password'),
        h('label', { class: 'field' }, 'User', pwUser),
        h('label', { class: 'field' }, 'Current password', oldPw),
        h('label', { class: 'field' }, 'New password', newPw),
        h('button', { type: 'submit', class: 'primary', id: 'pw-change' }, 'Change password'))));

    async function load() {
      const users = await api('GET', 'users');
      pwUser.replaceChildren(...users.map((u) => h('option', { value: u.username, selected: u.username === state.user }, u.username)));
      list.replaceChildren(table([['username', 'Username'], ['tags', 'Tags']], users,
        (user) => (user.username === 'admin' ? null : h('button', {
          type: 'button',
          class: 'danger',
          'data-delete-user': user.username,
          onclick: act(async () => {
            if (!(await confirmDialog(`Delete user ${user.username}?`))) return;
            await api('DELETE', `users/${enc(user.username)}`);
            toast(`User ${user.username} deleted.`);
            await load();
          }),
        }, 'Delete')), (u) => u.username));
    }

    await load();
  },

  async websocket(main) {
    const ws = state.ws;
    const url = h('input', { id: 'ws-url', value: ws.url || '', 'aria-label': 'URL' });
    const clientId = h('input', { id: 'ws-client-id', value: ws.clientId || `midge-dashboard-${Math.random().toString(16).slice(2, 10)}`, 'aria-label': 'Client id' });
    const user = h('input', { id: 'ws-username', value: ws.username || '', autocomplete: 'off', 'aria-label': 'Username' });
    const pass = h('input', { id: 'ws-password', type: 'password', autocomplete: 'off', 'aria-label': 'Password' });
    const status = h('span', { id: 'ws-status', class: 'badge' });
    const connect = h('button', { type: 'submit', class: 'primary', id: 'ws-connect' });
    const subTopic = h('input', { id: 'ws-sub-topic', value: 'testtopic/#', 'aria-label': 'Topic filter' });
    const subQos = qosSelect('ws-sub-qos');
    const subs = h('ul', { id: 'ws-subscriptions', class: 'plain' });
    const pubTopic = h('input', { id: 'ws-pub-topic', value: 'testtopic/1', 'aria-label': 'Topic' });
    const payload = h('textarea', { id: 'ws-payload', rows: 3, 'aria-label': 'Payload' }, 'Hello from the Midge dashboard');
    const pubQos = qosSelect('ws-pub-qos');
    const retain = h('input', { type: 'checkbox', id: 'ws-retain' });
    const messages = h('ol', { id: 'ws-messages', class: 'messages' });

    function qosSelect(id) {
      return h('select', { id, 'aria-label': 'QoS' }, [0, 1, 2].map((q) => h('option', { value: q }, `QoS ${q}`)));
    }

    function show() {
      const connected = ws.status === 'connected';
      status.textContent = ws.status;
      status.className = `badge ${connected ? 'on' : 'off'}`;
      connect.textContent = connected ? 'Disconnect' : 'Connect';
      subs.replaceChildren(...ws.subscriptions.map((s) => h('li', {}, h('code', {}, s.topic), ` QoS ${s.qos} `,
        h('button', { type: 'button', onclick: act(async () => {
          await ws.client.unsubscribe(s.topic);
          ws.subscriptions = ws.subscriptions.filter((x) => x !== s);
          show();
        }) }, 'Unsubscribe'))));
      messages.replaceChildren(...ws.messages.map((m) => h('li', {},
        h('span', { class: 'muted' }, m.at, ' '), h('code', {}, m.topic), ` QoS ${m.qos}${m.retain ? ' retained' : ''}`,
        h('pre', {}, m.payload))));
    }
    ws.show = show;

    if (!ws.url) {
      ws.url = await defaultUrl();
      url.value = ws.url;
    }

    main.append(h('h1', {}, 'WebSocket client'),
      h('form', {
        class: 'panel',
        onsubmit: act(async (event) => {
          event.preventDefault();
          if (ws.status === 'connected') {
            ws.client.end();
            return;
          }
          Object.assign(ws, { url: url.value.trim(), clientId: clientId.value.trim(), username: user.value });
          const client = new MqttClient(ws.url, { clientId: ws.clientId, username: user.value, password: pass.value, keepalive: 60 });
          client.onmessage = (topic, text, { qos, retain: retained }) => {
            ws.messages.unshift({ topic, payload: text, qos, retain: retained, at: new Date().toLocaleTimeString() });
            ws.messages.length = Math.min(ws.messages.length, 200);
            if (ws.show) ws.show();
          };
          client.onclose = (reason) => {
            ws.status = 'disconnected';
            ws.subscriptions = [];
            if (ws.show) ws.show();
            if (reason && reason !== 'connection closed') toast(`WebSocket closed: ${reason}`, 'bad');
          };
          ws.client = client;
          ws.status = 'connecting';
          show();
          try {
            await client.connect();
          } catch (e) {
            ws.status = 'disconnected';
            show();
            throw e;
          }
          ws.status = 'connected';
          show();
        }),
      }, h('h2', {}, 'Connection'),
      h('div', { class: 'grid' },
        h('label', { class: 'field' }, 'URL', url), h('label', { class: 'field' }, 'Client id', clientId),
        h('label', { class: 'field' }, 'Username', user), h('label', { class: 'field' }, 'Password', pass)),
      h('div', { class: 'row' }, connect, status)),
      h('div', { class: 'split' },
        h('form', {
          class: 'panel',
          onsubmit: act(async (event) => {
            event.preventDefault();
            const topic = subTopic.value.trim();
            const granted = await ws.client.subscribe(topic, Number(subQos.value));
            ws.subscriptions.push({ topic, qos: granted });
            show();
          }),
        }, h('h2', {}, 'Subscribe'), h('div', { class: 'row' }, subTopic, subQos,
          h('button', { type: 'submit', class: 'primary', id: 'ws-subscribe' }, 'Subscribe')), subs),
        h('form', {
          class: 'panel',
          onsubmit: act(async (event) => {
            event.preventDefault();
            await ws.client.publish(pubTopic.value.trim(), payload.value, Number(pubQos.value), retain.checked);
            toast(`Published to ${pubTopic.value.trim()}.`);
          }),
        }, h('h2', {}, 'Publish'), h('div', { class: 'row' }, pubTopic, pubQos),
        payload, h('div', { class: 'row' }, h('label', { class: 'check' }, retain, ' Retain'),
          h('button', { type: 'submit', class: 'primary', id: 'ws-publish' }, 'Publish')))),
      h('section', { class: 'panel' }, h('h2', {}, 'Messages received'),
        h('button', { type: 'button', onclick: () => { ws.messages = []; show(); } }, 'Clear'), messages));
    show();
  },
};

// The broker's WebSocket listener, as the API lists it, at the host this page came from.
async function defaultUrl() {
  const secure = location.protocol === 'https:';
  let port = secure ? 8084 : 8083;
  try {
    const listeners = await api('GET', `monitoring/listeners/${node()}`);
    const ws = listeners.find((l) => l.protocol === (secure ? 'mqtt:wss' : 'mqtt:ws'))
      || listeners.find((l) => l.protocol === 'mqtt:ws');
    if (ws) port = Number(String(ws.listen).split(':').pop());
  } catch (e) {
    report(e);
  }
  return `${secure ? 'wss' : 'ws'}://${location.hostname}:${port}/mqtt`;
}

// --- charts --------------------------------------------------------------------------------------

function chart(title, series) {
  const canvas = h('canvas', { class: 'chart-canvas', role: 'img', 'aria-label': title });
  const legend = series.map((s) => h('span', { class: 'legend' }, h('i', { 'data-color': s.color }), s.label));
  const figure = h('figure', { class: 'chart' }, h('figcaption', {}, h('strong', {}, title), legend), canvas);
  for (const swatch of figure.querySelectorAll('i[data-color]')) swatch.style.background = swatch.dataset.color;
  requestAnimationFrame(() => draw(canvas, series));
  return figure;
}

// The axis' top: four steps of 1, 2, 2.5 or 5 times a power of ten, whole numbers for whole counts.
function roundUp(value) {
  const wanted = Math.max(1, value / 4);
  const power = 10 ** Math.floor(Math.log10(wanted));
  const steps = power >= 10 ? [1, 2, 2.5, 5, 10] : [1, 2, 5, 10];
  return 4 * steps.find((m) => m * power >= wanted) * power;
}

function draw(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 320;
  const height = canvas.clientHeight || 160;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const c = canvas.getContext('2d');
  c.scale(ratio, ratio);
  c.font = '11px system-ui, sans-serif';
  const points = series.flatMap((s) => s.points);
  if (points.length < 2) {
    c.fillStyle = '#8a94a6';
    c.fillText('collecting samples…', 12, height / 2);
    return;
  }
  const pad = { left: 44, right: 8, top: 8, bottom: 18 };
  const t0 = Math.min(...points.map((p) => p[0]));
  const t1 = Math.max(t0 + 1, ...points.map((p) => p[0]));
  const top = roundUp(Math.max(...points.map((p) => p[1])) * 1.1);
  const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - v / top) * (height - pad.top - pad.bottom);
  c.strokeStyle = '#e4e8ef';
  c.fillStyle = '#8a94a6';
  c.lineWidth = 1;
  for (let i = 0; i <= 4; i += 1) {
    const v = (top * i) / 4;
    c.beginPath();
    c.moveTo(pad.left, y(v));
    c.lineTo(width - pad.right, y(v));
    c.stroke();
    c.fillText(number(v), 4, y(v) + 4);
  }
  c.fillText(new Date(t0).toLocaleTimeString(), pad.left, height - 4);
  const end = new Date(t1).toLocaleTimeString();
  c.fillText(end, width - pad.right - c.measureText(end).width, height - 4);
  c.lineWidth = 2;
  for (const s of series) {
    c.strokeStyle = s.color;
    c.beginPath();
    s.points.forEach(([t, v], i) => (i ? c.lineTo(x(t), y(v)) : c.moveTo(x(t), y(v))));
    c.stroke();
  }
}

// --- start ---------------------------------------------------------------------------------------

function boot() {
  $('#nav').replaceChildren(...VIEWS.map(([view, label]) => h('a', { href: `#/${view}`, 'data-view': view }, label)));
  $('#login-form').addEventListener('submit', act(login));
  $('#logout').addEventListener('click', () => logout());
  $('#menu').addEventListener('click', () => $('#nav').classList.toggle('open'));
  $('#node').addEventListener('change', act((event) => {
    state.node = event.target.value;
    sessionStorage.setItem('midge.node', state.node);
    return route();
  }));
  window.addEventListener('hashchange', act(route));
  if (state.auth) start().catch(report);
  else logout();
}

boot();
