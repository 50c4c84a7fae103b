package dev.tidings

import dev.tidings.ffi.ClientConfig
import dev.tidings.ffi.defaultConfig
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds

/**
 * Configuration of a [TidingsClient]. Only [url] is required; every other setting starts at the core's default.
 *
 * ```
 * val config = TidingsConfig("wss://notify.example.com/v1/ws").apply {
 *     storePath = File(context.noBackupFilesDir, "tidings.json").path
 * }
 * ```
 */
class TidingsConfig(
    /** WebSocket URL of the server, e.g. `wss://notify.example.com/v1/ws`. */
    val url: String,
) {
    private val defaults: ClientConfig = defaultConfig(url)

    /**
     * File where stream cursors, recently seen notification ids and the device id are kept across launches;
     * its directory must exist. `null` keeps them in memory only (every launch is a new device with no
     * history). On Android use `noBackupFilesDir`: the device id must not be restored onto another device.
     */
    var storePath: String? = defaults.storePath

    /** Stable installation id; `null` generates one and keeps it in the store. */
    var deviceId: String? = defaults.deviceId

    /** Upper bound of the first reconnect delay (full-jitter exponential backoff). */
    var backoffBase: Duration = defaults.backoffBaseMs.toLong().milliseconds

    /** Upper bound of any reconnect delay. */
    var backoffCap: Duration = defaults.backoffCapMs.toLong().milliseconds

    /** How long informational notifications of one group are held to form a digest; zero disables digests. */
    var batchWindow: Duration = defaults.batchWindowMs.toLong().milliseconds

    /** A digest is delivered as soon as it holds this many notifications. */
    var batchMaxItems: Int = defaults.batchMaxItems.toInt()

    /** How many notification ids are remembered for dedup. */
    var dedupCapacity: Int = defaults.dedupCapacity.toInt()

    /** How long the socket stays open after the app goes to the background. */
    var backgroundGrace: Duration = defaults.backgroundGraceMs.toLong().milliseconds

    /** Subscribe to the signed-in user's own stream (`user:<id>`) automatically. */
    var subscribeUserStream: Boolean = defaults.subscribeUserStream

    /**
     * How many events wait for the app before the client stops reading from the server (see
     * [TidingsClient.events]). At least 1.
     */
    var eventCapacity: Int = defaults.eventCapacity.toInt()

    /**
     * Certificate authorities trusted for `wss://` besides the public roots, as PEM text (a private CA, a test
     * server). Android's user-installed CAs are not consulted.
     */
    var extraRootCertificates: List<String> = defaults.extraRootCertificates

    internal fun toFfi(): ClientConfig = ClientConfig(
        url = url,
        storePath = storePath,
        deviceId = deviceId,
        backoffBaseMs = millis("backoffBase", backoffBase),
        backoffCapMs = millis("backoffCap", backoffCap),
        batchWindowMs = millis("batchWindow", batchWindow),
        batchMaxItems = count("batchMaxItems", batchMaxItems),
        dedupCapacity = count("dedupCapacity", dedupCapacity),
        backgroundGraceMs = millis("backgroundGrace", backgroundGrace),
        subscribeUserStream = subscribeUserStream,
        eventCapacity = count("eventCapacity", eventCapacity),
        extraRootCertificates = extraRootCertificates,
    )

    override fun toString(): String =
        "TidingsConfig(url=$url, storePath=$storePath, deviceId=$deviceId, backoffBase=$backoffBase, " +
            "backoffCap=$backoffCap, batchWindow=$batchWindow, batchMaxItems=$batchMaxItems, " +
            "dedupCapacity=$dedupCapacity, backgroundGrace=$backgroundGrace, subscribeUserStream=$subscribeUserStream, " +
            "eventCapacity=$eventCapacity, extraRootCertificates=${extraRootCertificates.size})"

    private fun millis(name: String, value: Duration): ULong {
        if (value.isNegative()) throw TidingsException.InvalidArgument("$name must not be negative, got $value")
        return value.inWholeMilliseconds.toULong()
    }

    private fun count(name: String, value: Int): UInt {
        if (value < 0) throw TidingsException.InvalidArgument("$name must not be negative, got $value")
        return value.toUInt()
    }
}
