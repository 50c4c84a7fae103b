//! Mock push services for tests and benchmarks: APNs (HTTP/2 over TLS), FCM (with its OAuth2 token endpoint)
//! and a Web Push service (HTTP/1.1 and HTTP/2 over TLS), all on loopback with certificates from a test CA made
//! with rcgen. Each checks what a real service checks (JWTs, headers, sizes), records what it received, and can
//! be scripted to answer with the errors senders must handle.
//!
//! A crate of its own (not a module of `tidings-tests`) because both the server's own tests and the
//! end-to-end crate use it: `tidings-tests` depends on the server, so the server could not depend on it.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use tidings_push_mocks::{MockWebPush, WebPushOptions, test_ca};
//! let push = MockWebPush::start(WebPushOptions::default()).await?;
//! let subscription = push.subscription("device-1");      // what a browser would register
//! // … point a sender at it, trusting test_ca().cert_pem …
//! let received = push.received();                        // the encrypted bodies, headers, VAPID claims
//! # Ok(()) }
//! ```

mod apns;
mod fcm;
pub mod harness;
pub mod http_ece;
mod keys;
mod server;
mod webpush;

pub use apns::{ApnsOptions, ApnsReply, MockApns, RecordedApns};
pub use fcm::{FcmOptions, FcmReply, MockFcm, RecordedFcm};
pub use keys::{
    ApnsTestKey, BrowserKeys, FCM_TEST_KEY_PEM, FCM_TEST_PUBLIC_KEY_PEM, ServerCert, TestCa, TestPki, VapidTestKey,
    test_ca,
};
pub use webpush::{MockWebPush, RecordedWebPush, WebPushOptions, WebPushReply};

/// Milliseconds since the Unix epoch, shifted by a mock's clock offset.
pub(crate) fn now_ms(offset_ms: i64) -> u64 {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    u64::try_from(now.saturating_add(offset_ms)).unwrap_or(0)
}
