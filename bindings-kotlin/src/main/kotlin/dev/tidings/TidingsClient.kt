package dev.tidings

import dev.tidings.ffi.TidingsClient as FfiClient
import dev.tidings.ffi.TidingsException as FfiException
import dev.tidings.ffi.TokenProvider
import dev.tidings.ffi.TokenProviderException
import dev.tidings.ffi.ingestPushWithStore as ffiIngestPushWithStore
import dev.tidings.ffi.tidingsVersion
import java.util.concurrent.atomic.AtomicReference
import kotlin.coroutines.cancellation.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.flow
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/**
 * A Tidings client: one WebSocket to the server with reconnection, replay, dedup, digests and acks, all done by
 * the Rust core. This class only adapts it to coroutines and flows.
 *
 * ```
 * val client = TidingsClient(TidingsConfig(url).apply { storePath = … }) { forceRefresh ->
 *     myBackend.tidingsToken(forceRefresh)
 * }
 * scope.launch { client.events.collect { event -> … } }
 * client.connect()
 * ```
 *
 * Creating a client starts nothing; [connect] does. A client runs, and keeps its connection, until [close]: an
 * unclosed client is not reclaimed by garbage collection. It is final once closed; create a new one to connect
 * again.
 *
 * Threading: every method may be called from any thread. The non-suspending ones return at once (they hand the
 * request to the client's own threads) except [ingestPush], which writes the store file before it returns, and
 * the constructor, which reads it. [connect] and [close] suspend without blocking a thread.
 *
 * @param tokenProvider returns a Tidings token for the signed-in user, from your backend. Called for the first
 *   connection, after the server rejected a token (`forceRefresh = true`: do not return a cached one), and
 *   shortly before a known expiry; never twice at once. Throw [TokenUnavailableException] with
 *   `permanent = true` when the user is signed out; any other exception is treated as transient (the client
 *   backs off and asks again). It runs on a background thread; switch dispatchers inside if you need to.
 * @throws TidingsException.InvalidArgument if the configuration is invalid (the URL is not `ws://` or `wss://`,
 *   the store directory does not exist, a negative duration).
 */
class TidingsClient(
    config: TidingsConfig,
    tokenProvider: suspend (forceRefresh: Boolean) -> String,
) {
    private val closing = AtomicReference<CompletableDeferred<Unit>?>(null)
    private val native: FfiClient = translate { FfiClient(config.toFfi(), TokenAdapter(tokenProvider)) }

    /**
     * The connection state now, as the core has it: `Idle → Connecting → Connected → Reconnecting → …`,
     * `Suspended` (background, offline), `Closed`, `Failed`. Once [connect] returns it shows `Connected` (or what
     * followed it).
     */
    val state: ConnectionState
        get() = call { it.state().toPublic() }

    /**
     * The connection state now and then each time it changes (the latest state each time the collector is ready;
     * a collector that is slow skips states in between — the full log is in [events]). For a status line:
     * `client.stateChanges.collectAsState(client.state)`. Completes after `Closed`.
     */
    val stateChanges: Flow<ConnectionState> = flow {
        var current = native.state()
        emit(current.toPublic())
        while (current !is dev.tidings.ffi.ConnectionState.Closed) {
            current = native.nextState(current)
            emit(current.toPublic())
        }
    }

    /**
     * Everything the client emits, in order: notifications, digests, state changes, continuity, refused
     * subscriptions, push registrations.
     *
     * The same on every platform (the queue is the core's): events wait in one queue of at most
     * [TidingsConfig.eventCapacity] (default 1 024) until taken, from the moment the client is created — collecting
     * late (e.g. with `repeatOnLifecycle`) loses nothing. Each event is taken once: collect this flow in one place
     * (or `shareIn` it); two collectors split the events between them. While the queue is full the client stops
     * reading from the server: nothing is dropped, the server holds what follows, and if the pause outlasts its
     * patience it closes the connection and the client resumes from its cursor once the app takes events again.
     * The flow completes once [close] has delivered the last event.
     */
    val events: Flow<TidingsEvent> = flow {
        while (true) {
            val event = native.nextEvent() ?: break
            emit(event.toPublic())
        }
    }

    /** Follows the core's inbox counts for [inboxCounts]; cancelled by [close]. */
    private val countsScope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
    private val counts = MutableStateFlow(call { it.inboxCounts()?.toPublic() })

    init {
        countsScope.launch {
            var current = native.inboxCounts()
            while (true) {
                current = native.nextInboxCounts(current)
                counts.value = current?.toPublic()
            }
        }
    }

    /**
     * The server's inbox counts (the badge is `unread`), `null` until the first report: kept in the store, so known
     * before the connection is up, and updated whenever any device of the user changes the inbox — only ever to a
     * newer version (the core applies counts only when newer: they never multiply or go negative). In Compose:
     * `client.inboxCounts.collectAsState()`.
     */
    val inboxCounts: StateFlow<InboxCounts?> = counts.asStateFlow()

    /**
     * The inbox view: the items loaded with [inboxLoadMore] and every item added since, newest first, in their
     * current state. [TidingsEvent.InboxChanged] says when it changed.
     */
    val inboxItems: List<InboxItem>
        get() = call { c -> c.inboxItems().map { it.toPublic() } }

    /** Whether [inboxItems] reaches the oldest item. */
    val inboxComplete: Boolean
        get() = call { it.inboxComplete() }

    /** Inbox changes not yet answered by the server (made offline; sent on reconnect). */
    val inboxPendingChanges: Int
        get() = call { it.inboxPendingChanges().toInt() }

    /** Loads the next (older) page into [inboxItems]. */
    suspend fun inboxLoadMore(): InboxPage = suspendCall { it.inboxLoadMore().toPublic() }

    /** A page of the inbox with filters (not added to [inboxItems]). */
    suspend fun inboxList(query: InboxQuery = InboxQuery()): InboxPage =
        suspendCall { it.inboxList(query.toFfi()).toPublic() }

    /**
     * Applies [action] to the items [ids]. While offline the change is queued (in the store) and sent on
     * reconnect, applied once by the server; returns the counts after it.
     */
    suspend fun inboxMark(action: InboxAction, ids: List<String>): InboxChangeResult =
        suspendCall { it.inboxMark(action.toFfi(), ids).toPublic() }

    /** Marks every item up to the newest this client knows read; items that reach the server meanwhile stay unread. */
    suspend fun inboxMarkAllRead(): InboxChangeResult = suspendCall { it.inboxMarkAllRead().toPublic() }

    /** Marks every item up to the newest this client knows seen. */
    suspend fun inboxMarkAllSeen(): InboxChangeResult = suspendCall { it.inboxMarkAllSeen().toPublic() }

    /**
     * A page of [stream]'s stored history after ([afterEpoch], [afterOffset]) — after a gap, the cursor the stream
     * had; both `null`: from the oldest stored — at most [limit] (1–1,000, default 100) notifications.
     */
    suspend fun history(stream: String, afterEpoch: String? = null, afterOffset: Long? = null, limit: Int? = null): HistoryPage {
        if (afterOffset != null && afterOffset < 0) throw TidingsException.InvalidArgument("afterOffset must not be negative")
        if (limit != null && limit < 0) throw TidingsException.InvalidArgument("limit must not be negative")
        return suspendCall { it.history(stream, afterEpoch, afterOffset?.toULong(), limit?.toUInt()).toPublic() }
    }

    /** The device id this installation authenticates with (generated on first use and kept in the store). */
    val deviceId: String
        get() = call { it.deviceId() }

    /**
     * Connects, and returns once connected; [state] then agrees.
     *
     * While the network is down or the server unreachable it keeps waiting; the client keeps (re)connecting in the
     * background whatever happens to this call, so cancelling it (a timeout, a closed screen) stops only the
     * waiting.
     *
     * @throws TidingsException.ConnectionFailed if the client stopped for good (the server rejected a freshly
     *   fetched token, the token provider failed permanently, …).
     * @throws TidingsException.Closed if the client is closed meanwhile.
     */
    suspend fun connect() {
        try {
            native.connect()
        } catch (e: FfiException) {
            throw e.toPublic()
        }
    }

    /** Subscribes to a stream (`topic:<name>`), resumed from its cursor on every reconnect. */
    fun subscribe(stream: String) = call { it.subscribe(stream) }

    /** Unsubscribes from a stream and forgets its cursor. */
    fun unsubscribe(stream: String) = call { it.unsubscribe(stream) }

    /** Acks notifications explicitly. Not needed: delivered notifications are acked automatically. */
    fun ack(ids: List<String>) = call { it.ack(ids) }

    /**
     * Registers this device's push address with the server: sent now if connected, and again after every
     * reconnect (the server keeps the newest per device). Kept in the store. On Android: call it from
     * `FirebaseMessagingService.onNewToken` with [PushPlatform.FCM].
     */
    fun registerPushToken(platform: PushPlatform, token: String) =
        call { it.registerPushToken(platform.toFfi(), token) }

    /**
     * Passes a push payload (any form of protocol §11.1) through the dedup window shared with the socket:
     * [PushOutcome.Show] the first time a notification id is seen on any path, [PushOutcome.Duplicate] after,
     * [PushOutcome.Summary] for a digest or quiet-hours summary. A push too large to carry its notification is
     * fetched from the server with the user's token before this returns ([PushOutcome.ShowTitle] when that
     * failed). What is shown is acked. Writes the store before returning.
     *
     * @param payload the payload as JSON text: an object carrying the envelope under `tidings` (as an object or as
     *   a JSON string), `tidings_fetch` or `tidings_summary`.
     * @throws TidingsException.InvalidPayload if it carries no valid Tidings notification.
     */
    suspend fun ingestPush(payload: String): PushOutcome = call { it.ingestPush(payload).toPublic() }

    /** [ingestPush] for an FCM data message: pass `RemoteMessage.data` as it is. */
    suspend fun ingestPush(data: Map<String, String>): PushOutcome = ingestPush(pushPayloadJson(data))

    /** The user's preferences (protocol §9.5), read with the user's token. */
    suspend fun preferences(): Preferences = call { it.preferences().toPublic() }

    /** Replaces every preference rule of the user; returns the result. */
    suspend fun setPreferences(rules: List<PreferenceRule>): Preferences =
        call { it.setPreferences(rules.map { r -> r.toFfi() }).toPublic() }

    /** Adds [rules], each replacing the user's rule with the same selector and channel; returns the result. */
    suspend fun updatePreferences(rules: List<PreferenceRule>): Preferences =
        call { it.updatePreferences(rules.map { r -> r.toFfi() }).toPublic() }

    /** The user's quiet hours. */
    suspend fun quietHours(): QuietHoursSettings = call { it.quietHours().toPublic() }

    /** Sets (or with null removes) the user's quiet hours; returns the result. */
    suspend fun setQuietHours(quietHours: QuietHours?): QuietHoursSettings =
        call { it.setQuietHours(quietHours?.toFfi()).toPublic() }

    /**
     * The app went to the background: the socket closes after [TidingsConfig.backgroundGrace]. The Android
     * helper `dev.tidings.android.TidingsLifecycle` calls this for you. Ignored once closed.
     */
    fun onBackground() = lifecycleCall { it.appDidEnterBackground() }

    /**
     * The app came to the foreground: reconnects at once and resumes every stream from its cursor (and picks up
     * what a push handler recorded in the store). Ignored once closed.
     */
    fun onForeground() = lifecycleCall { it.appWillEnterForeground() }

    /**
     * The platform reports a network change: [NetworkStatus.AVAILABLE] and [NetworkStatus.CHANGED] act at once
     * (reconnect / probe the link), [NetworkStatus.UNAVAILABLE] suspends until the network is back. Ignored once
     * closed.
     */
    fun onNetworkChanged(status: NetworkStatus) = lifecycleCall { it.networkChanged(status.toFfi()) }

    /** Counters, for diagnostics and metrics. */
    fun stats(): ClientStats = call { it.stats().toPublic() }

    /**
     * Closes the connection and saves the state. [events] delivers what is still queued (the last is the `Closed`
     * state) and completes; the calls that change what it does (subscribe, ingestPush, …) then throw
     * [TidingsException.Closed]. The native client is released
     * when this object is garbage-collected. Calling it again, or concurrently, waits for the same
     * close. Completes even if the calling coroutine is cancelled meanwhile.
     */
    suspend fun close() {
        val mine = CompletableDeferred<Unit>()
        if (!closing.compareAndSet(null, mine)) {
            closing.get()!!.await()
            return
        }
        withContext(NonCancellable) {
            try {
                native.shutdown()
            } finally {
                countsScope.cancel()
                mine.complete(Unit)
            }
        }
    }

    private inline fun <T> call(block: (FfiClient) -> T): T = try {
        block(native)
    } catch (e: FfiException) {
        throw e.toPublic()
    }

    private suspend inline fun <T> suspendCall(crossinline block: suspend (FfiClient) -> T): T = try {
        block(native)
    } catch (e: FfiException) {
        throw e.toPublic()
    }

    /** Lifecycle and network reports after [close] are moot: the core ignores them. */
    private inline fun lifecycleCall(block: (FfiClient) -> Unit) = block(native)

    companion object {
        /** The version of the Tidings core this library wraps. */
        @JvmStatic
        val version: String
            get() = tidingsVersion()

        /**
         * The push path of a handler running where no [TidingsClient] exists (a process started only to handle
         * the push): passes [payload] through the dedup window kept in the store file at [storePath], the same
         * file as [TidingsConfig.storePath], and saves it before returning. With [server], a push too large to
         * carry its notification is fetched from the server (else [PushOutcome.ShowTitle]) and what is shown is
         * acked there for this device. Opens no WebSocket.
         *
         * Use [TidingsClient.ingestPush] instead when a client is running in this process: two writers of one
         * store file lose each other's updates.
         */
        @JvmStatic
        suspend fun ingestPushWithStore(storePath: String, payload: String, server: PushServer? = null): PushOutcome =
            translate { ffiIngestPushWithStore(storePath, payload, server?.toFfi()).toPublic() }

        /** [ingestPushWithStore] for an FCM data message: pass `RemoteMessage.data` as it is. */
        @JvmStatic
        suspend fun ingestPushWithStore(
            storePath: String,
            data: Map<String, String>,
            server: PushServer? = null,
        ): PushOutcome = ingestPushWithStore(storePath, pushPayloadJson(data), server)
    }
}

private inline fun <T> translate(block: () -> T): T = try {
    block()
} catch (e: FfiException) {
    throw e.toPublic()
}

/** Adapts the app's token lambda to the core's token provider, mapping failures to its error kinds. */
private class TokenAdapter(private val provider: suspend (forceRefresh: Boolean) -> String) : TokenProvider {
    override suspend fun fetchToken(forceRefresh: Boolean): String = try {
        provider(forceRefresh)
    } catch (e: CancellationException) {
        throw e
    } catch (e: TokenProviderException) {
        throw e
    } catch (e: TokenUnavailableException) {
        val detail = e.message ?: e.toString()
        throw if (e.permanent) TokenProviderException.Fatal(detail) else TokenProviderException.Transient(detail)
    } catch (e: Exception) {
        throw TokenProviderException.Transient(e.toString())
    }
}
