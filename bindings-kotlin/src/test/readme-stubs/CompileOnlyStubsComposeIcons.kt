// COMPILE-ONLY STUBS of Compose's icons (androidx.compose.material.icons) used by the README's Kotlin blocks.
@file:Suppress("unused")

package androidx.compose.material.icons

object Icons {
    object Filled

    val Default = Filled
}
