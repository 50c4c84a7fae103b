// The browser package over `wss`: `tidings-server` terminating TLS itself (--tls-cert/--tls-key) with a
// certificate from a test CA (made by `tidings-test-pki`), and headless Chromium trusting that certificate through
// a launch flag (`--ignore-certificate-errors-spki-list` with the certificate's SPKI hash). The demo page, served
// over https, connects to wss://localhost:PORT/v1/ws and receives a notification published over https. Without
// the flag, Chromium refuses the certificate.
//
//   TIDINGS_SERVER=… TIDINGS_WEB_ROOT=… TIDINGS_TLS_DIR=<dir with ca.pem cert.pem key.pem> node tls.mjs

import { spawn } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const SERVER = process.env.TIDINGS_SERVER;
const WEB_ROOT = resolve(process.env.TIDINGS_WEB_ROOT);
const TLS_DIR = resolve(process.env.TIDINGS_TLS_DIR);
const ca = readFileSync(join(TLS_DIR, 'ca.pem'));
const certPem = readFileSync(join(TLS_DIR, 'cert.pem'), 'utf8');

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

/** An https request trusting the test CA; resolves to { status, body }. */
function https(method, path, body) {
  return new Promise((res, rej) => {
    const req = request(
      { host: 'localhost', port, path, method, ca, headers: { 'Content-Type': 'application/json', Authorization: 'Bearer tidings-dev-key' } },
      (r) => {
        let data = '';
        r.on('data', (d) => (data += d));
        r.on('end', () => res({ status: r.statusCode, body: data }));
      },
    );
    req.on('error', rej);
    if (body !== undefined) req.write(JSON.stringify(body));
    req.end();
  });
}

function launch(extraArgs) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', ...extraArgs],
  });
}

const port = await freePort();
const dataDir = mkdtempSync(join(tmpdir(), 'tidings-tls-e2e-'));
const server = spawn(
  SERVER,
  ['--demo', '--bind', `127.0.0.1:${port}`, '--web-root', WEB_ROOT, '--data-dir', dataDir,
    '--tls-cert', join(TLS_DIR, 'cert.pem'), '--tls-key', join(TLS_DIR, 'key.pem')],
  { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } },
);
let serverLog = '';
server.stderr.on('data', (d) => (serverLog = (serverLog + d).slice(-20000)));

let failed = false;
const browsers = [];
try {
  for (let i = 0; ; i++) {
    const r = await https('GET', '/healthz').catch(() => null);
    if (r?.status === 200) break;
    assert(i < 200, `the server did not come up over https:\n${serverLog}`);
    await sleep(100);
  }
  // What Chromium is told to trust: the base64 SHA-256 of the certificate's SubjectPublicKeyInfo.
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  const hash = createHash('sha256').update(spki).digest('base64');

  // Without the flag the certificate is refused.
  const strict = await launch([]);
  browsers.push(strict);
  const refused = await (await strict.newPage()).goto(`https://localhost:${port}/`).then(() => null, (e) => e);
  assert(refused && /ERR_CERT/.test(refused.message), `an untrusted certificate was accepted: ${refused}`);

  // Trusting it: the page over https, the package over wss.
  const browser = await launch([`--ignore-certificate-errors-spki-list=${hash}`]);
  browsers.push(browser);
  const context = await browser.newContext();
  const seen = [];
  await context.exposeBinding('__report', (_source, kind, id) => seen.push(`${kind}:${id}`));
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`   [page error] ${e.message}`));
  await page.goto(`https://localhost:${port}/?user=tls-alice`);
  await page.waitForFunction(() => window.tidings?.state?.kind === 'connected', null, { timeout: 20000 });
  const url = await page.evaluate(() => window.tidings.url);
  assert(url === `wss://localhost:${port}/v1/ws`, `the package connected to ${url}`);
  const published = await https('POST', '/v1/publish', { users: ['tls-alice'], type: 'e2e', priority: 'important', title: 'over wss', id: 'wss-1' });
  assert(published.status === 202, `publish over https: ${published.status} ${published.body}`);
  for (let i = 0; !seen.includes('notification:wss-1'); i++) {
    assert(i < 200, `the notification did not arrive over wss (saw ${seen})`);
    await sleep(50);
  }
  const stats = await page.evaluate(() => window.tidings.stats());
  assert(stats.rttSamples >= 1 && stats.connections === 1, `stats over wss: ${JSON.stringify(stats)}`);
  console.log(`ok - the browser package over wss://localhost:${port} (certificate trusted by SPKI ${hash.slice(0, 12)}…): connected, wss-1 received; without the flag: ${refused.message.split('\n')[0]}`);
} catch (e) {
  failed = true;
  console.error(`FAIL - ${e.message}\n--- server log ---\n${serverLog}`);
} finally {
  for (const b of browsers) await b.close().catch(() => {});
  server.kill();
  rmSync(dataDir, { recursive: true, force: true });
}
console.log(failed ? '0 passed, 1 failed' : '1 passed, 0 failed');
process.exit(failed ? 1 : 0);
