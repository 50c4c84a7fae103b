package dev.tidings

import dev.tidings.ffi.HistoryPage as FfiHistoryPage
import dev.tidings.ffi.InboxAction as FfiInboxAction
import dev.tidings.ffi.InboxArchived as FfiInboxArchived
import dev.tidings.ffi.InboxChangeResult as FfiInboxChangeResult
import dev.tidings.ffi.InboxCounts as FfiInboxCounts
import dev.tidings.ffi.InboxItem as FfiInboxItem
import dev.tidings.ffi.InboxPage as FfiInboxPage
import dev.tidings.ffi.InboxQuery as FfiInboxQuery
import dev.tidings.ffi.InboxStatus as FfiInboxStatus

// The inbox (protocol §13) and stream history (§14) in Kotlin. Every rule — counts applied only when newer, the view
// of loaded items kept current by every change, changes queued while offline and sent again until answered — is the
// Rust core's; this file converts types. The client's methods are in TidingsClient.kt.

/**
 * The server's counts of the user's inbox; [unread] is the badge (Android launcher badge, web app badge).
 *
 * @property version grows with every change of the inbox; the client keeps only newer counts.
 * @property head the newest item's position.
 */
data class InboxCounts(val unseen: Long, val unread: Long, val total: Long, val version: Long, val head: Long)

/**
 * One item of the inbox. Times are milliseconds since the Unix epoch; `null` means not (yet) in that state.
 *
 * @property id the notification id.
 * @property seq position in the inbox (grows with every item added).
 * @property notification the notification (`null` in the items of a change, which carry only the state).
 */
data class InboxItem(
    val id: String,
    val seq: Long,
    val version: Long,
    val insertedAtMs: Long,
    val seenAtMs: Long?,
    val readAtMs: Long?,
    val archivedAtMs: Long?,
    val notification: Notification?,
) {
    val isRead: Boolean get() = readAtMs != null
    val isSeen: Boolean get() = seenAtMs != null
    val isArchived: Boolean get() = archivedAtMs != null
}

/** A page of the inbox, newest first; [next] is `before` of the next (older) page, `null` when none is older. */
data class InboxPage(val items: List<InboxItem>, val next: Long?, val counts: InboxCounts)

/**
 * The inbox after a change: the new [counts], the changed [items] (state only), whether the server had applied it
 * already ([duplicate], a change sent again after a lost answer) and the ids not in the inbox ([unknown]).
 */
data class InboxChangeResult(
    val counts: InboxCounts,
    val items: List<InboxItem>,
    val duplicate: Boolean,
    val unknown: List<String>,
)

/** What to do with inbox items (protocol §13.2 has the transitions). */
enum class InboxAction {
    /** Read (and seen). */
    READ,

    /** Unread (stays seen). */
    UNREAD,

    /** Seen. */
    SEEN,

    /** Unseen (and unread). */
    UNSEEN,

    /** Archived: leaves the counts and the default pages. */
    ARCHIVE,

    /** Back from the archive. */
    UNARCHIVE,
}

/**
 * Filters of an inbox page.
 *
 * @property before only items older than this position (the previous page's `next`).
 * @property limit most items (1–200, default 50).
 */
data class InboxQuery(
    val before: Long? = null,
    val limit: Int? = null,
    val status: Status = Status.ALL,
    val archived: Archived = Archived.EXCLUDE,
    val type: String? = null,
    val topic: String? = null,
) {
    /** Which items by read/seen state. */
    enum class Status { ALL, UNREAD, READ, UNSEEN, SEEN }

    /** Which items by archive state. */
    enum class Archived { EXCLUDE, INCLUDE, ONLY }
}

/**
 * A page of a stream's stored history, oldest first (after a gap, the place to refetch a topic from).
 *
 * @property epoch the stream's current epoch (the offsets are this epoch's).
 * @property next `afterOffset` of the next page; `null`: this page reaches the head.
 */
data class HistoryPage(
    val stream: String,
    val epoch: String,
    val head: Long,
    val oldest: Long,
    val items: List<Notification>,
    val next: Long?,
)

internal fun FfiInboxCounts.toPublic() =
    InboxCounts(unseen.toLong(), unread.toLong(), total.toLong(), version.toLong(), head.toLong())

internal fun FfiInboxItem.toPublic() = InboxItem(
    id = id,
    seq = seq.toLong(),
    version = version.toLong(),
    insertedAtMs = insertedAt.toLong(),
    seenAtMs = seenAt?.toLong(),
    readAtMs = readAt?.toLong(),
    archivedAtMs = archivedAt?.toLong(),
    notification = notification?.toPublic(),
)

internal fun FfiInboxPage.toPublic() = InboxPage(items.map { it.toPublic() }, next?.toLong(), counts.toPublic())

internal fun FfiInboxChangeResult.toPublic() =
    InboxChangeResult(counts.toPublic(), items.map { it.toPublic() }, duplicate, unknown)

internal fun FfiHistoryPage.toPublic() =
    HistoryPage(stream, epoch, head.toLong(), oldest.toLong(), items.map { it.toPublic() }, next?.toLong())

internal fun InboxAction.toFfi(): FfiInboxAction = when (this) {
    InboxAction.READ -> FfiInboxAction.READ
    InboxAction.UNREAD -> FfiInboxAction.UNREAD
    InboxAction.SEEN -> FfiInboxAction.SEEN
    InboxAction.UNSEEN -> FfiInboxAction.UNSEEN
    InboxAction.ARCHIVE -> FfiInboxAction.ARCHIVE
    InboxAction.UNARCHIVE -> FfiInboxAction.UNARCHIVE
}

internal fun InboxQuery.toFfi(): FfiInboxQuery {
    if (before != null && before < 0) throw TidingsException.InvalidArgument("before must not be negative")
    if (limit != null && limit < 0) throw TidingsException.InvalidArgument("limit must not be negative")
    return FfiInboxQuery(
        before = before?.toULong(),
        limit = limit?.toUInt(),
        status = when (status) {
            InboxQuery.Status.ALL -> FfiInboxStatus.ALL
            InboxQuery.Status.UNREAD -> FfiInboxStatus.UNREAD
            InboxQuery.Status.READ -> FfiInboxStatus.READ
            InboxQuery.Status.UNSEEN -> FfiInboxStatus.UNSEEN
            InboxQuery.Status.SEEN -> FfiInboxStatus.SEEN
        },
        archived = when (archived) {
            InboxQuery.Archived.EXCLUDE -> FfiInboxArchived.EXCLUDE
            InboxQuery.Archived.INCLUDE -> FfiInboxArchived.INCLUDE
            InboxQuery.Archived.ONLY -> FfiInboxArchived.ONLY
        },
        kind = type,
        topic = topic,
    )
}
