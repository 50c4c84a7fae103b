package dev.tidings

/**
 * Everything a [TidingsClient] emits, in order, on [TidingsClient.events]: one bounded queue, each event taken once
 * (see [TidingsClient.events]).
 */
sealed class TidingsEvent {
    /**
     * A notification, seen for the first time on any path (socket, replay or push: each id reaches the app
     * once). It is acked automatically.
     */
    data class Notification(val notification: dev.tidings.Notification) : TidingsEvent()

    /** Several informational notifications of one group ("5 new likes"); every id in it is acked. */
    data class Digest(val digest: dev.tidings.Digest) : TidingsEvent()

    /** The connection state changed; [TidingsClient.state] is the latest one. */
    data class State(val state: ConnectionState) : TidingsEvent()

    /**
     * How [stream] continued after (re)subscribing: fresh, resumed with N replayed, or a gap. On
     * [dev.tidings.Continuity.Gap], notifications were lost: refetch that stream's data from your API.
     */
    data class Continuity(val stream: String, val continuity: dev.tidings.Continuity) : TidingsEvent()

    /**
     * The server refused a subscription, or ended one (an operator's `POST /v1/admin/unsubscribe`); [code] is
     * `forbidden` or `bad_request`, [message] is for logs. The stream is dropped and not subscribed again on
     * reconnect.
     */
    data class SubscriptionFailed(val stream: String, val code: String, val message: String) : TidingsEvent()

    /** The server stored this device's push address (after [TidingsClient.registerPushToken], and on reconnects). */
    data class PushRegistered(val platform: PushPlatform) : TidingsEvent()

    /**
     * The server refused this device's push address. With [code] `bad_request` the address is invalid (the
     * [message] names the member): the client forgets it and does not send it again; register a valid one. Other
     * codes (`try_again_later`): it is sent again on the next connection.
     */
    data class PushRegistrationFailed(val platform: PushPlatform, val code: String, val message: String) : TidingsEvent()

    /**
     * The server's inbox counts changed (only ever to a newer version): the badge is `counts.unread`. Also held by
     * [TidingsClient.inboxCounts], a `StateFlow`.
     */
    data class InboxCountsChanged(val counts: InboxCounts) : TidingsEvent()

    /** The inbox view ([TidingsClient.inboxItems]) changed: read it again. */
    data object InboxChanged : TidingsEvent()
}
