package dev.tidings

import dev.tidings.ffi.TidingsException as FfiException

/**
 * What every throwing [TidingsClient] call throws. The message is meant for logs; match on the subclass.
 */
sealed class TidingsException(message: String, cause: Throwable? = null) : Exception(message, cause) {
    /** An argument was invalid: a stream name, a push token, the configuration. */
    class InvalidArgument(val detail: String, cause: Throwable? = null) :
        TidingsException("invalid argument: $detail", cause)

    /** A push payload was not a Tidings notification. */
    class InvalidPayload(val detail: String, cause: Throwable? = null) :
        TidingsException("invalid push payload: $detail", cause)

    /** The store file could not be read or written. */
    class StoreFailure(val detail: String, cause: Throwable? = null) :
        TidingsException("store failure: $detail", cause)

    /**
     * The client stopped for good and will not reconnect by itself: rejected credentials
     * ([FailureReason.UNAUTHORIZED]: sign the user in again), a permanent token-provider failure, a protocol
     * mismatch, or another connection of this device took over. Create a new client once the cause is fixed.
     */
    class ConnectionFailed(val reason: FailureReason, val detail: String, cause: Throwable? = null) :
        TidingsException("connection failed (${reason.name.lowercase()}): $detail", cause)

    /** The client was closed. */
    class Closed(cause: Throwable? = null) : TidingsException("the client is closed", cause)

    /**
     * The server refused a request (inbox, history): [code] is `bad_request` (the [detail] names the member),
     * `forbidden` or `try_again_later`.
     */
    class RequestRefused(val code: String, val detail: String, cause: Throwable? = null) :
        TidingsException("request refused ($code): $detail", cause)

    /** A read (inbox page, history page) got no answer in time (30 s, connecting included). */
    class TimedOut(cause: Throwable? = null) : TidingsException("no answer in time", cause)
    /** The server refused the user's token for an HTTP call (after the token provider was asked again once). */
    class Unauthorized(val detail: String, cause: Throwable? = null) : TidingsException("unauthorized: $detail", cause)

    /** The server refused the request ([status] 4xx, [code]): invalid preferences or quiet hours, unknown id … */
    class Refused(val status: Int, val code: String, val detail: String, cause: Throwable? = null) :
        TidingsException("refused ($status $code): $detail", cause)

    /** The server could not be reached or could not answer now: try again later (after [retryAfterMs] if set). */
    class Unavailable(val detail: String, val retryAfterMs: Long?, cause: Throwable? = null) :
        TidingsException("server unavailable: $detail", cause)

    /** A bug in Tidings (a caught Rust panic). Please report it with the message. */
    class Internal(val detail: String, cause: Throwable? = null) :
        TidingsException("internal error in Tidings: $detail", cause)
}

/**
 * Throw this from the token provider when no token can be had.
 *
 * - `permanent = false` (the default): retrying later may help, e.g. your backend is unreachable. The client backs
 *   off and asks again.
 * - `permanent = true`: the user is signed out or not allowed. The client stops with
 *   [ConnectionState.Failed] with [FailureReason.TOKEN_PROVIDER] and [TidingsClient.connect] throws
 *   [TidingsException.ConnectionFailed].
 *
 * Any other exception from the provider counts as a transient failure.
 */
class TokenUnavailableException(
    message: String,
    val permanent: Boolean = false,
    cause: Throwable? = null,
) : Exception(message, cause)

/** The public exception for an error that crossed the FFI (which carries no more information than this). */
internal fun FfiException.toPublic(): TidingsException = when (this) {
    is FfiException.InvalidArgument -> TidingsException.InvalidArgument(detail)
    is FfiException.InvalidPayload -> TidingsException.InvalidPayload(detail)
    is FfiException.Store -> TidingsException.StoreFailure(detail)
    is FfiException.ConnectionFailed -> TidingsException.ConnectionFailed(reason.toPublic(), detail)
    is FfiException.Closed -> TidingsException.Closed()
    is FfiException.RequestRefused -> TidingsException.RequestRefused(code, detail)
    is FfiException.TimedOut -> TidingsException.TimedOut()
    is FfiException.Internal -> TidingsException.Internal(detail)
    is FfiException.Unauthorized -> TidingsException.Unauthorized(detail)
    is FfiException.Refused -> TidingsException.Refused(status.toInt(), code, detail)
    is FfiException.Unavailable -> TidingsException.Unavailable(detail, retryAfterMs?.toLong())
}
