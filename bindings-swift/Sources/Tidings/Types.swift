import Foundation
import TidingsFFI

// Value types of the public API. They mirror the generated `TidingsFFI` records and enums with Swift names
// (`TidingsNotification`, because `Notification` is Foundation's), `Date`/`TimeInterval`/`Data` where Swift code
// expects them, and no dependency on the generated module in the app's code.

/// Delivery tier of a notification.
public enum Priority: String, Sendable, Hashable, CaseIterable {
    /// Never held back.
    case critical
    /// Never held back.
    case important
    /// May be folded into a digest ("5 new likes").
    case informational
}

/// How long the server keeps a notification.
public enum Persistence: String, Sendable, Hashable, CaseIterable {
    /// Live only: never replayed, never pushed.
    case ephemeral
    /// Kept in the stream's replay buffer and replayed after reconnects.
    case bufferable
    /// As `bufferable`, and stored durably by the server.
    case persistent
}

/// A notification. A plain value: keep it, compare it, hand it to any thread.
public struct TidingsNotification: Sendable, Hashable, Identifiable {
    /// Globally unique id; the same on every path (socket, replay, push).
    public var id: String
    /// `user:<id>` or `topic:<name>`.
    public var stream: String
    /// Position in the stream; `nil` for ephemeral notifications.
    public var offset: UInt64?
    /// The stream's history generation.
    public var epoch: String
    /// Application-defined kind, e.g. `comment.created`.
    public var type: String
    /// Delivery tier.
    public var priority: Priority
    /// Retention class.
    public var persistence: Persistence
    /// Short text.
    public var title: String?
    /// Text.
    public var body: String?
    /// The application payload as JSON (UTF-8), if any. See `decodeData(_:decoder:)`.
    public var data: Data?
    /// Batching key, e.g. `likes:post-981`.
    public var group: String?
    /// When the server accepted the publish.
    public var createdAt: Date

    /// Decodes the application payload, or returns `nil` when the notification has none.
    public func decodeData<T: Decodable>(_ type: T.Type, decoder: JSONDecoder = JSONDecoder()) throws -> T? {
        guard let data else { return nil }
        return try decoder.decode(type, from: data)
    }
}

/// Several informational notifications of one group, delivered as one ("5 new likes").
public struct Digest: Sendable, Hashable {
    /// The shared group.
    public var group: String
    /// How many notifications.
    public var count: Int
    /// The first one.
    public var first: TidingsNotification
    /// The last one.
    public var last: TidingsNotification
    /// Every id, in arrival order.
    public var ids: [String]
}

/// Why the client is suspended.
public enum SuspendReason: String, Sendable, Hashable {
    /// The app is in the background (after the grace period).
    case background
    /// The network is unavailable.
    case offline
}

/// Why the client stopped for good.
public enum FailureReason: String, Sendable, Hashable {
    /// The server rejected a freshly obtained token: sign the user in again.
    case unauthorized
    /// The token provider threw `TokenError.fatal`.
    case tokenProvider = "token_provider"
    /// Client and server disagree about the protocol.
    case `protocol`
    /// The client sent a frame larger than the server accepts.
    case frameTooLarge = "frame_too_large"
    /// Another connection of this device took over.
    case sessionReplaced = "session_replaced"
    /// The server refused the connection permanently.
    case rejected
}

/// The connection state.
public enum ConnectionState: Sendable, Hashable {
    /// Not started.
    case idle
    /// Getting a token, opening the socket or authenticating.
    case connecting(attempt: Int)
    /// Notifications flow.
    case connected
    /// Waiting `delay` seconds before attempt `attempt`.
    case reconnecting(attempt: Int, delay: TimeInterval, reason: String)
    /// Deliberately disconnected; resumes by itself (foreground, network back).
    case suspended(SuspendReason)
    /// Closed by the app.
    case closed
    /// Stopped; the app must intervene (e.g. sign in again).
    case failed(FailureReason, message: String)

    /// `true` while notifications flow.
    public var isConnected: Bool { self == .connected }
}

/// Why a stream could not be resumed.
public enum GapReason: String, Sendable, Hashable {
    /// The server lost the stream's history.
    case epochChanged = "epoch_changed"
    /// Notifications were evicted from the server's replay buffer.
    case outOfBuffer = "out_of_buffer"
    /// The client's position is beyond the stream.
    case aheadOfStream = "ahead_of_stream"
}

/// How a stream continued after (re)subscribing.
public enum Continuity: Sendable, Hashable {
    /// First subscription: delivery starts now.
    case fresh
    /// Resumed from the last position; `replayed` missed notifications were delivered.
    case resumed(replayed: UInt64)
    /// Notifications were lost: refetch the stream's state from your API. The `replayed` notifications the server
    /// still held follow this event (each delivered once).
    case gap(reason: GapReason, missed: UInt64?, replayed: UInt64)
}

/// A push service.
public enum PushPlatform: String, Sendable, Hashable, CaseIterable {
    /// APNs, production.
    case apns
    /// APNs, development builds.
    case apnsSandbox = "apns_sandbox"
    /// Firebase Cloud Messaging.
    case fcm
    /// Web Push.
    case webPush = "web_push"
}

/// What to do with a push payload.
public enum PushOutcome: Sendable, Hashable {
    /// Seen for the first time: show it. (A push too large to carry its notification was fetched from the server.)
    case show(TidingsNotification)
    /// Already delivered on another path (socket, replay, an earlier push): do not show it.
    case duplicate(id: String)
    /// A digest or quiet-hours summary with something new in it: show it; its ids count as seen from now on.
    case summary(PushSummary)
    /// The push was too large to carry the notification and fetching it failed: show its title (`nil`: a generic
    /// text). `reason` says why the fetch failed.
    case showTitle(id: String, title: String?, reason: String)
}

/// Which summary a push is.
public enum SummaryKind: String, Sendable, Hashable {
    /// Informational notifications of one group, collected over the server's digest window.
    case digest
    /// What was held during the user's quiet hours.
    case quietHours = "quiet_hours"
}

/// Several notifications in one push (protocol §11.1).
public struct PushSummary: Sendable, Hashable {
    /// Digest or quiet hours.
    public var kind: SummaryKind
    /// The digest's group.
    public var group: String?
    /// How many notifications it stands for.
    public var count: UInt64
    /// The ids, newest first (at most 20).
    public var ids: [String]
    /// The newest one's title.
    public var title: String?
}

/// Where a push handler without a running client (the Notification Service Extension) reaches the server: to fetch
/// a notification too large for its push, and to ack what it shows.
public struct PushServer: Sendable, Hashable {
    /// The server's WebSocket URL (as in `TidingsConfiguration`) or its HTTP base URL.
    public var url: URL
    /// A token of the signed-in user (keep one in the shared keychain for the extension).
    public var token: String
    /// Extra trusted certificate authorities (PEM), e.g. for a development server.
    public var extraRootCertificates: [String]

    public init(url: URL, token: String, extraRootCertificates: [String] = []) {
        self.url = url
        self.token = token
        self.extraRootCertificates = extraRootCertificates
    }
}

/// A delivery channel a preference applies to.
public enum Channel: String, Sendable, Hashable, CaseIterable {
    /// Live delivery over the socket (and replay).
    case socket
    /// Push notifications, digests and quiet-hours summaries.
    case push
}

/// What a preference rule is about.
public enum PreferenceSelector: Sendable, Hashable {
    /// Notifications whose `type` matches (exact, or a prefix ending in `*`).
    case type(String)
    /// Notifications published to a topic that matches (exact, or a prefix ending in `*`).
    case topic(String)
}

/// One preference: a channel on or off for a type or topic. Deny wins; `critical` notifications ignore them.
public struct PreferenceRule: Sendable, Hashable {
    public var selector: PreferenceSelector
    public var channel: Channel
    public var enabled: Bool

    public init(_ selector: PreferenceSelector, _ channel: Channel, enabled: Bool) {
        self.selector = selector
        self.channel = channel
        self.enabled = enabled
    }
}

/// The user's preferences as the server holds them.
public struct Preferences: Sendable, Hashable {
    /// The rules.
    public var rules: [PreferenceRule]
    /// Counts the changes of the user's settings.
    public var version: UInt64
    /// When they last changed.
    public var updatedAt: Date
}

/// One weekly quiet range in the user's local time.
public struct QuietRange: Sendable, Hashable {
    /// `mon` … `sun`.
    public var day: String
    /// `HH:MM`, inclusive.
    public var start: String
    /// `HH:MM`, exclusive (`24:00` allowed; at or before `start`: the next day).
    public var end: String

    public init(day: String, start: String, end: String) {
        self.day = day
        self.start = start
        self.end = end
    }
}

/// Quiet hours: an IANA time zone and weekly ranges.
public struct QuietHours: Sendable, Hashable {
    /// IANA time zone, e.g. `Europe/Berlin` (`TimeZone.current.identifier`).
    public var timeZone: String
    /// The ranges.
    public var ranges: [QuietRange]

    public init(timeZone: String, ranges: [QuietRange]) {
        self.timeZone = timeZone
        self.ranges = ranges
    }
}

/// The user's quiet hours as the server holds them.
public struct QuietHoursSettings: Sendable, Hashable {
    /// The quiet hours, if any.
    public var quietHours: QuietHours?
    /// Counts the changes of the user's settings.
    public var version: UInt64
    /// When they last changed.
    public var updatedAt: Date
}

/// Network reachability, as the platform reports it.
public enum NetworkStatus: Sendable, Hashable {
    /// The network came back: reconnect at once.
    case available
    /// No network: stop trying until it comes back.
    case unavailable
    /// The network changed (Wi-Fi ↔ cellular): check the link at once.
    case changed
}

/// Everything a client emits, in order.
public enum TidingsEvent: Sendable, Hashable {
    /// A notification, seen for the first time on any path.
    case notification(TidingsNotification)
    /// Several informational notifications of one group.
    case digest(Digest)
    /// The connection state changed.
    case stateChanged(ConnectionState)
    /// How a stream continued after (re)subscribing; on `.gap`, refetch that stream's state.
    case continuity(stream: String, Continuity)
    /// The server refused a subscription (`code`: `forbidden`, `bad_request`), or ended one (an operator's
    /// `POST /v1/admin/unsubscribe`: `forbidden`). The stream is dropped and not subscribed again on reconnect.
    case subscriptionFailed(stream: String, code: String, message: String)
    /// The server stored this device's push address.
    case pushRegistered(PushPlatform)
    /// The server refused this device's push address. `code` `bad_request`: the address is invalid (`message` names
    /// the member); the client forgets it and does not send it again, register a valid one. Other codes
    /// (`try_again_later`): it is sent again on the next connection.
    case pushRegistrationFailed(PushPlatform, code: String, message: String)
    /// The server's inbox counts changed (only ever to a newer version): the badge is `counts.unread`. Also
    /// observable as `TidingsClient.inboxCountsChanges` and `InboxBadge`.
    case inboxCounts(InboxCounts)
    /// The inbox view (`TidingsClient.inboxItems`) changed: re-read it.
    case inboxChanged
}

extension TidingsEvent {
    init(_ e: TidingsFFI.TidingsEvent) {
        switch e {
        case .notification(let n): self = .notification(TidingsNotification(n))
        case .digest(let d): self = .digest(Digest(d))
        case .stateChanged(let s): self = .stateChanged(ConnectionState(s))
        case .continuity(let stream, let c): self = .continuity(stream: stream, Continuity(c))
        case .subscriptionFailed(let stream, let code, let message):
            self = .subscriptionFailed(stream: stream, code: code, message: message)
        case .pushRegistered(let p): self = .pushRegistered(PushPlatform(p))
        case .pushRegistrationFailed(let p, let code, let message):
            self = .pushRegistrationFailed(PushPlatform(p), code: code, message: message)
        case .inboxCounts(let counts): self = .inboxCounts(InboxCounts(counts))
        case .inboxChanged: self = .inboxChanged
        }
    }
}

/// Counters, for diagnostics and metrics.
public struct TidingsStats: Sendable, Hashable {
    /// Sockets opened (attempts).
    public var connectionAttempts: UInt64
    /// Connections that authenticated.
    public var connections: UInt64
    /// Calls to the token provider.
    public var tokenFetches: UInt64
    /// Notifications received on sockets.
    public var notificationsReceived: UInt64
    /// Notifications delivered to the app.
    public var delivered: UInt64
    /// Duplicates dropped (any path).
    public var duplicatesDropped: UInt64
    /// Digests delivered.
    public var digests: UInt64
    /// Push payloads ingested.
    public var pushIngested: UInt64
    /// Gaps reported.
    public var gaps: UInt64
    /// Duplicates dropped live on the socket.
    public var duplicatesSocket: UInt64
    /// Duplicates dropped in replays after a (re)subscription.
    public var duplicatesReplay: UInt64
    /// Push payloads dropped as duplicates (not shown).
    public var duplicatesPush: UInt64
    /// Notifications delivered inside digests.
    public var digested: UInt64
    /// Subscriptions answered `fresh`.
    public var fresh: UInt64
    /// Subscriptions answered `resumed`.
    public var resumed: UInt64
    /// Subscriptions followed by a replay.
    public var replays: UInt64
    /// Notifications replayed, in all.
    public var replayed: UInt64
    /// The largest replay.
    public var replayMax: UInt64
    /// Reconnections by reason (`handshake_failed`, `connect_timeout`, `connection_lost`, `server_closed`,
    /// `heartbeat_timeout`, `server_error`, `undecodable`, `token_refresh`).
    public var reconnects: [String: UInt64]
    /// Round-trip measurements taken (`auth` → `welcome`, heartbeat echoes).
    public var rttSamples: UInt64
    /// The latest round trip, in microseconds.
    public var rttLastMicros: UInt64?
    /// The smoothed round trip, in microseconds.
    public var rttSmoothedMicros: UInt64?
    /// The smallest round trip, in microseconds.
    public var rttMinMicros: UInt64?
}

/// The error the client's methods throw.
public enum TidingsError: Error, Sendable, Hashable, LocalizedError {
    /// An argument was invalid (stream name, push token, configuration).
    case invalidArgument(String)
    /// A push payload was not a Tidings notification.
    case invalidPayload(String)
    /// The store file could not be read or written.
    case store(String)
    /// The connection failed for good (rejected credentials, protocol mismatch).
    case connectionFailed(FailureReason, message: String)
    /// The client was closed.
    case closed
    /// The server refused a request (inbox, history): `code` is `bad_request`, `forbidden` or `try_again_later`.
    case requestRefused(code: String, message: String)
    /// A read (inbox page, history page) got no answer in time (30 s, connecting included).
    case timedOut
    /// A bug in Tidings; please report it.
    case internalError(String)
    /// The server refused the user's token for an HTTP call (after asking the token provider again once).
    case unauthorized(String)
    /// The server refused the request (invalid preferences or quiet hours, an unknown notification …).
    case refused(status: Int, code: String, message: String)
    /// The server could not be reached or could not answer now: try again later (after `retryAfter`, when set).
    case unavailable(String, retryAfter: TimeInterval?)

    public var errorDescription: String? {
        switch self {
        case .invalidArgument(let m): return "Tidings: invalid argument: \(m)"
        case .invalidPayload(let m): return "Tidings: invalid push payload: \(m)"
        case .store(let m): return "Tidings: store failure: \(m)"
        case .connectionFailed(let reason, let m): return "Tidings: connection failed (\(reason.rawValue)): \(m)"
        case .closed: return "Tidings: the client is closed"
        case .requestRefused(let code, let m): return "Tidings: request refused (\(code)): \(m)"
        case .timedOut: return "Tidings: no answer in time"
        case .internalError(let m): return "Tidings: internal error: \(m)"
        case .unauthorized(let m): return "Tidings: unauthorized: \(m)"
        case .refused(let status, let code, let m): return "Tidings: refused (\(status) \(code)): \(m)"
        case .unavailable(let m, _): return "Tidings: server unavailable: \(m)"
        }
    }
}

/// Throw this from the token provider to say whether retrying can help. Any other error counts as transient.
public struct TokenError: Error, Sendable, Hashable {
    /// `true`: retry later (your backend was unreachable). `false`: stop (`.failed(.tokenProvider)`), e.g. the
    /// user signed out.
    public var isTransient: Bool
    /// Detail, for logs.
    public var message: String

    /// Retrying later may help.
    public static func transient(_ message: String) -> TokenError { TokenError(isTransient: true, message: message) }
    /// The user cannot get a token: the client stops until the app creates a new one.
    public static func fatal(_ message: String) -> TokenError { TokenError(isTransient: false, message: message) }
}

// MARK: - Conversions from the generated types

extension Priority {
    init(_ p: TidingsFFI.Priority) {
        switch p {
        case .critical: self = .critical
        case .important: self = .important
        case .informational: self = .informational
        }
    }
}

extension Persistence {
    init(_ p: TidingsFFI.Persistence) {
        switch p {
        case .ephemeral: self = .ephemeral
        case .bufferable: self = .bufferable
        case .persistent: self = .persistent
        }
    }
}

extension TidingsNotification {
    init(_ n: TidingsFFI.Notification) {
        self.init(
            id: n.id, stream: n.stream, offset: n.offset, epoch: n.epoch, type: n.kind,
            priority: Priority(n.priority), persistence: Persistence(n.persistence), title: n.title, body: n.body,
            data: n.dataJson.map { Data($0.utf8) }, group: n.group,
            createdAt: Date(timeIntervalSince1970: TimeInterval(n.createdAtMs) / 1000)
        )
    }
}

extension Digest {
    init(_ d: TidingsFFI.Digest) {
        self.init(
            group: d.group, count: Int(d.count), first: TidingsNotification(d.first),
            last: TidingsNotification(d.last), ids: d.ids
        )
    }
}

extension FailureReason {
    init(_ r: TidingsFFI.FailureReason) {
        switch r {
        case .unauthorized: self = .unauthorized
        case .tokenProvider: self = .tokenProvider
        case .protocol: self = .protocol
        case .frameTooLarge: self = .frameTooLarge
        case .sessionReplaced: self = .sessionReplaced
        case .rejected: self = .rejected
        }
    }
}

extension ConnectionState {
    init(_ s: TidingsFFI.ConnectionState) {
        switch s {
        case .idle: self = .idle
        case .connecting(let attempt): self = .connecting(attempt: Int(attempt))
        case .connected: self = .connected
        case .reconnecting(let attempt, let delayMs, let reason):
            self = .reconnecting(attempt: Int(attempt), delay: TimeInterval(delayMs) / 1000, reason: reason)
        case .suspended(let reason): self = .suspended(reason == .background ? .background : .offline)
        case .closed: self = .closed
        case .failed(let reason, let message): self = .failed(FailureReason(reason), message: message)
        }
    }
}

extension Continuity {
    init(_ c: TidingsFFI.Continuity) {
        switch c {
        case .fresh: self = .fresh
        case .resumed(let replayed): self = .resumed(replayed: replayed)
        case .gap(let reason, let missed, let replayed):
            let why: GapReason
            switch reason {
            case .epochChanged: why = .epochChanged
            case .outOfBuffer: why = .outOfBuffer
            case .aheadOfStream: why = .aheadOfStream
            }
            self = .gap(reason: why, missed: missed, replayed: replayed)
        }
    }
}

extension PushPlatform {
    init(_ p: TidingsFFI.PushPlatform) {
        switch p {
        case .apns: self = .apns
        case .apnsSandbox: self = .apnsSandbox
        case .fcm: self = .fcm
        case .webPush: self = .webPush
        }
    }

    var ffi: TidingsFFI.PushPlatform {
        switch self {
        case .apns: return .apns
        case .apnsSandbox: return .apnsSandbox
        case .fcm: return .fcm
        case .webPush: return .webPush
        }
    }
}

extension PushOutcome {
    init(_ o: TidingsFFI.PushOutcome) {
        switch o {
        case .show(let n): self = .show(TidingsNotification(n))
        case .duplicate(let id): self = .duplicate(id: id)
        case .summary(let s):
            self = .summary(
                PushSummary(
                    kind: s.kind == .digest ? .digest : .quietHours, group: s.group, count: s.count, ids: s.ids,
                    title: s.title))
        case .showTitle(let id, let title, let reason): self = .showTitle(id: id, title: title, reason: reason)
        }
    }
}

extension PushServer {
    var ffi: TidingsFFI.PushServer {
        TidingsFFI.PushServer(url: url.absoluteString, token: token, extraRootCertificates: extraRootCertificates)
    }
}

extension PreferenceRule {
    init(_ r: TidingsFFI.PreferenceRule) {
        let selector: PreferenceSelector
        switch r.selector {
        case .type(let p): selector = .type(p)
        case .topic(let p): selector = .topic(p)
        }
        self.init(selector, r.channel == .socket ? .socket : .push, enabled: r.enabled)
    }

    var ffi: TidingsFFI.PreferenceRule {
        let s: TidingsFFI.PreferenceSelector
        switch selector {
        case .type(let p): s = .type(pattern: p)
        case .topic(let p): s = .topic(pattern: p)
        }
        return TidingsFFI.PreferenceRule(selector: s, channel: channel == .socket ? .socket : .push, enabled: enabled)
    }
}

extension Preferences {
    init(_ p: TidingsFFI.Preferences) {
        self.init(
            rules: p.rules.map(PreferenceRule.init), version: p.version,
            updatedAt: Date(timeIntervalSince1970: TimeInterval(p.updatedAtMs) / 1000))
    }
}

extension QuietHours {
    init(_ q: TidingsFFI.QuietHours) {
        self.init(timeZone: q.timeZone, ranges: q.ranges.map { QuietRange(day: $0.day, start: $0.start, end: $0.end) })
    }

    var ffi: TidingsFFI.QuietHours {
        TidingsFFI.QuietHours(
            timeZone: timeZone, ranges: ranges.map { TidingsFFI.QuietRange(day: $0.day, start: $0.start, end: $0.end) })
    }
}

extension QuietHoursSettings {
    init(_ q: TidingsFFI.QuietHoursSettings) {
        self.init(
            quietHours: q.quietHours.map(QuietHours.init), version: q.version,
            updatedAt: Date(timeIntervalSince1970: TimeInterval(q.updatedAtMs) / 1000))
    }
}

extension NetworkStatus {
    var ffi: TidingsFFI.NetworkStatus {
        switch self {
        case .available: return .available
        case .unavailable: return .unavailable
        case .changed: return .changed
        }
    }
}

extension TidingsStats {
    init(_ s: TidingsFFI.ClientStats) {
        self.init(
            connectionAttempts: s.connectionAttempts, connections: s.connections, tokenFetches: s.tokenFetches,
            notificationsReceived: s.notificationsReceived, delivered: s.delivered,
            duplicatesDropped: s.duplicatesDropped, digests: s.digests, pushIngested: s.pushIngested, gaps: s.gaps,
            duplicatesSocket: s.duplicatesSocket, duplicatesReplay: s.duplicatesReplay,
            duplicatesPush: s.duplicatesPush, digested: s.digested, fresh: s.fresh, resumed: s.resumed,
            replays: s.replays, replayed: s.replayed, replayMax: s.replayMax, reconnects: s.reconnects,
            rttSamples: s.rttSamples, rttLastMicros: s.rttLastMicros, rttSmoothedMicros: s.rttSmoothedMicros,
            rttMinMicros: s.rttMinMicros
        )
    }
}

extension TidingsError {
    init(_ e: TidingsFFI.TidingsError) {
        switch e {
        case .InvalidArgument(let m): self = .invalidArgument(m)
        case .InvalidPayload(let m): self = .invalidPayload(m)
        case .Store(let m): self = .store(m)
        case .ConnectionFailed(let reason, let m): self = .connectionFailed(FailureReason(reason), message: m)
        case .Closed: self = .closed
        case .RequestRefused(let code, let m): self = .requestRefused(code: code, message: m)
        case .TimedOut: self = .timedOut
        case .Internal(let m): self = .internalError(m)
        case .Unauthorized(let m): self = .unauthorized(m)
        case .Refused(let status, let code, let m): self = .refused(status: Int(status), code: code, message: m)
        case .Unavailable(let m, let after): self = .unavailable(m, retryAfter: after.map { TimeInterval($0) / 1000 })
        }
    }
}

/// Runs a generated call, translating its errors into `TidingsError`.
func translatingErrors<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as TidingsFFI.TidingsError {
        throw TidingsError(e)
    }
}

/// Runs a generated async call, translating its errors into `TidingsError`.
func translatingErrors<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let e as TidingsFFI.TidingsError {
        throw TidingsError(e)
    }
}
