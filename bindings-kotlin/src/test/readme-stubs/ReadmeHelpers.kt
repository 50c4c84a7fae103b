// The app-side names the README's Kotlin blocks use (your backend client, your UI, your state): declared here so
// that `cargo xtask kotlin-test` can compile every ```kotlin block of bindings-kotlin/README.md against the real
// library. Compile-only: nothing here runs (the generated snippet functions are never called). Everything from
// dev.tidings is the real API; Android, Compose and Firebase classes are the stubs beside this file.
@file:Suppress("unused", "UNUSED_PARAMETER")

package dev.tidings.readme

import com.google.firebase.messaging.RemoteMessage
import dev.tidings.InboxItem
import dev.tidings.Notification
import dev.tidings.PushSummary
import dev.tidings.TidingsClient
import kotlinx.coroutines.CoroutineScope
import java.io.File

/** Your backend client. */
class AppApi {
    suspend fun tidingsToken(forceRefresh: Boolean): String = TODO("compile-only")
}

class NotSignedInException : Exception()

class Feed {
    fun insertIfMissing(notification: Notification) {}
}

val api = AppApi()
val feed = Feed()
val scope: CoroutineScope get() = TODO("compile-only")
val appScope: CoroutineScope get() = TODO("compile-only")
val client: TidingsClient get() = TODO("compile-only")
val item: InboxItem get() = TODO("compile-only")
val lastHandled: Map<String, Notification> = emptyMap()
val message: RemoteMessage get() = TODO("compile-only")
val noBackupFilesDir: File get() = TODO("compile-only")
val serverUrl = "https://notify.example.com"
val userToken = ""

fun show(notification: Notification) {}
fun showDigest(count: Int, last: Notification) {}
fun refetch(stream: String) {}
fun row(title: String?, read: Boolean) {}
fun showNotification(notification: Notification) {}
fun showSummary(summary: PushSummary) {}
fun showTitle(id: String, title: String?) {}
