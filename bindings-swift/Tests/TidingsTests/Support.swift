import Foundation
import Tidings
import XCTest

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Waits time out after this long and fail the test (tests/conformance/README.md).
let waitTimeout: TimeInterval = 20

/// A failed expectation; thrown so that the scenario stops at the first failure, as the Rust runner's panics do.
struct TestFailure: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) {
        self.description = description
    }
}

func check(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition {
        throw TestFailure(message())
    }
}

/// The reference server the runner was given (`cargo xtask swift-test` starts it): `TIDINGS_WS_URL`,
/// `TIDINGS_HTTP_URL`, `TIDINGS_API_KEY`. Without them the server tests are skipped, unless
/// `TIDINGS_REQUIRE_SERVER=1` (set by xtask), which makes a missing server a failure.
struct TestServer {
    let wsURL: URL
    let httpURL: URL
    let apiKey: String
    /// `TIDINGS_CONTROL_URL`: restarts the server (`restart_server`).
    let controlURL: URL?
    /// The push harness's control API (`TIDINGS_PUSH_HARNESS_URL`): the mock push services the server pushes to.
    let pushHarnessURL: URL?

    static func fromEnvironment() throws -> TestServer {
        let env = ProcessInfo.processInfo.environment
        guard let ws = env["TIDINGS_WS_URL"].flatMap(URL.init(string:)),
            let http = env["TIDINGS_HTTP_URL"].flatMap(URL.init(string:)),
            let key = env["TIDINGS_API_KEY"]
        else {
            if env["TIDINGS_REQUIRE_SERVER"] == "1" {
                throw TestFailure("TIDINGS_WS_URL, TIDINGS_HTTP_URL and TIDINGS_API_KEY must be set")
            }
            throw XCTSkip("no reference server (run `cargo xtask swift-test`)")
        }
        let harness = env["TIDINGS_PUSH_HARNESS_URL"].flatMap(URL.init(string:))
        return TestServer(
            wsURL: ws, httpURL: http, apiKey: key, controlURL: env["TIDINGS_CONTROL_URL"].flatMap(URL.init(string:)),
            pushHarnessURL: harness)
    }

    /// `POST /v1/demo/token`.
    func token(user: String, topics: [String]) async throws -> String {
        let reply = try await request("POST", "/v1/demo/token", ["user": user, "topics": topics, "ttl_secs": 3600])
        guard let token = reply["token"] as? String else { throw TestFailure("no token in \(reply)") }
        return token
    }

    /// `POST /v1/publish`; returns the reply.
    func publish(_ body: [String: Any]) async throws -> [String: Any] {
        try await request("POST", "/v1/publish", body)
    }

    /// `POST /v1/admin/drop` for everyone.
    func dropAll() async throws {
        _ = try await request("POST", "/v1/admin/drop", [:])
    }

    /// `POST /v1/admin/unsubscribe`: ends `user`'s subscription of `stream` on all of the user's connections (the
    /// count it answers is the answering process's, not checked).
    func unsubscribe(user: String, stream: String) async throws {
        _ = try await request("POST", "/v1/admin/unsubscribe", ["user": user, "stream": stream])
    }

    /// Restarts the server process (same address and data) and returns once it answers again.
    func restart() async throws {
        guard let controlURL else { throw TestFailure("TIDINGS_CONTROL_URL is not set") }
        var request = URLRequest(url: controlURL.appendingPathComponent("restart"))
        request.httpMethod = "POST"
        request.timeoutInterval = 60
        let (data, status) = try await send(request)
        try check(status == 200, "restart: HTTP \(status): \(String(decoding: data, as: UTF8.self))")
    }

    /// Every push the mock services accepted so far (`GET /pushes` of the push harness), as an app receives it:
    /// `provider`, `target` (the device token) and `payload` (the APNs payload as JSON text).
    func pushes() async throws -> [[String: Any]] {
        guard let base = pushHarnessURL, let url = URL(string: "/pushes", relativeTo: base) else {
            throw TestFailure("TIDINGS_PUSH_HARNESS_URL is not set (run `cargo xtask swift-test`)")
        }
        let (data, status) = try await send(URLRequest(url: url))
        guard status == 200, let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let pushes = object["pushes"] as? [[String: Any]]
        else { throw TestFailure("GET /pushes: HTTP \(status): \(String(decoding: data, as: UTF8.self))") }
        return pushes
    }

    /// `GET <path>` with the API key.
    func get(_ path: String) async throws -> [String: Any] {
        try await request("GET", path, nil)
    }

    private func request(_ method: String, _ path: String, _ body: [String: Any]?) async throws -> [String: Any] {
        guard let url = URL(string: path, relativeTo: httpURL) else { throw TestFailure("bad path \(path)") }
        var request = URLRequest(url: url)
        request.httpMethod = method
        request.setValue("Bearer \(apiKey)", forHTTPHeaderField: "Authorization")
        if let body {
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
        }
        let (data, status) = try await send(request)
        guard (200..<300).contains(status) else {
            throw TestFailure("\(method) \(path): HTTP \(status): \(String(decoding: data, as: UTF8.self))")
        }
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TestFailure("\(method) \(path): not a JSON object: \(String(decoding: data, as: UTF8.self))")
        }
        return object
    }

    fileprivate func send(_ request: URLRequest) async throws -> (Data, Int) {
        try await withCheckedThrowingContinuation { continuation in
            URLSession.shared.dataTask(with: request) { data, response, error in
                if let error {
                    continuation.resume(throwing: error)
                } else {
                    let status = (response as? HTTPURLResponse)?.statusCode ?? 0
                    continuation.resume(returning: (data ?? Data(), status))
                }
            }.resume()
        }
    }
}

/// A thread-safe value box.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) {
        self.value = value
    }

    func withLock<R>(_ body: (inout Value) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }

    var current: Value { withLock { $0 } }
}

/// Records every event of a client (through its `events` stream) and waits for conditions on the log.
final class Recorder: @unchecked Sendable {
    let client: TidingsClient
    private let log = Locked<[TidingsEvent]>([])
    private let paused = Locked(false)
    private var task: Task<Void, Never>?
    /// The latest inbox counts from the client's `inboxCountsChanges` (what `InboxBadge` shows on Apple platforms).
    private let observed = Locked<InboxCounts?>(nil)
    private var countsTask: Task<Void, Never>?

    init(_ client: TidingsClient) {
        self.client = client
        let stream = client.events
        let (log, paused) = (self.log, self.paused)
        task = Task {
            for await event in stream {
                // While paused the app takes no more events (it holds this one).
                while paused.current {
                    try? await Task.sleep(nanoseconds: 10_000_000)
                }
                log.withLock { $0.append(event) }
            }
        }
        let counts = client.inboxCountsChanges
        let observed = self.observed
        countsTask = Task {
            var lastVersion: UInt64 = 0
            for await c in counts {
                // Newer only: the stream never goes back.
                precondition(c.version > lastVersion || lastVersion == 0, "counts went back: \(c)")
                lastVersion = c.version
                observed.withLock { $0 = c }
            }
        }
    }

    /// The inbox counts as observed through `inboxCountsChanges`.
    func badgeCounts() async -> InboxCounts? {
        observed.current
    }

    /// The app stops (or resumes) taking events.
    func setPaused(_ value: Bool) {
        paused.withLock { $0 = value }
    }

    var events: [TidingsEvent] { log.current }

    /// Notifications delivered on their own, in order.
    var notifications: [TidingsNotification] {
        events.compactMap { if case .notification(let n) = $0 { return n } else { return nil } }
    }

    /// Ids delivered to the app (alone and inside digests), in order.
    var deliveredIds: [String] {
        events.flatMap { event -> [String] in
            switch event {
            case .notification(let n): return [n.id]
            case .digest(let d): return d.ids
            default: return []
            }
        }
    }

    var digests: [Digest] {
        events.compactMap { if case .digest(let d) = $0 { return d } else { return nil } }
    }

    /// Polls until `condition` holds; fails after `waitTimeout` with the log.
    func wait(_ what: String, until condition: (Recorder) -> Bool) async throws {
        let deadline = Date().addingTimeInterval(waitTimeout)
        while !condition(self) {
            if Date() > deadline {
                throw TestFailure("timed out after \(Int(waitTimeout)) s waiting for \(what); events: \(events)")
            }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
    }

    /// Waits until every id was delivered.
    func waitForIds(_ ids: [String]) async throws {
        try await wait("ids \(ids)") { r in
            let got = Set(r.deliveredIds)
            return ids.allSatisfy(got.contains)
        }
    }

    /// Closes the client and waits until its event stream has ended.
    func close() async {
        await client.close()
        await task?.value
        countsTask?.cancel()
    }
}
