import { TidingsClient } from './pkg/tidings.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// For tests and tooling: everything this tab saw.
const seen = (window.__tidings = { notifications: [], shown: [], digests: [], continuity: [], states: [], roles: [], inboxCounts: [] });

async function demoToken(user, topics) {
  const r = await fetch('/v1/demo/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user, topics, ttl_secs: 3600 }),
  });
  if (!r.ok) throw Object.assign(new Error(`token: HTTP ${r.status}`), { transient: r.status >= 500 });
  return (await r.json()).token;
}

function item(html, cls) {
  const li = document.createElement('li');
  li.innerHTML = html;
  if (cls) li.className = cls;
  return li;
}

const esc = (s) => String(s ?? '').replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

function toast(title, body, priority) {
  const t = document.createElement('div');
  t.className = `toast ${priority ?? ''}`;
  t.innerHTML = `${esc(title)}<small>${esc(body)}</small>`;
  $('toasts').append(t);
  setTimeout(() => t.remove(), 5000);
}

async function signIn(user, topics) {
  localStorage.setItem('demo:user', JSON.stringify({ user, topics }));
  $('signin').querySelector('button').disabled = true;
  $('to').value = `user:${user}`;
  const client = await TidingsClient.connect({
    name: params.get('name') ?? 'tidings',
    token: () => demoToken(user, topics),
    streams: topics.map((t) => `topic:${t}`),
    election: params.get('election') ?? undefined,
  });
  window.tidings = client;
  $('tab').textContent = client.tabId;
  client.addEventListener('state', (e) => {
    seen.states.push(e.detail.kind);
    $('state').textContent = e.detail.kind + (e.detail.kind === 'reconnecting' ? ` (attempt ${e.detail.attempt})` : '');
    $('state').className = `pill ${e.detail.kind}`;
  });
  client.addEventListener('role', (e) => {
    seen.roles.push(e.detail.role);
    $('role').textContent = e.detail.role;
    $('role').className = `pill ${e.detail.role}`;
  });
  client.addEventListener('badge', (e) => ($('badge').textContent = e.detail.count));
  client.addEventListener('notification', (e) => {
    const { notification: n, shown } = e.detail;
    seen.notifications.push(n.id);
    window.__report?.('notification', n.id);
    if (shown) {
      seen.shown.push(n.id);
      window.__report?.('shown', n.id);
      toast(n.title ?? n.type, n.body, n.priority);
    }
    $('list').prepend(
      item(`${shown ? '★ ' : ''}<b>${esc(n.title ?? n.type)}</b> ${esc(n.body)}<div class="meta">${esc(n.stream)} #${n.offset ?? '–'} · ${n.priority} · ${e.detail.source}</div>`, n.priority),
    );
  });
  client.addEventListener('digest', (e) => {
    const { digest: d, shown } = e.detail;
    seen.digests.push({ ids: d.ids, shown });
    if (shown) window.__report?.('shown', `digest:${d.ids[0]}`);
    if (shown) toast(`${d.count} × ${d.group}`, `${d.first.title ?? ''} … ${d.last.title ?? ''}`, 'informational');
    $('log').prepend(item(`${shown ? '★ ' : ''}digest <b>${esc(d.group)}</b>: ${d.count} notifications`));
  });
  client.addEventListener('continuity', (e) => {
    const c = e.detail.continuity;
    seen.continuity.push({ stream: e.detail.stream, ...c });
    $('log').prepend(item(`${esc(e.detail.stream)}: ${c.kind}${c.kind === 'resumed' ? `, ${c.replayed} replayed` : ''}${c.kind === 'gap' ? ` (${c.reason}) — refetch` : ''}`));
  });
  // The inbox panel: what the SDK holds (its view and the server's counts), re-rendered on every change.
  const renderCounts = (c) => {
    $('inbox-badge').textContent = c ? c.unread : 0;
    $('inbox-counts').textContent = c ? `${c.unread} unread · ${c.unseen} unseen · ${c.total} total (v${c.version})` : '';
  };
  const renderInbox = () => {
    const { items, complete } = client.inboxItems();
    const list = $('inbox-list');
    list.replaceChildren(
      ...items
        .filter((i) => i.archived_at == null)
        .map((i) => {
          const li = item(
            `<span class="text"><b>${esc(i.notification?.title ?? i.notification?.type ?? i.id)}</b> ${esc(i.notification?.body)}` +
              `<div class="meta">${new Date(i.inserted_at).toLocaleTimeString()} · ${i.read_at != null ? 'read' : 'unread'}</div></span>`,
            i.read_at != null ? 'read' : 'unread',
          );
          li.dataset.id = i.id;
          const act = (label, action) => {
            const b = document.createElement('button');
            b.type = 'button';
            b.textContent = label;
            b.dataset.action = action;
            b.onclick = () => client.inboxMark(action, [i.id]).catch((e) => ($('inbox-status').textContent = e.message));
            return b;
          };
          li.append(act(i.read_at != null ? 'Unread' : 'Read', i.read_at != null ? 'unread' : 'read'), act('Archive', 'archive'));
          return li;
        }),
    );
    $('inbox-more').disabled = complete;
  };
  client.addEventListener('inboxcounts', (e) => {
    seen.inboxCounts.push(e.detail);
    renderCounts(e.detail);
  });
  client.addEventListener('inboxchanged', renderInbox);
  renderCounts(client.inboxCounts);
  $('inbox-all').onclick = () => client.inboxMarkAll('read').catch((e) => ($('inbox-status').textContent = e.message));
  $('inbox-more').onclick = () => client.inboxLoadMore(20).then(renderInbox, (e) => ($('inbox-status').textContent = e.message));
  client.waitForState('connected', 60000).then(
    () => client.inboxLoadMore(20).then(renderInbox, (e) => ($('inbox-status').textContent = e.message)),
    () => {},
  );
  $('role').textContent = client.role;
  setInterval(async () => {
    try {
      const r = await (await fetch(`/v1/presence/${encodeURIComponent(user)}`, { headers: { Authorization: 'Bearer tidings-dev-key' } })).json();
      $('presence').textContent = r.devices.length;
    } catch {
      $('presence').textContent = '?';
    }
  }, 2000);
  if ('serviceWorker' in navigator && params.get('sw') !== '0') {
    navigator.serviceWorker.register('./sw.js', { type: 'module' }).catch((e) => console.warn('service worker', e));
  }
}

$('clear').onclick = () => window.tidings?.clearBadge();

$('signin-form').onsubmit = (e) => {
  e.preventDefault();
  const topics = $('topics').value.split(',').map((s) => s.trim()).filter(Boolean);
  signIn($('user').value.trim(), topics).catch((err) => alert(err));
};

$('publish-form').onsubmit = async (e) => {
  e.preventDefault();
  const to = $('to').value.trim();
  const body = {
    type: 'demo.message',
    priority: $('priority').value,
    title: $('title').value,
    body: $('body').value,
    group: $('group').value || null,
    persistence: $('persistent').checked ? 'persistent' : 'bufferable',
  };
  if (to.startsWith('topic:')) body.topics = [to.slice(6)];
  else body.users = [to.replace(/^user:/, '')];
  const count = Math.max(1, Math.min(1000, Number($('count').value) || 1));
  const notifications = Array.from({ length: count }, (_, i) => ({ ...body, title: count > 1 ? `${body.title} #${i + 1}` : body.title }));
  const r = await fetch('/v1/publish/batch', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer tidings-dev-key' },
    body: JSON.stringify({ notifications }),
  });
  $('published').textContent = r.ok ? `published ${count}` : `HTTP ${r.status}`;
};

const auto = params.get('user') ?? JSON.parse(localStorage.getItem('demo:user') ?? 'null')?.user;
if (auto) {
  const topics = params.get('topics')?.split(',').filter(Boolean) ??
    JSON.parse(localStorage.getItem('demo:user') ?? 'null')?.topics ?? ['news'];
  $('user').value = auto;
  signIn(auto, topics).catch((err) => console.error(err));
}
