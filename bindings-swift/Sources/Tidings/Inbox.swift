import Foundation
import TidingsFFI

// Apple platforms only: Debian's Swift 6.0.3 ships a libswiftObservation.so that does not link
// (`swift::threading::fatal` undefined), so on Linux the badge is `inboxCountsChanges`, which InboxBadge wraps.
#if canImport(Observation) && !os(Linux)
import Observation
#endif

// The inbox (protocol §13) and stream history (§14) in Swift. Every rule — counts applied only when newer, the view of
// loaded items kept current by every change, changes queued while offline and sent again until answered — is the Rust
// core's; this file converts types and adapts calls to async/await.

/// The server's counts of the user's inbox. `unread` is the badge (`UIApplication.applicationIconBadgeNumber`).
public struct InboxCounts: Sendable, Hashable {
    /// Items not archived and not seen.
    public var unseen: UInt64
    /// Items not archived and not read: the badge.
    public var unread: UInt64
    /// Items not archived.
    public var total: UInt64
    /// Grows with every change of the inbox; the client keeps only newer counts.
    public var version: UInt64
    /// The newest item's position.
    public var head: UInt64
}

/// One item of the inbox.
public struct InboxItem: Sendable, Hashable, Identifiable {
    /// The notification id.
    public var id: String
    /// Position in the inbox (grows with every item added).
    public var seq: UInt64
    /// The inbox version of the item's last change.
    public var version: UInt64
    /// When it was added.
    public var insertedAt: Date
    /// When it was first seen; `nil`: unseen.
    public var seenAt: Date?
    /// When it was read; `nil`: unread.
    public var readAt: Date?
    /// When it was archived; `nil`: not archived.
    public var archivedAt: Date?
    /// The notification (`nil` in the items of a change, which carry only the state).
    public var notification: TidingsNotification?

    public var isRead: Bool { readAt != nil }
    public var isSeen: Bool { seenAt != nil }
    public var isArchived: Bool { archivedAt != nil }
}

/// A page of the inbox, newest first.
public struct InboxPage: Sendable, Hashable {
    public var items: [InboxItem]
    /// `before` of the next (older) page; `nil`: no older items.
    public var next: UInt64?
    /// The counts when the page was read.
    public var counts: InboxCounts
}

/// The inbox after a change.
public struct InboxChangeResult: Sendable, Hashable {
    /// The counts after the change (the badge).
    public var counts: InboxCounts
    /// The changed items (state only).
    public var items: [InboxItem]
    /// The server had applied this change already (sent again after a lost answer).
    public var duplicate: Bool
    /// Ids that are not in the inbox.
    public var unknown: [String]
}

/// What to do with inbox items (protocol §13.2 has the transitions).
public enum InboxAction: String, Sendable, Hashable, CaseIterable {
    /// Read (and seen).
    case read
    /// Unread (stays seen).
    case unread
    /// Seen.
    case seen
    /// Unseen (and unread).
    case unseen
    /// Archived: leaves the counts and the default pages.
    case archive
    /// Back from the archive.
    case unarchive
}

/// Filters of an inbox page.
public struct InboxQuery: Sendable, Hashable {
    /// Which items by read/seen state.
    public enum Status: Sendable, Hashable { case all, unread, read, unseen, seen }
    /// Which items by archive state.
    public enum Archived: Sendable, Hashable { case exclude, include, only }

    /// Only items older than this position (the previous page's `next`).
    public var before: UInt64?
    /// Most items (1–200, default 50).
    public var limit: UInt32?
    public var status: Status
    public var archived: Archived
    /// Only this notification type.
    public var type: String?
    /// Only items from `topic:<topic>`.
    public var topic: String?

    public init(
        before: UInt64? = nil, limit: UInt32? = nil, status: Status = .all, archived: Archived = .exclude,
        type: String? = nil, topic: String? = nil
    ) {
        self.before = before
        self.limit = limit
        self.status = status
        self.archived = archived
        self.type = type
        self.topic = topic
    }
}

/// A page of a stream's stored history, oldest first (after a `.gap`, the place to refetch a topic from).
public struct HistoryPage: Sendable, Hashable {
    public var stream: String
    /// The stream's current epoch (the offsets are this epoch's).
    public var epoch: String
    /// Its newest offset.
    public var head: UInt64
    /// The oldest offset stored.
    public var oldest: UInt64
    public var items: [TidingsNotification]
    /// `afterOffset` of the next page; `nil`: this page reaches the head.
    public var next: UInt64?
}

extension TidingsClient {
    // MARK: Inbox

    /// The inbox counts the server last reported (kept in the store, so known before the connection is up); `nil`
    /// before the first report.
    public var inboxCounts: InboxCounts? { ffi.inboxCounts().map(InboxCounts.init) }

    /// The inbox counts now (if known) and then each time they change — only ever to a newer version, never
    /// multiplied or negative (the core applies the server's counts only when newer). Any number of these streams
    /// may be read; a slow reader skips to the latest. Ends when the task reading it is cancelled.
    public var inboxCountsChanges: AsyncStream<InboxCounts> {
        let ffi = ffi
        let cursor = LastValue<TidingsFFI.InboxCounts?>(nil)
        return AsyncStream(unfolding: {
            let current = cursor.get()
            guard let next = await ffi.nextInboxCounts(current: current) else { return nil }
            cursor.set(next)
            return InboxCounts(next)
        })
    }

    /// The inbox view: the items loaded with `inboxLoadMore()` and every item added since, newest first, in their
    /// current state. The `.inboxChanged` event says when it changed.
    public var inboxItems: [InboxItem] { ffi.inboxItems().map(InboxItem.init) }

    /// Whether the view reaches the oldest item.
    public var inboxComplete: Bool { ffi.inboxComplete() }

    /// Changes not yet answered by the server (made offline; sent on reconnect).
    public var inboxPendingChanges: Int { Int(ffi.inboxPendingChanges()) }

    /// Loads the next (older) page into the view.
    @discardableResult
    public func inboxLoadMore() async throws -> InboxPage {
        try await translatingErrors { InboxPage(try await ffi.inboxLoadMore()) }
    }

    /// A page of the inbox with filters (not added to the view).
    public func inboxList(_ query: InboxQuery = InboxQuery()) async throws -> InboxPage {
        try await translatingErrors { InboxPage(try await ffi.inboxList(query: query.ffi)) }
    }

    /// Applies `action` to the items `ids`. While offline the change is queued (in the store) and sent on
    /// reconnect, applied once by the server; returns the counts after it.
    @discardableResult
    public func inboxMark(_ action: InboxAction, ids: [String]) async throws -> InboxChangeResult {
        try await translatingErrors {
            InboxChangeResult(try await ffi.inboxMark(action: action.ffi, ids: ids))
        }
    }

    /// Marks every item up to the newest this client knows read; items that reach the server meanwhile stay unread.
    @discardableResult
    public func inboxMarkAllRead() async throws -> InboxChangeResult {
        try await translatingErrors { InboxChangeResult(try await ffi.inboxMarkAllRead()) }
    }

    /// Marks every item up to the newest this client knows seen.
    @discardableResult
    public func inboxMarkAllSeen() async throws -> InboxChangeResult {
        try await translatingErrors { InboxChangeResult(try await ffi.inboxMarkAllSeen()) }
    }

    // MARK: Stream history

    /// A page of `stream`'s stored history after `(epoch, offset)` (after a `.gap`, the cursor the stream had; `nil`:
    /// from the oldest stored), at most `limit` (1–1,000, default 100) notifications.
    public func history(
        _ stream: String, after: (epoch: String, offset: UInt64)? = nil, limit: UInt32? = nil
    ) async throws -> HistoryPage {
        try await translatingErrors {
            HistoryPage(
                try await ffi.history(
                    stream: stream, afterEpoch: after?.epoch, afterOffset: after?.offset, limit: limit))
        }
    }
}

#if canImport(Observation) && !os(Linux)
/// The inbox counts as an observable value for SwiftUI: `badge.unread` in a view updates when the server's counts
/// change (on any device of the user). Updated on the main actor.
///
/// ```swift
/// @State var badge = InboxBadge(client: client)
/// Text("\(badge.unread)")
/// ```
@available(iOS 17.0, macOS 14.0, tvOS 17.0, watchOS 10.0, *)
@MainActor
@Observable
public final class InboxBadge {
    /// The latest counts; `nil` until the first report.
    public private(set) var counts: InboxCounts?
    /// The badge: unread items (0 before the first report).
    public var unread: UInt64 { counts?.unread ?? 0 }

    @ObservationIgnored nonisolated(unsafe) private var task: Task<Void, Never>?

    /// Follows `client`'s counts until `stop()` or until the badge is released.
    public init(client: TidingsClient) {
        counts = client.inboxCounts
        let stream = client.inboxCountsChanges
        task = Task { [weak self] in
            for await counts in stream {
                guard let self else { return }
                self.counts = counts
            }
        }
    }

    /// Stops following the client.
    public func stop() {
        task?.cancel()
        task = nil
    }

    deinit {
        task?.cancel()
    }
}
#endif

// MARK: - Conversions

extension InboxCounts {
    init(_ c: TidingsFFI.InboxCounts) {
        self.init(unseen: c.unseen, unread: c.unread, total: c.total, version: c.version, head: c.head)
    }
}

private func date(_ ms: UInt64) -> Date { Date(timeIntervalSince1970: TimeInterval(ms) / 1000) }

extension InboxItem {
    init(_ i: TidingsFFI.InboxItem) {
        self.init(
            id: i.id, seq: i.seq, version: i.version, insertedAt: date(i.insertedAt), seenAt: i.seenAt.map(date),
            readAt: i.readAt.map(date), archivedAt: i.archivedAt.map(date),
            notification: i.notification.map(TidingsNotification.init))
    }
}

extension InboxPage {
    init(_ p: TidingsFFI.InboxPage) {
        self.init(items: p.items.map(InboxItem.init), next: p.next, counts: InboxCounts(p.counts))
    }
}

extension InboxChangeResult {
    init(_ r: TidingsFFI.InboxChangeResult) {
        self.init(
            counts: InboxCounts(r.counts), items: r.items.map(InboxItem.init), duplicate: r.duplicate,
            unknown: r.unknown)
    }
}

extension HistoryPage {
    init(_ p: TidingsFFI.HistoryPage) {
        self.init(
            stream: p.stream, epoch: p.epoch, head: p.head, oldest: p.oldest,
            items: p.items.map(TidingsNotification.init), next: p.next)
    }
}

extension InboxAction {
    var ffi: TidingsFFI.InboxAction {
        switch self {
        case .read: return .read
        case .unread: return .unread
        case .seen: return .seen
        case .unseen: return .unseen
        case .archive: return .archive
        case .unarchive: return .unarchive
        }
    }
}

extension InboxQuery {
    var ffi: TidingsFFI.InboxQuery {
        let s: TidingsFFI.InboxStatus
        switch status {
        case .all: s = .all
        case .unread: s = .unread
        case .read: s = .read
        case .unseen: s = .unseen
        case .seen: s = .seen
        }
        let a: TidingsFFI.InboxArchived
        switch archived {
        case .exclude: a = .exclude
        case .include: a = .include
        case .only: a = .only
        }
        return TidingsFFI.InboxQuery(before: before, limit: limit, status: s, archived: a, kind: type, topic: topic)
    }
}

/// A thread-safe box for the last value a stream returned.
private final class LastValue<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func get() -> Value {
        lock.lock()
        defer { lock.unlock() }
        return value
    }

    func set(_ new: Value) {
        lock.lock()
        value = new
        lock.unlock()
    }
}
