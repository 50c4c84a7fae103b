// Web Push for Tidings, inside the app's service worker (a module worker):
//
//   // sw.js, registered with navigator.serviceWorker.register('/sw.js', { type: 'module' })
//   import { installTidingsPush } from '@tidings/web/sw';
//   installTidingsPush({
//     // The signed-in user's Tidings token, from your backend (the worker has no page): used to fetch a
//     // notification too large for its push and to ack what was shown. Optional: without it a lightweight push
//     // shows its title and nothing is acked from here (the pages ack over the socket).
//     token: async () => (await fetch('/api/tidings-token', { credentials: 'include' })).text(),
//   });  // the VAPID key comes from the server: GET /v1/push/vapid-public-key
//
// On `push` the payload (any form of protocol §11.1: the notification, a lightweight `tidings_fetch`, a digest or
// quiet-hours `tidings_summary`) goes through the same dedup window as the pages' sockets (the engine snapshot in
// IndexedDB, via the core's push path without a client): a notification the socket, replay or another push
// delivered already is not shown again. Open tabs are told over the BroadcastChannel so their engines mark it
// seen. What is shown is acked (`POST /v1/me/acks`) when a token is available.

import init, { apiRequest, completePushThrough, mergeSnapshots, pushThrough } from './dist/tidings_wasm.js';
import { idbGet, idbUpdate } from './storage.js';

let ready;
let queue = Promise.resolve();

function urlBase64ToUint8Array(s) {
  const pad = '='.repeat((4 - (s.length % 4)) % 4);
  const raw = atob((s + pad).replace(/-/g, '+').replace(/_/g, '/'));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

/**
 * Passes one push payload through the shared dedup state and shows it if it is new. Resolves to
 * `{show, id, notification?, error?}`. Pushes are handled one at a time (read-modify-write of the snapshot).
 */
export function handlePush(payload, options = {}) {
  const run = queue.then(() => handleOne(payload, options));
  queue = run.catch(() => {});
  return run;
}

async function handleOne(payload, options = {}) {
  const { name = 'tidings', wasmUrl, show = true, notificationOptions, onPush } = options;
  ready ??= init(wasmUrl ? { module_or_path: wasmUrl } : undefined);
  await ready;
  const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
  const key = `${name}:snapshot`;
  let r = JSON.parse(pushThrough(await idbGet(key), text));
  if (r.fetch) {
    // Too large for a push: fetch the notification with the user's token (no token or no answer: its title).
    const { status, body } = await serverCall(options, r.request);
    r = JSON.parse(completePushThrough(await idbGet(key), r.fetch.id, r.fetch.title ?? null, status, body));
  }
  if (!r.show) {
    const result = { show: false, id: r.id };
    onPush?.(result);
    return result;
  }
  // The worker's snapshot carries only seen ids: merged into what is stored now (a page may have saved since the
  // read above), the pages' cursors and batches stay.
  const seen = JSON.stringify(r.snapshot);
  await idbUpdate(key, (stored) => mergeSnapshots(seen, stored));
  const channel = new BroadcastChannel(`tidings:${name}`);
  channel.postMessage({ t: 'push', payload: r.notification ? JSON.stringify({ tidings: r.notification }) : text, tab: 'sw' });
  channel.close();
  const n = r.notification;
  const result = n
    ? { show: true, id: n.id, notification: n }
    : r.summary
      ? { show: true, id: r.id, summary: r.summary }
      : { show: true, id: r.id, titleOnly: r.titleOnly };
  if (r.ack?.length && r.device && options.token) {
    const request = JSON.parse(apiRequest('acks', JSON.stringify({ device: r.device, ids: r.ack })));
    const { status, body } = await serverCall(options, request);
    if (status < 200 || status >= 300) result.ackError = `HTTP ${status} ${body}`;
  }
  if (show && self.registration?.showNotification) {
    const [title, shown] = n
      ? [n.title ?? n.type, { body: n.body ?? '', tag: n.id, data: n }]
      : r.summary
        ? [r.summary.title ?? 'New notifications', { body: `${r.summary.count} new`, tag: r.summary.group ? `d:${r.summary.group}` : r.id, data: r.summary }]
        : [r.titleOnly?.title ?? 'New notification', { tag: r.id, data: r.titleOnly }];
    try {
      await self.registration.showNotification(title, {
        ...shown,
        ...(typeof notificationOptions === 'function' ? notificationOptions(n ?? result) : notificationOptions),
      });
    } catch (e) {
      result.error = String(e?.message ?? e); // e.g. no notification permission
    }
  }
  onPush?.(result);
  return result;
}

/** One request of the core's to the Tidings server with the user's token: `{status, body}` (status 0: failed). */
async function serverCall({ server = self.location.origin, token }, request) {
  if (typeof token !== 'function') return { status: 0, body: 'no token in the service worker (options.token)' };
  try {
    const base = String(server).replace(/\/+$/, '');
    const r = await fetch(base + request.path, {
      method: request.method,
      headers: {
        Authorization: `Bearer ${await token()}`,
        ...(request.body !== undefined ? { 'Content-Type': 'application/json' } : {}),
      },
      body: request.body,
    });
    return { status: r.status, body: await r.text() };
  } catch (e) {
    return { status: 0, body: String(e?.message ?? e) };
  }
}

/**
 * The server's VAPID public key, read from `GET <server>/v1/push/vapid-public-key` (`server`: the Tidings
 * server's base URL, default this worker's origin). Rejects with the server's reason when it has none configured.
 */
export async function fetchVapidPublicKey(server = self.location.origin) {
  const url = new URL('v1/push/vapid-public-key', String(server).endsWith('/') ? server : `${server}/`);
  let r;
  try {
    r = await fetch(url);
  } catch (e) {
    throw new Error(`tidings: cannot reach ${url}: ${e?.message ?? e}`);
  }
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    throw new Error(`tidings: ${url}: HTTP ${r.status}${body?.error?.message ? `: ${body.error.message}` : ''}`);
  }
  const key = body?.vapid_public_key;
  if (typeof key !== 'string' || key === '') throw new Error(`tidings: ${url} answered without vapid_public_key`);
  return key;
}

/**
 * Subscribes this service worker's registration to Web Push with the server's VAPID public key (`vapidPublicKey`,
 * or else read from the server with `fetchVapidPublicKey(server)`) and hands the subscription to the open tabs,
 * whose leader registers it with the server over the shared connection (`register_push`, platform `web_push`).
 * Resolves to the PushSubscription.
 */
export async function subscribePush({ vapidPublicKey, server, name = 'tidings' } = {}) {
  const pm = self.registration.pushManager;
  let sub = await pm.getSubscription();
  if (!sub) {
    const key = vapidPublicKey ?? (await fetchVapidPublicKey(server));
    sub = await pm.subscribe({ userVisibleOnly: true, applicationServerKey: urlBase64ToUint8Array(key) });
  }
  const channel = new BroadcastChannel(`tidings:${name}`);
  channel.postMessage({ t: 'register_push', platform: 'web_push', token: JSON.stringify(sub) });
  channel.close();
  return sub;
}

/**
 * Installs the handlers: `push` (dedup, then showNotification), `message` `{type:'tidings-push', payload}`
 * (the same path, answered with `{type:'tidings-push-result', …}`; tests and pages use it), `message`
 * `{type:'tidings-subscribe'}` (subscribe with `vapidPublicKey`, or the key `server` serves), and
 * `notificationclick` (focus a tab).
 */
export function installTidingsPush(options = {}) {
  self.addEventListener('push', (event) => {
    let payload = '';
    try {
      payload = event.data?.text() ?? '';
    } catch {
      payload = '';
    }
    event.waitUntil(handlePush(payload, options).catch((e) => console.warn('tidings: push payload refused', e)));
  });
  self.addEventListener('message', (event) => {
    const m = event.data;
    if (m?.type === 'tidings-push') {
      event.waitUntil(
        handlePush(m.payload, options)
          .catch((e) => ({ show: false, error: String(e?.message ?? e) }))
          .then((r) => event.source?.postMessage({ type: 'tidings-push-result', ref: m.ref, ...r })),
      );
    } else if (m?.type === 'tidings-subscribe') {
      event.waitUntil(subscribePush(options).catch((e) => console.warn('tidings: push subscription failed', e)));
    }
  });
  self.addEventListener('notificationclick', (event) => {
    event.notification.close();
    event.waitUntil(
      self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((tabs) => tabs[0]?.focus()),
    );
  });
}
