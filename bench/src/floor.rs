//! The machine's floor for S3: the same topology and load (a publisher in the server process on CPU 0, 1,000
//! connections read by one thread on CPU 1, 2,000 messages/s round-robin, each carrying its send time), with no
//! protocol and no runtime: plain TCP sockets written with `write(2)` and read through one `epoll` (mio). What
//! it measures is what loopback TCP and the two vCPUs' wake-ups cost before any real-time stack adds its own
//! work, so an S3 target below it cannot be met on the machine by anyone.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};

use crate::scenarios::ServerChild;
use crate::{percentile, sys};

/// Bytes per message: the size of a Tidings S3 frame on the wire (WebSocket header included), so that both move
/// the same bytes. The first 8 are the send time (`CLOCK_REALTIME`, ns, little-endian).
pub(crate) const MESSAGE: usize = 275;

/// The server-process side: a listener whose accepted connections a thread collects.
pub(crate) struct FloorServer {
    accept: JoinHandle<std::io::Result<Vec<TcpStream>>>,
}

impl FloorServer {
    /// Listens on a loopback port and accepts `n` connections in the background; returns the port.
    pub(crate) fn listen(n: usize) -> anyhow::Result<(FloorServer, u16)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let accept = std::thread::spawn(move || {
            (0..n)
                .map(|_| {
                    let (s, _) = listener.accept()?;
                    s.set_nodelay(true)?;
                    Ok(s)
                })
                .collect()
        });
        Ok((FloorServer { accept }, port))
    }

    /// Writes `rate` messages per second round-robin over the connections for `duration`, each stamped just
    /// before its `write`; returns how many it wrote. Runs on the calling thread (the server process's only busy
    /// one).
    pub(crate) fn publish(self, rate: f64, duration: Duration) -> anyhow::Result<u64> {
        let mut streams = self.accept.join().map_err(|_| anyhow::anyhow!("the accepting thread panicked"))??;
        anyhow::ensure!(!streams.is_empty(), "no connections to publish to");
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut message = [b'x'; MESSAGE];
        let started = Instant::now();
        let mut published = 0u64;
        while started.elapsed() < duration {
            let due = started + interval.mul_f64(published as f64);
            // Paced as the S3 publishers are: a sleep for waits over 1 ms, then spinning until due.
            let left = due.saturating_duration_since(Instant::now());
            if left > Duration::from_millis(1) {
                std::thread::sleep(left - Duration::from_micros(500));
            }
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            message[..8].copy_from_slice(&sys::wall_ns().to_le_bytes());
            let n = streams.len();
            streams[(published as usize) % n].write_all(&message)?;
            published += 1;
        }
        Ok(published)
    }
}

/// S3 floor: `clients` connections, `rate` messages/s round-robin for `seconds`.
pub(crate) async fn s3(clients: usize, rate: f64, seconds: f64) -> anyhow::Result<Value> {
    let mut server = ServerChild::start().await?;
    let port = server.call(json!({"cmd": "floor_listen", "n": clients})).await?["port"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("the server child reported no floor port"))? as u16;
    let streams = (0..clients)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
            Ok(MioStream::from_std(s))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    // Until the publisher says how many it sent, the reader waits for an unreachable count.
    let want = Arc::new(AtomicU64::new(u64::MAX));
    let reader = {
        let want = want.clone();
        std::thread::spawn(move || read(streams, &want))
    };
    let reply = server.call(json!({"cmd": "floor_run", "rate": rate, "seconds": seconds})).await?;
    let published = reply["published"].as_u64().unwrap_or(0);
    want.store(published, Ordering::SeqCst);
    let mut l = tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the floor reader panicked"))??;
    server.stop().await?;
    l.sort_unstable();
    Ok(json!({
        "scenario": "S3", "system": "floor (bare TCP)", "clients": clients, "rate_per_s": rate, "seconds": seconds,
        "message_bytes": MESSAGE, "published": published, "received": l.len(),
        "lost": published.saturating_sub(l.len() as u64),
        "p50_us": percentile(&l, 50.0), "p99_us": percentile(&l, 99.0), "p999_us": percentile(&l, 99.9),
        "max_us": l.last().copied().unwrap_or(0),
    }))
}

/// Reads every connection through one poll until `want` messages arrived (or 10 s passed without one); returns
/// the latency of each message in µs, the receive time taken once per `read`.
fn read(mut streams: Vec<MioStream>, want: &AtomicU64) -> anyhow::Result<Vec<u64>> {
    let mut poll = Poll::new()?;
    for (i, s) in streams.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE)?;
    }
    let mut partial = vec![Vec::<u8>::new(); streams.len()];
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut latencies = Vec::new();
    let mut last = Instant::now();
    while (latencies.len() as u64) < want.load(Ordering::SeqCst) {
        anyhow::ensure!(last.elapsed() < Duration::from_secs(10), "the floor reader got nothing for 10 s");
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in &events {
            let i = event.token().0;
            loop {
                match streams[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let now = sys::wall_ns();
                        last = Instant::now();
                        let pending = &mut partial[i];
                        pending.extend_from_slice(&buf[..n]);
                        let whole = pending.len() / MESSAGE * MESSAGE;
                        for m in pending[..whole].chunks_exact(MESSAGE) {
                            let sent = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
                            latencies.push(now.saturating_sub(sent) / 1000);
                        }
                        pending.drain(..whole);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(latencies)
}
