// Hand-written declarations for @tidings/web/sw (use inside a module service worker).
import type { Notification, PushSummary } from './tidings.js';

export interface PushOptions {
  /** The client's `name` (default `tidings`): which stored state and tab channel to use. */
  name?: string;
  wasmUrl?: string | URL;
  /** Show with `registration.showNotification` (default true). */
  show?: boolean;
  notificationOptions?: NotificationOptions | ((n: Notification) => NotificationOptions);
  /**
   * The server's VAPID public key (base64url), for `subscribePush` / `{type:'tidings-subscribe'}`. When absent
   * it is read from `server` (`GET /v1/push/vapid-public-key`).
   */
  vapidPublicKey?: string;
  /** The Tidings server's base URL (default: this worker's origin). */
  server?: string | URL;
  /**
   * The signed-in user's Tidings token (from your backend): used to fetch a notification too large for its push
   * and to ack what was shown (`POST /v1/me/acks`). Without it a lightweight push shows its title.
   */
  token?: () => string | Promise<string>;
  /** Called with each push's result, after it was shown. */
  onPush?: (result: PushResult) => void;
}

export interface PushResult {
  show: boolean;
  id?: string;
  notification?: Notification;
  /** A digest or quiet-hours summary was shown. */
  summary?: PushSummary;
  /** A lightweight push whose fetch failed: its title was shown. */
  titleOnly?: { id: string; title?: string; reason: string };
  /** Showing failed (e.g. no notification permission). */
  error?: string;
  /** The ack to the server failed. */
  ackError?: string;
}

export declare function installTidingsPush(options?: PushOptions): void;
export declare function handlePush(payload: string | object, options?: PushOptions): Promise<PushResult>;
export declare function subscribePush(options?: {
  vapidPublicKey?: string;
  server?: string | URL;
  name?: string;
}): Promise<PushSubscription>;
/** The server's VAPID public key from `GET <server>/v1/push/vapid-public-key`; rejects with the server's reason. */
export declare function fetchVapidPublicKey(server?: string | URL): Promise<string>;
