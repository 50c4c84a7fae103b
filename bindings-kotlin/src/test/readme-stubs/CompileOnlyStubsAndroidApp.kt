// COMPILE-ONLY STUBS of android.app (see CompileOnlyStubsAndroid.kt).
@file:Suppress("unused")

package android.app

import android.content.Context

open class Application : Context() {
    open fun onCreate() {}
    val noBackupFilesDir: java.io.File get() = java.io.File(".")
}

open class Service : Context() {
    val application: Application get() = Application()
}
