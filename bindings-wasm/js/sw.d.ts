// Hand-written declarations for @tidings/web/sw (use inside a module service worker).
import type { Notification } from './tidings.js';

export interface PushOptions {
  /** The client's `name` (default `tidings`): which stored state and tab channel to use. */
  name?: string;
  wasmUrl?: string | URL;
  /** Show with `registration.showNotification` (default true). */
  show?: boolean;
  notificationOptions?: NotificationOptions | ((n: Notification) => NotificationOptions);
  /** The server's VAPID public key (base64url), for `subscribePush` / `{type:'tidings-subscribe'}`. */
  vapidPublicKey?: string;
}

export interface PushResult {
  show: boolean;
  id?: string;
  notification?: Notification;
  error?: string;
}

export declare function installTidingsPush(options?: PushOptions): void;
export declare function handlePush(payload: string | object, options?: PushOptions): Promise<PushResult>;
export declare function subscribePush(options: { vapidPublicKey: string; name?: string }): Promise<PushSubscription>;
