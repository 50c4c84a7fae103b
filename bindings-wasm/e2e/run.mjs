// End-to-end tests of the browser SDK in real headless Chromium (playwright-core driving /usr/bin/chromium)
// against a `tidings-server --demo --web-root …` started here on a free port.
//
//   TIDINGS_SERVER=target/debug/tidings-server TIDINGS_WEB_ROOT=target/wasm-web node run.mjs [filter]
//
// The pages are the demo page (`?user=…` signs in at once); it reports every notification and every toast it
// shows to this script through a Playwright binding, so what a tab showed is known even after it was closed.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchChromium } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const SERVER = process.env.TIDINGS_SERVER ?? resolve(here, '../../target/debug/tidings-server');
const WEB_ROOT = resolve(process.env.TIDINGS_WEB_ROOT ?? resolve(here, '../../target/wasm-web'));
const filter = process.argv[2] ?? '';

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

async function until(what, fn, timeoutMs = 15000, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------------------------------

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
// A VAPID public key (from `web-push generate-vapid-keys`) the server serves to service workers.
const VAPID_PUBLIC_KEY = 'BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM';
// The server's default store (SQLite) in a fresh data directory, removed at the end.
const dataDir = mkdtempSync(join(tmpdir(), 'tidings-e2e-'));
const args = ['--demo', '--bind', `127.0.0.1:${port}`, '--web-root', WEB_ROOT, '--vapid-public-key', VAPID_PUBLIC_KEY,
  '--data-dir', dataDir];
const server = spawn(SERVER, args, {
  stdio: ['ignore', 'ignore', 'pipe'],
  env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
});
let serverLog = '';
server.stderr.on('data', (d) => (serverLog = (serverLog + d).slice(-20000)));
await until('the server', async () => (await fetch(`${base}/healthz`).catch(() => null))?.ok, 20000, 100);

async function publish(users, n, extra = {}) {
  const notifications = Array.from({ length: n }, (_, i) => ({
    users,
    type: 'e2e',
    priority: 'important',
    title: `n${i}`,
    ...extra,
  }));
  const r = await fetch(`${base}/v1/publish/batch`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer tidings-dev-key' },
    body: JSON.stringify({ notifications }),
  });
  assert(r.ok, `publish: HTTP ${r.status}`);
  const { results } = await r.json();
  return results.map((x) => x.id);
}

async function publishOne(user, title, extra = {}) {
  const r = await fetch(`${base}/v1/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer tidings-dev-key' },
    body: JSON.stringify({ users: [user], type: 'e2e', priority: 'important', title, ...extra }),
  });
  assert(r.ok, `publish: HTTP ${r.status}`);
  return (await r.json()).id;
}

async function publishTopic(topic, title) {
  const r = await fetch(`${base}/v1/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer tidings-dev-key' },
    body: JSON.stringify({ topics: [topic], type: 'e2e', priority: 'important', title }),
  });
  assert(r.ok, `publish: HTTP ${r.status}`);
  return (await r.json()).id;
}

async function presence(user) {
  const r = await fetch(`${base}/v1/presence/${user}`, { headers: { Authorization: 'Bearer tidings-dev-key' } });
  return (await r.json()).devices.length;
}

const browser = await launchChromium();

/** A browser context (one "browser profile": shared storage, locks, channels) with reporting and a socket count. */
async function newContext() {
  const ctx = await browser.newContext();
  const log = { notification: new Map(), shown: new Map() }; // id -> [tab labels]
  let nextLabel = 0;
  const labels = new WeakMap();
  await ctx.exposeBinding('__report', ({ page }, kind, id) => {
    if (!labels.has(page)) labels.set(page, `tab${nextLabel++}`);
    const m = log[kind];
    if (!m.has(id)) m.set(id, []);
    m.get(id).push(labels.get(page));
  });
  await ctx.addInitScript(() => {
    const Native = window.WebSocket;
    window.__ws = { opened: 0, open: 0 };
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        window.__ws.opened++;
        window.__ws.open++;
        this.addEventListener('close', () => window.__ws.open--);
      }
    };
  });
  const pages = [];
  const open = async (query) => {
    const page = await ctx.newPage();
    page.on('pageerror', (e) => console.log(`   [page error] ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') {
        if (!/Failed to load resource/.test(m.text())) console.log(`   [console ${m.type()}] ${m.text()}`);
      }
    });
    await page.goto(`${base}/?${query}`);
    await page.waitForFunction(() => window.tidings !== undefined, null, { timeout: 15000 });
    pages.push(page);
    return page;
  };
  const live = () => pages.filter((p) => !p.isClosed());
  const openSockets = async () => {
    let n = 0;
    for (const p of live()) n += await p.evaluate(() => window.__ws.open);
    return n;
  };
  const leader = async () => {
    for (const p of live()) if ((await p.evaluate(() => window.tidings.role)) === 'leader') return p;
    return null;
  };
  const everyone = (fn, arg) => Promise.all(live().map((p) => p.evaluate(fn, arg)));
  return { ctx, log, open, pages, live, openSockets, leader, everyone };
}

function checkShownOnce(log, ids, what) {
  const missing = ids.filter((id) => !log.shown.has(id));
  const twice = ids.filter((id) => (log.shown.get(id)?.length ?? 0) > 1);
  assert(missing.length === 0, `${what}: ${missing.length} notifications never shown (e.g. ${missing[0]})`);
  assert(twice.length === 0, `${what}: ${twice.length} shown more than once (e.g. ${twice[0]}: ${log.shown.get(twice[0])})`);
}

// ---------------------------------------------------------------------------------------------------------------

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
const uniq = (p) => `${p}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;

test('three tabs, 100 notifications: one WebSocket, each shown exactly once, badges not multiplied', async () => {
  const user = uniq('e2e3');
  const t = await newContext();
  for (let i = 0; i < 3; i++) await t.open(`user=${user}&topics=&sw=0`);
  await until('a connected leader', async () => {
    const states = await t.everyone(() => window.tidings.state.kind);
    return states.every((s) => s === 'connected');
  });
  const roles = await t.everyone(() => window.tidings.role);
  assert(roles.filter((r) => r === 'leader').length === 1, `one leader, got ${roles}`);
  const ids = await publish([user], 100);
  await until('100 notifications in every tab', async () =>
    (await t.everyone(() => window.__tidings.notifications.length)).every((n) => n >= 100),
  );
  await sleep(300);
  const counts = await t.everyone(() => window.__tidings.notifications.length);
  assert(counts.every((n) => n === 100), `each tab got each notification once: ${counts}`);
  checkShownOnce(t.log, ids, '3 tabs');
  const badges = await t.everyone(() => window.tidings.badge);
  assert(badges.every((b) => b === 100), `badge is 100 in every tab (not multiplied): ${badges}`);
  const sockets = await t.openSockets();
  assert(sockets === 1, `exactly one WebSocket open in the browser, got ${sockets}`);
  const opened = (await t.everyone(() => window.__ws.opened)).reduce((a, b) => a + b, 0);
  assert(opened === 1, `one WebSocket ever opened, got ${opened}`);
  assert((await presence(user)) === 1, 'server presence: one connection');
  const perTab = [...t.log.shown.values()].flat().reduce((m, l) => ((m[l] = (m[l] ?? 0) + 1), m), {});
  console.log(`   shown per tab: ${JSON.stringify(perTab)}; sockets open: ${sockets}; badges: ${badges}`);
  await t.ctx.close();
});

test('failover: the leader closes mid-stream; another tab takes over, nothing lost, nothing shown twice', async () => {
  const user = uniq('e2efo');
  const t = await newContext();
  for (let i = 0; i < 3; i++) await t.open(`user=${user}&topics=&sw=0`);
  await until('connected', async () => (await t.everyone(() => window.tidings.state.kind)).every((s) => s === 'connected'));
  const oldLeader = await t.leader();
  const oldTab = await oldLeader.evaluate(() => window.tidings.tabId);
  const ids = [];
  let closedAt = -1;
  for (let i = 0; i < 100; i++) {
    ids.push(await publishOne(user, `fo${i}`));
    if (i === 40) {
      closedAt = i;
      await oldLeader.close();
    }
    await sleep(15);
  }
  await until('a new leader', async () => (await t.leader()) !== null);
  const newLeader = await t.leader();
  const newTab = await newLeader.evaluate(() => window.tidings.tabId);
  assert(newTab !== oldTab, 'a different tab leads');
  await until('all 100 in the surviving tabs', async () =>
    (await t.everyone(() => window.__tidings.notifications.length)).every((n) => n >= 100),
  20000);
  await sleep(500);
  for (const p of t.live()) {
    const got = await p.evaluate(() => window.__tidings.notifications);
    assert(got.length === 100 && new Set(got).size === 100, `surviving tab got each of the 100 once (${got.length})`);
    assert(ids.every((id) => got.includes(id)), 'nothing lost');
  }
  // A toast raised by the old leader in its last instant cannot be reported to this script (the page is gone):
  // such ids must have been granted to the old leader, as every surviving tab agrees.
  let diedShowing = 0;
  for (const id of ids.filter((i) => !t.log.shown.has(i))) {
    const by = await t.everyone((i) => window.tidings.shownBy(i), id);
    assert(by.every((b) => b === oldTab), `${id} was never shown (granted to ${by})`);
    t.log.shown.set(id, ['tab0(closing)']);
    diedShowing++;
  }
  checkShownOnce(t.log, ids, 'failover');
  const sockets = await t.openSockets();
  assert(sockets === 1, `one WebSocket after the takeover, got ${sockets}`);
  const continuity = await newLeader.evaluate(() => window.__tidings.continuity.filter((c) => c.stream.startsWith('user:')));
  const last = continuity[continuity.length - 1];
  const stats = await newLeader.evaluate(() => window.tidings.stats());
  console.log(
    `   leader closed after #${closedAt}; new leader resumed: ${JSON.stringify(last)}; ` +
      `shown by the old leader: ${[...t.log.shown.values()].flat().filter((l) => l.startsWith('tab0')).length} ` +
      `(${diedShowing} as it closed); ` +
      `duplicates dropped by the new leader: ${stats.duplicatesDropped}`,
  );
  assert(last?.kind === 'resumed', `the new leader resumed from the shared cursor (${JSON.stringify(last)})`);
  await t.ctx.close();
});

test('a frozen leader (JS paused, no freeze event) is replaced: another tab steals the lock and resumes; nothing lost or twice', async () => {
  const user = uniq('e2efz');
  const t = await newContext();
  for (let i = 0; i < 2; i++) await t.open(`user=${user}&topics=&sw=0`);
  await until('connected', async () => (await t.everyone(() => window.tidings.state.kind)).every((s) => s === 'connected'));
  const first = await publish([user], 10);
  await until('10 each', async () => (await t.everyone(() => window.__tidings.notifications.length)).every((n) => n >= 10));
  const frozen = await t.leader();
  const other = t.live().find((p) => p !== frozen);
  // Page.setWebLifecycleState does not freeze a visible headless page; pausing its JavaScript in the debugger
  // stops it just as hard (no timers, no channel, no `freeze` event).
  const cdp = await t.ctx.newCDPSession(frozen);
  await cdp.send('Debugger.enable');
  await cdp.send('Debugger.pause');
  const whilePaused = await publish([user], 5); // sent to the paused leader's socket: queued in its renderer
  await until('the other tab leads and is connected', () =>
    other.evaluate(() => window.tidings.role === 'leader' && window.tidings.state.kind === 'connected'),
  );
  const during = await publish([user], 10);
  await until('delivered while the old leader is frozen', () =>
    other.evaluate((n) => window.__tidings.notifications.length >= n, 25),
  );
  await cdp.send('Debugger.resume');
  await until('the resumed tab follows', () => frozen.evaluate(() => window.tidings.role === 'follower'));
  const after = await publish([user], 10);
  await until('the resumed tab gets new notifications', async () => {
    const got = await frozen.evaluate(() => window.__tidings.notifications);
    return after.every((id) => got.includes(id));
  });
  await sleep(300);
  checkShownOnce(t.log, [...first, ...whilePaused, ...during, ...after], 'freeze');
  const got = await other.evaluate(() => window.__tidings.notifications);
  assert([...first, ...whilePaused, ...during, ...after].every((id) => got.includes(id)), 'nothing lost');
  assert(new Set(got).size === got.length, 'nothing delivered twice');
  assert((await t.openSockets()) === 1, 'one WebSocket after the freeze and resume');
  const roles = await t.everyone(() => window.tidings.role);
  assert(roles.filter((r) => r === 'leader').length === 1, `one leader: ${roles}`);
  await t.ctx.close();
});

test('one tab unsubscribing keeps the stream for the others; the last tab to let go drops it', async () => {
  // Defect 6 of issue 12: the leader's unsubscribe used to drop the stream for every tab.
  const user = uniq('e2eun');
  const topic = uniq('topic');
  const t = await newContext();
  for (let i = 0; i < 2; i++) await t.open(`user=${user}&topics=${topic}&sw=0`);
  await until('connected', async () => (await t.everyone(() => window.tidings.state.kind)).every((s) => s === 'connected'));
  const stream = `topic:${topic}`;
  await until('subscribed in every tab', async () =>
    (await t.everyone((s) => window.tidings.cursor(s) !== null, stream)).every(Boolean),
  );
  const leader = await t.leader();
  const follower = t.live().find((p) => p !== leader);
  await leader.evaluate((s) => window.tidings.unsubscribe(s), stream);
  await sleep(300);
  const kept = await publishTopic(topic, 'still wanted by the other tab');
  await until('the other tab still gets the topic', () =>
    follower.evaluate((i) => window.__tidings.notifications.includes(i), kept),
  );
  await follower.evaluate((s) => window.tidings.unsubscribe(s), stream);
  await sleep(500);
  const dropped = await publishTopic(topic, 'nobody wants it');
  await sleep(700);
  const got = await t.everyone((i) => window.__tidings.notifications.includes(i), dropped);
  assert(got.every((g) => !g), `after the last tab let go the stream is unsubscribed: ${got}`);
  await t.ctx.close();
});

test('an operator ends a topic subscription: every tab is told, and no tab brings the topic back after a leader change', async () => {
  // POST /v1/admin/unsubscribe ends the subscription on the leader's socket; the frame is relayed to the other tabs.
  const user = uniq('e2eou');
  const topic = uniq('topic');
  const stream = `topic:${topic}`;
  const t = await newContext();
  for (let i = 0; i < 3; i++) await t.open(`user=${user}&topics=${topic}&sw=0`);
  await until('connected', async () => (await t.everyone(() => window.tidings.state.kind)).every((s) => s === 'connected'));
  await until('subscribed in every tab', async () =>
    (await t.everyone((s) => window.tidings.cursor(s) !== null, stream)).every(Boolean),
  );
  await t.everyone(() => {
    window.__failed = [];
    window.tidings.addEventListener('subscriptionfailed', (e) => window.__failed.push(e.detail));
  });
  const r = await fetch(`${base}/v1/admin/unsubscribe`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer tidings-dev-key' },
    body: JSON.stringify({ user, stream }),
  });
  assert(r.ok, `unsubscribe: HTTP ${r.status}`);
  await until('every tab told the subscription ended', async () =>
    (await t.everyone((s) => window.__failed.some((f) => f.stream === s && f.code === 'forbidden'), stream)).every(Boolean),
  );
  const ended = await publishTopic(topic, 'after the operator ended it');
  const mine = await publishOne(user, 'the user stream goes on');
  await until('the user stream in every tab', async () =>
    (await t.everyone((i) => window.__tidings.notifications.includes(i), mine)).every(Boolean),
  );
  // The leader goes: another tab takes the socket over and every tab says hello with the streams it wants.
  const oldLeader = await t.leader();
  await oldLeader.close();
  await until('a new leader, connected', async () => {
    const leader = await t.leader();
    return leader !== null && (await leader.evaluate(() => window.tidings.state.kind)) === 'connected';
  });
  await sleep(500);
  const after = await publishTopic(topic, 'after the leader change');
  const mine2 = await publishOne(user, 'the user stream after the leader change');
  await until('the user stream in every tab after the leader change', async () =>
    (await t.everyone((i) => window.__tidings.notifications.includes(i), mine2)).every(Boolean),
  );
  await sleep(500);
  const got = await t.everyone((ids) => ids.filter((i) => window.__tidings.notifications.includes(i)), [ended, after]);
  assert(got.every((g) => g.length === 0), `nothing of the ended topic arrives, not even after a leader change: ${JSON.stringify(got)}`);
  await t.ctx.close();
});

test('reload resumes from the stored cursor and dedups', async () => {
  const user = uniq('e2erl');
  const t = await newContext();
  const page = await t.open(`user=${user}&topics=&sw=0`);
  await until('connected', () => page.evaluate(() => window.tidings.state.kind === 'connected'));
  const first = await publish([user], 10);
  await until('10', () => page.evaluate(() => window.__tidings.notifications.length >= 10));
  await sleep(700); // a routine persist (500 ms) — the reload below also writes on pagehide
  await page.reload();
  const second = await publish([user], 10);
  await page.waitForFunction(() => window.tidings !== undefined);
  await until('reconnected', () => page.evaluate(() => window.tidings.state.kind === 'connected'));
  await until('the 10 published during the reload', () =>
    page.evaluate((n) => window.__tidings.notifications.length >= n, 10),
  );
  await sleep(500);
  const after = await page.evaluate(() => window.__tidings);
  assert(after.notifications.length === 10, `after reload: exactly the 10 new ones, got ${after.notifications.length}`);
  assert(second.every((id) => after.notifications.includes(id)), 'nothing published during the reload was lost');
  assert(!first.some((id) => after.notifications.includes(id)), 'nothing from before the reload came back');
  const c = after.continuity.find((x) => x.stream === `user:${user}`);
  assert(c?.kind === 'resumed', `resumed from the cursor: ${JSON.stringify(c)}`);
  console.log(`   after reload: ${JSON.stringify(c)}`);
  checkShownOnce(t.log, [...first, ...second], 'reload');
  await t.ctx.close();
});

test('digests: a burst of grouped informational notifications is one digest per tab, shown in one tab', async () => {
  const user = uniq('e2edg');
  const t = await newContext();
  for (let i = 0; i < 2; i++) await t.open(`user=${user}&topics=&sw=0`);
  await until('connected', async () => (await t.everyone(() => window.tidings.state.kind)).every((s) => s === 'connected'));
  const ids = await publish([user], 5, { priority: 'informational', group: 'likes:post-1' });
  await until('a digest in every tab', async () =>
    (await t.everyone(() => window.__tidings.digests.length)).every((n) => n === 1),
  10000);
  const digests = await t.everyone(() => window.__tidings.digests[0]);
  for (const d of digests) assert(JSON.stringify(d.ids) === JSON.stringify(ids), `digest holds the 5 ids: ${d.ids}`);
  assert(digests.filter((d) => d.shown).length === 1, `the digest is shown in one tab: ${JSON.stringify(digests)}`);
  const badges = await t.everyone(() => window.tidings.badge);
  assert(badges.every((b) => b === 5), `badge counts the digest's 5 once per browser: ${badges}`);
  await t.ctx.close();
});

test('reconnects release their sockets and callbacks (operator drops the connection 5 times)', async () => {
  const user = uniq('e2edrop');
  const t = await newContext();
  const page = await t.open(`user=${user}&topics=&sw=0`);
  await until('connected', () => page.evaluate(() => window.tidings.state.kind === 'connected'));
  // A dropped client may be back within one poll, so the test counts what happened (the server's count of dropped
  // connections, the sockets the client opened, the states it reported) instead of trying to catch it offline.
  for (let i = 0; i < 5; i++) {
    const r = await fetch(`${base}/v1/admin/drop`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer tidings-dev-key' },
      body: JSON.stringify({ user }),
    });
    assert(r.ok, `drop: HTTP ${r.status}`);
    const { dropped } = await r.json();
    assert(dropped === 1, `drop ${i + 1}: the server dropped one connection, got ${dropped}`);
    await until(`socket ${i + 2} connected`, () =>
      page.evaluate(
        (n) => window.tidings.stats().socketsOpened === n && window.tidings.state.kind === 'connected',
        i + 2,
      ),
    15000);
  }
  const states = await page.evaluate(() => window.__tidings.states);
  const offline = states.filter((k, j) => k !== 'connected' && states[j - 1] === 'connected').length;
  assert(offline === 5, `the client reported leaving 'connected' once per drop: ${JSON.stringify(states)}`);
  await sleep(100);
  const s = await page.evaluate(() => window.tidings.stats());
  const ws = await page.evaluate(() => window.__ws);
  assert(s.socketsOpened === 6, `6 sockets over the test, got ${s.socketsOpened}`);
  assert(s.liveSockets === 1, `only the current socket is held by the driver, got ${s.liveSockets}`);
  assert(ws.open === 1, `one WebSocket open, got ${ws.open}`);
  const id = await publishOne(user, 'after drops');
  await until('delivery after the drops', () => page.evaluate((i) => window.__tidings.notifications.includes(i), id));
  console.log(`   ${JSON.stringify({ socketsOpened: s.socketsOpened, liveSockets: s.liveSockets, open: ws.open })}`);
  await t.ctx.close();
});

test('fallback election without Web Locks (localStorage lease): one socket, takeover', async () => {
  const user = uniq('e2elease');
  const t = await newContext();
  await t.ctx.addInitScript(() => {
    Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined });
  });
  for (let i = 0; i < 2; i++) await t.open(`user=${user}&topics=&sw=0`);
  await until('connected', async () => (await t.everyone(() => window.tidings.state.kind)).every((s) => s === 'connected'));
  assert((await t.openSockets()) === 1, 'one socket with the lease');
  const ids = await publish([user], 20);
  await until('20 each', async () => (await t.everyone(() => window.__tidings.notifications.length)).every((n) => n >= 20));
  const leader = await t.leader();
  await leader.close();
  const more = await publish([user], 20);
  await until('the other tab leads and gets the rest', async () => {
    const [n] = await t.everyone(() => window.__tidings.notifications.length);
    return n >= 40;
  }, 15000);
  checkShownOnce(t.log, [...ids, ...more], 'lease');
  assert((await t.openSockets()) === 1, 'one socket after the lease takeover');
  await t.ctx.close();
});

test('the push helper reads the VAPID public key from the server, and says why when it cannot', async () => {
  const t = await newContext();
  const page = await t.open(`user=${uniq('e2evk')}&topics=&sw=0`);
  const got = await page.evaluate(async (base) => {
    const sw = await import('/pkg/sw.js');
    const key = await sw.fetchVapidPublicKey(base);
    const slash = await sw.fetchVapidPublicKey(`${base}/`);
    const missing = await sw.fetchVapidPublicKey(`${base}/no-such-prefix`).then(
      () => 'resolved',
      (e) => e.message,
    );
    return { key, slash, missing };
  }, base);
  assert(got.key === VAPID_PUBLIC_KEY && got.slash === VAPID_PUBLIC_KEY, `the served key: ${JSON.stringify(got)}`);
  assert(/HTTP 404/.test(got.missing) && got.missing.includes('no-such-prefix'), `the error: ${got.missing}`);
  console.log(`   key read from ${base}/v1/push/vapid-public-key; a wrong base URL: ${got.missing}`);
  await t.ctx.close();
});

test('service worker push: deduped against the socket, shown once, tabs told', async () => {
  const user = uniq('e2esw');
  const t = await newContext();
  await t.ctx.grantPermissions(['notifications'], { origin: base });
  const page = await t.open(`user=${user}&topics=`);
  await until('connected', () => page.evaluate(() => window.tidings.state.kind === 'connected'));
  await page.evaluate(() => navigator.serviceWorker.ready);
  const id = await publishOne(user, 'via socket');
  await until('socket delivery', () => page.evaluate((i) => window.__tidings.notifications.includes(i), id));
  const envelope = await page.evaluate(
    async ([id, user]) => ({
      id,
      stream: `user:${user}`,
      epoch: 'e',
      type: 'e2e',
      priority: 'important',
      persistence: 'bufferable',
      title: 'via push',
      offset: 1000000,
      created_at: Date.now(),
    }),
    [id, user],
  );
  await sleep(700); // the leader persists its snapshot (500 ms) to IndexedDB, which the worker reads
  const viaWorker = (payload) =>
    page.evaluate(async (payload) => {
      const reg = await navigator.serviceWorker.ready;
      return new Promise((resolve) => {
        const ref = Math.random();
        navigator.serviceWorker.addEventListener('message', function on(e) {
          if (e.data?.ref === ref) {
            navigator.serviceWorker.removeEventListener('message', on);
            resolve(e.data);
          }
        });
        reg.active.postMessage({ type: 'tidings-push', ref, payload });
      });
    }, payload);
  const dup = await viaWorker(JSON.stringify({ tidings: envelope }));
  assert(dup.show === false, `a push for a notification the socket delivered is not shown: ${JSON.stringify(dup)}`);
  const fresh = { ...envelope, id: `push-${Date.now()}`, title: 'push only' };
  const shown = await viaWorker(JSON.stringify({ tidings: fresh }));
  assert(shown.show === true, `a new push is shown: ${JSON.stringify(shown)}`);
  // Defect 8 of issue 12: a showNotification failure used to be logged, not failed on.
  assert(shown.error === undefined, `the worker displayed it without an error: ${shown.error}`);
  const displayed = await page.evaluate(async (tag) => {
    const reg = await navigator.serviceWorker.ready;
    return (await reg.getNotifications({ tag })).map((n) => n.title);
  }, fresh.id);
  assert(displayed.length === 1 && displayed[0] === 'push only', `one system notification shown: ${displayed}`);
  const again = await viaWorker(JSON.stringify({ tidings: fresh }));
  assert(again.show === false, 'the same push twice is shown once');
  await until('the tab learned it', () => page.evaluate((i) => window.__tidings.notifications.includes(i), fresh.id));
  const inTab = await page.evaluate((p) => window.tidings.ingestPush(p), JSON.stringify({ tidings: fresh }));
  assert(inTab.show === false, 'the page dedups a push the worker showed');
  // The worker's write merged into IndexedDB: the page's cursor is still there beside the worker's id.
  const stored = await page.evaluate(async () => {
    const { idbGet } = await import('/pkg/storage.js');
    return JSON.parse(await idbGet('tidings:snapshot'));
  });
  assert(stored.cursors?.[`user:${user}`]?.offset >= 1, `the page's cursor survives the worker's write: ${JSON.stringify(stored.cursors)}`);
  assert(stored.scope === undefined, 'the stored snapshot is a full one');
  console.log(`   worker: duplicate → show=${dup.show}; new → show=${shown.show}; displayed ${displayed.length}`);
  await t.ctx.close();
});

test('demo inbox panel across tabs: one badge everywhere, mark read / archive / mark all in any tab updates all', async () => {
  const user = uniq('e2einbox');
  const t = await newContext();
  const a = await t.open(`user=${user}&topics=&sw=0`);
  const b = await t.open(`user=${user}&topics=&sw=0`);
  await until('both tabs connected', async () =>
    (await t.everyone(() => window.tidings.state.kind === 'connected')).every(Boolean));
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await publishOne(user, `inbox ${i}`, { persistence: 'persistent' }));
  const panel = () =>
    t.everyone(() => ({
      badge: document.getElementById('inbox-badge').textContent,
      items: [...document.querySelectorAll('#inbox-list li')].map((li) => ({
        id: li.dataset.id,
        state: li.className,
        text: li.querySelector('.text b').textContent,
      })),
    }));
  const all = (what, pred) => until(what, async () => (await panel()).every(pred));
  await all('3 unread items in both tabs', (p) => p.badge === '3' && p.items.length === 3 && p.items.every((i) => i.state === 'unread'));
  const first = await panel();
  assert(JSON.stringify(first[0].items.map((i) => i.id)) === JSON.stringify([...ids].reverse()), `newest first: ${JSON.stringify(first[0].items)}`);
  assert(first[0].items[0].text === 'inbox 2', `items show their notification: ${JSON.stringify(first[0].items[0])}`);
  // Whichever tab leads, the other one's changes go through it.
  const leader = await t.leader();
  const follower = leader === a ? b : a;
  await follower.click(`#inbox-list li[data-id="${ids[0]}"] button[data-action="read"]`);
  await all('read in both tabs', (p) => p.badge === '2' && p.items.find((i) => i.id === ids[0])?.state === 'read');
  await leader.click(`#inbox-list li[data-id="${ids[1]}"] button[data-action="archive"]`);
  await all('archived in both tabs', (p) => p.badge === '1' && p.items.length === 2 && !p.items.some((i) => i.id === ids[1]));
  const late = await publishOne(user, 'inbox late', { persistence: 'persistent' });
  await all('a new item in both tabs', (p) => p.badge === '2' && p.items[0]?.id === late);
  await follower.click('#inbox-all');
  await all('all read in both tabs', (p) => p.badge === '0' && p.items.every((i) => i.state === 'read'));
  // The counts each tab saw only moved forward and never exceeded what the server had (no multiplying by tabs).
  for (const seen of await t.everyone(() => window.__tidings.inboxCounts)) {
    for (let i = 1; i < seen.length; i++) assert(seen[i].version > seen[i - 1].version, `versions grow: ${JSON.stringify(seen)}`);
    assert(seen.every((c) => c.unread <= 3 && c.unread >= 0 && c.total <= 4), `counts stay within the inbox: ${JSON.stringify(seen)}`);
  }
  // A third tab opened now shows the same inbox at once (from the leader's state and the server).
  const c = await t.open(`user=${user}&topics=&sw=0`);
  await until('the new tab agrees', async () => {
    const p = await c.evaluate(() => ({
      badge: document.getElementById('inbox-badge').textContent,
      n: document.querySelectorAll('#inbox-list li').length,
    }));
    return p.badge === '0' && p.n === 3;
  });
  const final = await panel();
  console.log(`   ${JSON.stringify(final.map((p) => ({ badge: p.badge, items: p.items.map((i) => `${i.text}:${i.state}`) })))}`);
  await t.ctx.close();
});

test('SSE: a real EventSource with a ticket; the server drops it mid-stream, it reconnects with Last-Event-ID: nothing lost or twice', async () => {
  const user = uniq('e2esse');
  const topic = uniq('ssenews');
  const tr = await fetch(`${base}/v1/demo/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user, topics: [topic] }),
  });
  assert(tr.ok, `token: HTTP ${tr.status}`);
  const { token } = await tr.json();
  // A page of the server's origin with nothing on it: the test drives a plain EventSource, no SDK.
  mkdirSync(join(WEB_ROOT, 'sse-e2e'), { recursive: true });
  writeFileSync(join(WEB_ROOT, 'sse-e2e/index.html'), '<!doctype html><meta charset="utf-8"><title>sse</title>\n');
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.log(`   [page error] ${e.message}`));
  // What the browser itself sends: the EventSource's requests and their Last-Event-ID headers.
  const seenRequests = [];
  page.on('request', (r) => {
    if (r.url().includes('/v1/sse?')) {
      seenRequests.push(r.allHeaders().then((h) => ({ url: r.url(), lastEventId: h['last-event-id'] ?? null })));
    }
  });
  await page.goto(`${base}/sse-e2e/`);
  await page.evaluate(
    async ({ token, topic }) => {
      // The ticket is got with the token (protocol §15.3): the long-lived token never goes into the URL.
      const r = await fetch('/v1/sse/tickets', { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
      const { ticket } = await r.json();
      const rec = { opens: 0, ids: [], streams: [], continuity: [], errors: [], lastIds: [] };
      window.__sse = rec;
      const es = new EventSource(`/v1/sse?ticket=${encodeURIComponent(ticket)}&topics=${encodeURIComponent(topic)}`);
      window.__es = es;
      es.onopen = () => rec.opens++;
      es.onmessage = (e) => {
        const n = JSON.parse(e.data);
        rec.ids.push(n.id);
        rec.streams.push(n.stream.split(':')[0]);
        rec.lastIds.push(e.lastEventId);
      };
      es.addEventListener('continuity', (e) => rec.continuity.push(JSON.parse(e.data)));
      es.addEventListener('error', (e) => rec.errors.push(e.data ? JSON.parse(e.data).code : 'transport'));
    },
    { token, topic },
  );
  await until('the stream open', () => page.evaluate(() => window.__sse.opens === 1 && window.__sse.continuity.length === 2));
  const sent = [];
  for (let i = 0; i < 10; i++) sent.push(await (i % 2 ? publishTopic(topic, `s${i}`) : publishOne(user, `s${i}`)));
  await until('the first 10', () => page.evaluate(() => window.__sse.ids.length >= 10));
  // The server drops the stream (an operator drop, as in a deploy); more is published while it is away.
  const d = await fetch(`${base}/v1/admin/drop`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer tidings-dev-key' },
    body: JSON.stringify({ user }),
  });
  assert(d.ok && (await d.json()).dropped === 1, 'the server dropped the stream');
  for (let i = 10; i < 20; i++) sent.push(await (i % 2 ? publishTopic(topic, `s${i}`) : publishOne(user, `s${i}`)));
  // EventSource reconnects by itself after `retry:` (2 s) with the last id it saw.
  await until('reconnected and caught up', () => page.evaluate((n) => window.__sse.opens === 2 && window.__sse.ids.length >= n, 20), 20000);
  for (let i = 20; i < 25; i++) sent.push(await (i % 2 ? publishTopic(topic, `s${i}`) : publishOne(user, `s${i}`)));
  await until('live after the resume', () => page.evaluate((n) => window.__sse.ids.length >= n, 25));
  await sleep(300);
  const rec = await page.evaluate(() => {
    window.__es.close();
    return window.__sse;
  });
  // Each stream in order (after the resume each stream's replay comes after its continuity event), each id once.
  const byStream = (ids, streams, kind) => ids.filter((_, i) => streams[i] === kind);
  const sentStreams = sent.map((_, i) => (i % 2 ? 'topic' : 'user'));
  for (const kind of ['user', 'topic']) {
    const got = byStream(rec.ids, rec.streams, kind);
    const want = byStream(sent, sentStreams, kind);
    assert(JSON.stringify(got) === JSON.stringify(want), `${kind} stream: every notification once, in order: ${JSON.stringify(got)} vs ${JSON.stringify(want)}`);
  }
  assert(rec.ids.length === sent.length && new Set(rec.ids).size === sent.length, `nothing twice: ${rec.ids.length} events for ${sent.length}`);
  assert(rec.errors.includes('dropped'), `the server said why it ended the stream first: ${JSON.stringify(rec.errors)}`);
  const requests = await Promise.all(seenRequests);
  assert(requests.length === 2, `two stream requests (the open and one reconnect), got ${JSON.stringify(requests)}`);
  assert(requests[0].lastEventId === null, 'the first request has no Last-Event-ID');
  const lastBeforeDrop = rec.lastIds[9];
  assert(requests[1].lastEventId === lastBeforeDrop, `the reconnect sent the last id seen (${requests[1].lastEventId} vs ${lastBeforeDrop})`);
  assert(requests[1].url === requests[0].url, 'the reconnect used the same URL (the ticket bound to the stream)');
  const resumed = rec.continuity.slice(2).map((c) => `${c.stream.split(':')[0]}:${c.continuity}:${c.replayed ?? 0}`).sort();
  assert(JSON.stringify(resumed) === JSON.stringify(['topic:resumed:5', 'user:resumed:5']), `after the resume, first the continuity of both streams with the 5 each missed: ${JSON.stringify(resumed)}`);
  console.log(`   ${JSON.stringify({ received: rec.ids.length, opens: rec.opens, resumed })}`);
  await ctx.close();
});

test('the package works from a bundler (esbuild bundle of `@tidings/web`)', async () => {
  const esbuild = await import('esbuild');
  const out = join(WEB_ROOT, 'bundled');
  mkdirSync(out, { recursive: true });
  writeFileSync(
    join(here, '.bundle-entry.mjs'),
    `import { TidingsClient } from '@tidings/web';
     const user = new URLSearchParams(location.search).get('user');
     window.client = await TidingsClient.connect({
       name: 'bundled', streams: [],
       wasmUrl: new URL('./tidings_wasm_bg.wasm', import.meta.url),
       token: async () => (await (await fetch('/v1/demo/token', { method: 'POST', headers: { 'Content-Type': 'application/json' },
         body: JSON.stringify({ user }) })).json()).token,
     });`,
  );
  await esbuild.build({
    entryPoints: [join(here, '.bundle-entry.mjs')],
    bundle: true,
    format: 'esm',
    minify: true,
    outfile: join(out, 'app.js'),
    alias: { '@tidings/web': join(WEB_ROOT, 'pkg/tidings.js') },
    logLevel: 'warning',
  });
  cpSync(join(WEB_ROOT, 'pkg/dist/tidings_wasm_bg.wasm'), join(out, 'tidings_wasm_bg.wasm'));
  writeFileSync(join(out, 'index.html'), '<!doctype html><script type="module" src="./app.js"></script>');
  const user = uniq('e2ebundle');
  const t = await newContext();
  const page = await t.ctx.newPage();
  page.on('pageerror', (e) => console.log(`   [page error] ${e.message}`));
  await page.goto(`${base}/bundled/?user=${user}`);
  await page.waitForFunction(() => window.client?.state.kind === 'connected', null, { timeout: 15000 });
  await page.evaluate(() => {
    window.got = [];
    window.client.addEventListener('notification', (e) => window.got.push(e.detail.notification.id));
  });
  const id = await publishOne(user, 'bundled');
  await until('delivery in the bundled page', () => page.evaluate((i) => window.got.includes(i), id));
  await t.ctx.close();
});

// ---------------------------------------------------------------------------------------------------------------

let failed = 0;
for (const { name, fn } of tests) {
  if (filter && !name.includes(filter)) continue;
  const started = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)\n     ${e.stack ?? e}`);
  }
}
await browser.close();
server.kill();
rmSync(dataDir, { recursive: true, force: true });
if (failed) {
  console.log(`\n${failed} browser end-to-end test(s) failed; server log tail:\n${serverLog.slice(-3000)}`);
  process.exit(1);
}
console.log('\nall browser end-to-end tests passed');
