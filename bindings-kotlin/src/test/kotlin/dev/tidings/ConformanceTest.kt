package dev.tidings

import dev.tidings.testing.Json
import dev.tidings.testing.Recorder
import dev.tidings.testing.Test
import dev.tidings.testing.TestServer
import dev.tidings.testing.WAIT_MS
import dev.tidings.testing.array
import dev.tidings.testing.long
import dev.tidings.testing.longOrNull
import dev.tidings.testing.obj
import dev.tidings.testing.str
import dev.tidings.testing.strOrNull
import dev.tidings.testing.strings
import java.io.File
import java.util.concurrent.atomic.AtomicInteger
import kotlin.test.assertEquals
import kotlin.test.assertIs
import kotlin.test.assertTrue
import kotlin.test.fail
import kotlin.time.Duration.Companion.milliseconds
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Deferred
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull

/**
 * The conformance scenarios (`tests/conformance/scenarios.json`, step vocabulary in its README) run through the
 * public Kotlin API against the reference server from the environment. Same interpretation as the Rust runner
 * (`tests/tests/suite/conformance.rs`). One test per scenario; [every_scenario_in_the_file_has_a_test] keeps the list
 * in step with the file.
 */
class ConformanceTest {
    @Test fun live_delivery() = runScenario("live_delivery")

    @Test fun reconnect_with_replay() = runScenario("reconnect_with_replay")

    @Test fun gap() = runScenario("gap")

    @Test fun dedup_push_then_socket() = runScenario("dedup_push_then_socket")

    @Test fun dedup_socket_then_push() = runScenario("dedup_socket_then_push")

    @Test fun batching_digest() = runScenario("batching_digest")

    @Test fun client_stats() = runScenario("client_stats")

    @Test fun auth_failure_without_storm() = runScenario("auth_failure_without_storm")

    @Test fun background_foreground_resume() = runScenario("background_foreground_resume")

    @Test fun slow_app_backpressure() = runScenario("slow_app_backpressure")

    @Test fun gap_refetch_from_history() = runScenario("gap_refetch_from_history")

    @Test fun inbox_two_devices() = runScenario("inbox_two_devices")

    @Test fun inbox_offline_change_converges() = runScenario("inbox_offline_change_converges")

    @Test fun inbox_mark_all_leaves_new_items_unread() = runScenario("inbox_mark_all_leaves_new_items_unread")

    @Test fun inbox_counts_survive_a_server_restart() = runScenario("inbox_counts_survive_a_server_restart")
    @Test fun real_push_then_socket_shown_once() = runScenario("real_push_then_socket_shown_once")

    @Test fun lightweight_push_is_fetched() = runScenario("lightweight_push_is_fetched")

    @Test fun digest_push_summary() = runScenario("digest_push_summary")

    @Test fun user_settings() = runScenario("user_settings")

    @Test fun server_unsubscribe() = runScenario("server_unsubscribe")

    @Test
    fun every_scenario_in_the_file_has_a_test() {
        val inFile = scenarios().map { it.str("name") }.sorted()
        val here = ConformanceTest::class.java.declaredMethods
            .filter { it.isAnnotationPresent(Test::class.java) && it.name != "every_scenario_in_the_file_has_a_test" }
            .map { it.name }
            .sorted()
        assertEquals(inFile, here, "scenarios in scenarios.json vs test methods of ConformanceTest")
    }

    private fun runScenario(name: String) = runBlocking<Unit> {
        val scenario = scenarios().firstOrNull { it["name"] == name } ?: fail("scenario $name is not in scenarios.json")
        val runner = ScenarioRunner(TestServer.get(), name, this)
        try {
            withTimeout(300_000) {
                scenario["steps"].array().map { it.obj() }.forEachIndexed { i, step ->
                    println("[$name] step $i: ${Json.write(step)}")
                    try {
                        runner.step(step)
                    } catch (e: AssertionError) {
                        throw AssertionError("[$name] step $i ${Json.write(step)}: ${e.message}", e)
                    }
                }
            }
        } finally {
            withContext(NonCancellable) { runner.closeAll() }
        }
    }

    companion object {
        private val file: Map<String, Any?> by lazy {
            val path = System.getProperty("tidings.scenarios") ?: "../tests/conformance/scenarios.json"
            Json.parse(File(path).readText()).obj()
        }

        fun scenarios(): List<Map<String, Any?>> = file["scenarios"].array().map { it.obj() }
    }
}

/** Runs one scenario's steps; names are prefixed so that scenarios sharing the server cannot see each other. */
private class ScenarioRunner(
    private val server: TestServer,
    scenario: String,
    private val scope: CoroutineScope,
) {
    private val prefix = "k${ProcessHandle.current().pid()}x${RUN.incrementAndGet()}"
    private val clients = mutableMapOf<String, RunnerClient>()
    private val deliveries = mutableMapOf<String, Map<String, Any?>>()

    /** Each client's user, and its FCM registration token (`register_push`). */
    private val users = mutableMapOf<String, String>()
    private val pushTokens = mutableMapOf<String, String>()

    /** The push the server sent for (client, id): the FCM `data` map as JSON (`wait_push`). */
    private val sent = mutableMapOf<Pair<String, String>, String>()

    init {
        println("[$scenario] prefix $prefix")
    }

    private class RunnerClient(
        val recorder: Recorder,
        val tokenFetches: AtomicInteger,
        /** The outcome of the `connect()` call made by the `connect` step: null once it returned normally. */
        val connectCall: Deferred<Throwable?>,
    )

    private fun name(s: String) = "$prefix-$s"

    private fun stream(s: String): String {
        val (kind, rest) = s.split(':', limit = 2).also { check(it.size == 2) { "stream $s has no kind" } }
        return "$kind:${name(rest)}"
    }

    private fun names(step: Map<String, Any?>, key: String) = step.strings(key).map(::name)

    /** `ids`, or `count` ids `<id_prefix><i>`. */
    private fun ids(step: Map<String, Any?>): List<String> =
        step.longOrNull("count")?.let { n -> (0 until n).map { name("${step.str("id_prefix")}$it") } } ?: names(step, "ids")

    private fun client(step: Map<String, Any?>): RunnerClient {
        val key = step.str("client")
        return clients[key] ?: fail("no client $key")
    }

    suspend fun step(step: Map<String, Any?>) {
        when (val op = step.str("op")) {
            "connect" -> connect(step)
            "wait_state", "assert_state" -> {
                val want = step.str("state")
                val reason = step.strOrNull("reason")
                val matches = { s: ConnectionState ->
                    stateName(s) == want && (reason == null || (s is ConnectionState.Failed && s.reason.name.lowercase() == reason))
                }
                val c = client(step)
                if (op == "wait_state") {
                    c.recorder.waitState(want + (reason?.let { "($it)" } ?: ""), matches)
                    if (want == "failed") {
                        // The pending connect() call surfaces the same failure as an exception.
                        val thrown = withTimeoutOrNull(WAIT_MS) { c.connectCall.await() }
                        val failed = assertIs<TidingsException.ConnectionFailed>(thrown, "what connect() threw")
                        if (reason != null) assertEquals(reason, failed.reason.name.lowercase(), "connect() failure reason")
                    }
                } else {
                    val s = c.recorder.client.state
                    assertTrue(matches(s), "state is $s, expected $want${reason?.let { "($it)" } ?: ""}")
                }
            }
            "subscribe" -> client(step).recorder.client.subscribe(stream(step.str("stream")))
            "wait_continuity" -> {
                val stream = stream(step.str("stream"))
                val kind = step.str("kind")
                val replayed = step.longOrNull("replayed")
                val reason = step.strOrNull("reason")
                val missed = step.longOrNull("missed")
                client(step).recorder.until("continuity ${Json.write(step)}") { log ->
                    log.any { e ->
                        e is TidingsEvent.Continuity && e.stream == stream && when (val c = e.continuity) {
                            is Continuity.Fresh -> kind == "fresh"
                            is Continuity.Resumed -> kind == "resumed" && (replayed == null || c.replayed == replayed)
                            is Continuity.Gap -> kind == "gap" &&
                                (reason == null || c.reason.name.lowercase() == reason) &&
                                (missed == null || c.missed == missed) &&
                                (replayed == null || c.replayed == replayed)
                        }
                    }
                }
            }
            "publish" -> publish(step)
            "wait_notifications" -> {
                val ids = ids(step)
                val r = client(step).recorder
                r.until("ids $ids") { ids.all { id -> id in r.deliveredIds() } }
            }
            "assert_order" -> {
                val ids = ids(step)
                val delivered = client(step).recorder.deliveredIds()
                val positions = ids.map { id -> delivered.indexOf(id).also { if (it < 0) fail("$id was not delivered; delivered: $delivered") } }
                assertEquals(positions.sorted(), positions, "order of $ids in $delivered")
                assertEquals(positions.toSet().size, positions.size, "ids at distinct positions")
            }
            "assert_notification" -> {
                val id = name(step.str("id"))
                val r = client(step).recorder
                val n = r.notifications().firstOrNull { it.id == id } ?: fail("$id was not delivered as a notification; events:\n${r.describeLog()}")
                step.strOrNull("stream")?.let { assertEquals(stream(it), n.stream, "stream of $id") }
                step.strOrNull("priority")?.let { assertEquals(it, n.priority.name.lowercase(), "priority of $id") }
                step.longOrNull("offset")?.let { assertEquals(it, n.offset, "offset of $id") }
            }
            "assert_delivered_exactly" -> {
                val want = ids(step).sorted()
                val got = client(step).recorder.deliveredIds().sorted()
                assertEquals(want, got, "the delivered ids (each exactly once)")
            }
            "wait_digest" -> {
                val group = step.str("group")
                val count = step.long("count")
                val first = name(step.str("first"))
                val last = name(step.str("last"))
                client(step).recorder.until("digest ${Json.write(step)}") { log ->
                    log.any { e ->
                        e is TidingsEvent.Digest && e.digest.group == group && e.digest.count.toLong() == count &&
                            e.digest.first.id == first && e.digest.last.id == last
                    }
                }
            }
            "assert_no_digest" -> {
                val r = client(step).recorder
                assertTrue(r.log.none { it is TidingsEvent.Digest }, "no digest yet; events:\n${r.describeLog()}")
            }
            "ingest_push" -> {
                val id = name(step.str("id"))
                val d = deliveries[id] ?: fail("$id was not published")
                val envelope = mapOf(
                    "id" to id, "stream" to d["stream"], "offset" to d["offset"], "epoch" to d["epoch"],
                    "type" to "conformance", "priority" to "critical", "persistence" to "bufferable",
                    "title" to "title $id", "created_at" to 1L,
                )
                // As an FCM data message delivers it: the envelope as JSON text under "tidings".
                val outcome = client(step).recorder.client.ingestPush(mapOf("tidings" to Json.write(envelope)))
                val got = when (outcome) {
                    is PushOutcome.Show -> "show".also { assertEquals(id, outcome.notification.id, "shown notification id") }
                    is PushOutcome.Duplicate -> "duplicate".also { assertEquals(id, outcome.id, "duplicate id") }
                    else -> fail("a full payload gives show or duplicate, got $outcome")
                }
                assertEquals(step.str("expect"), got, "push outcome for $id")
            }
            "register_push" -> {
                // The Kotlin runner registers an FCM registration token, as an Android app does.
                val key = step.str("client")
                val token = "fcm-${name(key)}"
                client(step).recorder.client.registerPushToken(PushPlatform.FCM, token)
                val user = users[key] ?: fail("no client $key")
                until("the push address of $key stored") {
                    server.get("/v1/users/$user/devices")["devices"].array().any { d ->
                        (d.obj()["push"] as? Map<*, *>)?.get("token") == token
                    }
                }
                pushTokens[key] = token
            }
            "wait_offline" -> {
                val user = name(step.str("user"))
                until("$user offline") { server.get("/v1/presence/$user")["devices"].array().isEmpty() }
            }
            "wait_push" -> {
                val key = step.str("client")
                val id = name(step.str("id"))
                val token = pushTokens[key] ?: fail("register_push first")
                var payload = ""
                until("a push of $id to $key's device") {
                    server.pushes().firstOrNull { p ->
                        p["target"] == token && id in pushIds(p.str("payload")).first
                    }?.let { payload = it.str("payload") } != null
                }
                step.strOrNull("form")?.let { assertEquals(it, pushIds(payload).second, "the push's form: $payload") }
                sent[key to id] = payload
            }
            "ingest_sent_push" -> {
                val from = step.strOrNull("from") ?: step.str("client")
                val id = name(step.str("id"))
                val payload = sent[from to id] ?: fail("wait_push first")
                // As FirebaseMessagingService gets it: RemoteMessage.data, string keys and values.
                val data = Json.parse(payload).obj().mapValues { (_, v) -> v as String }
                val outcome = client(step).recorder.client.ingestPush(data)
                when (val want = step.str("expect")) {
                    "show" -> {
                        val shown = assertIs<PushOutcome.Show>(outcome, "push outcome")
                        assertEquals(id, shown.notification.id)
                        step.longOrNull("body_bytes")?.let {
                            assertEquals(it.toInt(), shown.notification.body?.toByteArray()?.size, "the whole notification's body")
                        }
                    }
                    "duplicate" -> assertEquals(PushOutcome.Duplicate(id), outcome)
                    "summary" -> {
                        val summary = assertIs<PushOutcome.Summary>(outcome, "push outcome").summary
                        assertEquals(step.long("count"), summary.count, "summary count")
                        assertEquals(names(step, "ids"), summary.ids, "summary ids")
                    }
                    "title" -> assertEquals(id, assertIs<PushOutcome.ShowTitle>(outcome, "push outcome").id)
                    else -> fail("unknown expect $want")
                }
            }
            "update_preferences" -> client(step).recorder.client.updatePreferences(rules(step))
            "set_quiet_hours" -> {
                val quiet = QuietHours(step.str("time_zone"), ranges(step))
                val thrown = runCatching { client(step).recorder.client.setQuietHours(quiet) }.exceptionOrNull()
                when (step.strOrNull("expect")) {
                    null -> if (thrown != null) throw thrown
                    "refused" -> assertEquals(400, assertIs<TidingsException.Refused>(thrown, "what setQuietHours threw").status)
                    else -> fail("unknown expect ${step.strOrNull("expect")}")
                }
            }
            "assert_settings" -> {
                val c = client(step).recorder.client
                val prefs = c.preferences()
                val quiet = c.quietHours()
                assertEquals(rules(step).toSet(), prefs.rules.toSet(), "the rules")
                assertEquals(rules(step).size, prefs.rules.size, "the number of rules")
                assertEquals(QuietHours(step.str("time_zone"), ranges(step)), quiet.quietHours, "the quiet hours")
                step.longOrNull("version")?.let { assertEquals(it to it, prefs.version to quiet.version, "the settings' versions") }
            }
            "set_network" -> {
                val online = step["online"] as Boolean
                client(step).recorder.client.onNetworkChanged(if (online) NetworkStatus.AVAILABLE else NetworkStatus.UNAVAILABLE)
            }
            "background" -> client(step).recorder.client.onBackground()
            "foreground" -> client(step).recorder.client.onForeground()
            "drop_connections" -> server.dropAll()
            "server_unsubscribe" -> server.unsubscribe(name(step.str("user")), stream(step.str("stream")))
            "wait_subscription_failed" -> {
                val stream = stream(step.str("stream"))
                val code = step.str("code")
                client(step).recorder.until("subscription of $stream failed with $code") { log ->
                    log.any { e -> e is TidingsEvent.SubscriptionFailed && e.stream == stream && e.code == code }
                }
            }
            "settle" -> delay(step.long("ms"))
            "assert_connection_attempts" ->
                assertEquals(step.long("count"), client(step).recorder.client.stats().connectionAttempts, "connection attempts")
            "assert_stats" -> {
                val s = client(step).recorder.client.stats()
                val stats = mutableMapOf(
                    "duplicates_dropped" to s.duplicatesDropped, "duplicates_socket" to s.duplicatesSocket,
                    "duplicates_replay" to s.duplicatesReplay, "duplicates_push" to s.duplicatesPush,
                    "digests" to s.digests, "digested" to s.digested, "gaps" to s.gaps, "fresh" to s.fresh,
                    "resumed" to s.resumed, "replays" to s.replays, "replayed" to s.replayed,
                    "replay_max" to s.replayMax, "rtt_samples" to s.rttSamples,
                )
                for ((reason, n) in s.reconnects) stats["reconnects.$reason"] = n
                @Suppress("UNCHECKED_CAST")
                for ((name, want) in (step["equals"] as Map<String, Any?>?).orEmpty()) {
                    assertEquals(want as Long, stats[name] ?: error("no stat $name"), "stat $name ($s)")
                }
                @Suppress("UNCHECKED_CAST")
                for ((name, least) in (step["at_least"] as Map<String, Any?>?).orEmpty()) {
                    val got = stats[name] ?: error("no stat $name")
                    assertTrue(got >= least as Long, "stat $name is $got, expected at least $least ($s)")
                }
            }
            "assert_token_fetches" ->
                assertEquals(step.long("count"), client(step).tokenFetches.get().toLong(), "token provider calls")
            "pause_events" -> client(step).recorder.paused.value = true
            "resume_events" -> client(step).recorder.paused.value = false
            "assert_stopped_reading" -> {
                val published = step.long("published")
                val received = client(step).recorder.client.stats().notificationsReceived
                assertTrue(received < published, "the SDK kept reading: $received of $published received while paused")
            }
            "close" -> {
                val key = step.str("client")
                val c = clients.remove(key) ?: fail("no client $key")
                c.recorder.close()
            }
            "wait_inbox", "assert_inbox" -> {
                val unread = step.longOrNull("unread")
                val unseen = step.longOrNull("unseen")
                val total = step.longOrNull("total")
                val matches = { c: InboxCounts? ->
                    c != null && (unread == null || c.unread == unread) && (unseen == null || c.unseen == unseen) &&
                        (total == null || c.total == total)
                }
                // Through the StateFlow an app's UI collects.
                val flow = client(step).recorder.client.inboxCounts
                if (op == "wait_inbox") {
                    withTimeoutOrNull(WAIT_MS) { flow.first(matches) }
                        ?: fail("timed out waiting for inbox counts ${Json.write(step)}; they are ${flow.value}")
                } else {
                    assertTrue(matches(flow.value), "inbox counts ${flow.value}, expected ${Json.write(step)}")
                }
            }
            "inbox_mark", "inbox_mark_all" -> {
                val client = client(step).recorder.client
                val action = step.str("action")
                val ids = ids(step)
                val request: suspend () -> InboxChangeResult = if (op == "inbox_mark_all") {
                    when (action) {
                        "read" -> ({ client.inboxMarkAllRead() })
                        "seen" -> ({ client.inboxMarkAllSeen() })
                        else -> fail("mark all $action?")
                    }
                } else {
                    val a = InboxAction.valueOf(action.uppercase())
                    ({ client.inboxMark(a, ids) })
                }
                if (step["wait"] as Boolean? ?: true) {
                    val result = request()
                    assertTrue(!result.duplicate, "a duplicate: $result")
                } else {
                    // Started without waiting for the answer (offline, the SDK queues the change).
                    val before = client.inboxPendingChanges
                    scope.launch { runCatching { request() } }
                    withTimeoutOrNull(WAIT_MS) { while (client.inboxPendingChanges <= before) delay(5) }
                        ?: fail("the change was not queued")
                }
            }
            "history" -> {
                // The README's gap → refetch path: page after the last notification handled.
                val r = client(step).recorder
                val stream = stream(step.str("stream"))
                val afterId = name(step.str("after_id"))
                val limit = step.longOrNull("limit")?.toInt()
                val last = r.notifications().firstOrNull { it.id == afterId } ?: fail("$afterId was not delivered")
                var epoch: String? = last.epoch
                var after: Long? = last.offset
                val got = mutableListOf<String>()
                while (after != null) {
                    val page = r.client.history(stream, afterEpoch = epoch, afterOffset = after, limit = limit)
                    if (limit != null) assertTrue(page.items.size <= limit, "a page larger than the limit")
                    got += page.items.map { it.id }
                    epoch = page.epoch
                    after = page.next
                }
                assertEquals(ids(step), got, "history after $afterId")
            }
            "restart_server" -> server.restart()
            else -> fail("unknown step op \"$op\" (add it to every runner, see tests/conformance/README.md)")
        }
    }

    private suspend fun connect(step: Map<String, Any?>) {
        val user = name(step.str("user"))
        val topics = names(step, "topics")
        val token = when (val kind = step.strOrNull("token") ?: "valid") {
            "valid" -> server.token(user, topics)
            "invalid" -> "not-a-jwt"
            else -> fail("unknown token kind $kind")
        }
        val fetches = AtomicInteger()
        val config = TidingsConfig(server.wsUrl).apply {
            backoffBase = 50.milliseconds
            backoffCap = 500.milliseconds
            batchWindow = (step.longOrNull("batch_window_ms") ?: 0L).milliseconds
            step.longOrNull("background_grace_ms")?.let { backgroundGrace = it.milliseconds }
            step.longOrNull("event_capacity")?.let { eventCapacity = it.toInt() }
        }
        val client = TidingsClient(config) { _ ->
            fetches.incrementAndGet()
            token
        }
        val recorder = Recorder(client, scope)
        val connectCall = scope.async { runCatching { client.connect() }.exceptionOrNull() }
        clients[step.str("client")] = RunnerClient(recorder, fetches, connectCall)
        users[step.str("client")] = user
    }

    private suspend fun publish(step: Map<String, Any?>) {
        for (id in ids(step)) {
            val body = linkedMapOf<String, Any?>(
                "users" to names(step, "users"),
                "topics" to names(step, "topics"),
                "id" to id,
                "type" to "conformance",
                "priority" to (step.strOrNull("priority") ?: "important"),
                "title" to "title $id",
            )
            step.strOrNull("group")?.let { body["group"] = it }
            step.strOrNull("persistence")?.let { body["persistence"] = it }
            step.longOrNull("body_bytes")?.let { body["body"] = "x".repeat(it.toInt()) }
            val reply = server.publish(body)
            deliveries[id] = reply["deliveries"].array().first().obj()
        }
    }

    /** The step's preference rules (protocol §9.5). */
    private fun rules(step: Map<String, Any?>): List<PreferenceRule> = step["rules"].array().map { r ->
        val rule = r.obj()
        PreferenceRule(
            selector = rule.strOrNull("type")?.let { PreferenceSelector.Type(it) } ?: PreferenceSelector.Topic(rule.str("topic")),
            channel = if (rule.str("channel") == "socket") Channel.SOCKET else Channel.PUSH,
            enabled = rule["enabled"] as Boolean,
        )
    }

    /** The step's quiet ranges. */
    private fun ranges(step: Map<String, Any?>): List<QuietRange> =
        step["ranges"].array().map { it.obj() }.map { QuietRange(it.str("day"), it.str("start"), it.str("end")) }

    /** Polls [condition] every 20 ms until it holds; fails after [WAIT_MS]. */
    private suspend fun until(what: String, condition: suspend () -> Boolean) {
        val deadline = System.currentTimeMillis() + WAIT_MS
        while (!condition()) {
            if (System.currentTimeMillis() > deadline) fail("timed out after ${WAIT_MS / 1000} s waiting for $what")
            delay(20)
        }
    }

    /** The ids a push payload (the FCM `data` map as JSON, protocol §11.1) stands for, and its form. */
    private fun pushIds(payload: String): Pair<List<String>, String> {
        val data = Json.parse(payload).obj()
        (data["tidings"] as? String)?.let { return listOf(Json.parse(it).obj().str("id")) to "full" }
        (data["tidings_fetch"] as? String)?.let { return listOf(Json.parse(it).obj().str("id")) to "lightweight" }
        (data["tidings_summary"] as? String)?.let { return Json.parse(it).obj().strings("ids") to "summary" }
        return emptyList<String>() to "invalid"
    }

    /** Closes the clients a scenario left open (after a failure, too). */
    suspend fun closeAll() {
        for (c in clients.values) {
            runCatching { c.recorder.client.close() }
            c.connectCall.cancel()
        }
        clients.clear()
    }

    companion object {
        private val RUN = AtomicInteger()

        fun stateName(s: ConnectionState): String = when (s) {
            is ConnectionState.Idle -> "idle"
            is ConnectionState.Connecting -> "connecting"
            is ConnectionState.Connected -> "connected"
            is ConnectionState.Reconnecting -> "reconnecting"
            is ConnectionState.Suspended -> "suspended"
            is ConnectionState.Closed -> "closed"
            is ConnectionState.Failed -> "failed"
        }
    }
}
