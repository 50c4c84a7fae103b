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
    private let ffi: TidingsFFI.TidingsClient
    private let hub: EventHub

    /// Creates a client; it does not connect until `connect()`.
    public init(configuration: TidingsConfiguration, tokenProvider: @escaping TokenProvider) throws {
        let hub = EventHub()
        self.hub = hub
        ffi = try translatingErrors {
            try TidingsFFI.TidingsClient(
                config: configuration.ffi,
                tokenProvider: TokenBridge(tokenProvider),
                listener: ListenerBridge(hub)
            )
        }
    }

    deinit {
        hub.finish()
    }

    // MARK: Events

    /// Every event from now on, in order, as an `AsyncStream`; each access is a new, independent stream. Events
    /// emitted while nobody listens are kept for the first stream, so nothing is lost between `init` and the
    /// first `for await`. The stream ends when the client is closed.
    public var events: AsyncStream<TidingsEvent> { hub.stream() }

    /// Calls `handler` on the main actor for every event, in order — the convenience for UI code. Cancel the
    /// returned task to stop.
    @discardableResult
    public func observe(_ handler: @escaping @MainActor @Sendable (TidingsEvent) -> Void) -> Task<Void, Never> {
        let stream = hub.stream()
        return Task { @MainActor in
            for await event in stream {
                handler(event)
            }
        }
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

    /// Closes the connection, saves the state, delivers the remaining events and ends every event stream. Final:
    /// create a new client to connect again.
    public func close() async {
        await ffi.close()
        hub.finish()
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

    /// Passes a push payload (the APNs `userInfo`) through the dedup window shared with the socket: `.show` the
    /// first time, `.duplicate` when the socket, a replay or an earlier push delivered it already. Saved before it
    /// returns.
    public func ingestPush(_ userInfo: [AnyHashable: Any]) throws -> PushOutcome {
        try ingestPush(json: PushPayload.json(userInfo))
    }

    /// As `ingestPush(_:)`, with the payload as JSON text (`{"tidings": {…}}`).
    public func ingestPush(json: String) throws -> PushOutcome {
        try translatingErrors { PushOutcome(try ffi.ingestPush(payload: json)) }
    }

    /// Dedup for code that runs without a client — the Notification Service Extension: passes the payload through
    /// the dedup window kept in the store file at `storeURL`, the one the app's client uses (put it in the App
    /// Group container). Opens no connection.
    public static func ingestPush(_ userInfo: [AnyHashable: Any], storeURL: URL) throws -> PushOutcome {
        try ingestPush(json: PushPayload.json(userInfo), storeURL: storeURL)
    }

    /// As `ingestPush(_:storeURL:)`, with the payload as JSON text.
    public static func ingestPush(json: String, storeURL: URL) throws -> PushOutcome {
        try translatingErrors { PushOutcome(try ingestPushWithStore(storePath: storeURL.path, payload: json)) }
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

/// Receives the core's callbacks (on a Tidings thread, one at a time, in order) and publishes them.
private final class ListenerBridge: TidingsFFI.EventListener {
    private let hub: EventHub

    init(_ hub: EventHub) {
        self.hub = hub
    }

    func onNotification(notification: TidingsFFI.Notification) {
        hub.publish(.notification(TidingsNotification(notification)))
    }

    func onDigest(digest: TidingsFFI.Digest) {
        hub.publish(.digest(Digest(digest)))
    }

    func onStateChanged(state: TidingsFFI.ConnectionState) {
        hub.publish(.stateChanged(ConnectionState(state)))
    }

    func onContinuity(stream: String, continuity: TidingsFFI.Continuity) {
        hub.publish(.continuity(stream: stream, Continuity(continuity)))
    }

    func onSubscriptionFailed(stream: String, code: String, message: String) {
        hub.publish(.subscriptionFailed(stream: stream, code: code, message: message))
    }

    func onPushRegistered(platform: TidingsFFI.PushPlatform) {
        hub.publish(.pushRegistered(PushPlatform(platform)))
    }
}
