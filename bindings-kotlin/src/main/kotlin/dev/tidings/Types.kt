package dev.tidings

import kotlin.time.Duration

/** Delivery tier of a notification. */
enum class Priority {
    /** Never held back. */
    CRITICAL,

    /** Never held back. */
    IMPORTANT,

    /** May be folded into a [Digest] when it has a group. */
    INFORMATIONAL,
}

/** Retention class of a notification. */
enum class Persistence {
    /** Delivered only to connections open at that moment: no offset, never replayed, never pushed. */
    EPHEMERAL,

    /** Kept in the stream's replay buffer: replayed after reconnects, pushed to offline devices. */
    BUFFERABLE,

    /** As [BUFFERABLE], and written to the server's durable store when it has one. */
    PERSISTENT,
}

/**
 * A notification, as published (protocol §3).
 *
 * @property id globally unique; one publish has one id even when it reaches several streams.
 * @property stream `user:<id>` or `topic:<name>`.
 * @property offset position in the stream; `null` for [Persistence.EPHEMERAL] notifications.
 * @property epoch the stream's history generation.
 * @property type application-defined kind, e.g. `comment.created`.
 * @property dataJson the application payload as JSON text, or `null`.
 * @property group batching key, e.g. `likes:post-981`.
 * @property createdAtMs when the server accepted it, milliseconds since the Unix epoch.
 */
data class Notification(
    val id: String,
    val stream: String,
    val offset: Long?,
    val epoch: String,
    val type: String,
    val priority: Priority,
    val persistence: Persistence,
    val title: String?,
    val body: String?,
    val dataJson: String?,
    val group: String?,
    val createdAtMs: Long,
)

/**
 * Several informational notifications of one [group] ("5 new likes"), delivered together once the batching
 * window closed or [TidingsConfig.batchMaxItems] was reached. A lone notification arrives on its own instead.
 *
 * @property ids every notification id in it, in arrival order.
 */
data class Digest(
    val group: String,
    val count: Int,
    val first: Notification,
    val last: Notification,
    val ids: List<String>,
)

/** Why the client is suspended. */
enum class SuspendReason {
    /** The app is in the background (after [TidingsConfig.backgroundGrace]). */
    BACKGROUND,

    /** The platform reported no network. */
    OFFLINE,
}

/** Why the client stopped for good. */
enum class FailureReason {
    /** The server rejected a freshly fetched token: sign the user in again. */
    UNAUTHORIZED,

    /** The token provider threw [TokenUnavailableException] with `permanent = true`. */
    TOKEN_PROVIDER,

    /** Client and server disagree about the protocol. */
    PROTOCOL,

    /** The client sent a frame larger than the server accepts (a bug: please report it). */
    FRAME_TOO_LARGE,

    /** Another connection of this device took over. */
    SESSION_REPLACED,

    /** The server refused the connection permanently. */
    REJECTED,
}

/** The connection state. */
sealed class ConnectionState {
    /** Not started: [TidingsClient.connect] was not called yet. */
    data object Idle : ConnectionState()

    /** Getting a token, opening the socket or authenticating; [attempt] counts within the current series. */
    data class Connecting(val attempt: Int) : ConnectionState()

    /** Notifications flow. */
    data object Connected : ConnectionState()

    /** Waiting [delay] before attempt number [attempt]; [reason] says why the last connection or attempt ended. */
    data class Reconnecting(val attempt: Int, val delay: Duration, val reason: String) : ConnectionState()

    /** Deliberately disconnected (background, offline); resumes by itself. */
    data class Suspended(val reason: SuspendReason) : ConnectionState()

    /** Closed by the app ([TidingsClient.close]). */
    data object Closed : ConnectionState()

    /** Stopped for good; the app must intervene (see [FailureReason]). */
    data class Failed(val reason: FailureReason, val message: String) : ConnectionState()
}

/** Why a stream could not be resumed. */
enum class GapReason {
    /** The server lost the stream's history (e.g. restarted without durable storage). */
    EPOCH_CHANGED,

    /** Notifications after the client's position were evicted from the server's replay buffer. */
    OUT_OF_BUFFER,

    /** The client's position is beyond the stream's newest notification. */
    AHEAD_OF_STREAM,
}

/** How a stream continued after (re)subscribing. */
sealed class Continuity {
    /** First subscription: delivery starts now. */
    data object Fresh : Continuity()

    /** Resumed from the cursor; the [replayed] notifications missed meanwhile were delivered first. */
    data class Resumed(val replayed: Long) : Continuity()

    /**
     * Notifications were lost ([missed] of them, when known): treat your view of the stream as stale and refetch
     * it from your API. The [replayed] notifications the server still held follow this event (each delivered once).
     */
    data class Gap(val reason: GapReason, val missed: Long?, val replayed: Long = 0) : Continuity()
}

/** A push service. */
enum class PushPlatform {
    /** APNs, production. */
    APNS,

    /** APNs, development builds. */
    APNS_SANDBOX,

    /** Firebase Cloud Messaging. */
    FCM,

    /** Web Push. */
    WEB_PUSH,
}

/** What to do with a push payload. */
sealed class PushOutcome {
    /** First sighting on any path: show it. (A push too large to carry its notification was fetched first.) */
    data class Show(val notification: Notification) : PushOutcome()

    /** Already delivered on another path (the socket, an earlier push): do not show it. */
    data class Duplicate(val id: String) : PushOutcome()

    /** A digest or quiet-hours summary with something new in it: show it; its ids count as seen from now on. */
    data class Summary(val summary: PushSummary) : PushOutcome()

    /**
     * The push was too large to carry the notification and fetching it failed: show its [title] (null: a generic
     * text). [reason] says why the fetch failed.
     */
    data class ShowTitle(val id: String, val title: String?, val reason: String) : PushOutcome()
}

/** Which summary a push is. */
enum class SummaryKind {
    /** Informational notifications of one group, collected over the server's digest window. */
    DIGEST,

    /** What was held during the user's quiet hours. */
    QUIET_HOURS,
}

/** Several notifications in one push (protocol §11.1): [count] of them, [ids] newest first (at most 20). */
data class PushSummary(
    val kind: SummaryKind,
    val group: String?,
    val count: Long,
    val ids: List<String>,
    val title: String?,
)

/**
 * Where a push handler without a running client (an FCM service started without the app) reaches the server: to
 * fetch a notification too large for its push, and to ack what it shows. [url] is the server's WebSocket URL (as
 * in [TidingsConfig]) or its HTTP base URL; [token] a token of the signed-in user.
 */
data class PushServer(val url: String, val token: String, val extraRootCertificates: List<String> = emptyList())

/** A delivery channel a preference applies to. */
enum class Channel {
    /** Live delivery over the socket (and replay). */
    SOCKET,

    /** Push notifications, digests and quiet-hours summaries. */
    PUSH,
}

/** What a preference rule is about: a notification `type` or a topic (exact, or a prefix ending in `*`). */
sealed class PreferenceSelector {
    data class Type(val pattern: String) : PreferenceSelector()

    data class Topic(val pattern: String) : PreferenceSelector()
}

/** One preference: a channel on or off for a type or topic. Deny wins; `critical` notifications ignore them. */
data class PreferenceRule(val selector: PreferenceSelector, val channel: Channel, val enabled: Boolean)

/** The user's preferences as the server holds them; [version] counts the changes, [updatedAtMs] is the last. */
data class Preferences(val rules: List<PreferenceRule>, val version: Long, val updatedAtMs: Long)

/** One weekly quiet range in the user's local time: [day] `mon` … `sun`, [start] and [end] `HH:MM`. */
data class QuietRange(val day: String, val start: String, val end: String)

/** Quiet hours: an IANA time zone (e.g. `java.time.ZoneId.systemDefault().id`) and weekly ranges. */
data class QuietHours(val timeZone: String, val ranges: List<QuietRange>)

/** The user's quiet hours as the server holds them (null: none). */
data class QuietHoursSettings(val quietHours: QuietHours?, val version: Long, val updatedAtMs: Long)

/** Network reachability, as the platform reports it. */
enum class NetworkStatus {
    /** The network came back: reconnect at once. */
    AVAILABLE,

    /** No network: stop trying until it comes back. */
    UNAVAILABLE,

    /** The network changed (Wi-Fi ↔ cellular): check the link at once. */
    CHANGED,
}

/** Counters, for diagnostics and metrics. */
data class ClientStats(
    /** Sockets opened (connection attempts). */
    val connectionAttempts: Long,
    /** Connections that authenticated. */
    val connections: Long,
    /** Calls of the token provider. */
    val tokenFetches: Long,
    /** Notifications received on sockets. */
    val notificationsReceived: Long,
    /** Notifications delivered to the app (alone or in digests). */
    val delivered: Long,
    /** Duplicates dropped, on any path. */
    val duplicatesDropped: Long,
    /** Digests delivered. */
    val digests: Long,
    /** Push payloads ingested. */
    val pushIngested: Long,
    /** Gaps reported. */
    val gaps: Long,
    /** Duplicates dropped live on the socket. */
    val duplicatesSocket: Long,
    /** Duplicates dropped in replays after a (re)subscription. */
    val duplicatesReplay: Long,
    /** Push payloads dropped as duplicates (not shown). */
    val duplicatesPush: Long,
    /** Notifications delivered inside digests. */
    val digested: Long,
    /** Subscriptions answered `fresh`. */
    val fresh: Long,
    /** Subscriptions answered `resumed`. */
    val resumed: Long,
    /** Subscriptions followed by a replay. */
    val replays: Long,
    /** Notifications replayed, in all. */
    val replayed: Long,
    /** The largest replay. */
    val replayMax: Long,
    /**
     * Reconnections by reason: `handshake_failed`, `connect_timeout`, `connection_lost`, `server_closed`,
     * `heartbeat_timeout`, `server_error`, `undecodable`, `token_refresh`.
     */
    val reconnects: Map<String, Long>,
    /** Round-trip measurements taken (`auth` → `welcome`, heartbeat echoes). */
    val rttSamples: Long,
    /** The latest round trip, in microseconds. */
    val rttLastMicros: Long?,
    /** The smoothed round trip, in microseconds. */
    val rttSmoothedMicros: Long?,
    /** The smallest round trip, in microseconds. */
    val rttMinMicros: Long?,
)
