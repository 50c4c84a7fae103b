import Foundation
import Tidings
import XCTest

/// The Swift wrapper's own behaviour: configuration, errors, the event streams, the main-actor convenience, push
/// token registration and the Notification Service Extension path (`ingestPush(_:storeURL:)`).
final class WrapperTests: XCTestCase {
    private func tempDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tidings-swift-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    private func envelope(id: String, stream: String = "user:nse", offset: Int = 1) -> [String: Any] {
        [
            "id": id, "stream": stream, "offset": offset, "epoch": "e1", "type": "t", "priority": "important",
            "persistence": "bufferable", "title": "hello", "data": ["post": "p-1"], "created_at": 1_763_808_060_123,
        ]
    }

    func testConfigurationDefaultsComeFromTheCore() throws {
        let config = TidingsConfiguration(url: try XCTUnwrap(URL(string: "wss://notify.example.com/v1/ws")))
        XCTAssertEqual(config.backoffBase, 0.5)
        XCTAssertEqual(config.backoffCap, 20)
        XCTAssertEqual(config.batchWindow, 3)
        XCTAssertEqual(config.batchMaxItems, 100)
        XCTAssertEqual(config.dedupCapacity, 10_000)
        XCTAssertEqual(config.backgroundGrace, 30)
        XCTAssertTrue(config.subscribeUserStream)
        XCTAssertNil(config.storeURL)
        XCTAssertFalse(TidingsClient.coreVersion.isEmpty)
    }

    func testAnHTTPURLIsRejected() throws {
        let config = TidingsConfiguration(url: try XCTUnwrap(URL(string: "http://127.0.0.1:1/v1/ws")))
        XCTAssertThrowsError(try TidingsClient(configuration: config) { _ in "t" }) { error in
            guard case TidingsError.invalidArgument(let message) = error else {
                return XCTFail("expected invalidArgument, got \(error)")
            }
            XCTAssertTrue(message.contains("ws://"), message)
        }
    }

    func testAPayloadWithoutTidingsIsInvalid() async throws {
        let config = TidingsConfiguration(url: try XCTUnwrap(URL(string: "ws://127.0.0.1:1/v1/ws")))
        let client = try TidingsClient(configuration: config) { _ in "t" }
        do {
            let outcome = try await client.ingestPush(["aps": ["alert": "hi"]])
            XCTFail("expected invalidPayload, got \(outcome)")
        } catch {
            guard case TidingsError.invalidPayload = error else {
                return XCTFail("expected invalidPayload, got \(error)")
            }
        }
        XCTAssertThrowsError(try client.subscribe("not-a-stream")) { error in
            guard case TidingsError.invalidArgument = error else {
                return XCTFail("expected invalidArgument, got \(error)")
            }
        }
    }

    func testPushIsShownOnceAndDecodedAsAValue() async throws {
        let config = TidingsConfiguration(url: try XCTUnwrap(URL(string: "ws://127.0.0.1:1/v1/ws")))
        let client = try TidingsClient(configuration: config) { _ in "t" }
        let payload: [AnyHashable: Any] = ["aps": ["alert": "hello"], "tidings": envelope(id: "n-1")]
        guard case .show(let n) = try await client.ingestPush(payload) else { return XCTFail("first sighting is shown") }
        XCTAssertEqual(n.id, "n-1")
        XCTAssertEqual(n.stream, "user:nse")
        XCTAssertEqual(n.offset, 1)
        XCTAssertEqual(n.type, "t")
        XCTAssertEqual(n.priority, .important)
        XCTAssertEqual(n.persistence, .bufferable)
        XCTAssertEqual(n.title, "hello")
        XCTAssertEqual(n.createdAt, Date(timeIntervalSince1970: 1_763_808_060.123))
        struct Post: Decodable, Equatable { let post: String }
        XCTAssertEqual(try n.decodeData(Post.self), Post(post: "p-1"))
        let again = try await client.ingestPush(payload)
        XCTAssertEqual(again, .duplicate(id: "n-1"))
    }

    /// The Notification Service Extension path: two processes (here: two calls) share the dedup window through the
    /// store file.
    func testExtensionDedupGoesThroughTheStoreFile() async throws {
        let dir = try tempDir()
        let store = dir.appendingPathComponent("tidings.json")
        let payload: [AnyHashable: Any] = ["tidings": envelope(id: "x-1")]
        guard case .show = try await TidingsClient.ingestPush(payload, storeURL: store) else {
            return XCTFail("first sighting is shown")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: store.path))
        let again = try await TidingsClient.ingestPush(payload, storeURL: store)
        XCTAssertEqual(again, .duplicate(id: "x-1"))
        let other = dir.appendingPathComponent("other.json")
        guard case .show = try await TidingsClient.ingestPush(payload, storeURL: other) else {
            return XCTFail("another store has not seen it")
        }
    }

    // MARK: Against the reference server

    private func connectedClient(
        _ server: TestServer, user: String, configure: (inout TidingsConfiguration) -> Void = { _ in }
    ) async throws -> TidingsClient {
        let token = try await server.token(user: user, topics: [])
        var config = TidingsConfiguration(url: server.wsURL)
        config.backoffBase = 0.05
        config.backoffCap = 0.5
        configure(&config)
        let client = try TidingsClient(configuration: config) { _ in token }
        try await client.connect()
        XCTAssertEqual(client.state, .connected)
        return client
    }

    /// Events wait in the core's one queue until taken (nothing is lost before the first stream starts), and each
    /// is taken once: two streams split them, each in order (the semantics every platform documents).
    func testEventsWaitUntilTakenAndEachIsTakenOnce() async throws {
        let server = try TestServer.fromEnvironment()
        let user = "sw-\(UUID().uuidString.prefix(8))"
        let client = try await connectedClient(server, user: user)
        // Nobody listened while connecting: the first stream still gets those events.
        let first = Recorder(client)
        try await first.wait("connected state in the first stream") { r in
            r.events.contains(.stateChanged(.connected))
        }
        try await first.wait("fresh") { r in r.events.contains(.continuity(stream: "user:\(user)", .fresh)) }
        let second = Recorder(client)
        let ids = (1...20).map { "\(user)-n\($0)" }
        for id in ids {
            _ = try await server.publish(["users": [user], "id": id, "type": "t", "title": "hi"])
        }
        try await first.wait("all twenty between the two streams") { r in
            Set(r.deliveredIds).union(second.deliveredIds).count == ids.count
        }
        XCTAssertEqual((first.deliveredIds + second.deliveredIds).sorted(), ids.sorted(), "each once")
        for r in [first, second] {
            let positions = r.deliveredIds.compactMap { ids.firstIndex(of: $0) }
            XCTAssertEqual(positions, positions.sorted(), "each stream's share in order")
        }
        XCTAssertFalse(second.events.contains(.stateChanged(.connected)), "taken by the first stream")
        await first.close()
        await second.close()
        XCTAssertEqual(client.state, .closed)
    }

    /// `stateChanges` reports the core's state now and its changes, and ends after `.closed`.
    func testStateChangesFollowTheCore() async throws {
        let server = try TestServer.fromEnvironment()
        let user = "sw-\(UUID().uuidString.prefix(8))"
        let client = try await connectedClient(server, user: user)
        let seen = Locked<[ConnectionState]>([])
        let watcher = Task {
            for await state in client.stateChanges {
                seen.withLock { $0.append(state) }
            }
        }
        let deadline = Date().addingTimeInterval(waitTimeout)
        while seen.current.first != .connected {
            try check(Date() < deadline, "no first state: \(seen.current)")
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        await client.close()
        await watcher.value
        XCTAssertEqual(seen.current.last, .closed)
    }

    func testObserveCallsTheHandlerOnTheMainActor() async throws {
        let server = try TestServer.fromEnvironment()
        let user = "sw-\(UUID().uuidString.prefix(8))"
        let client = try await connectedClient(server, user: user)
        let seen = Locked<[TidingsEvent]>([])
        let offMain = Locked(0)
        let task = client.observe { event in
            if !Thread.isMainThread { offMain.withLock { $0 += 1 } }
            seen.withLock { $0.append(event) }
        }
        func waitFor(_ what: String, _ condition: @escaping (TidingsEvent) -> Bool) async throws {
            let deadline = Date().addingTimeInterval(waitTimeout)
            while !seen.current.contains(where: condition) {
                try check(Date() < deadline, "the main-actor handler did not get \(what); got \(seen.current)")
                try await Task.sleep(nanoseconds: 10_000_000)
            }
        }
        // The handler also gets what happened before it was installed (the events waited in the queue).
        try await waitFor("connected") { $0 == .stateChanged(.connected) }
        try await waitFor("fresh") { $0 == .continuity(stream: "user:\(user)", .fresh) }
        _ = try await server.publish(["users": [user], "id": "\(user)-m1", "type": "t"])
        try await waitFor("the notification") { event in
            if case .notification(let n) = event { return n.id == "\(user)-m1" }
            return false
        }
        XCTAssertEqual(offMain.current, 0, "every call on the main thread")
        task.cancel()
        await client.close()
    }

    func testAPNsTokenIsRegisteredAsHex() async throws {
        let server = try TestServer.fromEnvironment()
        let user = "sw-\(UUID().uuidString.prefix(8))"
        let client = try await connectedClient(server, user: user)
        let recorder = Recorder(client)
        try client.registerPushToken(.apns, Data([0xde, 0xad, 0xbe, 0xef, 0x01]))
        try await recorder.wait("push registered") { r in r.events.contains(.pushRegistered(.apns)) }
        let devices = try await server.get("/v1/users/\(user)/devices")["devices"] as? [[String: Any]] ?? []
        let push = devices.first { ($0["device"] as? String) == client.deviceId }?["push"] as? [String: Any]
        XCTAssertEqual(push?["platform"] as? String, "apns")
        XCTAssertEqual(push?["token"] as? String, "deadbeef01")
        await recorder.close()
    }

    func testConnectThrowsWhenTheServerRejectsTheFreshToken() async throws {
        let server = try TestServer.fromEnvironment()
        var config = TidingsConfiguration(url: server.wsURL)
        config.backoffBase = 0.05
        let client = try TidingsClient(configuration: config) { _ in "not-a-jwt" }
        do {
            try await client.connect()
            XCTFail("connect() should throw")
        } catch TidingsError.connectionFailed(let reason, _) {
            XCTAssertEqual(reason, .unauthorized)
        }
        guard case .failed(.unauthorized, _) = client.state else { return XCTFail("state \(client.state)") }
        await client.close()
    }

    /// The app and its Notification Service Extension share the store file in the App Group container: what the
    /// extension showed while the app was in the background is not delivered again when the app returns.
    func testWhatTheExtensionShowedIsNotDeliveredAgainInTheApp() async throws {
        let server = try TestServer.fromEnvironment()
        let user = "sw-\(UUID().uuidString.prefix(8))"
        let store = try tempDir().appendingPathComponent("tidings.json")
        let client = try await connectedClient(server, user: user) { config in
            config.storeURL = store
            config.backgroundGrace = 0.1
        }
        let app = Recorder(client)
        try await app.wait("fresh") { r in r.events.contains(.continuity(stream: "user:\(user)", .fresh)) }
        client.didEnterBackground()
        try await app.wait("suspended") { r in r.client.state == .suspended(.background) }

        let id = "\(user)-p1"
        let reply = try await server.publish(["users": [user], "id": id, "type": "t", "priority": "critical"])
        let delivery = try XCTUnwrap((reply["deliveries"] as? [[String: Any]])?.first)
        var envelope = envelope(id: id, stream: "user:\(user)")
        envelope["offset"] = delivery["offset"]
        envelope["epoch"] = delivery["epoch"]
        guard case .show = try await TidingsClient.ingestPush(["tidings": envelope], storeURL: store) else {
            return XCTFail("the extension shows it")
        }

        client.willEnterForeground()
        try await app.wait("resumed") { r in
            r.events.contains(.continuity(stream: "user:\(user)", .resumed(replayed: 1)))
        }
        _ = try await server.publish(["users": [user], "id": "\(user)-p2", "type": "t"])
        try await app.waitForIds(["\(user)-p2"])
        XCTAssertEqual(app.deliveredIds, ["\(user)-p2"])
        await app.close()
    }
}
