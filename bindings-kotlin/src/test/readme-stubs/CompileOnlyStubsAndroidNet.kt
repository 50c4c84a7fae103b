// COMPILE-ONLY STUBS of android.net (see CompileOnlyStubsAndroid.kt).
@file:Suppress("unused", "UNUSED_PARAMETER")

package android.net

class Network

class ConnectivityManager {
    open class NetworkCallback {
        open fun onAvailable(network: Network) {}
        open fun onLost(network: Network) {}
    }

    val activeNetwork: Network? get() = null
    fun registerDefaultNetworkCallback(callback: NetworkCallback) {}
    fun unregisterNetworkCallback(callback: NetworkCallback) {}
}
