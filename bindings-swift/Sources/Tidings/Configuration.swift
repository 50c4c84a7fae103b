import Foundation
import TidingsFFI

/// How a `TidingsClient` connects. Only `url` is required; the other values default to the core's defaults.
public struct TidingsConfiguration: Sendable, Hashable {
    /// WebSocket URL of the server, e.g. `wss://notify.example.com/v1/ws`.
    public var url: URL
    /// File where positions, recently seen ids and the device id are kept across launches. On iOS, put it in the
    /// App Group container (`TidingsConfiguration.storeURL(appGroup:)`) so that a Notification Service Extension
    /// shares the dedup state. `nil`: memory only.
    public var storeURL: URL?
    /// Stable installation id; `nil` generates one and keeps it in the store.
    public var deviceId: String?
    /// Upper bound of the first reconnect delay (full jitter), seconds.
    public var backoffBase: TimeInterval
    /// Upper bound of any reconnect delay, seconds.
    public var backoffCap: TimeInterval
    /// Batching window for informational notifications with a group, seconds; 0 disables digests.
    public var batchWindow: TimeInterval
    /// A digest is delivered as soon as it holds this many notifications.
    public var batchMaxItems: Int
    /// How many notification ids are remembered for dedup.
    public var dedupCapacity: Int
    /// How long the socket stays open after the app enters the background, seconds.
    public var backgroundGrace: TimeInterval
    /// Subscribe to the signed-in user's own stream (`user:<id>`) automatically.
    public var subscribeUserStream: Bool
    /// How many events wait for the app before the client stops reading from the server (see
    /// `TidingsClient.events`). At least 1.
    public var eventCapacity: Int
    /// Certificate authorities trusted for `wss://` besides the public roots, as PEM text (a private CA, a test
    /// server). The system's trust settings are not consulted.
    public var extraRootCertificates: [String]

    /// The defaults for a server at `url`.
    public init(url: URL, storeURL: URL? = nil) {
        let d = defaultConfig(url: url.absoluteString)
        self.url = url
        self.storeURL = storeURL
        deviceId = d.deviceId
        backoffBase = TimeInterval(d.backoffBaseMs) / 1000
        backoffCap = TimeInterval(d.backoffCapMs) / 1000
        batchWindow = TimeInterval(d.batchWindowMs) / 1000
        batchMaxItems = Int(d.batchMaxItems)
        dedupCapacity = Int(d.dedupCapacity)
        backgroundGrace = TimeInterval(d.backgroundGraceMs) / 1000
        subscribeUserStream = d.subscribeUserStream
        eventCapacity = Int(d.eventCapacity)
        extraRootCertificates = d.extraRootCertificates
    }

    var ffi: ClientConfig {
        ClientConfig(
            url: url.absoluteString,
            storePath: storeURL?.path,
            deviceId: deviceId,
            backoffBaseMs: milliseconds(backoffBase),
            backoffCapMs: milliseconds(backoffCap),
            batchWindowMs: milliseconds(batchWindow),
            batchMaxItems: UInt32(clamping: batchMaxItems),
            dedupCapacity: UInt32(clamping: dedupCapacity),
            backgroundGraceMs: milliseconds(backgroundGrace),
            subscribeUserStream: subscribeUserStream,
            eventCapacity: UInt32(clamping: eventCapacity),
            extraRootCertificates: extraRootCertificates
        )
    }

    #if canImport(Darwin)
    /// `tidings.json` in the App Group container `appGroup` (e.g. `group.com.example.app`), shared by the app and
    /// its Notification Service Extension. `nil` when the app lacks the App Group entitlement.
    public static func storeURL(appGroup: String, fileName: String = "tidings.json") -> URL? {
        FileManager.default.containerURL(forSecurityApplicationGroupIdentifier: appGroup)?
            .appendingPathComponent(fileName)
    }
    #endif
}

private func milliseconds(_ seconds: TimeInterval) -> UInt64 {
    seconds <= 0 ? 0 : UInt64((seconds * 1000).rounded())
}
