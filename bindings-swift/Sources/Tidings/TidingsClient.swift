import Foundation
import TidingsFFI

/// Supplies Tidings tokens from your backend. `forceRefresh` is `true` after the server rejected a token: do not
/// return a cached one. Never called twice at once. Throw `TokenError.fatal` when the user cannot get a token
/// (signed out); anything else thrown is treated as transient and retried with backoff.
public typealias TokenProvider = @Sendable (_ forceRefresh: Bool) async throws -> String

/// A Tidings client: one WebSocket with reconnection, replay, dedup across socket and push, digests and acks —
/// all done by the Rust core; this class only adapts it to Swift.
///
/// ```swift
/// let client = try TidingsClient(configuration: .init(url: serverURL, storeURL: storeURL)) { forceRefresh in
///     try await api.tidingsToken(forceRefresh: forceRefresh)
/// }
/// client.observe { event in … }          // on the main actor
/// try await client.connect()
/// ```
///
/// Thread-safe: every method may be called from any thread or actor.
public final class TidingsClient: Sendable {
    let ffi: TidingsFFI.TidingsClient

    /// Creates a client; it does not connect until `connect()`.
    public init(configuration: TidingsConfiguration, tokenProvider: @escaping TokenProvider) throws {
        ffi = try translatingErrors {
            try TidingsFFI.TidingsClient(config: configuration.ffi, tokenProvider: TokenBridge(tokenProvider))
        }
    }

    // MARK: Events

    /// Everything the client emits, in order, as an `AsyncStream`.
    ///
    /// The same on every platform (the queue is the core's): events wait in one queue of at most
    /// `configuration.eventCapacity` (default 1 024) until taken, from the moment the client is created — a stream
    /// started late misses nothing. Each event is taken once: iterate one stream (and fan out yourself); two streams
    /// split the events between them. While the queue is full the client stops reading from the server: nothing is
    /// dropped, the server holds what follows, and if the pause outlasts its patience it closes the connection and the
    /// client resumes from its cursor once the app takes events again. The stream ends after `close()`, once the last
    /// event (the `.closed` state) was taken.
    public var events: AsyncStream<TidingsEvent> {
        let ffi = self.ffi
        return AsyncStream(unfolding: { await ffi.nextEvent().map(TidingsEvent.init) })
    }

    /// Calls `handler` on the main actor for every event, in order — the convenience for UI code (it takes the
    /// events: do not also iterate `events`). Cancel the returned task to stop.
    @discardableResult
    public func observe(_ handler: @escaping @MainActor @Sendable (TidingsEvent) -> Void) -> Task<Void, Never> {
        let stream = events
        return Task { @MainActor in
            for await event in stream {
                handler(event)
            }
        }
    }

    /// The connection state now and then each time it changes (the latest state whenever the stream is read; a slow
    /// reader skips states in between — the full log is in `events`). Any number of these streams may be read. Ends
    /// after `.closed`.
    public var stateChanges: AsyncStream<ConnectionState> {
        let ffi = self.ffi
        let cursor = StateCursor()
        return AsyncStream(unfolding: {
            guard let last = cursor.take() else {
                let now = ffi.state()
                cursor.put(now)
                return ConnectionState(now)
            }
            if case .closed = last { return nil }
            let next = await ffi.nextState(current: last)
            cursor.put(next)
            return ConnectionState(next)
        })
    }

    // MARK: Connection

    /// Connects and returns once connected (authenticated). Throws `TidingsError.connectionFailed` if the client
    /// stops for good (rejected credentials) and `.closed` if it is closed meanwhile. While the network is down it
    /// keeps waiting. Whatever happens to this call, the client keeps (re)connecting in the background.
    public func connect() async throws {
        do {
            try await ffi.connect()
        } catch let e as TidingsFFI.TidingsError {
            throw TidingsError(e)
        }
    }

    /// Subscribes to a stream (`topic:<name>`); it is resumed from its last position after every reconnect.
    public func subscribe(_ stream: String) throws {
        try translatingErrors { try ffi.subscribe(stream: stream) }
    }

    /// Unsubscribes and forgets the stream's position.
    public func unsubscribe(_ stream: String) throws {
        try translatingErrors { try ffi.unsubscribe(stream: stream) }
    }

    /// The current connection state.
    public var state: ConnectionState { ConnectionState(ffi.state()) }

    /// Counters.
    public var stats: TidingsStats { TidingsStats(ffi.stats()) }

    /// The device id this installation authenticates with.
    public var deviceId: String { ffi.deviceId() }

    /// Closes the connection and saves the state; `events` delivers what is still queued (the last is the `.closed`
    /// state) and ends. Final: create a new client to connect again (calls that change what it does throw
    /// `TidingsError.closed`).
    public func close() async {
        await ffi.close()
    }

    // MARK: Push

    /// Registers this device's push address with the server (now and on every reconnect). For APNs pass the
    /// `deviceToken` from `application(_:didRegisterForRemoteNotificationsWithDeviceToken:)`.
    public func registerPushToken(_ platform: PushPlatform, _ token: Data) throws {
        try registerPushToken(platform, token.map { String(format: "%02x", $0) }.joined())
    }

    /// Registers this device's push address (an APNs token in hex, an FCM registration token, a Web Push
    /// subscription as JSON text).
    public func registerPushToken(_ platform: PushPlatform, _ token: String) throws {
        try translatingErrors { try ffi.registerPushToken(platform: platform.ffi, token: token) }
    }

    /// Passes a push payload (the APNs `userInfo`, any form of protocol §11.1) through the dedup window shared with
    /// the socket: `.show` the first time, `.duplicate` when the socket, a replay or an earlier push delivered it
    /// already, `.summary` for a digest or quiet-hours summary. A push too large to carry its notification is
    /// fetched from the server with the user's token before this returns (`.showTitle` when that failed). What is
    /// shown is acked. Saved before it returns.
    public func ingestPush(_ userInfo: [AnyHashable: Any]) async throws -> PushOutcome {
        try await ingestPush(json: PushPayload.json(userInfo))
    }

    /// As `ingestPush(_:)`, with the payload as JSON text (`{"tidings": {…}}`).
    public func ingestPush(json: String) async throws -> PushOutcome {
        try await translatingErrors { PushOutcome(try await ffi.ingestPush(payload: json)) }
    }

    /// The push path for code that runs without a client — the Notification Service Extension: passes the payload
    /// through the dedup window kept in the store file at `storeURL`, the one the app's client uses (put it in the
    /// App Group container). With `server`, a push too large to carry its notification is fetched from the server
    /// (else `.showTitle`) and what is shown is acked there for this device. Opens no WebSocket.
    public static func ingestPush(
        _ userInfo: [AnyHashable: Any], storeURL: URL, server: PushServer? = nil
    ) async throws -> PushOutcome {
        try await ingestPush(json: PushPayload.json(userInfo), storeURL: storeURL, server: server)
    }

    /// As `ingestPush(_:storeURL:server:)`, with the payload as JSON text.
    public static func ingestPush(json: String, storeURL: URL, server: PushServer? = nil) async throws -> PushOutcome {
        try await translatingErrors {
            PushOutcome(try await ingestPushWithStore(storePath: storeURL.path, payload: json, server: server?.ffi))
        }
    }

    // MARK: Preferences and quiet hours (protocol §9.5, with the user's token)

    /// The user's preferences.
    public func preferences() async throws -> Preferences {
        try await translatingErrors { Preferences(try await ffi.preferences()) }
    }

    /// Replaces every preference rule of the user; returns the result.
    public func setPreferences(_ rules: [PreferenceRule]) async throws -> Preferences {
        try await translatingErrors { Preferences(try await ffi.setPreferences(rules: rules.map(\.ffi))) }
    }

    /// Adds rules, each replacing the user's rule with the same selector and channel; returns the result.
    public func updatePreferences(_ rules: [PreferenceRule]) async throws -> Preferences {
        try await translatingErrors { Preferences(try await ffi.updatePreferences(rules: rules.map(\.ffi))) }
    }

    /// The user's quiet hours.
    public func quietHours() async throws -> QuietHoursSettings {
        try await translatingErrors { QuietHoursSettings(try await ffi.quietHours()) }
    }

    /// Sets (or with `nil` removes) the user's quiet hours; returns the result.
    public func setQuietHours(_ quietHours: QuietHours?) async throws -> QuietHoursSettings {
        try await translatingErrors { QuietHoursSettings(try await ffi.setQuietHours(quietHours: quietHours?.ffi)) }
    }

    // MARK: Lifecycle and network

    /// The app entered the background: the socket closes after `backgroundGrace`.
    public func didEnterBackground() {
        ffi.appDidEnterBackground()
    }

    /// The app returns to the foreground: reconnects at once, resumes every stream from its position and picks up
    /// what a push extension recorded in the shared store.
    public func willEnterForeground() {
        ffi.appWillEnterForeground()
    }

    /// The platform reports a network change. `.available` and `.changed` act at once (reconnect, or probe the
    /// link); `.unavailable` suspends until the network returns.
    public func networkChanged(_ status: NetworkStatus = .changed) {
        ffi.networkChanged(status: status.ffi)
    }

    /// The version of the Rust core.
    public static var coreVersion: String { tidingsVersion() }
}

/// Push payloads as the JSON text the core reads.
enum PushPayload {
    static func json(_ userInfo: [AnyHashable: Any]) throws -> String {
        var object: [String: Any] = [:]
        for (key, value) in userInfo {
            if let key = key as? String { object[key] = value }
        }
        guard JSONSerialization.isValidJSONObject(object),
            let data = try? JSONSerialization.data(withJSONObject: object),
            let text = String(data: data, encoding: .utf8)
        else {
            throw TidingsError.invalidPayload("the push payload is not representable as JSON")
        }
        return text
    }
}

/// Hands tokens from the app's closure to the core.
private final class TokenBridge: TidingsFFI.TokenProvider {
    private let provider: TokenProvider

    init(_ provider: @escaping TokenProvider) {
        self.provider = provider
    }

    func fetchToken(forceRefresh: Bool) async throws -> String {
        do {
            return try await provider(forceRefresh)
        } catch let e as TokenError {
            throw e.isTransient ? TokenProviderError.Transient(message: e.message) : .Fatal(message: e.message)
        } catch {
            throw TokenProviderError.Transient(message: String(describing: error))
        }
    }
}

/// The last state a `stateChanges` stream returned (its reads are sequential; the lock keeps it `Sendable`).
private final class StateCursor: @unchecked Sendable {
    private let lock = NSLock()
    private var last: TidingsFFI.ConnectionState?

    func take() -> TidingsFFI.ConnectionState? {
        lock.lock()
        defer { lock.unlock() }
        return last
    }

    func put(_ state: TidingsFFI.ConnectionState) {
        lock.lock()
        last = state
        lock.unlock()
    }
}
