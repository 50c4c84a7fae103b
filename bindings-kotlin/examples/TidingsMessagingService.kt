// An FCM service for a Tidings Android app. Declare it in AndroidManifest.xml:
//
//   <service android:name=".TidingsMessagingService" android:exported="false">
//     <intent-filter><action android:name="com.google.firebase.MESSAGING_EVENT" /></intent-filter>
//   </service>
//
// and add `com.google.firebase:firebase-messaging` to the app. What it does, all of it in the Rust core:
// - registers the FCM token with the server (`registerPushToken`, re-sent on every reconnect);
// - passes every data message through `ingestPush`: dedup against the window shared with the socket (a notification
//   the socket, a replay or an earlier push delivered is not shown again); a push too large for FCM arrives in the
//   lightweight form (`tidings_fetch`) and is fetched from the server with the user's token first; digests and
//   quiet-hours summaries (`tidings_summary`) become one notification; what is shown is acked to the server;
// - in a process without a client (the app was not started; FCM started the process for this message) it uses
//   `ingestPushWithStore` on the client's store file, with a `PushServer` to fetch and ack.
//
// This file is written for an Android app; the repository's JVM test suite does not compile it (Firebase and the
// Android SDK are not available there). The calls it makes are tested on the JVM: bindings-kotlin/src/test
// (TidingsClientTest, ConformanceTest: the FCM payloads the server really sent).

package com.example.app

import android.app.NotificationChannel
import android.app.NotificationManager
import androidx.core.app.NotificationCompat
import com.google.firebase.messaging.FirebaseMessagingService
import com.google.firebase.messaging.RemoteMessage
import dev.tidings.PushOutcome
import dev.tidings.PushPlatform
import dev.tidings.PushServer
import dev.tidings.TidingsClient
import java.io.File
import kotlinx.coroutines.runBlocking

// `App` stands for your Application class: it holds the client once the user signed in (`tidingsOrNull`), a user
// token for the no-client path (`userToken()`, e.g. from EncryptedSharedPreferences) and the server's URL.
class TidingsMessagingService : FirebaseMessagingService() {
    /** The app's client, if this process has one (created after sign-in by the app). */
    private val client: TidingsClient? get() = (application as App).tidingsOrNull

    override fun onNewToken(token: String) {
        // Sent now if connected, and after every reconnect; kept in the store. With no client yet, the app registers
        // `FirebaseMessaging.getInstance().token` when it creates one.
        client?.registerPushToken(PushPlatform.FCM, token)
    }

    override fun onMessageReceived(message: RemoteMessage) {
        val data = message.data
        if (data.keys.none { it.startsWith("tidings") }) return // not a Tidings push
        // onMessageReceived runs on a background thread and must finish within about 20 s: block on the call.
        val outcome = runCatching {
            runBlocking {
                client?.ingestPush(data) ?: TidingsClient.ingestPushWithStore(
                    File(noBackupFilesDir, "tidings.json").path, // the client's TidingsConfig.storePath
                    data,
                    (application as App).userToken()?.let { PushServer(App.SERVER_URL, it) },
                )
            }
        }.getOrNull() ?: return
        when (outcome) {
            is PushOutcome.Show -> show(outcome.notification.id, outcome.notification.title, outcome.notification.body)
            is PushOutcome.Summary -> show(
                outcome.summary.group ?: outcome.summary.ids.first(),
                outcome.summary.title,
                "${outcome.summary.count} new",
            )
            is PushOutcome.ShowTitle -> show(outcome.id, outcome.title, null)
            is PushOutcome.Duplicate -> {} // already delivered on the socket or by an earlier push
        }
    }

    private fun show(tag: String, title: String?, body: String?) {
        val manager = getSystemService(NotificationManager::class.java)
        manager.createNotificationChannel(NotificationChannel("tidings", "Notifications", NotificationManager.IMPORTANCE_DEFAULT))
        val notification = NotificationCompat.Builder(this, "tidings")
            .setSmallIcon(R.drawable.ic_notification)
            .setContentTitle(title ?: getString(R.string.app_name))
            .setContentText(body)
            .setAutoCancel(true)
            .build()
        manager.notify(tag, 0, notification) // the tag collapses a notification shown twice
    }
}
