// COMPILE-ONLY STUBS of android.os (see CompileOnlyStubsAndroid.kt).
@file:Suppress("unused", "UNUSED_PARAMETER")

package android.os

class Looper {
    companion object {
        @JvmStatic fun getMainLooper(): Looper = Looper()
        @JvmStatic fun myLooper(): Looper? = null
    }
}

class Handler(looper: Looper) {
    fun post(r: Runnable): Boolean = false
}
