// Compiled by `tsc --noEmit` in `cargo xtask wasm-test` when TypeScript is available: the declarations are usable.
import { TidingsClient, TidingsRequestError, type InboxCounts, type Notification } from '@tidings/web';
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
  client.addEventListener('inboxcounts', (e) => {
    const c: InboxCounts = e.detail;
    console.log(c.unread, c.version);
  });
  const page = await client.inboxLoadMore(20);
  const first = page.items[0];
  if (first && first.read_at == null) await client.inboxMark('read', [first.id]);
  const all = await client.inboxMarkAll('read');
  console.log(all.counts.unread, client.inboxCounts?.unread, client.inboxItems().complete);
  try {
    const h = await client.history('topic:news', { epoch: 'e', offset: 3 }, 100);
    console.log(h.items.length, h.next);
  } catch (e) {
    if (e instanceof TidingsRequestError) console.log(e.code);
  }
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
