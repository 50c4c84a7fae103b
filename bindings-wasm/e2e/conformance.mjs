// The conformance scenarios (tests/conformance/scenarios.json; step vocabulary in tests/conformance/README.md)
// interpreted through the browser package's public API (`js/tidings.js`, `tidings.d.ts`) in real headless
// Chromium (playwright-core driving /usr/bin/chromium), against the reference server `cargo xtask wasm-test`
// starts in demo mode with the file's replay buffer:
//
//   TIDINGS_WS_URL=… TIDINGS_HTTP_URL=… TIDINGS_API_KEY=… TIDINGS_WEB_ROOT=<the server's --web-root> \
//     node conformance.mjs [scenario-name-filter]
//
// Same interpretation as the Rust, Swift and Kotlin runners. Every scenario client is an independent SDK client:
// its own browser context (its own storage, Web Locks and BroadcastChannel, so no other tab shares its socket),
// one page that imports `/pkg/tidings.js` from the server. How the steps map to the browser:
//
// - `connect`: `TidingsClient.connect({url, token, name, streams: [], batchWindowMs, backoffBaseMs: 50,
//   backoffCapMs: 500, backgroundGraceMs})`; the token provider counts its calls and returns the token the runner
//   got from `POST /v1/demo/token` (or `not-a-jwt`). The context's storage is empty (the "fresh store").
// - delivered = `notification` events with `source: 'socket'` (what the engine delivered) and the ids of `digest`
//   events. `ingestPush` reports its own outcome (`{show, notification | id}`) and, for `show`, also raises a
//   `notification` event with `source: 'push'` (badges, other tabs); like `ingest_push` on the other platforms,
//   that is the push path's outcome, not a delivery, so it is not counted.
// - `set_network`: Playwright's `context.setOffline` (Chromium network emulation: `navigator.onLine` flips and
//   the `online`/`offline` events the binding listens to fire; new sockets fail while offline).
// - `background` / `foreground`: the page's visibility, which the binding feeds to the engine. Headless Chromium
//   never hides a page (a minimized window — CDP `Browser.setWindowBounds` — or an inactive tab stay `visible`,
//   and CDP has no visibility override), so the runner does what the browser would: `document.hidden` and
//   `document.visibilityState` report hidden / visible and `visibilitychange` is dispatched on `document` — the
//   event and the properties the binding (its driver and `tidings.js`) reads.
// - `assert_connection_attempts`: `client.stats().connectionAttempts`.
// - `assert_stats`: `client.stats()` (camelCase) under the scenarios' snake_case names.
// - `close`: `client.close()`; the state is then `closed`.
// - `register_push`: a Web Push subscription made at the mock push service (`POST <push harness>/subscriptions/
//   <client>`: a real browser cannot subscribe at a mock), registered with `client.registerPush('web_push', …)`; the
//   page registers the conformance service worker (`/conformance/sw.js`: `installTidingsPush` from `/pkg/sw.js`).
// - `wait_push`: the push harness decrypts what the server sent to the mock (RFC 8291, with the subscription's
//   keys): that plaintext is what the browser would hand the service worker.
// - `ingest_sent_push`: a real `push` event in the client's service worker, fired through the DevTools protocol
//   (`ServiceWorker.deliverPushMessage`) with that plaintext; the worker's `onPush` result (posted on a
//   BroadcastChannel) is the outcome. The worker relays what it showed to the page's client over the SDK's
//   BroadcastChannel, so the page's engine sees it as seen.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchChromium } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const SCENARIOS = process.env.TIDINGS_SCENARIOS ?? resolve(here, '../../tests/conformance/scenarios.json');
const WAIT_MS = 20000;
const filter = process.argv[2] ?? '';

function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`conformance.mjs: ${name} is not set (run it with \`cargo xtask wasm-test\`)`);
    process.exit(2);
  }
  return v;
}
const WS_URL = env('TIDINGS_WS_URL');
const HTTP_URL = env('TIDINGS_HTTP_URL').replace(/\/$/, '');
const API_KEY = env('TIDINGS_API_KEY');
const WEB_ROOT = env('TIDINGS_WEB_ROOT');
const CONTROL_URL = process.env.TIDINGS_CONTROL_URL?.replace(/\/$/, '');
const PUSH_HARNESS_URL = (process.env.TIDINGS_PUSH_HARNESS_URL ?? '').replace(/\/$/, '');

// The page every client runs in: same origin as the package (`/pkg/tidings.js`), nothing else on it.
mkdirSync(join(WEB_ROOT, 'conformance'), { recursive: true });
writeFileSync(join(WEB_ROOT, 'conformance/index.html'), '<!doctype html><meta charset="utf-8"><title>conformance</title>\n');
// The clients' service worker: the package's push handler, with the client's name and token from its URL; each
// push's result goes to the runner over a BroadcastChannel.
writeFileSync(
  join(WEB_ROOT, 'conformance/sw.js'),
  `import { installTidingsPush } from '/pkg/sw.js';
const params = new URL(self.location.href).searchParams;
const results = new BroadcastChannel('conformance-push');
installTidingsPush({
  name: params.get('name'),
  token: () => params.get('token'),
  onPush: (result) => results.postMessage(result),
});
self.addEventListener('install', () => self.skipWaiting());
`,
);

const file = JSON.parse(readFileSync(SCENARIOS, 'utf8'));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class StepFailure extends Error {}

function fail(message) {
  throw new StepFailure(message);
}

function assertEq(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) fail(`${what}: got ${g}, expected ${w}`);
}

async function get(path) {
  const r = await fetch(HTTP_URL + path, { headers: { Authorization: `Bearer ${API_KEY}` } });
  const text = await r.text();
  if (!r.ok) fail(`GET ${path}: HTTP ${r.status} ${text}`);
  return JSON.parse(text);
}

async function harness(method, path) {
  if (!PUSH_HARNESS_URL) fail('TIDINGS_PUSH_HARNESS_URL is not set (run with `cargo xtask wasm-test`)');
  const r = await fetch(PUSH_HARNESS_URL + path, { method });
  const text = await r.text();
  if (!r.ok) fail(`${method} ${path} at the push harness: HTTP ${r.status} ${text}`);
  return JSON.parse(text);
}

/** The ids a push payload (the Web Push plaintext, protocol §11.1) stands for, and its form. */
function pushIds(text) {
  let p;
  try {
    p = JSON.parse(text);
  } catch {
    return { ids: [], form: 'invalid' };
  }
  if (p?.tidings?.id) return { ids: [p.tidings.id], form: 'full' };
  if (p?.tidings_fetch?.id) return { ids: [p.tidings_fetch.id], form: 'lightweight' };
  if (Array.isArray(p?.tidings_summary?.ids)) return { ids: p.tidings_summary.ids, form: 'summary' };
  return { ids: [], form: 'invalid' };
}

async function post(path, body, auth = true) {
  const r = await fetch(HTTP_URL + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(auth ? { Authorization: `Bearer ${API_KEY}` } : {}) },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) fail(`POST ${path} ${JSON.stringify(body)}: HTTP ${r.status} ${text}`);
  return JSON.parse(text);
}

const browser = await launchChromium();

let RUN = 0;

/** Runs one scenario's steps; names are prefixed so that scenarios sharing the server cannot see each other. */
class Runner {
  constructor(scenario) {
    this.scenario = scenario;
    this.prefix = `w${process.pid}x${RUN++}`;
    this.clients = new Map();
    this.deliveries = new Map();
    /** The push the server sent for `<client>/<id>` (`wait_push`). */
    this.sent = new Map();
    /** Each client's Web Push subscription id at the mock (`register_push`; kept after `close`). */
    this.pushTargets = new Map();
  }

  /** Polls `cond` until it holds; fails after 20 s. */
  async poll(what, cond) {
    const end = Date.now() + WAIT_MS;
    while (!(await cond())) {
      if (Date.now() > end) fail(`timed out after ${WAIT_MS / 1000} s waiting for ${what}`);
      await sleep(25);
    }
  }

  /**
   * Registers the client's service worker (once) and returns its registration id for the DevTools protocol; the
   * page collects the worker's push results in `window.__conformance.pushResults`.
   */
  async worker(c) {
    if (c.registrationId) return c.registrationId;
    const cdp = await c.ctx.newCDPSession(c.page);
    const scope = `${HTTP_URL}/conformance/`;
    let id = null;
    cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => {
      for (const r of e.registrations) if (r.scopeURL === scope && !r.isDeleted) id = r.registrationId;
    });
    await cdp.send('ServiceWorker.enable');
    const url = `/conformance/sw.js?${new URLSearchParams({ name: c.name, token: c.token })}`;
    await c.page.evaluate(async (url) => {
      window.__conformance.pushResults = [];
      const results = new BroadcastChannel('conformance-push');
      results.onmessage = (e) => window.__conformance.pushResults.push(e.data);
      await navigator.serviceWorker.register(url, { type: 'module', scope: '/conformance/' });
      await navigator.serviceWorker.ready;
    }, url);
    await this.poll('the service worker registration', () => id !== null);
    c.cdp = cdp;
    c.registrationId = id;
    return id;
  }

  name(s) {
    return `${this.prefix}-${s}`;
  }

  stream(s) {
    const i = s.indexOf(':');
    if (i < 0) fail(`stream ${s} has no kind`);
    return `${s.slice(0, i)}:${this.name(s.slice(i + 1))}`;
  }

  names(list) {
    return (list ?? []).map((s) => this.name(s));
  }

  /** `ids`, or `count` ids `<id_prefix><i>`. */
  ids(step) {
    return step.count !== undefined
      ? Array.from({ length: step.count }, (_, i) => this.name(`${step.id_prefix}${i}`))
      : this.names(step.ids);
  }

  client(step) {
    const c = this.clients.get(step.client);
    if (!c) fail(`no client ${step.client}`);
    return c;
  }

  /** The client's page-side record: `log` (events in order), `state` (now), `tokenFetches`. */
  async record(c) {
    return c.page.evaluate(() => ({
      log: window.__conformance.log,
      state: window.__conformance.client.state,
      tokenFetches: window.__conformance.tokenFetches,
      inboxCounts: window.__conformance.client.inboxCounts,
    }));
  }

  /** Polls the client's record until `pred` holds; fails after 20 s. */
  async until(c, what, pred) {
    const end = Date.now() + WAIT_MS;
    let r;
    for (;;) {
      r = await this.record(c);
      if (pred(r)) return r;
      if (Date.now() > end) {
        fail(`timed out after ${WAIT_MS / 1000} s waiting for ${what}; state ${JSON.stringify(r.state)}; events:\n${describe(r.log)}`);
      }
      await sleep(25);
    }
  }

  async step(step) {
    const op = step.op;
    switch (op) {
      case 'connect':
        return this.connect(step);
      case 'wait_state':
      case 'assert_state': {
        const matches = (s) => s.kind === step.state && (step.reason === undefined || s.reason === step.reason);
        const c = this.client(step);
        if (op === 'wait_state') {
          // The current state, or any state the client reported since this wait began (a state-flow's view).
          const from = (await this.record(c)).log.length;
          await this.until(c, `state ${step.state}${step.reason ? `(${step.reason})` : ''}`, (r) =>
            matches(r.state) || r.log.slice(from).some((e) => e.type === 'state' && matches(e.detail)),
          );
        } else {
          const { state } = await this.record(c);
          if (!matches(state)) fail(`state is ${JSON.stringify(state)}, expected ${step.state}${step.reason ? `(${step.reason})` : ''}`);
        }
        return;
      }
      case 'subscribe': {
        const stream = this.stream(step.stream);
        return this.client(step).page.evaluate((s) => window.__conformance.client.subscribe(s), stream);
      }
      case 'wait_continuity': {
        const stream = this.stream(step.stream);
        const ok = (c) =>
          c.kind === step.kind &&
          (step.replayed === undefined || c.replayed === step.replayed) &&
          (step.reason === undefined || c.reason === step.reason) &&
          (step.missed === undefined || c.missed === step.missed);
        await this.until(this.client(step), `continuity ${JSON.stringify(step)}`, (r) =>
          r.log.some((e) => e.type === 'continuity' && e.detail.stream === stream && ok(e.detail.continuity)),
        );
        return;
      }
      case 'publish':
        return this.publish(step);
      case 'wait_notifications': {
        const ids = this.ids(step);
        await this.until(this.client(step), `ids ${ids}`, (r) => {
          const got = deliveredIds(r.log);
          return ids.every((id) => got.includes(id));
        });
        return;
      }
      case 'assert_order': {
        const ids = this.ids(step);
        const delivered = deliveredIds((await this.record(this.client(step))).log);
        const positions = ids.map((id) => {
          const p = delivered.indexOf(id);
          if (p < 0) fail(`${id} was not delivered; delivered: ${delivered}`);
          return p;
        });
        for (let i = 1; i < positions.length; i++) {
          if (!(positions[i - 1] < positions[i])) fail(`order of ${ids} in ${delivered}`);
        }
        return;
      }
      case 'assert_notification': {
        const id = this.name(step.id);
        const { log } = await this.record(this.client(step));
        const n = notifications(log).find((x) => x.id === id);
        if (!n) fail(`${id} was not delivered as a notification; events:\n${describe(log)}`);
        if (step.stream !== undefined) assertEq(n.stream, this.stream(step.stream), `stream of ${id}`);
        if (step.priority !== undefined) assertEq(n.priority, step.priority, `priority of ${id}`);
        if (step.offset !== undefined) assertEq(n.offset, step.offset, `offset of ${id}`);
        return;
      }
      case 'assert_delivered_exactly': {
        const want = this.ids(step).sort();
        const got = deliveredIds((await this.record(this.client(step))).log).sort();
        assertEq(got, want, 'the delivered ids (each exactly once)');
        return;
      }
      case 'wait_digest': {
        const first = this.name(step.first);
        const last = this.name(step.last);
        await this.until(this.client(step), `digest ${JSON.stringify(step)}`, (r) =>
          r.log.some(
            (e) =>
              e.type === 'digest' &&
              e.detail.digest.group === step.group &&
              e.detail.digest.count === step.count &&
              e.detail.digest.first.id === first &&
              e.detail.digest.last.id === last,
          ),
        );
        return;
      }
      case 'assert_no_digest': {
        const { log } = await this.record(this.client(step));
        if (log.some((e) => e.type === 'digest')) fail(`no digest yet; events:\n${describe(log)}`);
        return;
      }
      case 'ingest_push': {
        const id = this.name(step.id);
        const d = this.deliveries.get(id);
        if (!d) fail(`${id} was not published`);
        const payload = {
          tidings: {
            id,
            stream: d.stream,
            offset: d.offset,
            epoch: d.epoch,
            type: 'conformance',
            priority: 'critical',
            persistence: 'bufferable',
            title: `title ${id}`,
            created_at: 1,
          },
        };
        const outcome = await this.client(step).page.evaluate((p) => window.__conformance.client.ingestPush(p), payload);
        let got;
        if (outcome.show === true) {
          got = 'show';
          assertEq(outcome.notification?.id, id, 'shown notification id');
        } else if (outcome.show === false) {
          got = 'duplicate';
          assertEq(outcome.id, id, 'duplicate id');
        } else {
          fail(`unexpected push outcome ${JSON.stringify(outcome)}`);
        }
        assertEq(got, step.expect, `push outcome for ${id}`);
        return;
      }
      case 'register_push': {
        const c = this.client(step);
        const target = this.name(step.client);
        const { token } = await harness('POST', `/subscriptions/${encodeURIComponent(target)}`);
        await this.worker(c);
        await c.page.evaluate((t) => window.__conformance.client.registerPush('web_push', t), token);
        const endpoint = JSON.parse(token).endpoint;
        await this.poll(`the push address of ${step.client} stored`, async () =>
          (await get(`/v1/users/${c.user}/devices`)).devices.some((d) => {
            try {
              return JSON.parse(d.push?.token ?? 'null')?.endpoint === endpoint;
            } catch {
              return false;
            }
          }),
        );
        this.pushTargets.set(step.client, target);
        return;
      }
      case 'wait_offline': {
        const user = this.name(step.user);
        await this.poll(`${user} offline`, async () => (await get(`/v1/presence/${user}`)).devices.length === 0);
        return;
      }
      case 'wait_push': {
        const target = this.pushTargets.get(step.client);
        const id = this.name(step.id);
        if (!target) fail('register_push first');
        let payload;
        await this.poll(`a push of ${id} to ${step.client}'s subscription`, async () => {
          const found = (await harness('GET', '/pushes')).pushes.find(
            (p) => p.target === target && pushIds(p.payload).ids.includes(id),
          );
          payload = found?.payload;
          return found !== undefined;
        });
        if (step.form !== undefined) assertEq(pushIds(payload).form, step.form, `the push's form (${payload})`);
        this.sent.set(`${step.client}/${id}`, payload);
        return;
      }
      case 'ingest_sent_push': {
        const c = this.client(step);
        const id = this.name(step.id);
        const payload = this.sent.get(`${step.from ?? step.client}/${id}`);
        if (payload === undefined) fail('wait_push first');
        const registrationId = await this.worker(c);
        const before = await c.page.evaluate(() => window.__conformance.pushResults.length);
        const shownCount = () =>
          c.page.evaluate(async () => (await (await navigator.serviceWorker.ready).getNotifications()).length);
        const shownBefore = await shownCount();
        // A real push event in the service worker, with the payload the server sent.
        await c.cdp.send('ServiceWorker.deliverPushMessage', {
          origin: new URL(HTTP_URL).origin,
          registrationId,
          data: payload,
        });
        let result;
        await this.poll(`the service worker's push result for ${id}`, async () => {
          result = await c.page.evaluate((n) => window.__conformance.pushResults[n], before);
          return result !== undefined && result !== null;
        });
        switch (step.expect) {
          case 'show':
            assertEq(result.show, true, `shown (${JSON.stringify(result)})`);
            assertEq(result.notification?.id, id, 'shown notification id');
            if (step.body_bytes !== undefined) assertEq(result.notification.body?.length, step.body_bytes, 'the whole notification: body length');
            break;
          case 'duplicate':
            assertEq([result.show, result.id], [false, id], 'a duplicate');
            break;
          case 'summary':
            assertEq(result.show, true, `shown (${JSON.stringify(result)})`);
            assertEq(result.summary?.count, step.count, 'summary count');
            assertEq(result.summary?.ids, this.names(step.ids), 'summary ids');
            break;
          case 'title':
            assertEq(result.titleOnly?.id, id, `title only (${JSON.stringify(result)})`);
            break;
          default:
            fail(`unknown expect ${step.expect}`);
        }
        if (result.show && result.error) fail(`the service worker could not show it: ${result.error}`);
        // What the browser displays: one more notification when shown, none for a duplicate.
        assertEq(await shownCount(), shownBefore + (result.show ? 1 : 0), "the service worker's notifications on display");
        return;
      }
      case 'update_preferences':
        await this.client(step).page.evaluate((r) => window.__conformance.client.updatePreferences(r), step.rules);
        return;
      case 'set_quiet_hours': {
        const quiet = { timeZone: step.time_zone, ranges: step.ranges };
        const r = await this.client(step).page.evaluate(
          (q) => window.__conformance.client.setQuietHours(q).then(() => ({ ok: true }), (e) => ({ ok: false, status: e.status, kind: e.kind })),
          quiet,
        );
        if (step.expect === 'refused') assertEq([r.ok, r.kind, r.status], [false, 'refused', 400], 'setQuietHours refused');
        else assertEq(r, { ok: true }, 'setQuietHours');
        return;
      }
      case 'assert_settings': {
        const got = await this.client(step).page.evaluate(async () => ({
          prefs: await window.__conformance.client.preferences(),
          quiet: await window.__conformance.client.quietHours(),
        }));
        const key = (r) => JSON.stringify([r.type ?? null, r.topic ?? null, r.channel, r.enabled]);
        assertEq(got.prefs.rules.map(key).sort(), step.rules.map(key).sort(), 'the rules');
        assertEq(got.quiet.quietHours, { timeZone: step.time_zone, ranges: step.ranges }, 'the quiet hours');
        if (step.version !== undefined) assertEq([got.prefs.version, got.quiet.version], [step.version, step.version], "the settings' versions");
        return;
      }
      case 'set_network':
        if (typeof step.online !== 'boolean') fail('set_network needs online: true|false');
        await this.client(step).ctx.setOffline(!step.online);
        return;
      case 'background':
      case 'foreground':
        return this.setVisible(this.client(step), op === 'foreground');
      case 'drop_connections':
        await post('/v1/admin/drop', {});
        return;
      case 'server_unsubscribe':
        await post('/v1/admin/unsubscribe', { user: this.name(step.user), stream: this.stream(step.stream) });
        return;
      case 'wait_subscription_failed': {
        const stream = this.stream(step.stream);
        await this.until(this.client(step), `subscription of ${stream} failed with ${step.code}`, (r) =>
          r.log.some((e) => e.type === 'subscriptionfailed' && e.detail.stream === stream && e.detail.code === step.code),
        );
        return;
      }
      case 'settle':
        await sleep(step.ms);
        return;
      case 'assert_connection_attempts': {
        const stats = await this.client(step).page.evaluate(() => window.__conformance.client.stats());
        assertEq(stats.connectionAttempts, step.count, 'connection attempts');
        return;
      }
      case 'assert_stats': {
        const s = await this.client(step).page.evaluate(() => window.__conformance.client.stats());
        const stats = {
          duplicates_dropped: s.duplicatesDropped, duplicates_socket: s.duplicatesSocket,
          duplicates_replay: s.duplicatesReplay, duplicates_push: s.duplicatesPush, digests: s.digests,
          digested: s.digested, gaps: s.gaps, fresh: s.fresh, resumed: s.resumed, replays: s.replays,
          replayed: s.replayed, replay_max: s.replayMax, rtt_samples: s.rttSamples,
        };
        for (const [reason, n] of Object.entries(s.reconnects)) stats[`reconnects.${reason}`] = n;
        for (const [name, want] of Object.entries(step.equals ?? {})) {
          if (!(name in stats)) fail(`no stat ${name}`);
          assertEq(stats[name], want, `stat ${name} (${JSON.stringify(s)})`);
        }
        for (const [name, least] of Object.entries(step.at_least ?? {})) {
          if (!(name in stats)) fail(`no stat ${name}`);
          if (!(stats[name] >= least)) fail(`stat ${name} is ${stats[name]}, expected at least ${least}`);
        }
        return;
      }
      case 'assert_token_fetches': {
        const { tokenFetches } = await this.record(this.client(step));
        assertEq(tokenFetches, step.count, 'token provider calls');
        return;
      }
      case 'pause_events':
      case 'resume_events':
        // Nothing to do: the SDK dispatches each event to the page's listeners as it is emitted and holds none
        // (tests/conformance/README.md, browser runner).
        this.client(step);
        return;
      case 'assert_stopped_reading': {
        // Nothing is held back in the browser: every published notification reached the page.
        const c = this.client(step);
        const end = Date.now() + WAIT_MS;
        for (;;) {
          const stats = await c.page.evaluate(() => window.__conformance.client.stats());
          if (stats.notificationsReceived >= step.published) return;
          if (Date.now() > end) fail(`received ${stats.notificationsReceived} of ${step.published}`);
          await sleep(25);
        }
      }
      case 'close': {
        const c = this.client(step);
        this.clients.delete(step.client);
        const state = await c.page.evaluate(async () => {
          await window.__conformance.client.close();
          return window.__conformance.client.state;
        });
        await c.ctx.close();
        assertEq(state.kind, 'closed', 'state after close()');
        return;
      }
      case 'wait_inbox':
      case 'assert_inbox': {
        const ok = (c) =>
          c != null &&
          (step.unread === undefined || c.unread === step.unread) &&
          (step.unseen === undefined || c.unseen === step.unseen) &&
          (step.total === undefined || c.total === step.total);
        // `inboxCounts` and the last `inboxcounts` event agree; versions only grow along the events.
        const pred = (r) => {
          const events = r.log.filter((e) => e.type === 'inboxcounts').map((e) => e.detail);
          for (let i = 1; i < events.length; i++) {
            if (!(events[i].version > events[i - 1].version)) fail(`inbox counts went back: ${JSON.stringify(events)}`);
          }
          return ok(r.inboxCounts) && (events.length === 0 || ok(events[events.length - 1]));
        };
        const c = this.client(step);
        if (op === 'wait_inbox') await this.until(c, `inbox counts ${JSON.stringify(step)}`, pred);
        else {
          const r = await this.record(c);
          if (!pred(r)) fail(`inbox counts ${JSON.stringify(r.inboxCounts)}, expected ${JSON.stringify(step)}`);
        }
        return;
      }
      case 'inbox_mark':
      case 'inbox_mark_all': {
        const c = this.client(step);
        const args = { all: op === 'inbox_mark_all', action: step.action, ids: this.ids(step), wait: step.wait ?? true };
        const result = await c.page.evaluate(async (a) => {
          const client = window.__conformance.client;
          const p = a.all ? client.inboxMarkAll(a.action) : client.inboxMark(a.action, a.ids);
          if (a.wait) return p;
          // Started without waiting for the answer (offline, the SDK queues the change).
          window.__conformance.pending.push(p.catch(() => {}));
          return null;
        }, args);
        if (args.wait && result.duplicate) fail(`a duplicate: ${JSON.stringify(result)}`);
        return;
      }
      case 'history': {
        // The README's gap → refetch path: page after the last notification handled.
        const c = this.client(step);
        const afterId = this.name(step.after_id);
        const last = notifications((await this.record(c)).log).find((n) => n.id === afterId);
        if (!last) fail(`${afterId} was not delivered`);
        const got = await c.page.evaluate(
          async ({ stream, after, limit }) => {
            const client = window.__conformance.client;
            const ids = [];
            let position = after;
            while (position) {
              const page = await client.history(stream, position, limit);
              if (limit !== undefined && page.items.length > limit) throw new Error('a page larger than the limit');
              ids.push(...page.items.map((n) => n.id));
              position = page.next === null ? null : { epoch: page.epoch, offset: page.next };
            }
            return ids;
          },
          { stream: this.stream(step.stream), after: { epoch: last.epoch, offset: last.offset }, limit: step.limit },
        );
        assertEq(got, this.ids(step), `history after ${afterId}`);
        return;
      }
      case 'restart_server': {
        if (!CONTROL_URL) fail('TIDINGS_CONTROL_URL is not set');
        const r = await fetch(`${CONTROL_URL}/restart`, { method: 'POST' });
        if (r.status !== 200) fail(`restart: HTTP ${r.status} ${await r.text()}`);
        return;
      }
      default:
        fail(`unknown step op "${op}" (add it to every runner, see tests/conformance/README.md)`);
    }
  }

  async connect(step) {
    if (this.clients.has(step.client)) fail(`client ${step.client} exists already`);
    const user = this.name(step.user);
    const topics = this.names(step.topics);
    let token;
    switch (step.token ?? 'valid') {
      case 'valid':
        token = (await post('/v1/demo/token', { user, topics }, false)).token;
        break;
      case 'invalid':
        token = 'not-a-jwt';
        break;
      default:
        fail(`unknown token kind ${step.token}`);
    }
    // An independent client: its own context (storage, locks, channels), so no other tab shares its socket.
    const ctx = await browser.newContext();
    await ctx.grantPermissions(['notifications'], { origin: new URL(HTTP_URL).origin });
    const page = await ctx.newPage();
    const c = { ctx, page, errors: [], user, token, name: `conformance-${user}-${step.client}` };
    page.on('pageerror', (e) => c.errors.push(String(e)));
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') c.errors.push(`[console ${m.type()}] ${m.text()}`);
    });
    this.clients.set(step.client, c);
    await page.goto(`${HTTP_URL}/conformance/`);
    await page.evaluate(
      async (o) => {
        const { TidingsClient } = await import('/pkg/tidings.js');
        const rec = { log: [], tokenFetches: 0, client: null, pending: [] };
        window.__conformance = rec;
        const client = await TidingsClient.connect({
          url: o.url,
          name: o.name,
          streams: [],
          token: () => {
            rec.tokenFetches++;
            return o.token;
          },
          batchWindowMs: o.batchWindowMs,
          backoffBaseMs: 50,
          backoffCapMs: 500,
          backgroundGraceMs: o.backgroundGraceMs ?? undefined,
        });
        rec.client = client;
        // Attached before the engine runs again (the leader lock is granted in a later task).
        for (const type of ['state', 'continuity', 'notification', 'digest', 'inboxcounts', 'subscriptionfailed']) {
          client.addEventListener(type, (e) => rec.log.push({ type, detail: e.detail }));
        }
      },
      {
        url: WS_URL,
        name: c.name,
        token,
        batchWindowMs: step.batch_window_ms ?? 0,
        backgroundGraceMs: step.background_grace_ms ?? null,
      },
    );
  }

  async publish(step) {
    for (const id of this.ids(step)) {
      const body = {
        users: this.names(step.users),
        topics: this.names(step.topics),
        id,
        type: 'conformance',
        priority: step.priority ?? 'important',
        title: `title ${id}`,
      };
      if (step.group !== undefined) body.group = step.group;
      if (step.persistence !== undefined) body.persistence = step.persistence;
      if (step.body_bytes !== undefined) body.body = 'x'.repeat(step.body_bytes);
      const reply = await post('/v1/publish', body);
      if (!reply.deliveries?.length) fail(`publish ${id}: no deliveries in ${JSON.stringify(reply)}`);
      this.deliveries.set(id, reply.deliveries[0]);
    }
  }

  /** Makes the page hidden or visible, as the browser does when a tab goes to the background or comes back. */
  async setVisible(c, visible) {
    const state = await c.page.evaluate((visible) => {
      for (const [prop, value] of [
        ['hidden', !visible],
        ['visibilityState', visible ? 'visible' : 'hidden'],
      ]) {
        Object.defineProperty(document, prop, { configurable: true, get: () => value });
      }
      document.dispatchEvent(new Event('visibilitychange'));
      return document.visibilityState;
    }, visible);
    assertEq(state, visible ? 'visible' : 'hidden', 'document.visibilityState');
  }

  /** Closes the clients a scenario left open (after a failure, too). */
  async closeAll() {
    for (const c of this.clients.values()) {
      await c.page.evaluate(() => window.__conformance?.client?.close()).catch(() => {});
      await c.ctx.close().catch(() => {});
    }
    this.clients.clear();
  }
}

/** Notifications the engine delivered on their own (socket or replay), in order. */
function notifications(log) {
  return log.filter((e) => e.type === 'notification' && e.detail.source === 'socket').map((e) => e.detail.notification);
}

/** Ids delivered alone and inside digests, in delivery order. */
function deliveredIds(log) {
  const ids = [];
  for (const e of log) {
    if (e.type === 'notification' && e.detail.source === 'socket') ids.push(e.detail.notification.id);
    else if (e.type === 'digest') ids.push(...e.detail.digest.ids);
  }
  return ids;
}

function describe(log) {
  return log
    .map((e) => {
      switch (e.type) {
        case 'notification':
          return `  notification ${e.detail.notification.id} (${e.detail.source})`;
        case 'digest':
          return `  digest ${e.detail.digest.group} ${e.detail.digest.ids}`;
        case 'continuity':
          return `  continuity ${e.detail.stream} ${JSON.stringify(e.detail.continuity)}`;
        default:
          return `  ${e.type} ${JSON.stringify(e.detail)}`;
      }
    })
    .join('\n');
}

// ---------------------------------------------------------------------------------------------------------------

const scenarios = file.scenarios.filter((s) => !filter || s.name.includes(filter));
if (scenarios.length === 0) {
  console.error(`no scenario matches "${filter}"`);
  process.exit(2);
}
const started = Date.now();
let failed = 0;
for (const scenario of scenarios) {
  const runner = new Runner(scenario);
  const t0 = Date.now();
  let i = 0;
  try {
    for (; i < scenario.steps.length; i++) await runner.step(scenario.steps[i]);
    console.log(`ok   ${scenario.name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed++;
    const step = scenario.steps[i];
    console.log(`FAIL ${scenario.name} (${((Date.now() - t0) / 1000).toFixed(1)} s) [prefix ${runner.prefix}]`);
    console.log(`     step ${i} ${JSON.stringify(step)}:\n     ${e instanceof StepFailure ? e.message : (e.stack ?? e)}`);
    for (const c of runner.clients.values()) for (const err of c.errors) console.log(`     ${err}`);
  } finally {
    await runner.closeAll();
  }
}
await browser.close();
const total = scenarios.length;
console.log(
  `\nbrowser conformance: ${total - failed} passed / ${total} total (${((Date.now() - started) / 1000).toFixed(1)} s)`,
);
process.exit(failed ? 1 : 0);
