package dev.tidings.android

import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.os.Handler
import android.os.Looper
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import dev.tidings.NetworkStatus
import dev.tidings.TidingsClient
import java.util.concurrent.atomic.AtomicBoolean

/**
 * Reports the app's lifecycle and network to a [TidingsClient], so it can close the socket in the background
 * (after its grace period), resume at once in the foreground, stop retrying while offline, and probe the link
 * when the network changes:
 *
 * - the process lifecycle ([ProcessLifecycleOwner]): started → [TidingsClient.onForeground], stopped →
 *   [TidingsClient.onBackground]. A process that is not in the foreground when bound (started for a push or a
 *   job) reports background right away;
 * - the default network ([ConnectivityManager.registerDefaultNetworkCallback]): a network appears →
 *   [NetworkStatus.AVAILABLE], the default switches to another network → [NetworkStatus.CHANGED], it is lost
 *   with no replacement → [NetworkStatus.UNAVAILABLE].
 *
 * ```
 * class App : Application() {
 *     override fun onCreate() {
 *         super.onCreate()
 *         tidings = TidingsClient(config) { forceRefresh -> api.tidingsToken(forceRefresh) }
 *         TidingsLifecycle.bind(this, tidings)
 *     }
 * }
 * ```
 *
 * Bind once per client; [close] unbinds (a client that is closed ignores reports, so leaving it bound for the
 * life of the process is fine). Needs the `ACCESS_NETWORK_STATE` permission, which this library's manifest
 * declares.
 */
class TidingsLifecycle private constructor(
    private val client: TidingsClient,
    private val connectivity: ConnectivityManager,
) : AutoCloseable {
    private val lifecycle: Lifecycle = ProcessLifecycleOwner.get().lifecycle
    private val mainHandler = Handler(Looper.getMainLooper())
    private val closed = AtomicBoolean(false)

    private val lifecycleObserver = object : DefaultLifecycleObserver {
        override fun onStart(owner: LifecycleOwner) = client.onForeground()

        override fun onStop(owner: LifecycleOwner) = client.onBackground()
    }

    private val networkCallback = object : ConnectivityManager.NetworkCallback() {
        // Only touched on the ConnectivityManager callback thread.
        private var current: Network? = null

        override fun onAvailable(network: Network) {
            val previous = current
            current = network
            val status = if (previous == null || previous == network) NetworkStatus.AVAILABLE else NetworkStatus.CHANGED
            client.onNetworkChanged(status)
        }

        override fun onLost(network: Network) {
            // A switch to another network arrives as onAvailable(new); only losing the current one means offline.
            if (network == current) {
                current = null
                client.onNetworkChanged(NetworkStatus.UNAVAILABLE)
            }
        }
    }

    private fun start() {
        onMain {
            if (closed.get()) return@onMain
            if (!lifecycle.currentState.isAtLeast(Lifecycle.State.STARTED)) client.onBackground()
            // Delivers onStart at once if the app is already in the foreground.
            lifecycle.addObserver(lifecycleObserver)
        }
        if (connectivity.activeNetwork == null) client.onNetworkChanged(NetworkStatus.UNAVAILABLE)
        // Calls onAvailable at once when there is a default network.
        connectivity.registerDefaultNetworkCallback(networkCallback)
    }

    /** Stops reporting to the client. */
    override fun close() {
        if (!closed.compareAndSet(false, true)) return
        connectivity.unregisterNetworkCallback(networkCallback)
        onMain { lifecycle.removeObserver(lifecycleObserver) }
    }

    /** Lifecycle observers must be added and removed on the main thread. */
    private fun onMain(block: () -> Unit) {
        if (Looper.myLooper() == Looper.getMainLooper()) block() else mainHandler.post { block() }
    }

    companion object {
        /** Starts reporting the process lifecycle and the default network to [client]. Call from any thread. */
        @JvmStatic
        fun bind(context: Context, client: TidingsClient): TidingsLifecycle {
            val connectivity = context.applicationContext.getSystemService(ConnectivityManager::class.java)
                ?: error("no ConnectivityManager")
            return TidingsLifecycle(client, connectivity).also { it.start() }
        }
    }
}
