import Foundation

/// Fans the core's events out to every `AsyncStream` handed out by `TidingsClient.events`. Events published while
/// no stream exists are kept and handed to the first one, so an app that starts listening after `init` misses
/// nothing.
final class EventHub: @unchecked Sendable {
    private let lock = NSLock()
    private var subscribers: [Int: AsyncStream<TidingsEvent>.Continuation] = [:]
    private var nextId = 0
    private var pending: [TidingsEvent] = []
    private var finished = false

    /// Called by the listener, one event at a time and in order.
    func publish(_ event: TidingsEvent) {
        lock.lock()
        if finished {
            lock.unlock()
            return
        }
        if subscribers.isEmpty {
            pending.append(event)
            lock.unlock()
            return
        }
        let targets = Array(subscribers.values)
        lock.unlock()
        for continuation in targets {
            continuation.yield(event)
        }
    }

    func stream() -> AsyncStream<TidingsEvent> {
        AsyncStream { continuation in
            lock.lock()
            if finished {
                for event in pending {
                    continuation.yield(event)
                }
                pending.removeAll()
                lock.unlock()
                continuation.finish()
                return
            }
            let id = nextId
            nextId += 1
            for event in pending {
                continuation.yield(event)
            }
            pending.removeAll()
            subscribers[id] = continuation
            lock.unlock()
            continuation.onTermination = { [weak self] _ in
                self?.remove(id)
            }
        }
    }

    /// Ends every stream (after the events already published).
    func finish() {
        lock.lock()
        finished = true
        let targets = Array(subscribers.values)
        subscribers.removeAll()
        lock.unlock()
        for continuation in targets {
            continuation.finish()
        }
    }

    private func remove(_ id: Int) {
        lock.lock()
        subscribers[id] = nil
        lock.unlock()
    }
}
