// The README's Vite app, as a user builds it: index.html, src/main.ts (and, for the proxy run, vite.config.ts) are
// taken from bindings-wasm/README.md, vite comes from npm (vite-app/package-lock.json), @tidings/web is installed
// from the tarball `cargo xtask package` packs. Against a real `tidings-server --demo --no-demo-publisher`, each of
// these must show a notification published to `ada` in headless Chromium:
//   1. `vite` (dev server), the server on another origin (VITE_TIDINGS_SERVER; CORS on the demo token);
//   2. `vite build` then `vite preview` (the production bundle, its wasm file copied by Vite);
//   3. `vite` with the README's vite.config.ts: /v1 proxied (HTTP and WebSocket) to the server, same origin.
// No Vite configuration is written for 1 and 2.
//
//   TIDINGS_SERVER=target/debug/tidings-server TIDINGS_TARBALL=target/dist/tidings-web-0.1.0.tgz node vite.mjs

import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchChromium } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const target = resolve(process.env.TIDINGS_TARGET_DIR ?? join(here, '../../target'));
const SERVER = process.env.TIDINGS_SERVER ?? join(target, 'debug/tidings-server');
const TARBALL = resolve(process.env.TIDINGS_TARBALL ?? '');
if (!existsSync(TARBALL)) throw new Error(`TIDINGS_TARBALL: no tarball at ${TARBALL}`);
const app = join(target, 'vite-app');

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
// `what` may be a function: the message is then made when the wait times out (with what was seen meanwhile).
async function until(what, fn, timeoutMs = 30000, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const last = await fn().catch(() => null);
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
    await sleep(everyMs);
  }
}

// The README's blocks for the app: `<!-- vite-app: path -->` or `<!-- vite-app (proxy): path -->` before a block.
const readme = readFileSync(join(here, '../README.md'), 'utf8');
const blocks = [...readme.matchAll(/<!-- vite-app(?: \((\w+)\))?: ([^ ]+) -->\n```\w+\n([\s\S]*?)^```$/gm)].map(
  ([, variant, path, text]) => ({ variant: variant ?? 'plain', path, text }),
);
for (const needed of ['index.html', 'src/main.ts', 'vite.config.ts']) {
  if (!blocks.some((b) => b.path === needed)) throw new Error(`bindings-wasm/README.md has no vite-app block ${needed}`);
}

// The Tidings server: demo mode, no demo publisher (only what this test publishes arrives).
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = spawn(SERVER, ['--demo', '--no-demo-publisher', '--store', 'memory', '--bind', `127.0.0.1:${port}`], {
  stdio: ['ignore', 'ignore', 'pipe'],
  env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
});
let serverLog = '';
server.stderr.on('data', (d) => (serverLog = (serverLog + d).slice(-20000)));
const children = [server];
let browser;
async function cleanUp() {
  await browser?.close().catch(() => {});
  for (const child of children) child.kill('SIGTERM');
}

try {
  await until('the server', async () => (await fetch(`${base}/healthz`)).ok);

  // The app: package.json + lockfile (vite), the README's files, then the tarball as a user installs it.
  rmSync(app, { recursive: true, force: true });
  mkdirSync(join(app, 'src'), { recursive: true });
  cpSync(join(here, 'vite-app/package.json'), join(app, 'package.json'));
  cpSync(join(here, 'vite-app/package-lock.json'), join(app, 'package-lock.json'));
  for (const block of blocks.filter((b) => b.variant === 'plain')) writeFileSync(join(app, block.path), block.text);
  const npm = (args) => execFileSync('npm', [...args, '--no-audit', '--no-fund'], { cwd: app, stdio: 'inherit' });
  npm(['ci']);
  npm(['install', '--no-save', TARBALL]);
  const installed = join(app, 'node_modules/@tidings/web');
  for (const file of ['README.md', 'tidings.d.ts', 'dist/tidings_wasm_bg.wasm']) {
    if (!existsSync(join(installed, file))) throw new Error(`the installed package lacks ${file}`);
  }

  browser = await launchChromium();
  let published = 0;
  async function check(what, url) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    // (The README's index.html has no icon: the browser's request for /favicon.ico gets 404, which is not the app's.)
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.location().url.endsWith('/favicon.ico')) errors.push(m.text());
    });
    await page.goto(url);
    await until(
      () => `${what}: connected (errors: ${errors.join('; ') || 'none'})`,
      async () => (await page.title()) === 'connected',
    );
    const title = `Hello ${what} #${++published}`;
    const reply = await fetch(`${base}/v1/publish`, {
      method: 'POST',
      headers: { authorization: 'Bearer tidings-dev-key', 'content-type': 'application/json' },
      body: JSON.stringify({ users: ['ada'], type: 'hello', priority: 'critical', title }),
    });
    if (reply.status !== 202) throw new Error(`publish: ${reply.status} ${await reply.text()}`);
    await until(`${what}: "${title}" on the page`, async () =>
      (await page.locator('#log li').allTextContents()).includes(title),
    );
    await context.close();
    if (errors.length) throw new Error(`${what}: errors on the page: ${errors.join('; ')}`);
    console.log(`ok: ${what} — the page showed "${title}"`);
  }

  // Starts `npx vite …` in the app and waits until it answers at `url`.
  async function vite(args, url, env = {}) {
    const child = spawn('npx', ['vite', ...args], {
      cwd: app,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
      detached: true,
    });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    // The whole process group (npx, then vite); once only, by whichever comes first (stop or the final clean-up).
    let alive = true;
    const kill = () => {
      if (alive) process.kill(-child.pid, 'SIGTERM');
      alive = false;
    };
    children.push({ kill });
    await until(() => `vite ${args.join(' ')} (output: ${output})`, async () => (await fetch(url)).ok);
    return () => {
      kill();
      if (/error/i.test(output) && !/0 errors/.test(output)) console.log(output);
    };
  }

  const env = { VITE_TIDINGS_SERVER: base };
  // 1. Dev server, no configuration.
  let vitePort = await freePort();
  let stop = await vite(['--host', '127.0.0.1', '--port', `${vitePort}`, '--strictPort'], `http://127.0.0.1:${vitePort}/`, env);
  await check('vite dev', `http://127.0.0.1:${vitePort}/`);
  stop();

  // 2. Production build, served by `vite preview`.
  execFileSync('npx', ['vite', 'build'], { cwd: app, stdio: 'inherit', env: { ...process.env, ...env } });
  const assets = readdirSync(join(app, 'dist/assets'));
  if (!assets.some((f) => f.endsWith('.wasm'))) throw new Error(`vite build copied no .wasm: ${assets.join(', ')}`);
  vitePort = await freePort();
  stop = await vite(['preview', '--host', '127.0.0.1', '--port', `${vitePort}`, '--strictPort'], `http://127.0.0.1:${vitePort}/`);
  await check('vite build + preview', `http://127.0.0.1:${vitePort}/`);
  stop();

  // 3. Dev server proxying /v1 (ws: true) to the server: the README's vite.config.ts, pointed at this run's port.
  const config = blocks.find((b) => b.path === 'vite.config.ts');
  if (!config.text.includes('http://127.0.0.1:8080')) throw new Error('the proxy block no longer targets 127.0.0.1:8080');
  writeFileSync(join(app, 'vite.config.ts'), config.text.replace('http://127.0.0.1:8080', base));
  vitePort = await freePort();
  stop = await vite(['--host', '127.0.0.1', '--port', `${vitePort}`, '--strictPort'], `http://127.0.0.1:${vitePort}/`);
  await check('vite dev through the /v1 proxy', `http://127.0.0.1:${vitePort}/`);
  stop();
  console.log('vite app: 3 passed, 0 failed');
} catch (e) {
  console.error(`vite app: FAILED: ${e.stack ?? e}\nserver log:\n${serverLog}`);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
