// Socket.IO 4.8.4 client fleet for the benchmark scenarios, started pinned to CPU 1 by `tidings-bench run`.
// Commands arrive as JSON lines on stdin; each gets one JSON line on stdout.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const nowNs = () => process.hrtime.bigint();
let sockets = [];
let counts = [];
let latenciesUs = [];
let seqs = [];
let connectingAt = [];
let handshakesUs = [];
let backAt = [];
let recovered = [];
let dropMarkNs = 0n;

function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.round((p / 100) * (sorted.length - 1)))];
}

// `urls` (several servers, S6): client i connects to urls[i % urls.length].
async function start({ url, urls = null, n, topic = null, mode = "count" }) {
  sockets = [];
  counts = new Array(n).fill(0);
  latenciesUs = [];
  seqs = Array.from({ length: n }, () => []);
  connectingAt = new Array(n).fill(0n);
  handshakesUs = [];
  backAt = new Array(n).fill(0n);
  recovered = new Array(n).fill(false);
  let ready = 0;
  for (let i = 0; i < n; i++) {
    const socket = io(urls ? urls[i % urls.length] : url, { transports: ["websocket"], auth: { user: `u${i}`, topic } });
    socket.on("connect", () => {
      if (dropMarkNs > 0n && nowNs() > dropMarkNs) {
        handshakesUs.push(Number((nowNs() - connectingAt[i]) / 1000n));
        backAt[i] = nowNs();
        if (socket.recovered) recovered[i] = true;
      } else {
        ready++;
      }
    });
    socket.io.on("reconnect_attempt", () => {
      connectingAt[i] = nowNs();
    });
    socket.on("n", (msg) => {
      if (mode === "count") counts[i]++;
      else if (mode === "latency") latenciesUs.push(Number((nowNs() - BigInt(msg.t)) / 1000n));
      else if (mode === "sequence") seqs[i][msg.seq] = (seqs[i][msg.seq] ?? 0) + 1;
    });
    sockets.push(socket);
    if (i % 250 === 249) while (ready < i + 1) await new Promise((r) => setTimeout(r, 5));
  }
  while (ready < n) await new Promise((r) => setTimeout(r, 5));
  return { ready };
}

const total = () => counts.reduce((a, b) => a + b, 0);

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const cmd = JSON.parse(line);
  let reply;
  switch (cmd.cmd) {
    case "start":
      reply = await start(cmd);
      break;
    case "count":
      reply = { total: total() };
      break;
    case "wait_total": {
      const deadline = Date.now() + (cmd.timeout_ms ?? 60000);
      while (total() < cmd.want && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      reply = { total: total() };
      break;
    }
    case "mark_drop":
      // Events after this instant (now + in_ms) count as post-drop; set slightly before the server's drop.
      dropMarkNs = nowNs() + BigInt(Math.round(cmd.in_ms * 1e6));
      reply = { ok: true };
      break;
    case "latency": {
      const deadline = Date.now() + 10000;
      while (latenciesUs.length < cmd.want && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const l = [...latenciesUs].sort((a, b) => a - b);
      reply = { received: l.length, p50_us: percentile(l, 50), p99_us: percentile(l, 99), p999_us: percentile(l, 99.9), max_us: l.at(-1) ?? 0 };
      break;
    }
    case "sequence": {
      const { published, users } = cmd;
      const expected = (u) => (u < published ? Math.floor((published - u - 1) / users) + 1 : 0);
      const deadline = Date.now() + 15000;
      const done = () => seqs.every((s, u) => s.filter((c) => c > 0).length >= expected(u));
      while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      let missed = 0;
      let duplicates = 0;
      for (let u = 0; u < users; u++) {
        for (let k = 0; k < expected(u); k++) {
          const c = seqs[u][k] ?? 0;
          if (c === 0) missed++;
          else duplicates += c - 1;
        }
      }
      const h = [...handshakesUs].sort((a, b) => a - b);
      const last = backAt.reduce((a, b) => (b > a ? b : a), 0n);
      const droppedAt = BigInt(cmd.dropped_at_ns);
      reply = {
        missed,
        duplicates,
        resumed_fraction: recovered.filter(Boolean).length / users,
        reconnect_handshake_p50_ms: percentile(h, 50) / 1000,
        reconnect_handshake_p99_ms: percentile(h, 99) / 1000,
        last_client_back_s: last > droppedAt ? Number(last - droppedAt) / 1e9 : null,
      };
      break;
    }
    case "close":
      for (const s of sockets) s.close();
      sockets = [];
      reply = { ok: true };
      break;
    case "quit":
      process.exit(0);
      break;
    default:
      reply = { error: `unknown command ${cmd.cmd}` };
  }
  console.log(JSON.stringify(reply));
}
