package dev.tidings

import dev.tidings.testing.AfterEach
import dev.tidings.testing.Json
import dev.tidings.testing.Recorder
import dev.tidings.testing.Test
import dev.tidings.testing.TestServer
import dev.tidings.testing.WAIT_MS
import java.io.File
import java.io.IOException
import java.net.ServerSocket
import java.nio.file.Files
import java.util.concurrent.atomic.AtomicInteger
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertIs
import kotlin.test.assertNotEquals
import kotlin.test.assertTrue
import kotlin.time.Duration.Companion.milliseconds
import kotlinx.coroutines.async
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull

/**
 * The wrapper itself: errors surface as [TidingsException]s with clear messages, token-provider failures map to
 * the core's kinds, the flows complete on close, push dedup works through the shared store, and the events the
 * conformance scenarios do not cover (push registration, refused subscriptions) arrive.
 */
class TidingsClientTest {
    private val tempDir: File = Files.createTempDirectory("tidings-kotlin-test").toFile()
    private val toClose = mutableListOf<TidingsClient>()

    @AfterEach
    fun cleanUp() = runBlocking<Unit> {
        toClose.forEach { it.close() }
        tempDir.deleteRecursively()
    }

    /** A URL where nothing listens (the port was free a moment ago). */
    private val deadUrl: String by lazy { "ws://127.0.0.1:${ServerSocket(0).use { it.localPort }}/v1/ws" }

    private fun client(
        url: String = deadUrl,
        tokens: suspend (Boolean) -> String = { "unused" },
        configure: TidingsConfig.() -> Unit = {},
    ): TidingsClient = TidingsClient(
        TidingsConfig(url).apply {
            backoffBase = 50.milliseconds
            backoffCap = 200.milliseconds
            configure()
        },
        tokens,
    ).also { toClose += it }

    // --- configuration and argument errors ------------------------------------------------------------------

    @Test
    fun a_non_websocket_url_is_rejected_with_a_clear_message() {
        val e = assertFailsWith<TidingsException.InvalidArgument> { client(url = "https://notify.example.com/v1/ws") }
        assertEquals("invalid argument: url must start with ws:// or wss://, got \"https://notify.example.com/v1/ws\"", e.message)
    }

    @Test
    fun a_store_in_a_missing_directory_is_rejected() {
        val path = File(tempDir, "no-such-dir/tidings.json").path
        val e = assertFailsWith<TidingsException.InvalidArgument> { client { storePath = path } }
        assertTrue(e.message!!.startsWith("invalid argument: store_path"), e.message)
        assertTrue(e.message!!.contains("the directory does not exist"), e.message)
    }

    @Test
    fun negative_durations_and_counts_are_rejected() {
        val e = assertFailsWith<TidingsException.InvalidArgument> { client { backoffCap = (-1).milliseconds } }
        assertEquals("invalid argument: backoffCap must not be negative, got -1ms", e.message)
        assertFailsWith<TidingsException.InvalidArgument> { client { batchMaxItems = -5 } }
    }

    @Test
    fun the_defaults_are_the_cores() {
        val config = TidingsConfig("wss://notify.example.com/v1/ws")
        assertEquals(null, config.storePath)
        assertEquals(500.milliseconds, config.backoffBase)
        assertEquals(20_000.milliseconds, config.backoffCap)
        assertEquals(3_000.milliseconds, config.batchWindow)
        assertEquals(30_000.milliseconds, config.backgroundGrace)
        assertEquals(10_000, config.dedupCapacity)
        assertTrue(config.subscribeUserStream)
    }

    @Test
    fun an_invalid_stream_name_throws_invalid_argument() {
        val c = client()
        val e = assertFailsWith<TidingsException.InvalidArgument> { c.subscribe("news") }
        assertEquals("invalid argument: \"news\" is not a stream name: expected user:<id> or topic:<name>", e.message)
        c.subscribe("topic:news") // a valid one is accepted before connecting
        c.unsubscribe("topic:news")
    }

    @Test
    fun an_empty_push_token_is_rejected() {
        val e = assertFailsWith<TidingsException.InvalidArgument> { client().registerPushToken(PushPlatform.FCM, "") }
        assertTrue(e.message!!.startsWith("invalid argument: push token must be 1 to 4096 bytes, got 0"), e.message)
    }

    @Test
    fun a_payload_without_a_notification_throws_invalid_payload() = runBlocking<Unit> {
        val c = client()
        val notJson = assertFailsWith<TidingsException.InvalidPayload> { c.ingestPush("[]") }
        assertTrue(notJson.message!!.startsWith("invalid push payload: "), notJson.message)
        assertTrue(notJson.message!!.contains("not a JSON object"), notJson.message)
        val fcm = assertFailsWith<TidingsException.InvalidPayload> { c.ingestPush(mapOf("tidings" to "{\"id\":\"x\"}")) }
        assertTrue(fcm.message!!.contains("invalid envelope"), fcm.message)
    }

    // --- token provider ---------------------------------------------------------------------------------------

    @Test
    fun a_permanent_token_failure_fails_connect() = runBlocking<Unit> {
        val c = client(tokens = { throw TokenUnavailableException("user signed out", permanent = true) })
        val e = assertFailsWith<TidingsException.ConnectionFailed> { withTimeout(WAIT_MS) { c.connect() } }
        assertEquals(FailureReason.TOKEN_PROVIDER, e.reason)
        assertEquals("connection failed (token_provider): user signed out", e.message)
        val state = c.state
        assertIs<ConnectionState.Failed>(state, state.toString())
        assertEquals(FailureReason.TOKEN_PROVIDER, state.reason)
        assertEquals(1L, c.stats().tokenFetches)
        assertEquals(0L, c.stats().connectionAttempts, "no socket is opened without a token")
    }

    @Test
    fun any_other_token_failure_is_transient_and_retried() = runBlocking<Unit> {
        val calls = AtomicInteger()
        val c = client(tokens = {
            calls.incrementAndGet()
            throw IOException("backend unreachable")
        })
        val recorder = Recorder(c, this)
        val connect = async { runCatching { c.connect() }.exceptionOrNull() }
        recorder.until("three token requests") { calls.get() >= 3 }
        val reconnecting = recorder.log.filterIsInstance<TidingsEvent.State>().map { it.state }
            .filterIsInstance<ConnectionState.Reconnecting>()
        assertTrue(reconnecting.isNotEmpty(), "backs off between attempts; events:\n${recorder.describeLog()}")
        assertTrue(
            reconnecting.first().reason.contains("java.io.IOException: backend unreachable"),
            "the reason names the exception: ${reconnecting.first().reason}",
        )
        assertTrue(connect.isActive, "connect() keeps waiting through transient failures")
        recorder.close()
        assertIs<TidingsException.Closed>(connect.await(), "what connect() throws when the client is closed")
    }

    @Test
    fun the_provider_is_told_to_refresh_after_a_rejected_token() = runBlocking<Unit> {
        val server = TestServer.get()
        val valid = server.token("kotlin-refresh-${System.nanoTime()}", emptyList())
        val asked = mutableListOf<Boolean>()
        val c = client(url = server.wsUrl, tokens = { forceRefresh ->
            synchronized(asked) { asked += forceRefresh }
            if (forceRefresh) valid else "stale-token"
        })
        withTimeout(WAIT_MS) { c.connect() }
        assertEquals(listOf(false, true), synchronized(asked) { asked.toList() })
        assertIs<ConnectionState.Connected>(c.state)
    }

    // --- lifecycle of the client ------------------------------------------------------------------------------

    @Test
    fun close_completes_the_flows_and_later_calls_throw_closed() = runBlocking<Unit> {
        val c = client()
        val recorder = Recorder(c, this)
        recorder.close() // asserts the events flow completed with the Closed state
        val e = assertFailsWith<TidingsException.Closed> { c.subscribe("topic:news") }
        assertEquals("the client is closed", e.message)
        assertFailsWith<TidingsException.Closed> { c.connect() }
        assertFailsWith<TidingsException.Closed> { c.ingestPush("{}") }
        assertIs<ConnectionState.Closed>(c.state, "observers keep answering")
        // Lifecycle reports after close are ignored, so an Android helper left registered cannot crash the app.
        c.onBackground()
        c.onForeground()
        c.onNetworkChanged(NetworkStatus.CHANGED)
        c.close() // idempotent
    }

    @Test
    fun close_while_connecting_makes_connect_throw_closed() = runBlocking<Unit> {
        val c = client()
        val recorder = Recorder(c, this)
        val connect = async { runCatching { c.connect() }.exceptionOrNull() }
        recorder.until("a connection attempt") { log ->
            log.any { it is TidingsEvent.State && it.state is ConnectionState.Reconnecting }
        }
        recorder.close()
        val thrown = withTimeoutOrNull(WAIT_MS) { connect.await() }
        assertIs<TidingsException.Closed>(thrown, "what connect() threw")
    }

    @Test
    fun concurrent_closes_all_wait_for_the_same_close() = runBlocking<Unit> {
        val c = client()
        val recorder = Recorder(c, this)
        val closes = (1..3).map { async { c.close() } }
        closes.forEach { it.await() }
        withTimeout(5_000) { recorder.collector.join() }
        assertIs<ConnectionState.Closed>(c.state)
    }

    @Test
    fun the_device_id_is_kept_in_the_store() = runBlocking<Unit> {
        val path = File(tempDir, "tidings.json").path
        val first = client { storePath = path }
        val id = first.deviceId
        assertTrue(id.isNotEmpty())
        first.close()
        val second = client { storePath = path }
        assertEquals(id, second.deviceId, "the same installation after a restart")
        val other = client { storePath = File(tempDir, "other.json").path }
        assertNotEquals(id, other.deviceId)
    }

    // --- push -------------------------------------------------------------------------------------------------

    private fun envelope(id: String) = Json.write(
        mapOf(
            "id" to id, "stream" to "user:alice", "offset" to 7L, "epoch" to "e1", "type" to "comment.created",
            "priority" to "important", "persistence" to "bufferable", "title" to "Bob commented",
            "data" to mapOf("post" to "p-1"), "created_at" to 1_763_808_060_123L,
        ),
    )

    @Test
    fun push_dedup_is_shared_with_a_client_through_the_store_file() = runBlocking<Unit> {
        val path = File(tempDir, "tidings.json").path
        // A push handler in a process without a client: FCM data map and raw JSON forms.
        val shown = TidingsClient.ingestPushWithStore(path, mapOf("tidings" to envelope("n-1"), "other" to "x"))
        val expected = Notification(
            id = "n-1", stream = "user:alice", offset = 7, epoch = "e1", type = "comment.created",
            priority = Priority.IMPORTANT, persistence = Persistence.BUFFERABLE, title = "Bob commented", body = null,
            dataJson = "{\"post\":\"p-1\"}", group = null, createdAtMs = 1_763_808_060_123,
        )
        assertEquals(PushOutcome.Show(expected), shown)
        assertEquals(PushOutcome.Duplicate("n-1"), TidingsClient.ingestPushWithStore(path, "{\"tidings\":${envelope("n-1")}}"))

        // The app's client, on the same store, has seen it too.
        val c = client { storePath = path }
        assertEquals(PushOutcome.Duplicate("n-1"), c.ingestPush(mapOf("tidings" to envelope("n-1"))))
        assertIs<PushOutcome.Show>(c.ingestPush(envelope("n-2")))
        assertEquals(PushOutcome.Duplicate("n-2"), c.ingestPush(envelope("n-2")))
        assertEquals(3L, c.stats().pushIngested)
    }

    // --- events the conformance scenarios do not cover ----------------------------------------------------------

    @Test
    fun push_registration_and_refused_subscriptions_arrive_as_events() = runBlocking<Unit> {
        val server = TestServer.get()
        val user = "kotlin-events-${System.nanoTime()}"
        val token = server.token(user, listOf("$user-allowed"))
        val c = client(url = server.wsUrl, tokens = { token })
        val recorder = Recorder(c, this)
        c.registerPushToken(PushPlatform.FCM, "fcm-registration-token")
        withTimeout(WAIT_MS) { c.connect() }
        assertIs<ConnectionState.Connected>(c.state)
        recorder.until("push registered") { log -> TidingsEvent.PushRegistered(PushPlatform.FCM) in log }

        c.subscribe("topic:$user-forbidden")
        recorder.until("subscription refused") { log ->
            log.any { it is TidingsEvent.SubscriptionFailed && it.stream == "topic:$user-forbidden" }
        }
        val refused = recorder.log.filterIsInstance<TidingsEvent.SubscriptionFailed>().single()
        assertEquals("forbidden", refused.code)
        assertTrue(refused.message.isNotEmpty())
        recorder.close()
    }

    @Test
    fun the_library_reports_its_version() {
        assertTrue(Regex("""\d+\.\d+\.\d+.*""").matches(TidingsClient.version), TidingsClient.version)
    }
}
