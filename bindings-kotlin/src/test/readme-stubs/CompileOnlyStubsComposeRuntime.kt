// COMPILE-ONLY STUBS of Jetpack Compose (androidx.compose.runtime) used by the README's Kotlin blocks, without
// `@Composable` (that needs the Compose compiler plugin). Only the members used; no behaviour. Never run.
@file:Suppress("unused", "UNUSED_PARAMETER")

package androidx.compose.runtime

import kotlinx.coroutines.flow.StateFlow
import kotlin.reflect.KProperty

interface State<out T> {
    val value: T
}

operator fun <T> State<T>.getValue(thisObj: Any?, property: KProperty<*>): T = value

fun <T> StateFlow<T>.collectAsState(): State<T> = TODO("compile-only stub")
