package dev.tidings

/**
 * An FCM data message (`RemoteMessage.data`: string keys and values) as the JSON object the core reads. The
 * Tidings envelope travels in it under the key `tidings`, as JSON text; the core parses that.
 */
internal fun pushPayloadJson(data: Map<String, String>): String = buildString {
    append('{')
    var first = true
    for ((key, value) in data) {
        if (!first) append(',')
        first = false
        appendJsonString(key)
        append(':')
        appendJsonString(value)
    }
    append('}')
}

private fun StringBuilder.appendJsonString(s: String) {
    append('"')
    for (c in s) {
        when {
            c == '"' -> append("\\\"")
            c == '\\' -> append("\\\\")
            c == '\n' -> append("\\n")
            c == '\r' -> append("\\r")
            c == '\t' -> append("\\t")
            c < ' ' -> append("\\u").append(c.code.toString(16).padStart(4, '0'))
            else -> append(c)
        }
    }
    append('"')
}
