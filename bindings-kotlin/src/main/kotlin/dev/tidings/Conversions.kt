package dev.tidings

import dev.tidings.ffi.ClientStats as FfiClientStats
import dev.tidings.ffi.ConnectionState as FfiConnectionState
import dev.tidings.ffi.Continuity as FfiContinuity
import dev.tidings.ffi.Digest as FfiDigest
import dev.tidings.ffi.FailureReason as FfiFailureReason
import dev.tidings.ffi.GapReason as FfiGapReason
import dev.tidings.ffi.NetworkStatus as FfiNetworkStatus
import dev.tidings.ffi.Notification as FfiNotification
import dev.tidings.ffi.Persistence as FfiPersistence
import dev.tidings.ffi.Priority as FfiPriority
import dev.tidings.ffi.Channel as FfiChannel
import dev.tidings.ffi.PreferenceRule as FfiPreferenceRule
import dev.tidings.ffi.PreferenceSelector as FfiPreferenceSelector
import dev.tidings.ffi.Preferences as FfiPreferences
import dev.tidings.ffi.PushOutcome as FfiPushOutcome
import dev.tidings.ffi.PushServer as FfiPushServer
import dev.tidings.ffi.QuietHours as FfiQuietHours
import dev.tidings.ffi.QuietHoursSettings as FfiQuietHoursSettings
import dev.tidings.ffi.QuietRange as FfiQuietRange
import dev.tidings.ffi.SummaryKind as FfiSummaryKind
import dev.tidings.ffi.PushPlatform as FfiPushPlatform
import dev.tidings.ffi.SuspendReason as FfiSuspendReason
import dev.tidings.ffi.TidingsEvent as FfiEvent
import kotlin.time.Duration.Companion.milliseconds

// Between the generated FFI types (unsigned integers, no Duration) and the public ones. Every `when` is
// exhaustive without `else`, so a variant added in Rust breaks this file's compilation instead of slipping through.

internal fun FfiNotification.toPublic() = Notification(
    id = id,
    stream = stream,
    offset = offset?.toLong(),
    epoch = epoch,
    type = kind,
    priority = when (priority) {
        FfiPriority.CRITICAL -> Priority.CRITICAL
        FfiPriority.IMPORTANT -> Priority.IMPORTANT
        FfiPriority.INFORMATIONAL -> Priority.INFORMATIONAL
    },
    persistence = when (persistence) {
        FfiPersistence.EPHEMERAL -> Persistence.EPHEMERAL
        FfiPersistence.BUFFERABLE -> Persistence.BUFFERABLE
        FfiPersistence.PERSISTENT -> Persistence.PERSISTENT
    },
    title = title,
    body = body,
    dataJson = dataJson,
    group = group,
    createdAtMs = createdAtMs.toLong(),
)

internal fun FfiDigest.toPublic() =
    Digest(group = group, count = count.toInt(), first = first.toPublic(), last = last.toPublic(), ids = ids)

internal fun FfiConnectionState.toPublic(): ConnectionState = when (this) {
    is FfiConnectionState.Idle -> ConnectionState.Idle
    is FfiConnectionState.Connecting -> ConnectionState.Connecting(attempt.toInt())
    is FfiConnectionState.Connected -> ConnectionState.Connected
    is FfiConnectionState.Reconnecting ->
        ConnectionState.Reconnecting(attempt.toInt(), delayMs.toLong().milliseconds, reason)
    is FfiConnectionState.Suspended -> ConnectionState.Suspended(
        when (reason) {
            FfiSuspendReason.BACKGROUND -> SuspendReason.BACKGROUND
            FfiSuspendReason.OFFLINE -> SuspendReason.OFFLINE
        },
    )
    is FfiConnectionState.Closed -> ConnectionState.Closed
    is FfiConnectionState.Failed -> ConnectionState.Failed(reason.toPublic(), message)
}

internal fun FfiFailureReason.toPublic(): FailureReason = when (this) {
    FfiFailureReason.UNAUTHORIZED -> FailureReason.UNAUTHORIZED
    FfiFailureReason.TOKEN_PROVIDER -> FailureReason.TOKEN_PROVIDER
    FfiFailureReason.PROTOCOL -> FailureReason.PROTOCOL
    FfiFailureReason.FRAME_TOO_LARGE -> FailureReason.FRAME_TOO_LARGE
    FfiFailureReason.SESSION_REPLACED -> FailureReason.SESSION_REPLACED
    FfiFailureReason.REJECTED -> FailureReason.REJECTED
}

internal fun FfiContinuity.toPublic(): Continuity = when (this) {
    is FfiContinuity.Fresh -> Continuity.Fresh
    is FfiContinuity.Resumed -> Continuity.Resumed(replayed.toLong())
    is FfiContinuity.Gap -> Continuity.Gap(
        when (reason) {
            FfiGapReason.EPOCH_CHANGED -> GapReason.EPOCH_CHANGED
            FfiGapReason.OUT_OF_BUFFER -> GapReason.OUT_OF_BUFFER
            FfiGapReason.AHEAD_OF_STREAM -> GapReason.AHEAD_OF_STREAM
        },
        missed?.toLong(),
        replayed.toLong(),
    )
}

internal fun FfiEvent.toPublic(): TidingsEvent = when (this) {
    is FfiEvent.Notification -> TidingsEvent.Notification(notification.toPublic())
    is FfiEvent.Digest -> TidingsEvent.Digest(digest.toPublic())
    is FfiEvent.StateChanged -> TidingsEvent.State(state.toPublic())
    is FfiEvent.Continuity -> TidingsEvent.Continuity(stream, continuity.toPublic())
    is FfiEvent.SubscriptionFailed -> TidingsEvent.SubscriptionFailed(stream, code, message)
    is FfiEvent.PushRegistered -> TidingsEvent.PushRegistered(platform.toPublic())
    is FfiEvent.PushRegistrationFailed -> TidingsEvent.PushRegistrationFailed(platform.toPublic(), code, message)
    is FfiEvent.InboxCounts -> TidingsEvent.InboxCountsChanged(counts.toPublic())
    is FfiEvent.InboxChanged -> TidingsEvent.InboxChanged
}

internal fun FfiPushPlatform.toPublic(): PushPlatform = when (this) {
    FfiPushPlatform.APNS -> PushPlatform.APNS
    FfiPushPlatform.APNS_SANDBOX -> PushPlatform.APNS_SANDBOX
    FfiPushPlatform.FCM -> PushPlatform.FCM
    FfiPushPlatform.WEB_PUSH -> PushPlatform.WEB_PUSH
}

internal fun PushPlatform.toFfi(): FfiPushPlatform = when (this) {
    PushPlatform.APNS -> FfiPushPlatform.APNS
    PushPlatform.APNS_SANDBOX -> FfiPushPlatform.APNS_SANDBOX
    PushPlatform.FCM -> FfiPushPlatform.FCM
    PushPlatform.WEB_PUSH -> FfiPushPlatform.WEB_PUSH
}

internal fun NetworkStatus.toFfi(): FfiNetworkStatus = when (this) {
    NetworkStatus.AVAILABLE -> FfiNetworkStatus.AVAILABLE
    NetworkStatus.UNAVAILABLE -> FfiNetworkStatus.UNAVAILABLE
    NetworkStatus.CHANGED -> FfiNetworkStatus.CHANGED
}

internal fun FfiPushOutcome.toPublic(): PushOutcome = when (this) {
    is FfiPushOutcome.Show -> PushOutcome.Show(notification.toPublic())
    is FfiPushOutcome.Duplicate -> PushOutcome.Duplicate(id)
    is FfiPushOutcome.Summary -> PushOutcome.Summary(
        PushSummary(
            kind = when (summary.kind) {
                FfiSummaryKind.DIGEST -> SummaryKind.DIGEST
                FfiSummaryKind.QUIET_HOURS -> SummaryKind.QUIET_HOURS
            },
            group = summary.group,
            count = summary.count.toLong(),
            ids = summary.ids,
            title = summary.title,
        ),
    )
    is FfiPushOutcome.ShowTitle -> PushOutcome.ShowTitle(id, title, reason)
}

internal fun PushServer.toFfi() = FfiPushServer(url, token, extraRootCertificates)

internal fun PreferenceRule.toFfi() = FfiPreferenceRule(
    selector = when (val s = selector) {
        is PreferenceSelector.Type -> FfiPreferenceSelector.Type(s.pattern)
        is PreferenceSelector.Topic -> FfiPreferenceSelector.Topic(s.pattern)
    },
    channel = when (channel) {
        Channel.SOCKET -> FfiChannel.SOCKET
        Channel.PUSH -> FfiChannel.PUSH
    },
    enabled = enabled,
)

internal fun FfiPreferenceRule.toPublic() = PreferenceRule(
    selector = when (val s = selector) {
        is FfiPreferenceSelector.Type -> PreferenceSelector.Type(s.pattern)
        is FfiPreferenceSelector.Topic -> PreferenceSelector.Topic(s.pattern)
    },
    channel = when (channel) {
        FfiChannel.SOCKET -> Channel.SOCKET
        FfiChannel.PUSH -> Channel.PUSH
    },
    enabled = enabled,
)

internal fun FfiPreferences.toPublic() =
    Preferences(rules.map { it.toPublic() }, version.toLong(), updatedAtMs.toLong())

internal fun QuietHours.toFfi() = FfiQuietHours(timeZone, ranges.map { FfiQuietRange(it.day, it.start, it.end) })

internal fun FfiQuietHours.toPublic() = QuietHours(timeZone, ranges.map { QuietRange(it.day, it.start, it.end) })

internal fun FfiQuietHoursSettings.toPublic() =
    QuietHoursSettings(quietHours?.toPublic(), version.toLong(), updatedAtMs.toLong())

internal fun FfiClientStats.toPublic() = ClientStats(
    connectionAttempts = connectionAttempts.toLong(),
    connections = connections.toLong(),
    tokenFetches = tokenFetches.toLong(),
    notificationsReceived = notificationsReceived.toLong(),
    delivered = delivered.toLong(),
    duplicatesDropped = duplicatesDropped.toLong(),
    digests = digests.toLong(),
    pushIngested = pushIngested.toLong(),
    gaps = gaps.toLong(),
    duplicatesSocket = duplicatesSocket.toLong(),
    duplicatesReplay = duplicatesReplay.toLong(),
    duplicatesPush = duplicatesPush.toLong(),
    digested = digested.toLong(),
    fresh = fresh.toLong(),
    resumed = resumed.toLong(),
    replays = replays.toLong(),
    replayed = replayed.toLong(),
    replayMax = replayMax.toLong(),
    reconnects = reconnects.mapValues { it.value.toLong() },
    rttSamples = rttSamples.toLong(),
    rttLastMicros = rttLastMicros?.toLong(),
    rttSmoothedMicros = rttSmoothedMicros?.toLong(),
    rttMinMicros = rttMinMicros?.toLong(),
)
