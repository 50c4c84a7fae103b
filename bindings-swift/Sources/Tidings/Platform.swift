import Foundation

// Apple-only conveniences that report lifecycle and network changes to a client. On Linux (the test suite) the
// app-facing calls are `didEnterBackground()`, `willEnterForeground()` and `networkChanged(_:)` directly.

#if canImport(UIKit) && !os(watchOS)
import UIKit

extension TidingsClient {
    /// Reports `UIApplication` background/foreground transitions to the client. Keep the returned observers for as
    /// long as the client lives (remove them from `center` to stop).
    @MainActor
    public func followApplicationLifecycle(center: NotificationCenter = .default) -> [NSObjectProtocol] {
        [
            center.addObserver(forName: UIApplication.didEnterBackgroundNotification, object: nil, queue: .main) {
                [weak self] _ in self?.didEnterBackground()
            },
            center.addObserver(forName: UIApplication.willEnterForegroundNotification, object: nil, queue: .main) {
                [weak self] _ in self?.willEnterForeground()
            },
        ]
    }
}
#endif

#if canImport(Network)
import Network

/// Reports reachability changes from `NWPathMonitor` to a client: `.unavailable` when the path is unsatisfied,
/// `.available` when it comes back, `.changed` when the interface changes (Wi-Fi ↔ cellular).
public final class TidingsNetworkMonitor: @unchecked Sendable {
    private let monitor = NWPathMonitor()
    private let queue = DispatchQueue(label: "dev.tidings.network-monitor")
    private var last: (satisfied: Bool, interfaces: [NWInterface.InterfaceType])?

    /// Starts monitoring for `client` (held weakly).
    public init(client: TidingsClient) {
        monitor.pathUpdateHandler = { [weak self, weak client] path in
            guard let self, let client else { return }
            let now = (satisfied: path.status == .satisfied, interfaces: path.availableInterfaces.map(\.type))
            defer { self.last = now }
            guard let last = self.last else { return }
            if now.satisfied != last.satisfied {
                client.networkChanged(now.satisfied ? .available : .unavailable)
            } else if now.satisfied && now.interfaces != last.interfaces {
                client.networkChanged(.changed)
            }
        }
        monitor.start(queue: queue)
    }

    /// Stops monitoring.
    public func cancel() {
        monitor.cancel()
    }

    deinit {
        monitor.cancel()
    }
}
#endif
