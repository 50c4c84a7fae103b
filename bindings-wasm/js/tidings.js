// Tidings for browsers. The behaviour (connection states, backoff, heartbeats, cursors, replay, dedup, digests,
// acks) is the Rust core engine's, compiled to WebAssembly together with its browser driver (WebSocket,
// setTimeout, crypto; online/offline and visibility are handed to it from here). This module adds what is about
// the browser as a whole:
//
// - storage: engine snapshots in IndexedDB (shared with the service worker) and localStorage;
// - one WebSocket per browser: tabs elect a leader with the Web Locks API (a localStorage lease where it is
//   missing); the leader's engine holds the socket and relays every server frame over a BroadcastChannel; the
//   followers' engines process the relayed frames (same cursors, dedup, digests; never acked), so any of them
//   can take over and resume from the shared cursor;
// - claiming: each notification is *shown* in exactly one tab. Every tab gets the `notification` event (badges
//   stay equal, never multiplied); `detail.shown` is true in the one tab that won the claim. The leader grants
//   claims (first come; visible tabs claim at once, hidden ones after a short delay) and broadcasts every grant,
//   so a new leader knows what was granted before it.

import init, { Core, apiBase, apiRequest, apiResponse, mergeSnapshots, pushThrough } from './dist/tidings_wasm.js';
import { idbGet, idbUpdate, lsGet, lsSet } from './storage.js';
import { defaultWasmUrl } from './locate.js';

export { pushThrough, mergeSnapshots };

let ready;

/** Loads the WebAssembly module once (`wasmUrl` defaults to `dist/tidings_wasm_bg.wasm` next to this file). */
export function initTidings(wasmUrl) {
  const url = wasmUrl ?? defaultWasmUrl();
  ready ??= init(url ? { module_or_path: url } : undefined);
  return ready;
}

const HIDDEN_CLAIM_DELAY_MS = 250;
const MAX_GRANTS = 20000;
const LEASE_MS = 3000;
const BEAT_MS = 1000;
const LEADER_SILENCE_MS = 5000;
const HIDDEN_LEADER_SILENCE_MS = 65000;

function randomId(prefix) {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return prefix + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function defaultUrl() {
  const l = globalThis.location;
  return `${l.protocol === 'https:' ? 'wss' : 'ws'}://${l.host}/v1/ws`;
}

function isVisible() {
  return typeof document === 'undefined' || document.visibilityState !== 'hidden';
}

export class TidingsClient extends EventTarget {
  /** Creates a client, restores its stored state, joins the other tabs and starts (the leader connects). */
  static async connect(options) {
    await initTidings(options.wasmUrl);
    const client = new TidingsClient(options);
    await client.#start();
    return client;
  }

  #core;
  #channel;
  #getToken;
  /** The streams of `options.streams`; from then on the core keeps what this tab holds (`streamsOf`). */
  #initialStreams;
  #grants = new Map();
  #pending = new Map();
  #tabs = new Map();
  #release = null;
  #queued = false;
  #lockGen = 0;
  #heldGen = 0;
  #beat = null;
  #watchdog = null;
  #leaderSeen = Date.now();
  #beatAt = Date.now();
  #jitter = Math.random() * 2000; // one follower steals first; the others see it lead
  #leaseTimer = null;
  #election;
  #backgroundGraceMs;
  #engineOptions;
  #closed = false;
  #writing = Promise.resolve();
  /** Inbox/history requests this tab's engine runs: engine request id → `{resolve, reject}` or `{tab, rid}`. */
  #requests = new Map();
  /** This tab's requests the leader runs for it: rid → `{resolve, reject, op, args}`. */
  #remote = new Map();
  #rid = 0;

  constructor(options) {
    super();
    if (typeof options?.token !== 'function') throw new TypeError('options.token must be a function');
    this.url = options.url ?? defaultUrl();
    this.name = options.name ?? 'tidings';
    this.tabId = randomId('t-');
    this.role = 'starting';
    this.state = { kind: 'idle' };
    this.badge = 0;
    this.inboxCounts = null;
    this.#getToken = options.token;
    this.#initialStreams = [...(options.streams ?? [])];
    this.#election = options.election ?? (globalThis.navigator?.locks?.request ? 'locks' : 'lease');
    this.#backgroundGraceMs = options.backgroundGraceMs;
    this.#engineOptions = [options.batchWindowMs, options.backoffBaseMs, options.backoffCapMs];
    this.storageKey = `${this.name}:snapshot`;
  }

  /** This browser's device id (shared by all tabs). */
  get deviceId() {
    return this.#core.deviceId();
  }

  async #start() {
    let device = lsGet(`${this.name}:device`);
    if (!device) {
      device = randomId('w-');
      lsSet(`${this.name}:device`, device);
    }
    this.#core = new Core(
      this.url,
      device,
      undefined,
      (kind, payload) => this.#output(kind, payload),
      this.#backgroundGraceMs,
      ...this.#engineOptions,
    );
    this.#core.setPersistence(false);
    // localStorage first: pages write it before IndexedDB, so it holds the newest cursors and batches; IndexedDB
    // adds the ids the service worker saw (the engine takes stream state from the first full snapshot only).
    for (const stored of [lsGet(this.storageKey), await idbGet(this.storageKey)]) {
      if (stored) {
        try {
          this.#core.restore(stored);
        } catch (e) {
          console.warn('tidings: ignoring a corrupt stored snapshot', e);
        }
      }
    }
    this.inboxCounts = this.#readCounts();
    for (const s of this.#initialStreams) this.#core.subscribeFor(this.tabId, s);
    // Online/offline and this tab's visibility, for the engine (network changes, foreground/background).
    this.#onEnvironment = () => this.#core.setEnvironment(globalThis.navigator?.onLine !== false, isVisible());
    this.#onEnvironment();
    globalThis.addEventListener?.('online', this.#onEnvironment);
    globalThis.addEventListener?.('offline', this.#onEnvironment);
    this.#channel = new BroadcastChannel(`tidings:${this.name}`);
    this.#channel.onmessage = (e) => this.#onMessage(e.data);
    this.role = 'follower';
    this.#onVisibility = () => {
      this.#onEnvironment();
      this.#post({ t: 'vis', tab: this.tabId, visible: isVisible() });
      if (this.role === 'leader') this.#updateVisibleElsewhere();
    };
    this.#onPageHide = () => {
      if (this.role === 'leader') {
        lsSet(this.storageKey, this.#core.snapshot());
        if (this.#election === 'lease') lsSet(`${this.name}:lease`, '');
      }
      this.#post({ t: 'bye', tab: this.tabId });
    };
    this.#onFreeze = () => this.#resign();
    this.#onResume = () => {
      this.#hello();
      this.#elect();
    };
    if (typeof document !== 'undefined') {
      document.addEventListener('visibilitychange', this.#onVisibility);
      document.addEventListener('freeze', this.#onFreeze);
      document.addEventListener('resume', this.#onResume);
    }
    globalThis.addEventListener?.('pagehide', this.#onPageHide);
    this.#hello();
    this.#elect();
    this.#watchLeader();
  }

  #onVisibility;
  #onEnvironment;
  #onPageHide;
  #onFreeze;
  #onResume;

  // ---------------------------------------------------------------------------------------------------------
  // Public API

  /** Subscribes this tab to `topic:<name>` or `user:<id>` (the user's own stream is automatic). */
  async subscribe(stream) {
    this.#core.subscribeFor(this.tabId, stream);
    if (this.role !== 'leader') this.#post({ t: 'sub', stream, tab: this.tabId });
  }

  /**
   * Unsubscribes this tab. The shared socket keeps a stream while another tab wants it; the last tab to let go
   * unsubscribes it (and its cursor is forgotten).
   */
  async unsubscribe(stream) {
    this.#core.unsubscribeFor(this.tabId, stream);
    if (this.role !== 'leader') this.#post({ t: 'unsub', stream, tab: this.tabId });
  }

  /**
   * A push payload (Web Push data, any form of protocol §11.1, as an object or its JSON text) reached this page.
   * Goes through the shared dedup window: `{show:true, notification}` the first time (show it), `{show:false, id}`
   * when the socket, replay or another path delivered it already, `{show:true, id, summary}` for a digest or
   * quiet-hours summary with something new in it (its ids count as seen from now on). A push too large to carry
   * its notification is fetched from the server with the user's token first; when that fails the outcome is
   * `{show:true, id, titleOnly:{id, title?, reason}}`.
   */
  async ingestPush(payload) {
    const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
    let outcome = JSON.parse(this.#core.ingestPush(text));
    if (outcome.fetch) {
      const { status, body } = await this.#http(outcome.request);
      outcome = JSON.parse(this.#core.completePushFetch(outcome.fetch.id, outcome.fetch.title ?? null, status, body));
    }
    if (outcome.show) {
      const id = outcome.notification?.id ?? outcome.id;
      this.#grant(id, this.tabId);
      // Other tabs get what was shown (a fetched notification in full, so they need not fetch it again).
      const relay = outcome.notification ? JSON.stringify({ tidings: outcome.notification }) : text;
      this.#post({ t: 'push', payload: relay, tab: this.tabId });
      this.#count(1);
      if (outcome.notification) {
        this.#emit('notification', { notification: outcome.notification, shown: true, source: 'push' });
      }
    }
    return outcome;
  }

  /** The user's preferences (protocol §9.5): `{rules, version, updatedAt}`. */
  preferences() {
    return this.#api('preferences');
  }

  /** Replaces every preference rule of the user (`[{type|topic, channel, enabled}]`); resolves to the result. */
  setPreferences(rules) {
    return this.#api('setPreferences', rules);
  }

  /** Adds rules, each replacing the user's rule with the same selector and channel; resolves to the result. */
  updatePreferences(rules) {
    return this.#api('updatePreferences', rules);
  }

  /** The user's quiet hours: `{quietHours: {time_zone, ranges} | null, version, updatedAt}`. */
  quietHours() {
    return this.#api('quietHours');
  }

  /** Sets (or with `null` removes) the user's quiet hours; resolves to the result. */
  setQuietHours(quietHours) {
    return this.#api('setQuietHours', quietHours ?? null);
  }

  /** One HTTP API call built and read by the core; rejects with `{status, code, message}` on an error answer. */
  async #api(kind, arg) {
    const request = JSON.parse(apiRequest(kind, arg === undefined ? '' : JSON.stringify(arg)));
    const { status, body } = await this.#http(request);
    const out = JSON.parse(apiResponse(kind, status, body));
    if (out.error) throw Object.assign(new Error(`tidings: ${out.error.message ?? out.error.code}`), out.error);
    return out;
  }

  /** Sends a request of the core's to the server with the user's token (asked again once after a 401). */
  async #http(request) {
    const base = apiBase(this.url);
    if (!base) return { status: 0, body: `no HTTP base URL for ${this.url}` };
    let answer = { status: 0, body: '' };
    for (const forceRefresh of [false, true]) {
      try {
        const token = await this.#getToken(forceRefresh);
        const r = await fetch(new URL(request.path.replace(/^\//, ''), base.endsWith('/') ? base : `${base}/`), {
          method: request.method,
          headers: {
            Authorization: `Bearer ${token}`,
            ...(request.body !== undefined ? { 'Content-Type': 'application/json' } : {}),
          },
          body: request.body,
        });
        answer = { status: r.status, body: await r.text() };
      } catch (e) {
        return { status: 0, body: String(e?.message ?? e) };
      }
      if (answer.status !== 401) break;
    }
    return answer;
  }

  /** Registers this device's push address (`web_push`: the PushSubscription JSON). */
  async registerPush(platform, token) {
    this.#core.registerPush(platform, token);
    if (this.role !== 'leader') this.#post({ t: 'register_push', platform, token });
  }

  /** Resets the badge count in every tab. */
  clearBadge() {
    this.#setBadge(0);
    this.#post({ t: 'badge', n: 0 });
  }

  /** The tab a notification id (or `d:<first id>` for a digest) was granted to for showing, if known. */
  shownBy(key) {
    return this.#grants.get(key) ?? null;
  }

  /** The cursor of a stream (`{epoch, offset}`) or null. */
  cursor(stream) {
    const c = this.#core.cursor(stream);
    return c ? JSON.parse(c) : null;
  }

  /** Engine counters and driver facts. */
  stats() {
    return JSON.parse(this.#core.stats());
  }

  // Inbox (protocol §13) and stream history (§14). The rules (newer-only counts, the view, offline changes queued
  // and sent again until answered) are the engine's; the leader tab's engine runs every tab's requests on its
  // socket, and every tab's engine applies the inbox frames the leader relays, so counts are the same in all tabs.

  /** The inbox view: `{items, complete}`, newest first; the `inboxchanged` event says when it changed. */
  inboxItems() {
    return JSON.parse(this.#core.inboxItems());
  }

  /** Loads the next (older) page into this tab's view (`limit`: 1–200, default 50). */
  async inboxLoadMore(limit) {
    if (this.role === 'leader') return pageOf(await this.#request('more', limit ?? null));
    const oldest = this.#core.inboxOldest();
    const frame = await this.#request('list', [oldest, limit ?? null]);
    this.#core.inboxMergePage(JSON.stringify(frame));
    return pageOf(frame);
  }

  /** A page of the inbox with filters (`{before, limit, status, archived, type, topic}`), not added to the view. */
  async inboxList(query = {}) {
    const q = query ?? {};
    const args = [q.before, q.limit, q.status, q.archived, q.type, q.topic].map((v) => v ?? null);
    return pageOf(await this.#request('list', args));
  }

  /**
   * Applies `action` (`read`, `unread`, `seen`, `unseen`, `archive`, `unarchive`) to the items `ids`. While offline
   * the change is queued (in the stored state) and sent on reconnect, applied once; resolves with the counts after it.
   */
  async inboxMark(action, ids) {
    return changeOf(await this.#request('mark', action, [...ids]));
  }

  /** Marks every item up to the newest this browser knows `read` (or `seen`); newer items stay unread. */
  async inboxMarkAll(action = 'read') {
    return changeOf(await this.#request('all', action));
  }

  /**
   * A page of `stream`'s stored history after `after` (`{epoch, offset}`, e.g. the cursor the stream had before a
   * gap; omitted: from the oldest stored), at most `limit` (1–1,000, default 100): `{stream, epoch, head, oldest,
   * items, next}`.
   */
  async history(stream, after, limit) {
    const f = await this.#request('history', stream, after?.epoch ?? null, after?.offset ?? null, limit ?? null);
    return { stream: f.stream, epoch: f.epoch, head: f.head, oldest: f.oldest, items: f.items ?? [], next: f.next ?? null };
  }

  /** Runs a request in the leader's engine (this tab's or another's); resolves with the answer's frame. */
  #request(op, a = null, b = null, c = null, d = null) {
    if (this.#closed) return Promise.reject(new Error('tidings: the client is closed'));
    return new Promise((resolve, reject) => {
      if (this.role === 'leader') {
        const id = this.#core.request(op, a, b, c, d);
        this.#requests.set(id, { resolve, reject });
      } else {
        const rid = `${this.tabId}:${++this.#rid}`;
        this.#remote.set(rid, { resolve, reject, op, args: [a, b, c, d] });
        this.#post({ t: 'req', tab: this.tabId, rid, op, args: [a, b, c, d] });
      }
    });
  }

  /** Leader: a follower's request. */
  #runFor(m) {
    if (!Array.isArray(m.args)) return;
    try {
      const id = this.#core.request(m.op, ...m.args);
      this.#requests.set(id, { tab: m.tab, rid: m.rid });
    } catch (e) {
      this.#post({ t: 'reply', to: m.tab, rid: m.rid, error: { code: 'bad_request', message: String(e?.message ?? e) } });
    }
  }

  #onReply(reply) {
    const entry = this.#requests.get(reply.id);
    if (!entry) return;
    this.#requests.delete(reply.id);
    if (entry.tab) {
      // Closed: this tab stops leading; the follower asks the next leader (a queued change is in the stored state).
      if (reply.error?.code !== 'closed') this.#post({ t: 'reply', to: entry.tab, rid: entry.rid, frame: reply.frame, error: reply.error });
    } else {
      settle(entry, reply);
    }
  }

  #readCounts() {
    const c = this.#core.inboxCounts();
    return c ? JSON.parse(c) : null;
  }

  /** Resolves when the (shared) connection reaches `kind` (e.g. 'connected'). */
  waitForState(kind, timeoutMs = 10000) {
    if (this.state.kind === kind) return Promise.resolve(this.state);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.removeEventListener('state', on);
        reject(new Error(`timed out waiting for state ${kind}`));
      }, timeoutMs);
      const on = (e) => {
        if (e.detail.kind === kind) {
          clearTimeout(timer);
          this.removeEventListener('state', on);
          resolve(e.detail);
        }
      };
      this.addEventListener('state', on);
    });
  }

  /** Leaves: closes the socket if this tab leads (another tab takes over), releases everything. */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    const leading = this.role === 'leader';
    this.#resign();
    if (leading) await this.#writing;
    this.#post({ t: 'bye', tab: this.tabId });
    this.#channel.close();
    clearInterval(this.#leaseTimer);
    clearInterval(this.#watchdog);
    if (typeof document !== 'undefined') {
      document.removeEventListener('visibilitychange', this.#onVisibility);
      document.removeEventListener('freeze', this.#onFreeze);
      document.removeEventListener('resume', this.#onResume);
    }
    globalThis.removeEventListener?.('pagehide', this.#onPageHide);
    globalThis.removeEventListener?.('online', this.#onEnvironment);
    globalThis.removeEventListener?.('offline', this.#onEnvironment);
    const closedError = { error: { code: 'closed', message: 'the client was closed' } };
    for (const r of this.#remote.values()) settle(r, closedError);
    this.#remote.clear();
    this.#core.dispose();
    for (const r of this.#requests.values()) if (!r.tab) settle(r, closedError);
    this.#requests.clear();
    this.role = 'closed';
    this.#emit('role', { role: 'closed' });
  }

  // ---------------------------------------------------------------------------------------------------------
  // Engine outputs

  #output(kind, payload) {
    switch (kind) {
      case 'frame':
        if (this.role !== 'leader') break;
        // The engine ignores this frame if we step down here (it closed that socket).
        if (!this.#stepDownIfStalled()) this.#post({ t: 'frame', text: payload });
        break;
      case 'token':
        Promise.resolve()
          .then(() => this.#getToken(payload === 'true'))
          .then(
            (token) => this.#core.token(String(token)),
            (e) => this.#core.tokenError(e?.transient ?? true, String(e?.message ?? e)),
          );
        break;
      case 'persist':
        this.#persist(payload);
        break;
      case 'event':
        this.#onEvent(JSON.parse(payload));
        break;
      case 'reply':
        this.#onReply(JSON.parse(payload));
        break;
    }
  }

  #onEvent(e) {
    switch (e.type) {
      case 'state':
        if (this.role === 'leader') {
          this.#setState(e.state);
          this.#post({ t: 'state', state: e.state });
        }
        break;
      case 'notification':
        this.#count(1);
        this.#claim(e.notification.id, 'notification', { notification: e.notification, source: 'socket' });
        break;
      case 'digest':
        this.#count(e.digest.count);
        this.#claim(`d:${e.digest.ids[0]}`, 'digest', { digest: e.digest });
        break;
      case 'continuity':
        this.#emit('continuity', { stream: e.stream, continuity: e.continuity });
        break;
      case 'push_registered':
        this.#emit('pushregistered', { platform: e.platform });
        break;
      case 'subscription_failed':
        this.#emit('subscriptionfailed', { stream: e.stream, code: e.code, message: e.message });
        break;
      case 'push_registration_failed':
        this.#emit('pushregistrationfailed', { platform: e.platform, code: e.code, message: e.message });
        break;
      case 'inbox_counts':
        // Only ever newer counts (the engine drops older ones): each tab's engine applies the relayed frames.
        this.inboxCounts = e.counts;
        if (this.role === 'leader' && globalThis.navigator?.setAppBadge) {
          (e.counts.unread ? navigator.setAppBadge(e.counts.unread) : navigator.clearAppBadge()).catch(() => {});
        }
        this.#emit('inboxcounts', e.counts);
        break;
      case 'inbox_changed':
        this.#emit('inboxchanged', {});
        break;
    }
  }

  #persist(json) {
    lsSet(this.storageKey, json);
    // Merged into what IndexedDB holds now: the service worker's seen ids stay.
    this.#writing = this.#writing.then(() => idbUpdate(this.storageKey, (stored) => mergeSnapshots(json, stored)));
  }

  // ---------------------------------------------------------------------------------------------------------
  // Claims: exactly one tab shows each notification

  #claim(key, type, detail) {
    const finish = (tab) => {
      detail.shown = tab === this.tabId;
      this.#emit(type, detail);
    };
    const granted = this.#grants.get(key);
    if (granted) return finish(granted);
    const entry = { finish, timer: null, sent: false };
    this.#pending.set(key, entry);
    if (isVisible()) this.#sendClaim(key);
    else entry.timer = setTimeout(() => this.#sendClaim(key), HIDDEN_CLAIM_DELAY_MS);
  }

  #sendClaim(key) {
    const entry = this.#pending.get(key);
    if (!entry) return;
    entry.sent = true;
    if (this.role === 'leader') this.#arbitrate(key, this.tabId);
    else this.#post({ t: 'claim', key, tab: this.tabId });
  }

  /** Leader: the first claim wins; later claims hear the same answer. */
  #arbitrate(key, tab) {
    const winner = this.#grants.get(key) ?? tab;
    this.#grant(key, winner);
  }

  #grant(key, tab) {
    this.#record(key, tab);
    this.#post({ t: 'grant', key, tab });
  }

  #record(key, tab) {
    if (!this.#grants.has(key)) {
      this.#grants.set(key, tab);
      if (this.#grants.size > MAX_GRANTS) this.#grants.delete(this.#grants.keys().next().value);
    }
    const entry = this.#pending.get(key);
    if (entry) {
      clearTimeout(entry.timer);
      this.#pending.delete(key);
      entry.finish(this.#grants.get(key));
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Leadership

  #elect() {
    if (this.#closed || this.role === 'leader') return;
    if (this.#election === 'locks') {
      if (!this.#queued) this.#requestLock(false);
    } else {
      const key = `${this.name}:lease`;
      const tick = () => {
        const now = Date.now();
        let lease = null;
        try {
          lease = JSON.parse(lsGet(key) || 'null');
        } catch {
          lease = null;
        }
        if (this.role === 'leader') {
          if (lease && lease.tab !== this.tabId && lease.until > now) this.#resign();
          else lsSet(key, JSON.stringify({ tab: this.tabId, until: now + LEASE_MS }));
        } else if (!lease || lease.until < now) {
          lsSet(key, JSON.stringify({ tab: this.tabId, until: now + LEASE_MS }));
          setTimeout(() => {
            let mine = null;
            try {
              mine = JSON.parse(lsGet(key) || 'null');
            } catch {
              mine = null;
            }
            if (mine?.tab === this.tabId && this.role !== 'leader' && !this.#closed) this.#lead();
          }, 150);
        }
      };
      clearInterval(this.#leaseTimer);
      this.#leaseTimer = setInterval(tick, LEASE_MS / 3);
      tick();
    }
  }

  /**
   * Asks for the leader lock, held (a never-settled promise) until `#resign`. `steal`: take it from a leader that
   * stopped answering (frozen or hung without a `freeze` event); its `request` then rejects and it steps down.
   * A request granted while this tab leads already (its queued request after a steal) releases at once.
   */
  #requestLock(steal) {
    const gen = ++this.#lockGen;
    if (!steal) this.#queued = true;
    navigator.locks
      .request(`tidings:${this.name}:leader`, steal ? { steal: true } : {}, () => {
        if (!steal) this.#queued = false;
        if (this.#closed || this.role === 'leader') return undefined; // not needed (any more): release at once
        return new Promise((release) => {
          this.#release = release;
          this.#heldGen = gen;
          this.#lead();
        });
      })
      .catch(() => {
        // Our lock was stolen: another tab found this one unresponsive and leads now.
        if (gen === this.#heldGen && this.role === 'leader') {
          this.#resign();
          this.#hello();
          this.#elect();
        }
      });
  }

  /**
   * How long a leader may be silent before a follower steals the lock: short when the follower is visible; when
   * it is hidden, longer than Chrome's intensive timer throttling (one wake-up a minute), so hidden tabs do not
   * take turns.
   */
  #silenceLimit(visible) {
    return (visible ? LEADER_SILENCE_MS : HIDDEN_LEADER_SILENCE_MS) + this.#jitter;
  }

  /**
   * Leader: if this tab was frozen or hung long enough for another tab to take the lock, step down before doing
   * anything else (whichever runs first after the stall: the beat timer or a queued socket frame). What its
   * socket delivered meanwhile is the new leader's to deliver, by replay.
   */
  #stepDownIfStalled() {
    // The earliest any follower may steal: each follower's watchdog adds its own jitter, not this tab's.
    const limit = this.#anyOtherVisible() ? LEADER_SILENCE_MS : HIDDEN_LEADER_SILENCE_MS;
    if (this.role !== 'leader' || Date.now() - this.#beatAt <= limit) {
      return false;
    }
    this.#resign();
    this.#hello();
    this.#elect();
    return true;
  }

  #anyOtherVisible() {
    for (const [tab, v] of this.#tabs) if (tab !== this.tabId && v) return true;
    return false;
  }

  /** Followers: steal the lock when the leader has been silent too long (no beat, no frame). */
  #watchLeader() {
    this.#watchdog = setInterval(() => {
      if (this.#closed || this.role !== 'follower' || this.#election !== 'locks') return;
      if (Date.now() - this.#leaderSeen > this.#silenceLimit(isVisible())) {
        this.#leaderSeen = Date.now();
        this.#requestLock(true);
      }
    }, 500);
  }

  #lead() {
    this.role = 'leader';
    clearInterval(this.#beat);
    this.#beatAt = Date.now();
    this.#beat = setInterval(() => {
      if (this.#stepDownIfStalled()) return;
      this.#beatAt = Date.now();
      this.#post({ t: 'beat', tab: this.tabId });
    }, BEAT_MS);
    this.#emit('role', { role: 'leader' });
    this.#post({ t: 'leader', tab: this.tabId });
    for (const [key, entry] of this.#pending) if (entry.sent) this.#arbitrate(key, this.tabId);
    this.#core.setPersistence(true);
    // Inbox changes a previous leader queued (offline) and stored: this tab's engine sends them now.
    const stored = lsGet(this.storageKey);
    if (stored) {
      try {
        this.#core.adoptQueue(stored);
      } catch (e) {
        console.warn('tidings: ignoring a corrupt stored snapshot', e);
      }
    }
    this.#updateVisibleElsewhere();
    this.#core.connect();
  }

  #resign() {
    clearInterval(this.#beat);
    if (this.role === 'leader') {
      this.#core.close();
      this.#core.setPersistence(false);
      this.role = 'follower';
      // Nothing was heard from a leader while this tab led: the watchdog must give the next one its full silence
      // window, not steal the lock straight back from the tab that just took it.
      this.#leaderSeen = Date.now();
      this.#emit('role', { role: 'follower' });
    }
    const release = this.#release;
    this.#release = null;
    release?.();
  }

  #hello() {
    this.#post({ t: 'hello', tab: this.tabId, streams: JSON.parse(this.#core.streamsOf(this.tabId)), visible: isVisible() });
  }

  #updateVisibleElsewhere() {
    this.#core.setVisibleElsewhere(this.#anyOtherVisible());
  }

  // ---------------------------------------------------------------------------------------------------------
  // The channel between tabs

  #post(msg) {
    if (!this.#closed || msg.t === 'bye') {
      try {
        this.#channel?.postMessage(msg);
      } catch {
        // channel closed
      }
    }
  }

  #onMessage(m) {
    if (this.#closed || !m || typeof m.t !== 'string') return;
    const leader = this.role === 'leader';
    if (m.t === 'beat' || m.t === 'frame' || m.t === 'state' || m.t === 'leader') this.#leaderSeen = Date.now();
    switch (m.t) {
      case 'frame':
        if (!leader) {
          try {
            this.#core.relayed(m.text);
          } catch (e) {
            console.warn('tidings: undecodable relayed frame', e);
          }
        }
        break;
      case 'state':
        if (!leader) this.#setState(m.state);
        break;
      case 'leader':
        // Split brain is only possible with the lease (the lock is exclusive; a stolen lock rejects): newer wins.
        if (leader && this.#election === 'lease') this.#resign();
        this.#hello();
        for (const [key, entry] of this.#pending) if (entry.sent) this.#post({ t: 'claim', key, tab: this.tabId });
        // Requests the previous leader did not answer: the new one runs them.
        for (const [rid, r] of this.#remote) this.#post({ t: 'req', tab: this.tabId, rid, op: r.op, args: r.args });
        this.#elect();
        break;
      case 'hello':
        this.#tabs.set(m.tab, !!m.visible);
        if (leader) {
          this.#core.tabStreams(m.tab, Array.isArray(m.streams) ? m.streams : []);
          this.#updateVisibleElsewhere();
          this.#post({
            t: 'welcome',
            to: m.tab,
            snapshot: this.#core.snapshot(),
            state: this.state,
            badge: this.badge,
            grants: [...this.#grants].slice(-2000),
          });
        }
        break;
      case 'welcome':
        if (m.to === this.tabId && !leader) {
          try {
            this.#core.mirror(m.snapshot);
          } catch (e) {
            console.warn('tidings: bad snapshot from the leader', e);
          }
          for (const [key, tab] of m.grants) this.#record(key, tab);
          this.#setState(m.state);
          if (m.badge > this.badge) this.#setBadge(m.badge);
        }
        break;
      case 'vis':
        this.#tabs.set(m.tab, !!m.visible);
        if (leader) this.#updateVisibleElsewhere();
        break;
      case 'bye':
        this.#tabs.delete(m.tab);
        if (leader) {
          this.#core.tabGone(m.tab);
          this.#updateVisibleElsewhere();
        }
        break;
      case 'sub':
      case 'unsub':
        if (leader && typeof m.tab === 'string') {
          try {
            if (m.t === 'sub') this.#core.subscribeFor(m.tab, m.stream);
            else this.#core.unsubscribeFor(m.tab, m.stream);
          } catch {
            // refused in the asking tab already
          }
        }
        break;
      case 'register_push':
        if (leader) this.#core.registerPush(m.platform, m.token);
        break;
      case 'claim':
        if (leader) this.#arbitrate(m.key, m.tab);
        break;
      case 'grant':
        this.#record(m.key, m.tab);
        break;
      case 'push': {
        // Another tab (or the service worker) took a push: mark it seen here too; that tab showed it.
        try {
          const outcome = JSON.parse(this.#core.ingestPush(m.payload));
          if (outcome.show) {
            this.#record(outcome.notification?.id ?? outcome.id, m.tab);
            this.#count(1);
            if (outcome.notification) {
              this.#emit('notification', { notification: outcome.notification, shown: false, source: 'push' });
            }
          }
        } catch (e) {
          console.warn('tidings: bad relayed push payload', e);
        }
        break;
      }
      case 'badge':
        this.#setBadge(m.n);
        break;
      case 'req':
        if (leader && typeof m.tab === 'string') this.#runFor(m);
        break;
      case 'reply':
        if (m.to === this.tabId) {
          const r = this.#remote.get(m.rid);
          if (r) {
            this.#remote.delete(m.rid);
            settle(r, m);
          }
        }
        break;
    }
  }

  // ---------------------------------------------------------------------------------------------------------

  #setState(state) {
    this.state = state;
    this.#emit('state', state);
  }

  #count(n) {
    this.#setBadge(this.badge + n);
  }

  #setBadge(n) {
    this.badge = n;
    // Once the server's inbox counts are known, the app badge is their `unread` (set on `inbox_counts`).
    if (this.role === 'leader' && this.inboxCounts === null && globalThis.navigator?.setAppBadge) {
      (n ? navigator.setAppBadge(n) : navigator.clearAppBadge()).catch(() => {});
    }
    this.#emit('badge', { count: n });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** An inbox or history request failed: `code` is `bad_request`, `forbidden`, `try_again_later`, `timed_out` or `closed`. */
export class TidingsRequestError extends Error {
  constructor(code, message) {
    super(`tidings: request refused (${code}): ${message}`);
    this.name = 'TidingsRequestError';
    this.code = code;
  }
}

function settle(entry, reply) {
  if (reply.error) entry.reject(new TidingsRequestError(reply.error.code, reply.error.message));
  else entry.resolve(reply.frame);
}

function pageOf(f) {
  return { items: f.items ?? [], next: f.next ?? null, counts: f.counts };
}

function changeOf(f) {
  return { counts: f.counts, items: f.items ?? [], duplicate: f.duplicate === true, unknown: f.unknown ?? [] };
}

function urlBase64ToUint8Array(s) {
  const pad = '='.repeat((4 - (s.length % 4)) % 4);
  const raw = atob((s + pad).replace(/-/g, '+').replace(/_/g, '/'));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

/**
 * From a page: subscribes the service worker `registration` (default: the ready one) to Web Push with the
 * server's VAPID public key and registers the subscription with the server through `client`.
 */
export async function subscribeWebPush(client, { vapidPublicKey, registration } = {}) {
  const reg = registration ?? (await navigator.serviceWorker.ready);
  const sub =
    (await reg.pushManager.getSubscription()) ??
    (await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: urlBase64ToUint8Array(vapidPublicKey) }));
  await client.registerPush('web_push', JSON.stringify(sub));
  return sub;
}
