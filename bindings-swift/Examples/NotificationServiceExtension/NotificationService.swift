// A Notification Service Extension for a Tidings app (iOS 15+). Add an extension target (File ▸ New ▸ Target ▸
// Notification Service Extension), link the Tidings library to it, give the app and the extension the same App
// Group, and replace the generated NotificationService.swift with this file.
//
// What it does, all of it in the Rust core (`ingestPush(_:storeURL:server:)`):
// - dedup: the push is checked against the dedup window in the App Group store file — the file the app's client
//   uses — so a notification the socket, a replay or an earlier push delivered is not shown again;
// - a push too large for APNs arrives in the lightweight form (`tidings_fetch`: id and title); it is fetched from the
//   server with the user's token before it is shown (its title when the fetch fails);
// - digests and quiet-hours summaries (`tidings_summary`) are shown as one notification; their ids count as seen;
// - what is shown is acked to the server (`POST /v1/me/acks`), so it knows the notification arrived.
//
// The server sends every push with `mutable-content: 1`, which is what makes iOS run this extension.
// This file is written for Xcode; it is not compiled by the repository's Linux test suite (UserNotifications is
// Apple-only). The calls it makes are tested on Linux: bindings-swift/Tests (WrapperTests, ConformanceTests).

import Tidings
import UserNotifications

final class NotificationService: UNNotificationServiceExtension {
    /// The App Group shared with the app (Signing & Capabilities ▸ App Groups).
    static let appGroup = "group.com.example.app"
    /// The Tidings server, as in the app's `TidingsConfiguration`.
    static let serverURL = URL(string: "wss://tidings.example.com/v1/ws")!

    private var contentHandler: ((UNNotificationContent) -> Void)?
    private var original: UNNotificationContent?
    private var task: Task<Void, Never>?

    override func didReceive(
        _ request: UNNotificationRequest, withContentHandler contentHandler: @escaping (UNNotificationContent) -> Void
    ) {
        self.contentHandler = contentHandler
        original = request.content
        guard let store = TidingsConfiguration.storeURL(appGroup: Self.appGroup) else {
            return contentHandler(request.content)
        }
        // A token of the signed-in user, which the app keeps in the shared keychain (or the App Group defaults)
        // for the extension. Without one, lightweight pushes show their title and nothing is acked from here.
        let server = SharedCredentials.token().map { PushServer(url: Self.serverURL, token: $0) }
        let userInfo = request.content.userInfo
        task = Task {
            let outcome = try? await TidingsClient.ingestPush(userInfo, storeURL: store, server: server)
            self.finish(outcome)
        }
    }

    private func finish(_ outcome: PushOutcome?) {
        guard let contentHandler, let original else { return }
        self.contentHandler = nil
        guard let content = original.mutableCopy() as? UNMutableNotificationContent else {
            return contentHandler(original)
        }
        switch outcome {
        case .show(let n):
            // First sighting (fetched in full if the push was lightweight).
            content.title = n.title ?? content.title
            content.body = n.body ?? content.body
            content.threadIdentifier = n.group ?? n.stream
            contentHandler(content)
        case .summary(let s):
            content.title = s.title ?? content.title
            content.body = s.count == 1 ? content.body : "\(s.count) new"
            content.threadIdentifier = s.group ?? "tidings-summary"
            contentHandler(content)
        case .showTitle(_, let title, _):
            content.title = title ?? content.title
            contentHandler(content)
        case .duplicate:
            // Already shown on another path. An empty content suppresses the alert with the
            // com.apple.developer.usernotifications.filtering entitlement; without it, the alert is shown quietly.
            contentHandler(UNNotificationContent())
        case nil:
            contentHandler(original)  // not a Tidings push, or the store could not be read
        }
    }

    override func serviceExtensionTimeWillExpire() {
        // iOS gives the extension about 30 s; show what the push carried.
        task?.cancel()
        if let contentHandler, let original {
            self.contentHandler = nil
            contentHandler(original)
        }
    }
}

/// Where the app leaves a user token for the extension (replace with your keychain access group code).
enum SharedCredentials {
    static func token() -> String? {
        UserDefaults(suiteName: NotificationService.appGroup)?.string(forKey: "tidings.token")
    }
}
