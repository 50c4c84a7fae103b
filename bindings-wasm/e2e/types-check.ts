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
  if (outcome.show) console.log(outcome.notification.id);
  await client.close();
  const key: string = await fetchVapidPublicKey('https://tidings.example');
  console.log(key.length);
}
void main();
