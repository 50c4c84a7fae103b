// The npm web-push side of benchmark P1 (bench/README.md): send the same payload to the same subscriptions on the
// same mock push service as the Tidings sender, `concurrency` requests in flight, for `seconds` after a warm-up,
// and print one JSON line: pushes accepted, wall time, and this process's CPU time over the timed window.
//
//   taskset -c 0 node send.js config.json     (NODE_EXTRA_CA_CERTS = the mock's test CA)
//
// config.json: {subscriptions: [PushSubscription JSON…], vapid: {subject, publicKey, privateKey}, payload,
//               ttl, urgency, topic, concurrency, seconds, warmup}

import { readFileSync } from 'node:fs';
import https from 'node:https';
import webpush from 'web-push';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const agent = new https.Agent({ keepAlive: true, maxSockets: config.concurrency });
const options = {
  vapidDetails: config.vapid,
  TTL: config.ttl,
  urgency: config.urgency,
  topic: config.topic,
  agent,
};

let next = 0;
let accepted = 0;
let failed = 0;
let lastError = null;

async function one() {
  const subscription = config.subscriptions[next++ % config.subscriptions.length];
  try {
    const r = await webpush.sendNotification(subscription, config.payload, options);
    if (r.statusCode === 201) accepted++;
    else failed++;
  } catch (e) {
    failed++;
    lastError = String(e?.body ?? e?.message ?? e);
  }
}

async function run(count, until) {
  const workers = [];
  let started = 0;
  for (let w = 0; w < config.concurrency; w++) {
    workers.push((async () => {
      while ((count === null || started < count) && (until === null || performance.now() < until)) {
        started++;
        await one();
      }
    })());
  }
  await Promise.all(workers);
}

await run(config.warmup, null);
accepted = 0;
failed = 0;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
await run(null, t0 + config.seconds * 1000);
const wall = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
const cpuSeconds = (cpu.user + cpu.system) / 1e6;
agent.destroy();
console.log(JSON.stringify({
  pushes: accepted,
  failed,
  last_error: lastError,
  seconds: wall,
  pushes_per_s: accepted / wall,
  cpu_s: cpuSeconds,
  cpu_us_per_push: accepted > 0 ? (cpuSeconds * 1e6) / accepted : null,
  node: process.version,
}));
