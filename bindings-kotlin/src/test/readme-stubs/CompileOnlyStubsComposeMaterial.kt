// COMPILE-ONLY STUBS of Jetpack Compose Material 3 (androidx.compose.material3) used by the README's Kotlin
// blocks, without `@Composable`. Only the members used; no behaviour. Never run.
@file:Suppress("unused", "UNUSED_PARAMETER")

package androidx.compose.material3

import androidx.compose.ui.graphics.vector.ImageVector

fun BadgedBox(badge: () -> Unit, content: () -> Unit) {}

fun Badge(content: (() -> Unit)? = null) {}

fun Text(text: String) {}

fun Icon(imageVector: ImageVector, contentDescription: String?) {}
