package dev.tidings.testing

/**
 * A small JSON reader and writer for the tests (scenarios.json, the server's HTTP API), so the JVM suite needs
 * no JSON library. Objects are `Map<String, Any?>` (insertion-ordered), arrays `List<Any?>`, integers `Long`,
 * other numbers `Double`.
 */
object Json {
    fun parse(text: String): Any? {
        val reader = Reader(text)
        val value = reader.value()
        reader.skipSpace()
        require(reader.pos == text.length) { "trailing characters at ${reader.pos}" }
        return value
    }

    fun write(value: Any?): String = StringBuilder().also { write(it, value) }.toString()

    private fun write(out: StringBuilder, value: Any?) {
        when (value) {
            null -> out.append("null")
            is String -> string(out, value)
            is Boolean, is Int, is Long -> out.append(value.toString())
            is Double -> out.append(if (value == Math.floor(value) && !value.isInfinite()) value.toLong().toString() else value.toString())
            is Map<*, *> -> {
                out.append('{')
                value.entries.forEachIndexed { i, (k, v) ->
                    if (i > 0) out.append(',')
                    string(out, k as String)
                    out.append(':')
                    write(out, v)
                }
                out.append('}')
            }
            is Iterable<*> -> {
                out.append('[')
                value.forEachIndexed { i, v ->
                    if (i > 0) out.append(',')
                    write(out, v)
                }
                out.append(']')
            }
            else -> error("cannot write ${value::class} as JSON")
        }
    }

    private fun string(out: StringBuilder, s: String) {
        out.append('"')
        for (c in s) {
            when {
                c == '"' -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c == '\n' -> out.append("\\n")
                c == '\r' -> out.append("\\r")
                c == '\t' -> out.append("\\t")
                c < ' ' -> out.append("\\u").append(c.code.toString(16).padStart(4, '0'))
                else -> out.append(c)
            }
        }
        out.append('"')
    }

    private class Reader(val s: String) {
        var pos = 0

        fun skipSpace() {
            while (pos < s.length && s[pos].isWhitespace()) pos++
        }

        fun value(): Any? {
            skipSpace()
            require(pos < s.length) { "unexpected end of JSON" }
            return when (val c = s[pos]) {
                '{' -> obj()
                '[' -> array()
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c.isDigit()) number() else error("unexpected '$c' at $pos")
            }
        }

        private fun literal(word: String, value: Any?): Any? {
            require(s.startsWith(word, pos)) { "bad literal at $pos" }
            pos += word.length
            return value
        }

        private fun obj(): Map<String, Any?> {
            val map = LinkedHashMap<String, Any?>()
            pos++
            skipSpace()
            if (s[pos] == '}') return map.also { pos++ }
            while (true) {
                skipSpace()
                val key = string()
                skipSpace()
                expect(':')
                map[key] = value()
                skipSpace()
                if (s[pos] == ',') pos++ else return map.also { expect('}') }
            }
        }

        private fun array(): List<Any?> {
            val list = ArrayList<Any?>()
            pos++
            skipSpace()
            if (s[pos] == ']') return list.also { pos++ }
            while (true) {
                list.add(value())
                skipSpace()
                if (s[pos] == ',') pos++ else return list.also { expect(']') }
            }
        }

        private fun string(): String {
            expect('"')
            val out = StringBuilder()
            while (true) {
                val c = s[pos++]
                when (c) {
                    '"' -> return out.toString()
                    '\\' -> when (val e = s[pos++]) {
                        '"', '\\', '/' -> out.append(e)
                        'b' -> out.append('\b')
                        'f' -> out.append('\u000c')
                        'n' -> out.append('\n')
                        'r' -> out.append('\r')
                        't' -> out.append('\t')
                        'u' -> out.append(s.substring(pos, pos + 4).toInt(16).toChar()).also { pos += 4 }
                        else -> error("bad escape \\$e at $pos")
                    }
                    else -> out.append(c)
                }
            }
        }

        private fun number(): Any {
            val start = pos
            while (pos < s.length && (s[pos].isDigit() || s[pos] in "+-.eE")) pos++
            val text = s.substring(start, pos)
            return text.toLongOrNull() ?: text.toDouble()
        }

        private fun expect(c: Char) {
            require(pos < s.length && s[pos] == c) { "expected '$c' at $pos" }
            pos++
        }
    }
}

/** Typed access to parsed JSON. */
@Suppress("UNCHECKED_CAST")
fun Any?.obj(): Map<String, Any?> = this as? Map<String, Any?> ?: error("not a JSON object: $this")

@Suppress("UNCHECKED_CAST")
fun Any?.array(): List<Any?> = this as? List<Any?> ?: error("not a JSON array: $this")

fun Map<String, Any?>.str(key: String): String = this[key] as? String ?: error("\"$key\" is not a string in ${Json.write(this)}")

fun Map<String, Any?>.strOrNull(key: String): String? = this[key] as String?

fun Map<String, Any?>.long(key: String): Long = this[key] as? Long ?: error("\"$key\" is not an integer in ${Json.write(this)}")

fun Map<String, Any?>.longOrNull(key: String): Long? = this[key] as Long?

fun Map<String, Any?>.strings(key: String): List<String> = (this[key] as List<*>?)?.map { it as String } ?: emptyList()
