// COMPILE-ONLY STUBS of Firebase Cloud Messaging (com.google.firebase.messaging) used by the README's Kotlin
// blocks. Only the members used; no behaviour. Never shipped, never run.
@file:Suppress("unused", "UNUSED_PARAMETER")

package com.google.firebase.messaging

import android.app.Service

open class FirebaseMessagingService : Service() {
    open fun onNewToken(token: String) {}
    open fun onMessageReceived(message: RemoteMessage) {}
}

class RemoteMessage {
    val data: Map<String, String> get() = emptyMap()
}
