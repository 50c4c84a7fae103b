import Foundation
import Tidings
import XCTest

/// The conformance scenarios (`tests/conformance/scenarios.json`, step vocabulary in
/// `tests/conformance/README.md`) run through the public Swift API against the reference server — the same
/// assertions as the Rust runner (`tests/tests/suite/conformance.rs`).
final class ConformanceTests: XCTestCase {
    /// One test per scenario below; `testEveryScenarioInTheFileHasATest` keeps this list and the file in step.
    static let scenarioNames = [
        "live_delivery",
        "reconnect_with_replay",
        "gap",
        "dedup_push_then_socket",
        "dedup_socket_then_push",
        "batching_digest",
        "client_stats",
        "auth_failure_without_storm",
        "background_foreground_resume",
        "slow_app_backpressure",
        "gap_refetch_from_history",
        "inbox_two_devices",
        "inbox_offline_change_converges",
        "inbox_mark_all_leaves_new_items_unread",
        "inbox_counts_survive_a_server_restart",
        "real_push_then_socket_shown_once",
        "lightweight_push_is_fetched",
        "digest_push_summary",
        "user_settings",
        "server_unsubscribe",
    ]

    func testLiveDelivery() async throws { try await runScenario("live_delivery") }
    func testReconnectWithReplay() async throws { try await runScenario("reconnect_with_replay") }
    func testGap() async throws { try await runScenario("gap") }
    func testDedupPushThenSocket() async throws { try await runScenario("dedup_push_then_socket") }
    func testDedupSocketThenPush() async throws { try await runScenario("dedup_socket_then_push") }
    func testBatchingDigest() async throws { try await runScenario("batching_digest") }
    func testClientStats() async throws { try await runScenario("client_stats") }
    func testAuthFailureWithoutStorm() async throws { try await runScenario("auth_failure_without_storm") }
    func testBackgroundForegroundResume() async throws { try await runScenario("background_foreground_resume") }
    func testSlowAppBackpressure() async throws { try await runScenario("slow_app_backpressure") }
    func testGapRefetchFromHistory() async throws { try await runScenario("gap_refetch_from_history") }
    func testInboxTwoDevices() async throws { try await runScenario("inbox_two_devices") }
    func testInboxOfflineChangeConverges() async throws { try await runScenario("inbox_offline_change_converges") }
    func testInboxMarkAllLeavesNewItemsUnread() async throws {
        try await runScenario("inbox_mark_all_leaves_new_items_unread")
    }
    func testInboxCountsSurviveAServerRestart() async throws {
        try await runScenario("inbox_counts_survive_a_server_restart")
    }
    func testRealPushThenSocketShownOnce() async throws { try await runScenario("real_push_then_socket_shown_once") }
    func testLightweightPushIsFetched() async throws { try await runScenario("lightweight_push_is_fetched") }
    func testDigestPushSummary() async throws { try await runScenario("digest_push_summary") }
    func testUserSettings() async throws { try await runScenario("user_settings") }
    func testServerUnsubscribe() async throws { try await runScenario("server_unsubscribe") }

    func testEveryScenarioInTheFileHasATest() throws {
        let inFile = try ScenarioFile.load().scenarios.map(\.name).sorted()
        XCTAssertEqual(inFile, Self.scenarioNames.sorted())
    }

    private func runScenario(_ name: String) async throws {
        let file = try ScenarioFile.load()
        guard let scenario = file.scenarios.first(where: { $0.name == name }) else {
            throw TestFailure("scenario \(name) is not in scenarios.json")
        }
        let runner = ScenarioRunner(server: try TestServer.fromEnvironment())
        do {
            for (i, step) in scenario.steps.enumerated() {
                print("[\(name)] step \(i): \(step.raw)")
                do {
                    try await runner.run(step)
                } catch let failure as TestFailure {
                    throw TestFailure("[\(name)] step \(i) \(step.raw): \(failure.description)")
                }
            }
        } catch {
            await runner.closeAll()
            throw error
        }
        await runner.closeAll()
    }
}

// MARK: - The scenario file

struct ScenarioFile: Decodable {
    struct Scenario: Decodable {
        let name: String
        var steps: [Step]
    }

    var scenarios: [Scenario]

    /// `TIDINGS_SCENARIOS`, else `tests/conformance/scenarios.json` of the workspace this package lives in.
    static func load() throws -> ScenarioFile {
        let path = ProcessInfo.processInfo.environment["TIDINGS_SCENARIOS"]
            ?? URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent()  // TidingsTests
            .deletingLastPathComponent()  // Tests
            .deletingLastPathComponent()  // bindings-swift
            .deletingLastPathComponent()  // workspace
            .appendingPathComponent("tests/conformance/scenarios.json").path
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        var file = try JSONDecoder().decode(ScenarioFile.self, from: data)
        // Each step's JSON text, for messages.
        let raw = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        let rawScenarios = raw?["scenarios"] as? [[String: Any]] ?? []
        for (i, scenario) in rawScenarios.enumerated() where i < file.scenarios.count {
            for (j, step) in (scenario["steps"] as? [Any] ?? []).enumerated() where j < file.scenarios[i].steps.count {
                let text = try JSONSerialization.data(withJSONObject: step, options: [.sortedKeys])
                file.scenarios[i].steps[j].raw = String(decoding: text, as: UTF8.self)
            }
        }
        return file
    }
}

/// One step: its members (every one optional; which apply depends on `op`) and its JSON text for messages.
struct Step: Decodable {
    let op: String
    let client: String?
    let user: String?
    let users: [String]?
    let topics: [String]?
    let token: String?
    let batchWindowMs: UInt64?
    let backgroundGraceMs: UInt64?
    let eventCapacity: Int?
    let published: UInt64?
    let state: String?
    let reason: String?
    let stream: String?
    let kind: String?
    let replayed: UInt64?
    let missed: UInt64?
    let ids: [String]?
    let count: UInt64?
    let idPrefix: String?
    let priority: String?
    let group: String?
    let persistence: String?
    let id: String?
    let offset: UInt64?
    let expect: String?
    let online: Bool?
    let ms: UInt64?
    let first: String?
    let last: String?
    /// `assert_stats`: stat name → exact value, and stat name → lower bound.
    let equals: [String: UInt64]?
    let atLeast: [String: UInt64]?
    let action: String?
    let wait: Bool?
    let unread: UInt64?
    let unseen: UInt64?
    let total: UInt64?
    let afterId: String?
    let limit: UInt32?
    let from: String?
    let form: String?
    let bodyBytes: Int?
    let rules: [RuleStep]?
    let ranges: [RangeStep]?
    let timeZone: String?
    let version: UInt64?
    /// `wait_subscription_failed`: the error code (`forbidden`, …).
    let code: String?
    /// The step as JSON text (filled in by `ScenarioFile.load`).
    var raw = ""

    private enum CodingKeys: String, CodingKey {
        case op, client, user, users, topics, token, state, reason, stream, kind, replayed, missed, ids, count
        case priority, group, persistence, id, offset, expect, online, ms, first, last
        case published, equals, action, wait, unread, unseen, total, limit, from, form, rules, ranges, version
        case code
        case atLeast = "at_least"
        case afterId = "after_id"
        case bodyBytes = "body_bytes"
        case timeZone = "time_zone"
        case batchWindowMs = "batch_window_ms"
        case backgroundGraceMs = "background_grace_ms"
        case eventCapacity = "event_capacity"
        case idPrefix = "id_prefix"
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        op = try c.decode(String.self, forKey: .op)
        client = try c.decodeIfPresent(String.self, forKey: .client)
        user = try c.decodeIfPresent(String.self, forKey: .user)
        users = try c.decodeIfPresent([String].self, forKey: .users)
        topics = try c.decodeIfPresent([String].self, forKey: .topics)
        token = try c.decodeIfPresent(String.self, forKey: .token)
        equals = try c.decodeIfPresent([String: UInt64].self, forKey: .equals)
        atLeast = try c.decodeIfPresent([String: UInt64].self, forKey: .atLeast)
        batchWindowMs = try c.decodeIfPresent(UInt64.self, forKey: .batchWindowMs)
        backgroundGraceMs = try c.decodeIfPresent(UInt64.self, forKey: .backgroundGraceMs)
        eventCapacity = try c.decodeIfPresent(Int.self, forKey: .eventCapacity)
        published = try c.decodeIfPresent(UInt64.self, forKey: .published)
        state = try c.decodeIfPresent(String.self, forKey: .state)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
        stream = try c.decodeIfPresent(String.self, forKey: .stream)
        kind = try c.decodeIfPresent(String.self, forKey: .kind)
        replayed = try c.decodeIfPresent(UInt64.self, forKey: .replayed)
        missed = try c.decodeIfPresent(UInt64.self, forKey: .missed)
        ids = try c.decodeIfPresent([String].self, forKey: .ids)
        count = try c.decodeIfPresent(UInt64.self, forKey: .count)
        idPrefix = try c.decodeIfPresent(String.self, forKey: .idPrefix)
        priority = try c.decodeIfPresent(String.self, forKey: .priority)
        group = try c.decodeIfPresent(String.self, forKey: .group)
        persistence = try c.decodeIfPresent(String.self, forKey: .persistence)
        id = try c.decodeIfPresent(String.self, forKey: .id)
        offset = try c.decodeIfPresent(UInt64.self, forKey: .offset)
        expect = try c.decodeIfPresent(String.self, forKey: .expect)
        online = try c.decodeIfPresent(Bool.self, forKey: .online)
        ms = try c.decodeIfPresent(UInt64.self, forKey: .ms)
        first = try c.decodeIfPresent(String.self, forKey: .first)
        last = try c.decodeIfPresent(String.self, forKey: .last)
        action = try c.decodeIfPresent(String.self, forKey: .action)
        wait = try c.decodeIfPresent(Bool.self, forKey: .wait)
        unread = try c.decodeIfPresent(UInt64.self, forKey: .unread)
        unseen = try c.decodeIfPresent(UInt64.self, forKey: .unseen)
        total = try c.decodeIfPresent(UInt64.self, forKey: .total)
        afterId = try c.decodeIfPresent(String.self, forKey: .afterId)
        limit = try c.decodeIfPresent(UInt32.self, forKey: .limit)
        from = try c.decodeIfPresent(String.self, forKey: .from)
        form = try c.decodeIfPresent(String.self, forKey: .form)
        bodyBytes = try c.decodeIfPresent(Int.self, forKey: .bodyBytes)
        rules = try c.decodeIfPresent([RuleStep].self, forKey: .rules)
        ranges = try c.decodeIfPresent([RangeStep].self, forKey: .ranges)
        timeZone = try c.decodeIfPresent(String.self, forKey: .timeZone)
        version = try c.decodeIfPresent(UInt64.self, forKey: .version)
        code = try c.decodeIfPresent(String.self, forKey: .code)
    }
}

/// A preference rule as a scenario writes it (protocol §9.5).
struct RuleStep: Decodable {
    let type: String?
    let topic: String?
    let channel: String
    let enabled: Bool

    var rule: PreferenceRule {
        PreferenceRule(
            type.map(PreferenceSelector.type) ?? .topic(topic ?? ""), channel == "socket" ? .socket : .push,
            enabled: enabled)
    }
}

/// A quiet range as a scenario writes it.
struct RangeStep: Decodable {
    let day: String
    let start: String
    let end: String

    var range: QuietRange { QuietRange(day: day, start: start, end: end) }
}

// MARK: - The runner

private let runCounter = Locked(0)

/// Interprets steps with the public `Tidings` API.
final class ScenarioRunner {
    let server: TestServer
    let prefix: String
    private var clients: [String: Recorder] = [:]
    private var connects: [String: Task<Void, Never>] = [:]
    private var tokenFetches: [String: Locked<Int>] = [:]
    /// The publish reply's first delivery per id: stream, epoch, offset.
    private var deliveries: [String: [String: Any]] = [:]
    /// Inbox changes started without waiting (`wait: false`).
    private var pendingRequests: [Task<Void, Never>] = []
    /// Each client's user, and its APNs device token (`register_push`).
    private var users: [String: String] = [:]
    private var pushTokens: [String: String] = [:]
    /// The push the server sent for (client, id), as JSON text (`wait_push`).
    private var sent: [String: String] = [:]

    init(server: TestServer) {
        self.server = server
        let n = runCounter.withLock { n -> Int in
            n += 1
            return n
        }
        let random = UUID().uuidString.prefix(6).lowercased()
        prefix = "sw\(ProcessInfo.processInfo.processIdentifier)x\(n)\(random)"
    }

    func name(_ s: String) -> String { "\(prefix)-\(s)" }

    func streamName(_ s: String) throws -> String {
        guard let colon = s.firstIndex(of: ":") else { throw TestFailure("stream \(s) has no kind") }
        return "\(s[..<colon]):\(name(String(s[s.index(after: colon)...])))"
    }

    func names(_ v: [String]?) -> [String] { (v ?? []).map(name) }

    /// `ids`, or `count` ids `<id_prefix><i>`.
    func stepIds(_ step: Step) throws -> [String] {
        guard let count = step.count else { return names(step.ids) }
        let p = try required(step.idPrefix, "id_prefix")
        return (0..<count).map { name("\(p)\($0)") }
    }

    func recorder(_ step: Step) throws -> Recorder {
        guard let key = step.client, let r = clients[key] else { throw TestFailure("no client \(step.client ?? "-")") }
        return r
    }

    func required<T>(_ value: T?, _ member: String) throws -> T {
        guard let value else { throw TestFailure("the step lacks \(member)") }
        return value
    }

    func run(_ step: Step) async throws {
        switch step.op {
        case "connect":
            let key = try required(step.client, "client")
            let user = name(try required(step.user, "user"))
            let token: String
            switch step.token ?? "valid" {
            case "valid": token = try await server.token(user: user, topics: names(step.topics))
            case "invalid": token = "not-a-jwt"
            case let other: throw TestFailure("unknown token kind \(other)")
            }
            let fetches = Locked(0)
            var config = TidingsConfiguration(url: server.wsURL)
            config.backoffBase = 0.05
            config.backoffCap = 0.5
            config.batchWindow = TimeInterval(step.batchWindowMs ?? 0) / 1000
            if let grace = step.backgroundGraceMs {
                config.backgroundGrace = TimeInterval(grace) / 1000
            }
            if let capacity = step.eventCapacity {
                config.eventCapacity = capacity
            }
            let client = try TidingsClient(configuration: config) { _ in
                fetches.withLock { $0 += 1 }
                return token
            }
            clients[key] = Recorder(client)
            tokenFetches[key] = fetches
            users[key] = user
            // Start connecting; the scenario's waits observe the outcome (connect() may also throw, e.g. with an
            // invalid token — that is what auth_failure_without_storm checks through the state).
            connects[key] = Task { try? await client.connect() }

        case "wait_state", "assert_state":
            let r = try recorder(step)
            let want = try required(step.state, "state")
            let matches = { (s: ConnectionState) -> Bool in
                guard stateName(s) == want else { return false }
                guard let reason = step.reason else { return true }
                if case .failed(let why, _) = s { return why.rawValue == reason }
                return false
            }
            if step.op == "wait_state" {
                try await r.wait("state \(want)") { _ in matches(r.client.state) }
            } else {
                let s = r.client.state
                try check(matches(s), "state is \(s), expected \(want)")
            }

        case "subscribe":
            try recorder(step).client.subscribe(try streamName(try required(step.stream, "stream")))

        case "wait_continuity":
            let r = try recorder(step)
            let stream = try streamName(try required(step.stream, "stream"))
            let kind = try required(step.kind, "kind")
            try await r.wait("continuity \(kind) on \(stream)") { r in
                r.events.contains { event in
                    guard case .continuity(let s, let c) = event, s == stream else { return false }
                    switch c {
                    case .fresh:
                        return kind == "fresh"
                    case .resumed(let replayed):
                        return kind == "resumed" && (step.replayed.map { $0 == replayed } ?? true)
                    case .gap(let reason, let missed, let replayed):
                        return kind == "gap" && (step.reason.map { $0 == reason.rawValue } ?? true)
                            && (step.missed.map { $0 == missed } ?? true)
                            && (step.replayed.map { $0 == replayed } ?? true)
                    }
                }
            }

        case "publish":
            let ids = try stepIds(step)
            for id in ids {
                var body: [String: Any] = [
                    "users": names(step.users), "topics": names(step.topics), "id": id, "type": "conformance",
                    "priority": step.priority ?? "important", "title": "title \(id)",
                ]
                if let g = step.group { body["group"] = g }
                if let p = step.persistence { body["persistence"] = p }
                if let n = step.bodyBytes { body["body"] = String(repeating: "x", count: n) }
                let reply = try await server.publish(body)
                guard let first = (reply["deliveries"] as? [[String: Any]])?.first else {
                    throw TestFailure("publish \(id): no deliveries in \(reply)")
                }
                deliveries[id] = first
            }

        case "wait_notifications":
            try await recorder(step).waitForIds(try stepIds(step))

        case "assert_order":
            let ids = try stepIds(step)
            let delivered = try recorder(step).deliveredIds
            var positions: [Int] = []
            for id in ids {
                guard let p = delivered.firstIndex(of: id) else { throw TestFailure("\(id) not delivered") }
                positions.append(p)
            }
            try check(zip(positions, positions.dropFirst()).allSatisfy { $0 < $1 }, "order \(ids) in \(delivered)")

        case "assert_notification":
            let id = name(try required(step.id, "id"))
            guard let n = try recorder(step).notifications.first(where: { $0.id == id }) else {
                throw TestFailure("\(id) was not delivered")
            }
            if let s = step.stream {
                let want = try streamName(s)
                try check(n.stream == want, "stream \(n.stream), expected \(want)")
            }
            if let p = step.priority {
                try check(n.priority.rawValue == p, "priority \(n.priority), expected \(p)")
            }
            if let o = step.offset {
                try check(n.offset == o, "offset \(String(describing: n.offset)), expected \(o)")
            }

        case "assert_delivered_exactly":
            let want = try stepIds(step).sorted()
            let got = try recorder(step).deliveredIds.sorted()
            try check(got == want, "delivered set \(got), expected \(want)")

        case "wait_digest":
            let group = try required(step.group, "group")
            let count = Int(try required(step.count, "count"))
            let first = name(try required(step.first, "first"))
            let last = name(try required(step.last, "last"))
            try await recorder(step).wait("digest \(group) × \(count)") { r in
                r.digests.contains { $0.group == group && $0.count == count && $0.first.id == first && $0.last.id == last }
            }

        case "assert_no_digest":
            let digests = try recorder(step).digests
            try check(digests.isEmpty, "no digest yet, got \(digests)")

        case "ingest_push":
            let id = name(try required(step.id, "id"))
            guard let d = deliveries[id] else { throw TestFailure("\(id) was not published") }
            let envelope: [String: Any] = [
                "id": id, "stream": d["stream"] ?? NSNull(), "offset": d["offset"] ?? NSNull(),
                "epoch": d["epoch"] ?? NSNull(), "type": "conformance", "priority": "critical",
                "persistence": "bufferable", "title": "title \(id)", "created_at": 1,
            ]
            // As an app's push handler gets it: the APNs userInfo dictionary.
            let outcome = try await recorder(step).client.ingestPush(["tidings": envelope])
            let got: String
            switch outcome {
            case .show: got = "show"
            case .duplicate: got = "duplicate"
            default: throw TestFailure("a full payload gives show or duplicate, got \(outcome)")
            }
            let want = try required(step.expect, "expect")
            try check(got == want, "push outcome for \(id): \(got), expected \(want)")

        case "register_push":
            // The Swift runner registers an APNs address (a hex device token), as an iOS app does.
            let key = try required(step.client, "client")
            let token = name(key).utf8.map { String(format: "%02x", $0) }.joined()
            try recorder(step).client.registerPushToken(.apns, token)
            let user = try required(users[key], "a connected client")
            try await until("the push address of \(key) stored") {
                let devices = try await self.server.get("/v1/users/\(user)/devices")["devices"] as? [[String: Any]] ?? []
                return devices.contains { ($0["push"] as? [String: Any])?["token"] as? String == token }
            }
            pushTokens[key] = token

        case "wait_offline":
            let user = name(try required(step.user, "user"))
            try await until("\(user) offline") {
                (try await self.server.get("/v1/presence/\(user)")["devices"] as? [Any] ?? [1]).isEmpty
            }

        case "wait_push":
            let key = try required(step.client, "client")
            let id = name(try required(step.id, "id"))
            let token = try required(pushTokens[key], "register_push first")
            var payload = ""
            try await until("a push of \(id) to \(key)'s device") {
                for push in try await self.server.pushes() where push["target"] as? String == token {
                    let text = push["payload"] as? String ?? ""
                    if pushIds(text).ids.contains(id) {
                        payload = text
                        return true
                    }
                }
                return false
            }
            if let form = step.form {
                try check(pushIds(payload).form == form, "the push's form is \(pushIds(payload).form), expected \(form): \(payload)")
            }
            sent["\(key)/\(id)"] = payload

        case "ingest_sent_push":
            let from = try required(step.from ?? step.client, "client")
            let id = name(try required(step.id, "id"))
            let text = try required(sent["\(from)/\(id)"], "wait_push first")
            // As the app's push handler gets it: the APNs payload as the userInfo dictionary.
            guard let userInfo = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [AnyHashable: Any] else {
                throw TestFailure("the push is not a JSON object: \(text)")
            }
            let outcome = try await recorder(step).client.ingestPush(userInfo)
            switch (try required(step.expect, "expect"), outcome) {
            case ("show", .show(let n)):
                try check(n.id == id, "shown \(n.id), expected \(id)")
                if let len = step.bodyBytes {
                    try check(n.body?.utf8.count == len, "the whole notification: body of \(n.body?.utf8.count ?? 0) bytes, expected \(len)")
                }
            case ("duplicate", .duplicate(let got)):
                try check(got == id, "duplicate \(got), expected \(id)")
            case ("summary", .summary(let s)):
                try check(s.count == (step.count ?? 0), "summary count \(s.count), expected \(step.count ?? 0)")
                try check(s.ids == names(step.ids), "summary ids \(s.ids), expected \(names(step.ids))")
            case ("title", .showTitle(let got, _, _)):
                try check(got == id, "title of \(got), expected \(id)")
            case (let want, let got):
                throw TestFailure("push outcome \(got), expected \(want)")
            }

        case "update_preferences":
            _ = try await recorder(step).client.updatePreferences(try required(step.rules, "rules").map(\.rule))

        case "set_quiet_hours":
            let quiet = QuietHours(
                timeZone: try required(step.timeZone, "time_zone"), ranges: try required(step.ranges, "ranges").map(\.range))
            do {
                _ = try await recorder(step).client.setQuietHours(quiet)
                try check(step.expect == nil, "set_quiet_hours succeeded, expected \(step.expect ?? "")")
            } catch TidingsError.refused(let status, _, _) where step.expect == "refused" {
                try check(status == 400, "refused with \(status), expected 400")
            }

        case "assert_settings":
            let client = try recorder(step).client
            let prefs = try await client.preferences()
            let quiet = try await client.quietHours()
            let want = try required(step.rules, "rules").map(\.rule)
            try check(Set(prefs.rules) == Set(want) && prefs.rules.count == want.count, "rules \(prefs.rules), expected \(want)")
            let wantQuiet = QuietHours(
                timeZone: try required(step.timeZone, "time_zone"), ranges: try required(step.ranges, "ranges").map(\.range))
            try check(quiet.quietHours == wantQuiet, "quiet hours \(String(describing: quiet.quietHours)), expected \(wantQuiet)")
            if let v = step.version {
                try check(prefs.version == v && quiet.version == v, "versions \(prefs.version)/\(quiet.version), expected \(v)")
            }

        case "set_network":
            try recorder(step).client.networkChanged(try required(step.online, "online") ? .available : .unavailable)

        case "background":
            try recorder(step).client.didEnterBackground()

        case "foreground":
            try recorder(step).client.willEnterForeground()

        case "drop_connections":
            try await server.dropAll()

        case "server_unsubscribe":
            try await server.unsubscribe(
                user: name(try required(step.user, "user")), stream: try streamName(try required(step.stream, "stream")))

        case "wait_subscription_failed":
            let stream = try streamName(try required(step.stream, "stream"))
            let code = try required(step.code, "code")
            try await recorder(step).wait("subscription of \(stream) failed with \(code)") { r in
                r.events.contains { event in
                    guard case .subscriptionFailed(let s, let c, _) = event else { return false }
                    return s == stream && c == code
                }
            }

        case "settle":
            try await Task.sleep(nanoseconds: try required(step.ms, "ms") * 1_000_000)

        case "assert_connection_attempts":
            let attempts = try recorder(step).client.stats.connectionAttempts
            let want = try required(step.count, "count")
            try check(attempts == want, "connection attempts \(attempts), expected \(want)")

        case "assert_stats":
            let s = try recorder(step).client.stats
            var stats: [String: UInt64] = [
                "duplicates_dropped": s.duplicatesDropped, "duplicates_socket": s.duplicatesSocket,
                "duplicates_replay": s.duplicatesReplay, "duplicates_push": s.duplicatesPush, "digests": s.digests,
                "digested": s.digested, "gaps": s.gaps, "fresh": s.fresh, "resumed": s.resumed,
                "replays": s.replays, "replayed": s.replayed, "replay_max": s.replayMax, "rtt_samples": s.rttSamples,
            ]
            for (reason, n) in s.reconnects { stats["reconnects.\(reason)"] = n }
            for (name, want) in step.equals ?? [:] {
                let got = try required(stats[name], "stat \(name)")
                try check(got == want, "stat \(name) is \(got), expected \(want) (\(s))")
            }
            for (name, least) in step.atLeast ?? [:] {
                let got = try required(stats[name], "stat \(name)")
                try check(got >= least, "stat \(name) is \(got), expected at least \(least) (\(s))")
            }

        case "assert_token_fetches":
            let key = try required(step.client, "client")
            let fetches = try required(tokenFetches[key], "a connected client").current
            let want = try required(step.count, "count")
            try check(UInt64(fetches) == want, "token fetches \(fetches), expected \(want)")

        case "pause_events":
            try recorder(step).setPaused(true)

        case "resume_events":
            try recorder(step).setPaused(false)

        case "assert_stopped_reading":
            let published = try required(step.published, "published")
            let received = try recorder(step).client.stats.notificationsReceived
            try check(received < published, "the SDK kept reading: \(received) of \(published) received while paused")

        case "close":
            let key = try required(step.client, "client")
            let r = try recorder(step)
            clients[key] = nil
            await r.close()
            await connects.removeValue(forKey: key)?.value

        case "wait_inbox", "assert_inbox":
            let r = try recorder(step)
            let matches = { (c: InboxCounts?) -> Bool in
                guard let c else { return false }
                return (step.unread.map { $0 == c.unread } ?? true) && (step.unseen.map { $0 == c.unseen } ?? true)
                    && (step.total.map { $0 == c.total } ?? true)
            }
            // Through the observable badge (SwiftUI's view of the counts) and the client's property alike.
            if step.op == "wait_inbox" {
                let deadline = Date().addingTimeInterval(waitTimeout)
                while !matches(await r.badgeCounts()) {
                    if Date() > deadline {
                        throw TestFailure("timed out waiting for inbox counts: \(String(describing: await r.badgeCounts()))")
                    }
                    try await Task.sleep(nanoseconds: 10_000_000)
                }
            } else {
                let counts = await r.badgeCounts()
                try check(matches(counts), "inbox counts \(String(describing: counts))")
            }
            let now = r.client.inboxCounts
            try check(matches(now), "the client's inbox counts \(String(describing: now))")

        case "inbox_mark", "inbox_mark_all":
            let r = try recorder(step)
            let action = try required(step.action, "action")
            let ids = try stepIds(step)
            let client = r.client
            let request: @Sendable () async throws -> InboxChangeResult
            if step.op == "inbox_mark_all" {
                switch action {
                case "read": request = { try await client.inboxMarkAllRead() }
                case "seen": request = { try await client.inboxMarkAllSeen() }
                default: throw TestFailure("mark all \(action)?")
                }
            } else {
                guard let a = InboxAction(rawValue: action) else { throw TestFailure("unknown action \(action)") }
                request = { try await client.inboxMark(a, ids: ids) }
            }
            if step.wait ?? true {
                let result = try await request()
                try check(!result.duplicate, "a duplicate: \(result)")
            } else {
                // Started without waiting for the answer (offline, the SDK queues the change).
                let pending = client.inboxPendingChanges
                pendingRequests.append(Task { _ = try? await request() })
                let deadline = Date().addingTimeInterval(waitTimeout)
                while client.inboxPendingChanges <= pending {
                    if Date() > deadline { throw TestFailure("the change was not queued") }
                    try await Task.sleep(nanoseconds: 5_000_000)
                }
            }

        case "history":
            // The README's gap → refetch path: page after the last notification handled.
            let r = try recorder(step)
            let stream = try streamName(try required(step.stream, "stream"))
            let afterId = name(try required(step.afterId, "after_id"))
            guard let last = r.notifications.first(where: { $0.id == afterId }), let offset = last.offset else {
                throw TestFailure("\(afterId) was not delivered")
            }
            var after: (epoch: String, offset: UInt64)? = (epoch: last.epoch, offset: offset)
            var got: [String] = []
            while let position = after {
                let page = try await r.client.history(stream, after: position, limit: step.limit)
                if let limit = step.limit { try check(page.items.count <= Int(limit), "a page larger than the limit") }
                got += page.items.map(\.id)
                after = page.next.map { (epoch: page.epoch, offset: $0) }
            }
            let want = try stepIds(step)
            try check(got == want, "history after \(afterId): \(got), expected \(want)")

        case "restart_server":
            try await server.restart()

        default:
            throw TestFailure("unknown step op \(step.op)")
        }
    }

    /// Polls `condition` every 20 ms until it holds; fails after 20 s.
    func until(_ what: String, _ condition: () async throws -> Bool) async throws {
        let deadline = Date().addingTimeInterval(20)
        while try await !condition() {
            if Date() > deadline { throw TestFailure("timed out after 20 s waiting for \(what)") }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    func closeAll() async {
        for task in pendingRequests {
            task.cancel()
        }
        for (key, r) in clients {
            await r.close()
            await connects.removeValue(forKey: key)?.value
        }
        clients.removeAll()
    }
}

/// The ids a push payload (JSON text of the APNs payload, protocol §11.1) stands for, and its form.
func pushIds(_ text: String) -> (ids: [String], form: String) {
    guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
        return ([], "invalid")
    }
    if let full = object["tidings"] as? [String: Any], let id = full["id"] as? String { return ([id], "full") }
    if let fetch = object["tidings_fetch"] as? [String: Any], let id = fetch["id"] as? String {
        return ([id], "lightweight")
    }
    if let summary = object["tidings_summary"] as? [String: Any], let ids = summary["ids"] as? [String] {
        return (ids, "summary")
    }
    return ([], "invalid")
}

func stateName(_ s: ConnectionState) -> String {
    switch s {
    case .idle: return "idle"
    case .connecting: return "connecting"
    case .connected: return "connected"
    case .reconnecting: return "reconnecting"
    case .suspended: return "suspended"
    case .closed: return "closed"
    case .failed: return "failed"
    }
}
