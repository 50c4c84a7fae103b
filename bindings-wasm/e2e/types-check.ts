// Compiled by `tsc --noEmit` in `cargo xtask wasm-test` when TypeScript is available: the declarations are usable.
import { TidingsClient, type Notification } from '@tidings/web';
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
    const n: Notification = e.detail.notification;
    if (e.detail.shown) console.log(n.title ?? n.type, client.badge);
  });
  client.addEventListener('state', (e) => console.log(e.detail.kind));
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
