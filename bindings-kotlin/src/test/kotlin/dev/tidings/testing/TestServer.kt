package dev.tidings.testing

import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.time.Duration
import kotlinx.coroutines.future.await

/**
 * The reference server the suite runs against, from the environment `cargo xtask kotlin-test` sets:
 * `TIDINGS_WS_URL`, `TIDINGS_HTTP_URL`, `TIDINGS_API_KEY`. Talks to its HTTP API (protocol §9).
 */
class TestServer private constructor(
    val wsUrl: String,
    val httpUrl: String,
    private val apiKey: String,
    /** `TIDINGS_CONTROL_URL`: restarts the server (the `restart_server` step). */
    private val controlUrl: String?,
) {
    private val http: HttpClient = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build()

    /** A valid token for [user], allowed to read [topics] (`POST /v1/demo/token`). */
    suspend fun token(user: String, topics: List<String>): String =
        post("/v1/demo/token", mapOf("user" to user, "topics" to topics), auth = false).obj().str("token")

    /** `POST /v1/publish`; returns the reply (`id`, `duplicate`, `deliveries`). */
    suspend fun publish(body: Map<String, Any?>): Map<String, Any?> = post("/v1/publish", body).obj()

    /** `POST /v1/admin/drop` for every connection; returns how many were dropped. */
    suspend fun dropAll(): Long = post("/v1/admin/drop", emptyMap<String, Any?>()).obj().long("dropped")

    /**
     * `POST /v1/admin/unsubscribe`: ends [user]'s subscription of [stream] on all of the user's connections (the
     * count it answers is the answering process's, not checked).
     */
    suspend fun unsubscribe(user: String, stream: String) {
        post("/v1/admin/unsubscribe", mapOf("user" to user, "stream" to stream))
    }

    /** Restarts the server process (same address and data); returns once it answers again. */
    suspend fun restart() {
        val url = controlUrl ?: error("TIDINGS_CONTROL_URL is not set")
        val request = HttpRequest.newBuilder(URI.create("$url/restart"))
            .timeout(Duration.ofSeconds(60))
            .POST(HttpRequest.BodyPublishers.noBody())
            .build()
        val response = http.sendAsync(request, HttpResponse.BodyHandlers.ofString()).await()
        check(response.statusCode() == 200) { "restart failed: HTTP ${response.statusCode()} ${response.body()}" }
    }

    /** `GET <path>` with the API key. */
    suspend fun get(path: String): Map<String, Any?> {
        val request = HttpRequest.newBuilder(URI.create(httpUrl + path))
            .timeout(Duration.ofSeconds(10))
            .header("Authorization", "Bearer $apiKey")
            .GET()
            .build()
        val response = http.sendAsync(request, HttpResponse.BodyHandlers.ofString()).await()
        check(response.statusCode() == 200) { "GET $path failed: HTTP ${response.statusCode()} ${response.body()}" }
        return Json.parse(response.body()).obj()
    }

    /**
     * Every push the mock services accepted so far (`GET /pushes` of the push harness the server pushes to,
     * `TIDINGS_PUSH_HARNESS_URL`): `provider`, `target` (the device's token) and `payload` (for FCM the `data` map
     * as JSON).
     */
    suspend fun pushes(): List<Map<String, Any?>> {
        val harness = System.getenv("TIDINGS_PUSH_HARNESS_URL")
            ?: error("TIDINGS_PUSH_HARNESS_URL is not set (run the suite with `cargo xtask kotlin-test`)")
        val request = HttpRequest.newBuilder(URI.create(harness.trimEnd('/') + "/pushes"))
            .timeout(Duration.ofSeconds(10))
            .GET()
            .build()
        val response = http.sendAsync(request, HttpResponse.BodyHandlers.ofString()).await()
        check(response.statusCode() == 200) { "GET /pushes failed: HTTP ${response.statusCode()} ${response.body()}" }
        return Json.parse(response.body()).obj()["pushes"].array().map { it.obj() }
    }

    private suspend fun post(path: String, body: Any?, auth: Boolean = true): Any? {
        val request = HttpRequest.newBuilder(URI.create(httpUrl + path))
            .timeout(Duration.ofSeconds(10))
            .header("Content-Type", "application/json")
            .apply { if (auth) header("Authorization", "Bearer $apiKey") }
            .POST(HttpRequest.BodyPublishers.ofString(Json.write(body)))
            .build()
        val response = http.sendAsync(request, HttpResponse.BodyHandlers.ofString()).await()
        check(response.statusCode() in 200..299) {
            "POST $path ${Json.write(body)} failed: HTTP ${response.statusCode()} ${response.body()}"
        }
        return Json.parse(response.body())
    }

    companion object {
        private val fromEnv: TestServer? by lazy {
            val ws = System.getenv("TIDINGS_WS_URL")
            val http = System.getenv("TIDINGS_HTTP_URL")
            val key = System.getenv("TIDINGS_API_KEY")
            if (ws != null && http != null && key != null) TestServer(ws, http.trimEnd('/'), key, System.getenv("TIDINGS_CONTROL_URL")?.trimEnd('/')) else null
        }

        /** The server from the environment; a test that needs one fails without it. */
        fun get(): TestServer = fromEnv ?: error(
            "no reference server: TIDINGS_WS_URL, TIDINGS_HTTP_URL and TIDINGS_API_KEY are not set " +
                "(run the suite with `cargo xtask kotlin-test`)",
        )
    }
}
