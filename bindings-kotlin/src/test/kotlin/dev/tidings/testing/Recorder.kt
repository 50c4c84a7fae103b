package dev.tidings.testing

import dev.tidings.ConnectionState
import dev.tidings.Notification
import dev.tidings.TidingsClient
import dev.tidings.TidingsEvent
import kotlin.test.assertIs
import kotlin.test.fail
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.Job
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withTimeoutOrNull

/** How long any wait may take before a test fails (generous: it only guards against hangs). */
const val WAIT_MS = 20_000L

/** A client of the public API plus everything its [TidingsClient.events] flow emitted, for assertions. */
class Recorder(val client: TidingsClient, scope: CoroutineScope) {
    private val logFlow = MutableStateFlow<List<TidingsEvent>>(emptyList())

    /** While true the app takes no more events (the collector holds the one it has). */
    val paused = MutableStateFlow(false)

    /** Collects the events flow until it completes (after close). */
    val collector: Job = scope.launch(start = CoroutineStart.UNDISPATCHED) {
        client.events.collect { event ->
            paused.first { !it }
            logFlow.update { it + event }
        }
    }

    val log: List<TidingsEvent> get() = logFlow.value

    /** Waits until [pred] holds for the event log. */
    suspend fun until(what: String, pred: (List<TidingsEvent>) -> Boolean) {
        withTimeoutOrNull(WAIT_MS) { logFlow.first(pred) }
            ?: fail("timed out after ${WAIT_MS / 1000} s waiting for $what; state ${client.state}; events:\n${describeLog()}")
    }

    /** Waits until [TidingsClient.state] satisfies [pred]. */
    suspend fun waitState(what: String, pred: (ConnectionState) -> Boolean): ConnectionState =
        withTimeoutOrNull(WAIT_MS) { client.stateChanges.first(pred) }
            ?: fail("timed out after ${WAIT_MS / 1000} s waiting for state $what; state ${client.state}; events:\n${describeLog()}")

    /** Notifications delivered on their own, in order. */
    fun notifications(): List<Notification> = log.filterIsInstance<TidingsEvent.Notification>().map { it.notification }

    /** Ids of delivered notifications, alone and inside digests, in delivery order. */
    fun deliveredIds(): List<String> = log.flatMap {
        when (it) {
            is TidingsEvent.Notification -> listOf(it.notification.id)
            is TidingsEvent.Digest -> it.digest.ids
            else -> emptyList()
        }
    }

    /** Closes the client and checks that the events flow then completes with the `Closed` state. */
    suspend fun close() {
        client.close()
        withTimeoutOrNull(5_000) { collector.join() } ?: fail("the events flow did not complete within 5 s of close()")
        assertIs<ConnectionState.Closed>(client.state, "state after close()")
        val last = log.lastOrNull()
        assertIs<TidingsEvent.State>(last, "the last event after close()")
        assertIs<ConnectionState.Closed>(last.state, "the last state event after close()")
    }

    fun describeLog(): String = log.joinToString("\n") { "  " + describe(it) }.ifEmpty { "  (none)" }
}

/** One line per event, notifications by id. */
fun describe(event: TidingsEvent): String = when (event) {
    is TidingsEvent.Notification -> event.notification.let { "Notification(${it.id}, ${it.stream}, offset=${it.offset}, ${it.priority})" }
    is TidingsEvent.Digest -> event.digest.let { "Digest(${it.group}, count=${it.count}, ids=${it.ids})" }
    else -> event.toString()
}
