// COMPILE-ONLY STUBS of Apple platform classes the README's Swift blocks use, for Linux, where UIKit and
// UserNotifications do not exist. Only the members the blocks touch, with Apple's names and types; no behaviour.
// Used by `cargo xtask swift-test` to compile the README blocks (never linked into the Tidings package, never run).
// On a platform that has the real framework, the real one is used.

import Foundation

#if canImport(UIKit)
import UIKit
#else
/// Stub of UIKit's `UIApplication`.
final class UIApplication {
    static let shared = UIApplication()
    var applicationIconBadgeNumber = 0
}
#endif

#if canImport(UserNotifications)
import UserNotifications
#else
/// Stub of UserNotifications' `UNUserNotificationCenter`.
final class UNUserNotificationCenter {}

/// Stub of UserNotifications' `UNNotificationContent`.
class UNNotificationContent {
    var userInfo: [AnyHashable: Any] { [:] }
}

/// Stub of UserNotifications' `UNNotificationRequest`.
final class UNNotificationRequest {
    var content: UNNotificationContent { UNNotificationContent() }
}

/// Stub of UserNotifications' `UNNotification`.
final class UNNotification {
    var request: UNNotificationRequest { UNNotificationRequest() }
}

/// Stub of UserNotifications' `UNNotificationPresentationOptions`.
struct UNNotificationPresentationOptions: OptionSet {
    let rawValue: UInt
    static let banner = UNNotificationPresentationOptions(rawValue: 1 << 4)
    static let sound = UNNotificationPresentationOptions(rawValue: 1 << 1)
}
#endif
