// COMPILE-ONLY STUBS of Compose's filled icons (androidx.compose.material.icons.filled).
@file:Suppress("unused")

package androidx.compose.material.icons.filled

import androidx.compose.material.icons.Icons
import androidx.compose.ui.graphics.vector.ImageVector

val Icons.Filled.Notifications: ImageVector get() = TODO("compile-only stub")
