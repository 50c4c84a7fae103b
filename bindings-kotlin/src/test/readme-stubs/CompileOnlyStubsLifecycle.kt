// COMPILE-ONLY STUBS of AndroidX Lifecycle (androidx.lifecycle) used by src/android/kotlin. Only the members used;
// no behaviour. Never shipped, never run.
@file:Suppress("unused", "UNUSED_PARAMETER")

package androidx.lifecycle

interface LifecycleOwner {
    val lifecycle: Lifecycle
}

interface LifecycleObserver

interface DefaultLifecycleObserver : LifecycleObserver {
    fun onStart(owner: LifecycleOwner) {}
    fun onStop(owner: LifecycleOwner) {}
}

abstract class Lifecycle {
    enum class State {
        DESTROYED, INITIALIZED, CREATED, STARTED, RESUMED;

        fun isAtLeast(state: State): Boolean = compareTo(state) >= 0
    }

    abstract val currentState: State
    abstract fun addObserver(observer: LifecycleObserver)
    abstract fun removeObserver(observer: LifecycleObserver)
}

class ProcessLifecycleOwner private constructor() : LifecycleOwner {
    override val lifecycle: Lifecycle get() = TODO("compile-only stub")

    companion object {
        @JvmStatic fun get(): LifecycleOwner = ProcessLifecycleOwner()
    }
}
