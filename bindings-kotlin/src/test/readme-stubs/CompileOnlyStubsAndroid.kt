// COMPILE-ONLY STUBS of Android SDK classes (android.app, android.content, android.net, android.os) used by the
// README's Kotlin blocks and by src/android/kotlin, so `cargo xtask kotlin-test` can compile them on a plain JVM.
// Only the members used, with the SDK's names and types; no behaviour. Never shipped, never run.
@file:Suppress("unused", "UNUSED_PARAMETER")

package android.content

open class Context {
    open val applicationContext: Context get() = this
    open fun <T> getSystemService(serviceClass: Class<T>): T? = null
}
