//! The planner in simulated time: the scenario table (priority × presence × ack timing × quiet hours ×
//! preferences → pushes), multi-notification cases (digests, summaries, restarts), DST, and properties.

use std::time::Duration;

use jiff::civil::Weekday;
use tidings_core::protocol::{Persistence, Priority, PushPlatform};

use super::*;

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;

fn ms(rfc3339: &str) -> UnixMs {
    u64::try_from(rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()).unwrap()
}

/// Monday 2026-06-01 12:00 UTC: outside the nightly quiet hours below.
fn noon() -> UnixMs {
    ms("2026-06-01T12:00:00Z")
}

/// Monday 2026-06-01 23:00 UTC: inside them; they end at 07:00, eight hours later.
fn night() -> UnixMs {
    ms("2026-06-01T23:00:00Z")
}

fn nightly(zone: &str) -> QuietHours {
    let days = [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ];
    let r = |day| WeeklyRange { day, start: LocalTime::new(22, 0).unwrap(), end: LocalTime::new(7, 0).unwrap() };
    QuietHours::new(zone, days.into_iter().map(r).collect()).unwrap()
}

fn target(platform: PushPlatform) -> Option<PushTarget> {
    Some(PushTarget { platform, registered_at: 1 })
}

/// Alice: a phone (APNs, no session) and a laptop (Web Push; live or not).
fn alice(live: bool, prefs: Preferences, quiet: Option<QuietHours>) -> UserContext {
    UserContext {
        devices: vec![
            Device { id: "laptop".into(), push: target(PushPlatform::WebPush), live },
            Device { id: "phone".into(), push: target(PushPlatform::Apns), live: false },
        ],
        preferences: prefs,
        quiet_hours: quiet,
    }
}

fn note(id: &str, priority: Priority) -> NotificationMeta {
    NotificationMeta {
        id: id.into(),
        user: "alice".into(),
        priority,
        persistence: Persistence::Bufferable,
        kind: "comment.created".into(),
        topic: None,
        group: None,
        title: Some(format!("title {id}")),
        created_at: 0,
        overrides: Overrides::default(),
    }
}

/// A push as the tests compare them: ms after the start, device, and what it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sent {
    after: u64,
    device: String,
    content: PushContent,
}

fn single(after: u64, device: &str, id: &str) -> Sent {
    Sent { after, device: device.into(), content: PushContent::Single { id: id.into() } }
}

/// The planner and a simulated clock.
struct Sim {
    planner: Planner,
    start: UnixMs,
    now: UnixMs,
    sent: Vec<Sent>,
    outcomes: Vec<Outcome>,
}

impl Sim {
    fn new(start: UnixMs, ctx: UserContext) -> Self {
        let mut planner = Planner::new(Policy::default());
        planner.set_user(start, "alice", ctx);
        Sim { planner, start, now: start, sent: Vec::new(), outcomes: Vec::new() }
    }

    fn drain(&mut self) {
        while let Some(o) = self.planner.poll_output() {
            if let Outcome::Push(p) = &o {
                assert!(p.device == "laptop" || p.device == "phone");
                self.sent.push(Sent {
                    after: self.now - self.start,
                    device: p.device.clone(),
                    content: p.content.clone(),
                });
            }
            self.outcomes.push(o);
        }
    }

    /// Runs the timer up to `start + after`.
    fn advance_to(&mut self, after: u64) {
        let until = self.start + after;
        while let Some(at) = self.planner.poll_timeout() {
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            self.planner.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
    }

    fn publish(&mut self, n: NotificationMeta) -> bool {
        let n = NotificationMeta { created_at: self.now, ..n };
        let socket = self.planner.publish(self.now, &n);
        self.drain();
        socket
    }

    fn ack(&mut self, ids: &[&str]) {
        self.planner.ack(self.now, "alice", ids);
        self.drain();
    }

    fn set_live(&mut self, device: &str, live: bool) {
        self.planner.set_live(self.now, "alice", device, live);
        self.drain();
    }

    fn suppressions(&self) -> Vec<(Option<String>, Channel, Suppression)> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Suppressed { device, channel, reason, .. } => Some((device.clone(), *channel, *reason)),
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Presence {
    /// No live session.
    Offline,
    /// The laptop is live and its app acks after this many ms (`None`: never, a frozen tab).
    Live(Option<u64>),
}

#[derive(Clone, Copy, Debug)]
enum Prefs {
    AllOn,
    PushOff,
    SocketOff,
}

struct Case {
    name: &'static str,
    priority: Priority,
    presence: Presence,
    quiet: bool,
    prefs: Prefs,
    overrides: Overrides,
    socket: bool,
    pushes: Vec<Sent>,
}

fn both(after: u64) -> Vec<Sent> {
    vec![single(after, "laptop", "n1"), single(after, "phone", "n1")]
}

fn bypass() -> Overrides {
    Overrides { bypass_quiet_hours: true, ..Overrides::default() }
}

fn push_after(ms: u64) -> Overrides {
    Overrides { push_after: Some(Duration::from_millis(ms)), ..Overrides::default() }
}

fn no_digest() -> Overrides {
    Overrides { digest: false, ..Overrides::default() }
}

#[test]
fn scenario_table() {
    use Prefs::*;
    use Presence::*;
    use Priority::*;
    let d = Overrides::default;
    let quiet_end = 8 * HOUR;
    let window = 10 * MIN;
    #[rustfmt::skip]
    let cases = vec![
        Case { name: "critical, offline: both devices at once", priority: Critical, presence: Offline, quiet: false, prefs: AllOn, overrides: d(), socket: true, pushes: both(0) },
        Case { name: "critical, live and acked: pushed anyway", priority: Critical, presence: Live(Some(100)), quiet: false, prefs: AllOn, overrides: d(), socket: true, pushes: both(0) },
        Case { name: "critical in quiet hours: queued to the end", priority: Critical, presence: Offline, quiet: true, prefs: AllOn, overrides: d(), socket: true, pushes: both(quiet_end) },
        Case { name: "critical in quiet hours, acked live: still pushed at the end", priority: Critical, presence: Live(Some(100)), quiet: true, prefs: AllOn, overrides: d(), socket: true, pushes: both(quiet_end) },
        Case { name: "critical in quiet hours with bypass: at once", priority: Critical, presence: Offline, quiet: true, prefs: AllOn, overrides: bypass(), socket: true, pushes: both(0) },
        Case { name: "critical, push turned off: cannot be opted out of", priority: Critical, presence: Offline, quiet: false, prefs: PushOff, overrides: d(), socket: true, pushes: both(0) },
        Case { name: "critical, socket turned off: still live", priority: Critical, presence: Live(None), quiet: false, prefs: SocketOff, overrides: d(), socket: true, pushes: both(0) },
        Case { name: "important, offline: at once", priority: Important, presence: Offline, quiet: false, prefs: AllOn, overrides: d(), socket: true, pushes: both(0) },
        Case { name: "important, live, acked within push_after: nothing", priority: Important, presence: Live(Some(1_000)), quiet: false, prefs: AllOn, overrides: d(), socket: true, pushes: vec![] },
        Case { name: "important, live, never acked: after push_after", priority: Important, presence: Live(None), quiet: false, prefs: AllOn, overrides: d(), socket: true, pushes: both(5_000) },
        Case { name: "important, live, acked too late: already pushed", priority: Important, presence: Live(Some(6_000)), quiet: false, prefs: AllOn, overrides: d(), socket: true, pushes: both(5_000) },
        Case { name: "important, publisher push_after 30 s, never acked", priority: Important, presence: Live(None), quiet: false, prefs: AllOn, overrides: push_after(30_000), socket: true, pushes: both(30_000) },
        Case { name: "important, publisher push_after 30 s, acked at 20 s", priority: Important, presence: Live(Some(20_000)), quiet: false, prefs: AllOn, overrides: push_after(30_000), socket: true, pushes: vec![] },
        Case { name: "important, offline, quiet hours: held to the end", priority: Important, presence: Offline, quiet: true, prefs: AllOn, overrides: d(), socket: true, pushes: both(quiet_end) },
        Case { name: "important, live, quiet hours, never acked: held to the end", priority: Important, presence: Live(None), quiet: true, prefs: AllOn, overrides: d(), socket: true, pushes: both(quiet_end) },
        Case { name: "important, live, quiet hours, acked: dropped", priority: Important, presence: Live(Some(1_000)), quiet: true, prefs: AllOn, overrides: d(), socket: true, pushes: vec![] },
        Case { name: "important, quiet hours, publisher bypass", priority: Important, presence: Offline, quiet: true, prefs: AllOn, overrides: bypass(), socket: true, pushes: both(0) },
        Case { name: "important, push turned off: nothing pushed", priority: Important, presence: Offline, quiet: false, prefs: PushOff, overrides: d(), socket: true, pushes: vec![] },
        Case { name: "important, socket turned off: no live delivery, pushed without waiting", priority: Important, presence: Live(None), quiet: false, prefs: SocketOff, overrides: d(), socket: false, pushes: both(0) },
        Case { name: "informational, live: live only", priority: Informational, presence: Live(None), quiet: false, prefs: AllOn, overrides: d(), socket: true, pushes: vec![] },
        Case { name: "informational, offline: one digest when the window closes", priority: Informational, presence: Offline, quiet: false, prefs: AllOn, overrides: d(), socket: true, pushes: both(window) },
        Case { name: "informational, offline, digest off: nothing", priority: Informational, presence: Offline, quiet: false, prefs: AllOn, overrides: no_digest(), socket: true, pushes: vec![] },
        Case { name: "informational, offline, quiet hours: held to the end", priority: Informational, presence: Offline, quiet: true, prefs: AllOn, overrides: d(), socket: true, pushes: both(quiet_end) },
        Case { name: "informational, offline, push turned off: nothing", priority: Informational, presence: Offline, quiet: false, prefs: PushOff, overrides: d(), socket: true, pushes: vec![] },
        Case { name: "informational, socket turned off, live: digest as if offline", priority: Informational, presence: Live(None), quiet: false, prefs: SocketOff, overrides: d(), socket: false, pushes: both(window) },
    ];
    for case in cases {
        let prefs = match case.prefs {
            AllOn => Preferences::all_on(),
            PushOff => Preferences::all_on().with(Selector::Type("comment.*".into()), Channel::Push, false),
            SocketOff => Preferences::all_on().with(Selector::Type("comment.created".into()), Channel::Socket, false),
        };
        let live = matches!(case.presence, Live(_));
        let start = if case.quiet { night() } else { noon() };
        let mut sim = Sim::new(start, alice(live, prefs, case.quiet.then(|| nightly("UTC"))));
        let socket = sim.publish(NotificationMeta { overrides: case.overrides.clone(), ..note("n1", case.priority) });
        assert_eq!(socket, case.socket, "{}: socket", case.name);
        if let Live(Some(at)) = case.presence {
            sim.advance_to(at);
            sim.ack(&["n1"]);
        }
        sim.advance_to(2 * 24 * HOUR);
        assert_eq!(sim.sent, case.pushes, "{}", case.name);
        assert_eq!(sim.planner.pending().count(), 0, "{}: nothing left pending", case.name);
    }
}

#[test]
fn every_suppression_says_why() {
    let mut sim = Sim::new(noon(), alice(true, Preferences::all_on(), None));
    sim.publish(note("live-only", Priority::Informational));
    sim.publish(NotificationMeta { persistence: Persistence::Ephemeral, ..note("eph", Priority::Critical) });
    sim.publish(NotificationMeta { overrides: no_digest(), ..note("nodigest", Priority::Informational) });
    let mut nobody = Sim::new(noon(), UserContext::default());
    nobody.publish(note("x", Priority::Critical));
    assert_eq!(
        sim.suppressions(),
        vec![
            (None, Channel::Push, Suppression::LiveOnly),
            (None, Channel::Push, Suppression::Ephemeral),
            (None, Channel::Push, Suppression::DigestOff),
        ]
    );
    assert_eq!(nobody.suppressions(), vec![(None, Channel::Push, Suppression::NoPushAddress)]);
    let prefs = Preferences::all_on().with(Selector::Type("comment.created".into()), Channel::Push, false).with(
        Selector::Topic("news".into()),
        Channel::Socket,
        false,
    );
    let mut denied = Sim::new(noon(), alice(false, prefs, None));
    assert!(!denied.publish(NotificationMeta { topic: Some("news".into()), ..note("n", Priority::Important) }));
    assert_eq!(
        denied.suppressions(),
        vec![(None, Channel::Socket, Suppression::Preference), (None, Channel::Push, Suppression::Preference)]
    );
    assert!(denied.sent.is_empty());
}

#[test]
fn a_digest_collects_a_window_and_the_next_window_starts_fresh() {
    let mut sim = Sim::new(noon(), alice(false, Preferences::all_on(), None));
    for (i, at) in [0, MIN, 2 * MIN, 9 * MIN].into_iter().enumerate() {
        sim.advance_to(at);
        sim.publish(NotificationMeta {
            group: Some("likes:p1".into()),
            ..note(&format!("l{i}"), Priority::Informational)
        });
    }
    // Another group has its own window.
    sim.publish(NotificationMeta { group: Some("likes:p2".into()), ..note("other", Priority::Informational) });
    sim.advance_to(10 * MIN);
    let digest = |device: &str| Sent {
        after: 10 * MIN,
        device: device.into(),
        content: PushContent::Digest {
            group: "likes:p1".into(),
            ids: vec!["l3".into(), "l2".into(), "l1".into(), "l0".into()],
            title: Some("title l3".into()),
        },
    };
    assert_eq!(sim.sent, vec![digest("laptop"), digest("phone")]);
    sim.advance_to(19 * MIN);
    assert_eq!(sim.sent.len(), 4, "the second group's window closes at 19 min");
    assert_eq!(sim.sent[2], single(19 * MIN, "laptop", "other"));
    // After the window: a new one opens with the next notification.
    sim.advance_to(30 * MIN);
    sim.publish(NotificationMeta { group: Some("likes:p1".into()), ..note("l4", Priority::Informational) });
    sim.advance_to(39 * MIN);
    assert_eq!(sim.sent.len(), 4);
    sim.advance_to(40 * MIN);
    assert_eq!(sim.sent[4..], [single(40 * MIN, "laptop", "l4"), single(40 * MIN, "phone", "l4")]);
}

#[test]
fn acked_digest_items_drop_out_and_an_all_acked_digest_is_not_sent() {
    let mut sim = Sim::new(noon(), alice(false, Preferences::all_on(), None));
    for id in ["a", "b", "c"] {
        sim.publish(NotificationMeta { group: Some("g".into()), ..note(id, Priority::Informational) });
    }
    sim.ack(&["a", "c"]);
    sim.publish(NotificationMeta { group: Some("h".into()), ..note("d", Priority::Informational) });
    sim.ack(&["d"]);
    sim.advance_to(HOUR);
    assert_eq!(sim.sent, vec![single(10 * MIN, "laptop", "b"), single(10 * MIN, "phone", "b")]);
}

#[test]
fn quiet_hours_collapse_into_one_summary_per_device_and_critical_goes_on_its_own() {
    let mut sim = Sim::new(night(), alice(false, Preferences::all_on(), Some(nightly("UTC"))));
    sim.publish(note("i1", Priority::Important));
    sim.advance_to(HOUR);
    sim.publish(NotificationMeta { group: Some("likes".into()), ..note("f1", Priority::Informational) });
    sim.advance_to(2 * HOUR);
    sim.publish(note("i2", Priority::Important));
    sim.publish(note("c1", Priority::Critical));
    sim.publish(note("gone", Priority::Important));
    sim.advance_to(3 * HOUR);
    sim.ack(&["gone", "c1"]);
    assert!(sim.sent.is_empty(), "nothing during quiet hours");
    sim.advance_to(24 * HOUR);
    let summary = |device: &str| Sent {
        after: 8 * HOUR,
        device: device.into(),
        content: PushContent::QuietHoursSummary {
            ids: vec!["i2".into(), "f1".into(), "i1".into()],
            title: Some("title i2".into()),
        },
    };
    assert_eq!(
        sim.sent,
        vec![single(8 * HOUR, "laptop", "c1"), summary("laptop"), single(8 * HOUR, "phone", "c1"), summary("phone")]
    );
    let summary_priority = sim.outcomes.iter().find_map(|o| match o {
        Outcome::Push(p) if matches!(p.content, PushContent::QuietHoursSummary { .. }) => Some(p.priority),
        _ => None,
    });
    assert_eq!(summary_priority, Some(Priority::Important), "the highest priority it carries");
}

#[test]
fn everything_held_and_acked_means_no_summary() {
    let mut sim = Sim::new(night(), alice(false, Preferences::all_on(), Some(nightly("UTC"))));
    sim.publish(note("a", Priority::Important));
    sim.publish(note("b", Priority::Informational));
    sim.ack(&["a", "b"]);
    sim.advance_to(24 * HOUR);
    assert_eq!(sim.sent, vec![]);
}

#[test]
fn quiet_hours_that_begin_while_waiting_for_an_ack_hold_the_push() {
    // Published at 21:59:58 to a live user who never acks: due at 22:00:03, inside quiet hours.
    let start = ms("2026-06-01T21:59:58Z");
    let mut sim = Sim::new(start, alice(true, Preferences::all_on(), Some(nightly("UTC"))));
    sim.publish(note("n1", Priority::Important));
    sim.advance_to(HOUR);
    assert!(sim.sent.is_empty());
    assert!(
        sim.outcomes.iter().any(|o| matches!(o,
        Outcome::Scheduled { reason: PendingReason::QuietHours, due_at, .. } if *due_at == ms("2026-06-02T07:00:00Z")))
    );
    sim.advance_to(24 * HOUR);
    let end = ms("2026-06-02T07:00:00Z") - start;
    assert_eq!(sim.sent, vec![single(end, "laptop", "n1"), single(end, "phone", "n1")]);
}

#[test]
fn held_pushes_follow_the_local_clock_across_dst() {
    // New York, spring forward: held from Saturday 23:00 EST; quiet hours end at 07:00 EDT = 11:00Z (seven
    // hours later, not eight).
    let start = ms("2026-03-08T04:00:00Z");
    let mut sim = Sim::new(start, alice(false, Preferences::all_on(), Some(nightly("America/New_York"))));
    sim.publish(note("n1", Priority::Important));
    sim.advance_to(24 * HOUR);
    assert_eq!(sim.sent, vec![single(7 * HOUR, "laptop", "n1"), single(7 * HOUR, "phone", "n1")]);
    // Berlin, fall back: held from Saturday 2026-10-24 23:30 CEST (21:30Z); quiet hours end at 07:00 CET = 06:00Z.
    let start = ms("2026-10-24T21:30:00Z");
    let mut sim = Sim::new(start, alice(false, Preferences::all_on(), Some(nightly("Europe/Berlin"))));
    sim.publish(note("n1", Priority::Critical));
    sim.advance_to(24 * HOUR);
    let end = ms("2026-10-25T06:00:00Z") - start;
    assert_eq!(sim.sent, vec![single(end, "laptop", "n1"), single(end, "phone", "n1")]);
}

#[test]
fn the_last_session_closing_sends_pushes_waiting_for_an_ack_at_once() {
    let mut sim = Sim::new(noon(), alice(true, Preferences::all_on(), None));
    sim.publish(note("n1", Priority::Important));
    sim.advance_to(2_000);
    sim.set_live("laptop", false);
    assert_eq!(sim.sent, both(2_000));
    // A session that opens does not cancel anything: only acks do.
    let mut sim = Sim::new(noon(), alice(false, Preferences::all_on(), None));
    sim.publish(NotificationMeta { overrides: push_after(1), ..note("n1", Priority::Critical) });
    sim.set_live("phone", true);
    assert_eq!(sim.sent, both(0));
}

#[test]
fn context_changes_are_applied_when_pushes_come_due() {
    // Push turned off while the push was held: nothing at the end of quiet hours.
    let mut sim = Sim::new(night(), alice(false, Preferences::all_on(), Some(nightly("UTC"))));
    sim.publish(note("n1", Priority::Important));
    sim.advance_to(HOUR);
    let off = Preferences::all_on().with(Selector::Type("*".into()), Channel::Push, false);
    sim.planner.set_user(sim.now, "alice", alice(false, off, Some(nightly("UTC"))));
    sim.drain();
    sim.advance_to(24 * HOUR);
    assert_eq!(sim.sent, vec![]);
    assert_eq!(sim.suppressions().iter().filter(|s| s.2 == Suppression::Preference).count(), 2);
    // Quiet hours removed while held: sent at once.
    let mut sim = Sim::new(night(), alice(false, Preferences::all_on(), Some(nightly("UTC"))));
    sim.publish(note("n1", Priority::Important));
    sim.advance_to(HOUR);
    sim.planner.set_user(sim.now, "alice", alice(false, Preferences::all_on(), None));
    sim.drain();
    assert_eq!(sim.sent, both(HOUR));
    // The phone lost its push address before the push was due.
    let mut sim = Sim::new(noon(), alice(true, Preferences::all_on(), None));
    sim.publish(note("n1", Priority::Important));
    let mut ctx = alice(true, Preferences::all_on(), None);
    ctx.devices[1].push = None;
    sim.planner.set_user(sim.now, "alice", ctx);
    sim.advance_to(HOUR);
    assert_eq!(sim.sent, vec![single(5_000, "laptop", "n1")]);
    assert!(sim.suppressions().contains(&(Some("phone".into()), Channel::Push, Suppression::NoPushAddress)));
}

#[test]
fn one_push_per_device_when_the_same_id_is_planned_twice() {
    // A retried publish, or one notification reaching the user through their stream and a topic.
    let mut sim = Sim::new(noon(), alice(true, Preferences::all_on(), None));
    sim.publish(note("n1", Priority::Important));
    sim.advance_to(1_000);
    sim.publish(NotificationMeta { topic: Some("news".into()), ..note("n1", Priority::Important) });
    sim.advance_to(HOUR);
    assert_eq!(sim.sent, both(5_000), "the first schedule stands");
}

#[test]
fn an_ack_cancels_only_its_users_pushes() {
    let mut planner = Planner::new(Policy::default());
    planner.set_user(noon(), "alice", alice(true, Preferences::all_on(), None));
    planner.set_user(noon(), "bob", alice(true, Preferences::all_on(), None));
    for user in ["alice", "bob"] {
        planner.publish(
            noon(),
            &NotificationMeta { user: user.into(), topic: Some("news".into()), ..note("t1", Priority::Important) },
        );
    }
    planner.ack(noon() + 10, "alice", &["t1"]);
    planner.handle_timeout(noon() + HOUR);
    let pushed: Vec<String> = std::iter::from_fn(|| planner.poll_output())
        .filter_map(|o| match o {
            Outcome::Push(p) => Some(p.user),
            _ => None,
        })
        .collect();
    assert_eq!(pushed, ["bob", "bob"]);
}

#[test]
fn rows_survive_a_restart_and_each_push_is_sent_once() {
    let mut sim = Sim::new(night(), alice(true, Preferences::all_on(), Some(nightly("UTC"))));
    sim.publish(note("held", Priority::Important));
    sim.planner.set_user(sim.now, "alice", alice(false, Preferences::all_on(), None));
    sim.drain();
    assert_eq!(sim.sent, [single(0, "laptop", "held"), single(0, "phone", "held")], "quiet hours removed: sent");
    sim.planner.set_user(sim.now, "alice", alice(true, Preferences::all_on(), None));
    sim.publish(note("waiting", Priority::Important));
    sim.publish(NotificationMeta { group: Some("g".into()), ..note("d1", Priority::Informational) });
    sim.planner.set_user(sim.now, "alice", alice(false, Preferences::all_on(), None));
    sim.drain();
    assert_eq!(sim.sent[2..], [single(0, "laptop", "waiting"), single(0, "phone", "waiting")], "went offline");
    sim.publish(NotificationMeta { group: Some("g".into()), ..note("d2", Priority::Informational) });
    sim.publish(NotificationMeta { group: Some("g".into()), ..note("d3", Priority::Informational) });
    // The store's view: rows and windows as JSON (what a durable store would hold), restored into a fresh
    // planner with the user's context (the store's other tables).
    let rows = serde_json::to_string(&sim.planner.pending().collect::<Vec<_>>()).unwrap();
    let windows = serde_json::to_string(&sim.planner.digest_windows().collect::<Vec<_>>()).unwrap();
    assert!(rows.contains(r#""reason":"digest""#), "{rows}");
    assert!(rows.contains(r#""priority":"informational""#), "{rows}");
    let restored_rows: Vec<PendingPush> = serde_json::from_str(&rows).unwrap();
    let restored_windows: Vec<DigestWindow> = serde_json::from_str(&windows).unwrap();
    // d1 was live only; d2 opened a digest window that d3 joined: two rows per device.
    assert_eq!(restored_rows.len(), 4, "{rows}");
    assert_eq!(restored_windows.len(), 1, "{windows}");
    let mut restarted = Planner::restore(Policy::default(), restored_rows, restored_windows);
    restarted.set_user(sim.now, "alice", alice(false, Preferences::all_on(), None));
    let mut after_restart = Vec::new();
    let mut now = sim.now;
    while let Some(at) = restarted.poll_timeout() {
        now = now.max(at);
        restarted.handle_timeout(now);
        after_restart.extend(std::iter::from_fn(|| restarted.poll_output()).filter_map(|o| match o {
            Outcome::Push(p) => Some((p.device, p.content)),
            _ => None,
        }));
    }
    let digest =
        PushContent::Digest { group: "g".into(), ids: vec!["d3".into(), "d2".into()], title: Some("title d3".into()) };
    assert_eq!(after_restart, vec![("laptop".into(), digest.clone()), ("phone".into(), digest)]);
    assert_eq!(restarted.pending().count(), 0);
}

mod properties {
    //! Random operation sequences for one user with three devices; invariants checked on the outcomes.

    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Publish { priority: u8, informational_group: u8, bypass: bool, push_after_s: Option<u8>, digest: bool },
        Ack { which: u8 },
        Live { device: u8, live: bool },
        Advance { ms: u32 },
        Prefs { push_off: bool, socket_off: bool },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 0u8..2, any::<bool>(), proptest::option::of(0u8..20), any::<bool>()).prop_map(
                |(priority, informational_group, bypass, push_after_s, digest)| Op::Publish {
                    priority, informational_group, bypass, push_after_s, digest
                }
            ),
            2 => any::<u8>().prop_map(|which| Op::Ack { which }),
            2 => (0u8..3, any::<bool>()).prop_map(|(device, live)| Op::Live { device, live }),
            4 => (0u32..4 * 3_600_000).prop_map(|ms| Op::Advance { ms }),
            1 => (any::<bool>(), any::<bool>()).prop_map(|(push_off, socket_off)| Op::Prefs { push_off, socket_off }),
            1 => Just(Op::Restart),
        ]
    }

    const DEVICES: [&str; 3] = ["a", "b", "c"];

    fn context(live: &[bool; 3], push_off: bool, socket_off: bool) -> UserContext {
        let mut prefs = Preferences::all_on();
        if push_off {
            prefs = prefs.with(Selector::Type("*".into()), Channel::Push, false);
        }
        if socket_off {
            prefs = prefs.with(Selector::Type("*".into()), Channel::Socket, false);
        }
        UserContext {
            devices: DEVICES
                .iter()
                .zip(live)
                .map(|(id, live)| Device { id: (*id).into(), push: target(PushPlatform::Fcm), live: *live })
                .collect(),
            preferences: prefs,
            quiet_hours: Some(nightly("Europe/Berlin")),
        }
    }

    /// What the test knows, to judge each push when it comes out.
    #[derive(Default)]
    struct Model {
        /// id → (priority, bypass).
        published: HashMap<String, (Priority, bool)>,
        /// Non-critical ids published while push was off: never pushed.
        denied: HashSet<String>,
        acked: HashSet<String>,
        push_off: bool,
        pushed: HashSet<(String, String)>,
    }

    impl Model {
        fn check(&mut self, planner: &mut Planner, now: u64, quiet: &QuietHours) -> Result<(), TestCaseError> {
            while let Some(o) = planner.poll_output() {
                let Outcome::Push(p) = o else { continue };
                for id in p.content.ids() {
                    // Each notification reaches each device at most once.
                    prop_assert!(self.pushed.insert((id.to_owned(), p.device.clone())), "{} twice to {}", id, p.device);
                    let (priority, bypass) = self.published[id];
                    // Nothing but bypassed notifications is pushed during quiet hours.
                    prop_assert!(bypass || !quiet.is_quiet(now), "{} pushed during quiet hours", id);
                    if priority != Priority::Critical {
                        // An ack before the push cancels it; the push channel turned off is respected.
                        prop_assert!(!self.acked.contains(id), "{} pushed after an ack", id);
                        prop_assert!(!self.push_off && !self.denied.contains(id), "{} pushed although push is off", id);
                    }
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..60), start_hour in 0u64..24) {
            let quiet = nightly("Europe/Berlin");
            // Two weeks around the end of summer time in Berlin (2026-10-25).
            let mut now = ms("2026-10-20T00:00:00Z") + start_hour * HOUR;
            let mut planner = Planner::new(Policy::default());
            let mut live = [false; 3];
            let mut socket_off = false;
            let mut m = Model::default();
            planner.set_user(now, "alice", context(&live, false, false));
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Publish { priority, informational_group, bypass, push_after_s, digest } => {
                        let priority = [Priority::Critical, Priority::Important, Priority::Informational][usize::from(priority)];
                        let id = format!("n{i}");
                        let n = NotificationMeta {
                            group: Some(format!("g{informational_group}")),
                            created_at: now,
                            overrides: Overrides {
                                push_after: push_after_s.map(|s| Duration::from_secs(s.into())),
                                bypass_quiet_hours: bypass,
                                digest,
                            },
                            ..note(&id, priority)
                        };
                        m.published.insert(id.clone(), (priority, bypass));
                        if m.push_off {
                            m.denied.insert(id);
                        }
                        planner.publish(now, &n);
                    }
                    Op::Ack { which } => {
                        if !m.published.is_empty() {
                            let mut ids: Vec<&String> = m.published.keys().collect();
                            ids.sort();
                            let id = ids[usize::from(which) % ids.len()].clone();
                            m.acked.insert(id.clone());
                            planner.ack(now, "alice", &[id.as_str()]);
                        }
                    }
                    Op::Live { device, live: l } => {
                        live[usize::from(device)] = l;
                        planner.set_live(now, "alice", DEVICES[usize::from(device)], l);
                    }
                    Op::Advance { ms } => {
                        let until = now + u64::from(ms);
                        while let Some(at) = planner.poll_timeout().filter(|at| *at <= until) {
                            now = now.max(at);
                            planner.handle_timeout(now);
                            m.check(&mut planner, now, &quiet)?;
                        }
                        now = until;
                    }
                    Op::Prefs { push_off, socket_off: s } => {
                        (m.push_off, socket_off) = (push_off, s);
                        planner.set_user(now, "alice", context(&live, push_off, socket_off));
                    }
                    Op::Restart => {
                        // Through the serialised rows, as a store would hold them.
                        m.check(&mut planner, now, &quiet)?;
                        let rows: Vec<PendingPush> = serde_json::from_str(
                            &serde_json::to_string(&planner.pending().collect::<Vec<_>>()).unwrap(),
                        ).unwrap();
                        let windows: Vec<DigestWindow> = serde_json::from_str(
                            &serde_json::to_string(&planner.digest_windows().collect::<Vec<_>>()).unwrap(),
                        ).unwrap();
                        planner = Planner::restore(Policy::default(), rows, windows);
                        planner.set_user(now, "alice", context(&live, m.push_off, socket_off));
                    }
                }
                m.check(&mut planner, now, &quiet)?;
            }
            // Run out the clock with push on: a critical notification is never dropped — every device gets it.
            m.push_off = false;
            planner.set_user(now, "alice", context(&live, false, socket_off));
            m.check(&mut planner, now, &quiet)?;
            while let Some(at) = planner.poll_timeout() {
                now = now.max(at);
                planner.handle_timeout(now);
                m.check(&mut planner, now, &quiet)?;
            }
            prop_assert_eq!(planner.pending().count(), 0);
            for (id, (priority, _)) in &m.published {
                if *priority == Priority::Critical {
                    for d in DEVICES {
                        prop_assert!(m.pushed.contains(&(id.clone(), d.to_owned())), "critical {} never reached {}", id, d);
                    }
                }
            }
        }
    }
}
