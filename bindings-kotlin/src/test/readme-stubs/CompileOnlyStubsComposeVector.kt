// COMPILE-ONLY STUB of Compose's ImageVector (androidx.compose.ui.graphics.vector).
package androidx.compose.ui.graphics.vector

class ImageVector
