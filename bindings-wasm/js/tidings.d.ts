// Hand-written declarations for @tidings/web.

/** Delivery tier. */
export type Priority = 'critical' | 'important' | 'informational';
/** Retention class. */
export type Persistence = 'ephemeral' | 'bufferable' | 'persistent';

/**
 * The notification envelope (protocol §3). Named `TidingsNotification` so that it does not shadow the DOM's
 * `Notification` (the Notifications API a page shows it with).
 */
export interface TidingsNotification {
  id: string;
  stream: string;
  /** Absent for ephemeral notifications. */
  offset?: number;
  epoch: string;
  type: string;
  priority: Priority;
  persistence: Persistence;
  title?: string | null;
  body?: string | null;
  data?: unknown;
  group?: string | null;
  /** ms since the Unix epoch. */
  created_at: number;
}

/**
 * Several informational notifications of one `group`, delivered as one `digest` event instead of `notification`
 * events when they arrive within the batch window (`batchWindowMs`, 3 s by default; 0 turns digests off).
 */
export interface Digest {
  group: string;
  count: number;
  first: TidingsNotification;
  last: TidingsNotification;
  ids: string[];
}

/** The shared connection's state (the leader tab's socket). */
export type ConnectionState =
  | { kind: 'idle' }
  | { kind: 'connecting'; attempt: number }
  | { kind: 'connected' }
  | { kind: 'reconnecting'; attempt: number; delayMs: number; reason: string }
  | { kind: 'suspended'; reason: 'background' | 'offline' }
  | { kind: 'closed' }
  | {
      kind: 'failed';
      reason: 'unauthorized' | 'token_provider' | 'protocol' | 'frame_too_large' | 'session_replaced' | 'rejected';
      message: string;
    };

/** How a stream continued after (re)subscribing. */
export type Continuity =
  | { kind: 'fresh' }
  | { kind: 'resumed'; replayed: number }
  | {
      kind: 'gap';
      reason: 'epoch_changed' | 'out_of_buffer' | 'ahead_of_stream';
      missed?: number;
      /** How many notifications the server still held: they follow this event (each delivered once). */
      replayed: number;
    };

/** A digest or quiet-hours summary push (protocol §11.1). */
export interface PushSummary {
  kind: 'digest' | 'quiet_hours';
  group?: string;
  count: number;
  /** Newest first, at most 20. */
  ids: string[];
  title?: string;
}

export type PushOutcome =
  | { show: true; notification: TidingsNotification }
  | { show: false; id: string }
  | { show: true; id: string; summary: PushSummary }
  /** A push too large to carry its notification whose fetch failed: show its title. */
  | { show: true; id: string; titleOnly: { id: string; title?: string; reason: string } };

/** One preference (protocol §9.5): a channel on or off for a notification type or a topic. Deny wins. */
export type PreferenceRule =
  | { type: string; channel: 'socket' | 'push'; enabled: boolean }
  | { topic: string; channel: 'socket' | 'push'; enabled: boolean };

export interface Preferences {
  rules: PreferenceRule[];
  version: number;
  updatedAt: number;
}

export interface QuietHours {
  /** IANA time zone, e.g. `Intl.DateTimeFormat().resolvedOptions().timeZone` (`time_zone` is accepted too). */
  timeZone: string;
  ranges: { day: 'mon' | 'tue' | 'wed' | 'thu' | 'fri' | 'sat' | 'sun'; start: string; end: string }[];
}

export interface QuietHoursSettings {
  quietHours: QuietHours | null;
  version: number;
  updatedAt: number;
}

/** A token source error; `transient: false` stops the client (`failed`). */
/** The server's inbox counts (protocol §13.4); `unread` is the badge. Only ever move to a newer `version`. */
export interface InboxCounts {
  unseen: number;
  unread: number;
  total: number;
  version: number;
  /** The newest item's `seq`. */
  head: number;
}

/** An inbox item (protocol §13.2). Times are ms since the Unix epoch; absent: not in that state. */
export interface InboxItem {
  /** The notification id. */
  id: string;
  /** Position in the inbox (grows with every item added). */
  seq: number;
  /** The inbox version of the item's last change. */
  v: number;
  inserted_at: number;
  seen_at?: number | null;
  read_at?: number | null;
  archived_at?: number | null;
  /** Absent in the items of a change (state only). */
  notification?: Notification;
}

export interface InboxPage {
  items: InboxItem[];
  /** `before` of the next (older) page; null: no older items. */
  next: number | null;
  counts: InboxCounts;
}

export interface InboxChangeResult {
  counts: InboxCounts;
  items: InboxItem[];
  /** The server had applied this change already (sent again after a lost answer). */
  duplicate: boolean;
  /** Ids not in the inbox. */
  unknown: string[];
}

export type InboxAction = 'read' | 'unread' | 'seen' | 'unseen' | 'archive' | 'unarchive';

export interface InboxQuery {
  before?: number;
  limit?: number;
  status?: 'all' | 'unread' | 'read' | 'unseen' | 'seen';
  archived?: 'exclude' | 'include' | 'only';
  type?: string;
  topic?: string;
}

export interface HistoryPage {
  stream: string;
  epoch: string;
  head: number;
  oldest: number;
  items: Notification[];
  /** `offset` of `after` for the next page; null: this page reaches the head. */
  next: number | null;
}

/** Why an inbox or history request failed. */
export declare class TidingsRequestError extends Error {
  readonly code: 'bad_request' | 'forbidden' | 'try_again_later' | 'timed_out' | 'closed';
}

export interface TokenFailure extends Error {
  transient?: boolean;
}

export interface ClientOptions {
  /** `ws(s)://host/v1/ws`; default: the page's host. */
  url?: string;
  /** Returns a Tidings token; `forceRefresh`: the previous one was rejected or is about to expire. */
  token: (forceRefresh: boolean) => Promise<string> | string;
  /** Streams (`topic:<name>`, `user:<id>`) to subscribe besides the user's own. */
  streams?: string[];
  /** Separates clients of one origin: storage keys and the tabs' channel (default `tidings`). */
  name?: string;
  /** Where the .wasm file is (default: `dist/tidings_wasm_bg.wasm` next to the module). */
  wasmUrl?: string | URL;
  /**
   * How long the shared socket stays open once no tab of this browser is visible (default 30 000 ms); then the
   * connection is suspended until a tab is visible again (and resumes from the cursor; Web Push covers the gap).
   */
  backgroundGraceMs?: number;
  /** How long a batch of informational notifications of one group stays open (default 3 000 ms; 0: no batching). */
  batchWindowMs?: number;
  /** Reconnect backoff: the first delay's upper bound (default 500 ms) and any delay's (default 20 000 ms). */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** Leader election: Web Locks (default where available) or a localStorage lease. */
  election?: 'locks' | 'lease';
}

export interface NotificationDetail {
  notification: TidingsNotification;
  /** True in exactly one tab of the browser: the one that should display it. */
  shown: boolean;
  source: 'socket' | 'push';
}

export interface DigestDetail {
  digest: Digest;
  shown: boolean;
}

/**
 * The client's events. As on every platform, they come in the order the engine emits them and each is delivered
 * once per client; here they are dispatched synchronously to this tab's listeners the moment they are emitted, so
 * the SDK holds none back (a listener that blocks blocks the page, socket included) and one emitted before a
 * listener was added is not replayed to it (add listeners right after `connect()` resolves).
 */
export interface TidingsEventMap {
  notification: CustomEvent<NotificationDetail>;
  digest: CustomEvent<DigestDetail>;
  state: CustomEvent<ConnectionState>;
  continuity: CustomEvent<{ stream: string; continuity: Continuity }>;
  role: CustomEvent<{ role: 'leader' | 'follower' | 'closed' }>;
  badge: CustomEvent<{ count: number }>;
  pushregistered: CustomEvent<{ platform: string }>;
  /**
   * The server refused a subscription (`forbidden`: the token does not allow the stream; `bad_request`), or ended
   * one (an operator's `POST /v1/admin/unsubscribe`, `forbidden`; told in every tab). The stream is dropped and not
   * subscribed again unless a tab subscribes it anew.
   */
  subscriptionfailed: CustomEvent<{ stream: string; code: string; message: string }>;
  /** The server refused the push address (`bad_request`: forgotten, register a valid one). */
  pushregistrationfailed: CustomEvent<{ platform: string; code: string; message: string }>;
  /** The inbox counts changed (in every tab alike). */
  inboxcounts: CustomEvent<InboxCounts>;
  /** This tab's inbox view (`inboxItems()`) changed. */
  inboxchanged: CustomEvent<Record<string, never>>;
}

export interface ClientStats {
  connectionAttempts: number;
  connections: number;
  notificationsReceived: number;
  delivered: number;
  duplicatesDropped: number;
  staleDropped: number;
  digests: number;
  pushIngested: number;
  gaps: number;
  /** Duplicates dropped live on the socket, in replays, and push payloads dropped as duplicates. */
  duplicatesSocket: number;
  duplicatesReplay: number;
  duplicatesPush: number;
  /** Notifications delivered inside digests. */
  digested: number;
  /** Subscriptions answered fresh / resumed; subscriptions followed by a replay, notifications replayed, the largest replay. */
  fresh: number;
  resumed: number;
  replays: number;
  replayed: number;
  replayMax: number;
  /** Reconnections by reason. */
  reconnects: Record<
    | 'handshake_failed'
    | 'connect_timeout'
    | 'connection_lost'
    | 'server_closed'
    | 'heartbeat_timeout'
    | 'server_error'
    | 'undecodable'
    | 'token_refresh',
    number
  >;
  /** Round-trip measurements (`auth` → `welcome`, heartbeat echoes) and the latest, smoothed and smallest, in µs. */
  rttSamples: number;
  rttLastMicros: number | null;
  rttSmoothedMicros: number | null;
  rttMinMicros: number | null;
  socketsOpened: number;
  liveSockets: number;
}

/** The names of the client's events (`addEventListener` accepts these and nothing else). */
export type TidingsEventName = keyof TidingsEventMap;

/**
 * A client of the shared connection. At run time it is an `EventTarget`; its declared listener methods take only
 * the event names of {@link TidingsEventMap}, so a misspelt name (`'notfication'`) is a type error.
 */
export declare class TidingsClient {
  /** Loads the module, restores stored state, joins the other tabs; the leader tab connects. */
  static connect(options: ClientOptions): Promise<TidingsClient>;
  private constructor(options: ClientOptions);
  readonly url: string;
  readonly name: string;
  /** This tab's id (claims are granted to tabs). */
  readonly tabId: string;
  readonly role: 'starting' | 'leader' | 'follower' | 'closed';
  /** The shared connection's state. */
  readonly state: ConnectionState;
  /** Notifications received since the last `clearBadge()` — the same in every tab. */
  readonly badge: number;
  readonly deviceId: string;
  /** The server's inbox counts, null before the first report (kept in the stored state). */
  readonly inboxCounts: InboxCounts | null;
  /** This tab's inbox view, newest first; `complete`: it reaches the oldest item. */
  inboxItems(): { items: InboxItem[]; complete: boolean };
  /** Loads the next (older) page into this tab's view. */
  inboxLoadMore(limit?: number): Promise<InboxPage>;
  /** A page with filters (not added to the view). */
  inboxList(query?: InboxQuery): Promise<InboxPage>;
  /** Queued while offline and sent on reconnect, applied once; resolves with the counts after it. */
  inboxMark(action: InboxAction, ids: string[]): Promise<InboxChangeResult>;
  /** Every item up to the newest this browser knows; newer items stay unread. */
  inboxMarkAll(action?: 'read' | 'seen'): Promise<InboxChangeResult>;
  /** A page of a stream's stored history after `after` (after a gap: the cursor it had). */
  history(stream: string, after?: { epoch: string; offset: number } | null, limit?: number): Promise<HistoryPage>;
  /** Subscribes this tab; the shared socket subscribes each stream once for all tabs that want it. */
  subscribe(stream: string): Promise<void>;
  /** Unsubscribes this tab; the stream stays subscribed while another tab wants it. */
  unsubscribe(stream: string): Promise<void>;
  /** A Web Push payload (`{tidings: envelope}`, the envelope, or JSON text) through the shared dedup window. */
  ingestPush(payload: string | object): Promise<PushOutcome>;
  registerPush(platform: 'web_push' | 'fcm' | 'apns' | 'apns_sandbox', token: string): Promise<void>;
  /** The user's preferences; rejects with `{status, code, message}` when the server refuses. */
  preferences(): Promise<Preferences>;
  setPreferences(rules: PreferenceRule[]): Promise<Preferences>;
  updatePreferences(rules: PreferenceRule[]): Promise<Preferences>;
  quietHours(): Promise<QuietHoursSettings>;
  setQuietHours(quietHours: QuietHours | null): Promise<QuietHoursSettings>;
  clearBadge(): void;
  /** The tab granted to show this id (`d:<first id>` for digests), if known. */
  shownBy(key: string): string | null;
  cursor(stream: string): { epoch: string; offset: number } | null;
  stats(): ClientStats;
  waitForState(kind: ConnectionState['kind'], timeoutMs?: number): Promise<ConnectionState>;
  close(): Promise<void>;

  addEventListener<K extends TidingsEventName>(
    type: K,
    listener: (this: TidingsClient, ev: TidingsEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends TidingsEventName>(
    type: K,
    listener: (this: TidingsClient, ev: TidingsEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  dispatchEvent(event: Event): boolean;
}

/** Loads the WebAssembly module (done by `TidingsClient.connect`). */
export declare function initTidings(wasmUrl?: string | URL): Promise<unknown>;

/** From a page: subscribe to Web Push with the server's VAPID public key and register it through `client`. */
export declare function subscribeWebPush(
  client: TidingsClient,
  options: { vapidPublicKey: string; registration?: ServiceWorkerRegistration },
): Promise<PushSubscription>;

/**
 * The push path without a client: `{show, notification | id, snapshot}` after dedup against the stored `snapshot`
 * JSON; the returned snapshot carries only seen ids — store it with `mergeSnapshots(it, stored)`.
 */
export declare function pushThrough(snapshot: string, payload: string): string;
/** Merges `ours`, about to be stored, over `theirs`, what the store holds (seen ids unioned). */
export declare function mergeSnapshots(ours: string, theirs: string): string;
