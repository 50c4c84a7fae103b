// The app-side names the README's Swift blocks use (your backend client, your feed, your UI state): declared here so
// that `cargo xtask swift-test` can compile every ```swift block of bindings-swift/README.md against the real
// `Tidings` module. Compile-only: nothing here runs (the generated snippet functions are never called).
// Everything from `Tidings` itself is the real API; platform classes that do not exist on Linux are in
// CompileOnlyStubs.swift.

import Foundation
import Tidings
#if canImport(UserNotifications)
import UserNotifications
#endif

enum APIError: Error { case signedOut }

/// Your backend client.
struct AppAPI {
    func tidingsToken(forceRefresh: Bool) async throws -> String { fatalError("compile-only") }
}

var api = AppAPI()

/// Your notification feed.
struct Feed {
    func insert(_ notification: TidingsNotification) {}
    func insert(digest: Digest) {}
    func insertIfMissing(_ notification: TidingsNotification) {}
}

var feed = Feed()
var status = ConnectionState.idle
var badge: UInt64 = 0
/// The client of the blocks that use one without creating it.
var client: TidingsClient { fatalError("compile-only") }
/// An inbox item shown in your UI.
var item: InboxItem { fatalError("compile-only") }
/// The last notification the app handled, per stream.
var lastHandled: [String: TidingsNotification] = [:]
/// The Notification Service Extension's push request, server URL and the token the app shared with it.
var request: UNNotificationRequest { fatalError("compile-only") }
var serverURL = URL(string: "https://notify.example.com")!
var tokenFromTheSharedKeychain = ""

func refetch(_ stream: String) {}
func row(_ title: String?, read: Bool) {}
