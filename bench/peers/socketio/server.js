// Socket.IO 4.8.4 server side of the benchmark scenarios (bench/README.md), started pinned to CPU 0 by
// `tidings-bench run`. Commands arrive as JSON lines on stdin; each gets one JSON line on stdout.
// connectionStateRecovery is on, as the comparison requires.
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

// With REDIS_URL, several server processes share rooms through `@socket.io/redis-adapter` (the multi-process
// scenario, S6). That adapter does not support connection state recovery (only the Redis Streams adapter does), so
// it is off there.
const redisUrl = process.env.REDIS_URL;
const http = createServer();
const io = new Server(http, {
  ...(redisUrl
    ? {}
    : { connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true } }),
  transports: ["websocket"],
});
if (redisUrl) {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}

io.on("connection", (socket) => {
  const { user, topic } = socket.handshake.auth ?? {};
  if (user && !socket.recovered) socket.join(`user:${user}`);
  if (topic && !socket.recovered) socket.join(`topic:${topic}`);
});

const PAYLOAD = { p: "x".repeat(64 - 8) }; // {"p":"…"} is 64 bytes of JSON, as on the Tidings side
const nowNs = () => process.hrtime.bigint(); // CLOCK_MONOTONIC, shared with the client process
const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const rssKib = () => Math.round(process.memoryUsage.rss() / 1024);
const turn = () => new Promise((resolve) => setImmediate(resolve));
const PACED =
  "in-process (io.to(room).emit), paced by sleepUntil: a timer for waits over 1 ms, then event-loop turns (setImmediate) until due";
const sleepUntil = async (deadlineNs) => {
  const left = Number(deadlineNs - nowNs()) / 1e6;
  if (left > 1) await new Promise((r) => setTimeout(r, left - 0.5));
  while (nowNs() < deadlineNs) await turn();
};

async function fanout({ seconds = 10, batch = 1 }) {
  const cpu0 = cpuSeconds();
  const end = nowNs() + BigInt(Math.round(seconds * 1e9));
  let published = 0;
  const room = io.to("topic:bench");
  while (nowNs() < end) {
    for (let i = 0; i < batch; i++) {
      room.emit("n", PAYLOAD);
      published++;
    }
    await turn();
  }
  return {
    published,
    cpu_s: cpuSeconds() - cpu0,
    publisher: `in-process io.to(room).emit, ${batch} per event-loop turn`,
  };
}

async function targeted({ users = 1000, rate = 2000, seconds = 10 }) {
  const cpu0 = cpuSeconds();
  const start = nowNs();
  const intervalNs = 1e9 / rate;
  let published = 0;
  while (nowNs() - start < BigInt(Math.round(seconds * 1e9))) {
    await sleepUntil(start + BigInt(Math.round(intervalNs * published)));
    io.to(`user:u${published % users}`).emit("n", { t: nowNs().toString(), p: "x".repeat(32) });
    published++;
  }
  return { published, cpu_s: cpuSeconds() - cpu0, publisher: PACED };
}

async function sequence({ users = 1000, rate = 1000, seconds = 10, drop_after = 3 }) {
  const start = nowNs();
  const intervalNs = 1e9 / rate;
  let published = 0;
  let droppedAt = null;
  let dropped = 0;
  while (nowNs() - start < BigInt(Math.round(seconds * 1e9))) {
    await sleepUntil(start + BigInt(Math.round(intervalNs * published)));
    if (droppedAt === null && nowNs() - start >= BigInt(Math.round(drop_after * 1e9))) {
      droppedAt = nowNs();
      // Drop the transports (as a network failure or a proxy restart would), not a server-side disconnect:
      // clients reconnect and connection state recovery replays what they missed.
      for (const client of Object.values(io.engine.clients)) {
        client.close();
        dropped++;
      }
    }
    const user = published % users;
    io.to(`user:u${user}`).emit("n", { seq: Math.floor(published / users) });
    published++;
  }
  return { published, dropped, dropped_at_ns: droppedAt === null ? null : droppedAt.toString(), publisher: PACED };
}

http.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ ready: true, port: http.address().port, pid: process.pid }));
});

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const cmd = JSON.parse(line);
  let reply;
  try {
    switch (cmd.cmd) {
      case "rss":
        reply = { rss_kib: rssKib() };
        break;
      case "cpu":
        reply = { cpu_s: cpuSeconds() };
        break;
      case "stats":
        reply = { connections_open: io.engine.clientsCount };
        break;
      case "fanout":
        reply = await fanout(cmd);
        break;
      case "targeted":
        reply = await targeted(cmd);
        break;
      case "sequence":
        reply = await sequence(cmd);
        break;
      case "quit":
        io.close();
        process.exit(0);
        break;
      default:
        reply = { error: `unknown command ${cmd.cmd}` };
    }
  } catch (e) {
    reply = { error: String(e?.stack ?? e) };
  }
  console.log(JSON.stringify(reply));
}
