// Compiled by `tsc --noEmit` in `cargo xtask wasm-test`: the declarations are usable, and they refuse what they must.
import { TidingsClient, type TidingsNotification } from '@tidings/web';
import { fetchVapidPublicKey, type PushResult } from '@tidings/web/sw';

export const noPush: PushResult = { show: false };

async function main(): Promise<void> {
  const client = await TidingsClient.connect({
    token: async () => 'token',
    streams: ['topic:news'],
    batchWindowMs: 0,
    backoffBaseMs: 50,
    backoffCapMs: 500,
  });
  client.addEventListener('notification', (e) => {
    const n: TidingsNotification = e.detail.notification;
    if (e.detail.shown) console.log(n.title ?? n.type, client.badge);
  });
  client.addEventListener('state', (e) => console.log(e.detail.kind));
  // Event names are typed with no catch-all: a misspelt one is an error (if it type-checked, this directive
  // would be unused, which tsc reports as an error).
  // @ts-expect-error 'notfication' is not an event of the client
  client.addEventListener('notfication', () => {});
  // @ts-expect-error nor for removeEventListener
  client.removeEventListener('digests', () => {});
  // The DOM's Notification stays the Notifications API: the package's type does not shadow it.
  const permission: NotificationPermission = Notification.permission;
  console.log(permission);
  const outcome = await client.ingestPush({ tidings: {} });
  if (outcome.show && 'notification' in outcome) console.log(outcome.notification.id);
  else if (outcome.show && 'summary' in outcome) console.log(outcome.summary.count, outcome.summary.ids);
  else if (outcome.show) console.log(outcome.titleOnly.title ?? outcome.id);
  const prefs = await client.updatePreferences([{ type: 'marketing.*', channel: 'push', enabled: false }]);
  console.log(prefs.version);
  const quiet = await client.setQuietHours({ timeZone: 'Europe/Berlin', ranges: [{ day: 'mon', start: '22:00', end: '07:00' }] });
  console.log(quiet.quietHours?.timeZone);
  await client.close();
  const key: string = await fetchVapidPublicKey('https://tidings.example');
  console.log(key.length);
}
void main();
