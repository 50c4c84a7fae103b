package dev.tidings

/** Everything a [TidingsClient] emits, in order, on [TidingsClient.events]. */
sealed class TidingsEvent {
    /**
     * A notification, seen for the first time on any path (socket, replay or push: each id reaches the app
     * once). It is acked automatically.
     */
    data class Notification(val notification: dev.tidings.Notification) : TidingsEvent()

    /** Several informational notifications of one group ("5 new likes"); every id in it is acked. */
    data class Digest(val digest: dev.tidings.Digest) : TidingsEvent()

    /** The connection state changed; [TidingsClient.state] holds the latest one. */
    data class State(val state: ConnectionState) : TidingsEvent()

    /**
     * How [stream] continued after (re)subscribing: fresh, resumed with N replayed, or a gap. On
     * [dev.tidings.Continuity.Gap], notifications were lost: refetch that stream's data from your API.
     */
    data class Continuity(val stream: String, val continuity: dev.tidings.Continuity) : TidingsEvent()

    /** The server refused a subscription; [code] is `forbidden` or `bad_request`, [message] is for logs. */
    data class SubscriptionFailed(val stream: String, val code: String, val message: String) : TidingsEvent()

    /** The server stored this device's push address (after [TidingsClient.registerPushToken], and on reconnects). */
    data class PushRegistered(val platform: PushPlatform) : TidingsEvent()
}
