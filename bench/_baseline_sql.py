"""The set-based baseline of `bench/replay.py`: the three read models rebuilt by plain SQL.

Each projection's tables get a twin `bench_<table>` created `LIKE` the live table
(`INCLUDING ALL`: the same columns, keys and indexes, an ordinary logged table), filled by
`INSERT ... SELECT` straight from the event table: one `DISTINCT ON` pass per message
ledger (status precedence by a `CASE`, as `conversations.messages` ranks them), then
`GROUP BY`/window summaries. Each projection's twin is built from the events on its own,
as each projection folds every event on its own. An approximation of the Python folds
(the dominant event's fields, not a field-by-field merge), with the same row counts.
"""

from __future__ import annotations

# (live table, baseline twin) in creation order.
TABLES: tuple[tuple[str, str], ...] = (
    ("timeline_messages", "bench_timeline_messages"),
    ("timeline_merges", "bench_timeline_merges"),
    ("timeline_conversation_roots", "bench_timeline_conversation_roots"),
    ("contact_channel_messages", "bench_contact_channel_messages"),
    ("contact_channels", "bench_contact_channels"),
    ("location_conversation_messages", "bench_location_conversation_messages"),
    ("location_conversation_flags", "bench_location_conversation_flags"),
    ("location_conversation_merges", "bench_location_conversation_merges"),
    ("location_conversation_roots", "bench_location_conversation_roots"),
    ("location_conversations", "bench_location_conversations"),
)

_CHANNEL = """
    CASE p->>'messageType'
        WHEN 'SMS' THEN 'SMS'
        WHEN 'Email' THEN 'Email'
        WHEN 'CALL' THEN CASE WHEN p->>'messageTypeId' = '10' THEN 'Voicemail' ELSE 'Call' END
        WHEN 'VoiceMail' THEN 'Voicemail'
        WHEN 'GMB' THEN 'GMB'
        WHEN 'FB' THEN 'Facebook'
        WHEN 'IG' THEN 'Instagram'
        WHEN 'WhatsApp' THEN 'WhatsApp'
        WHEN 'Live Chat' THEN 'LiveChat'
        WHEN 'InternalComment' THEN 'InternalComment'
        WHEN 'Custom' THEN 'Custom'
        ELSE 'Other'
    END"""


def _call_scale(value: str) -> str:
    return f"""
        CASE lower({value})
            WHEN 'completed' THEN 9 WHEN 'answered' THEN 8 WHEN 'voicemail' THEN 7
            WHEN 'no-answer' THEN 6 WHEN 'busy' THEN 5 WHEN 'failed' THEN 4
            WHEN 'canceled' THEN 3 WHEN 'ringing' THEN 2 WHEN 'initiated' THEN 2
            WHEN 'in-progress' THEN 2 WHEN 'connected' THEN 2
            WHEN 'pending' THEN 1 WHEN 'queued' THEN 1 ELSE 0 END"""


# Calls: the stage (the higher of status and callStatus on the call scale), then callStatus.
_RANK = f"""
    CASE WHEN p->>'messageType' IN ('CALL', 'VoiceMail') THEN
        greatest({_call_scale("p->>'callStatus'")}, {_call_scale("p->>'status'")}) * 16
        + {_call_scale("p->>'callStatus'")}
    ELSE
        CASE lower(p->>'status')
            WHEN 'clicked' THEN 7 WHEN 'opened' THEN 6 WHEN 'read' THEN 6
            WHEN 'delivered' THEN 5 WHEN 'failed' THEN 4 WHEN 'undelivered' THEN 4
            WHEN 'opt_out' THEN 4 WHEN 'sent' THEN 3 WHEN 'scheduled' THEN 2
            WHEN 'queued' THEN 2 WHEN 'pending' THEN 1 ELSE 0 END
    END"""


def _list(expression: str) -> str:
    """A JSON array whatever HighLevel sent (a string, an array, nothing)."""
    return (
        f"CASE jsonb_typeof({expression}) WHEN 'array' THEN {expression}"
        f" WHEN 'string' THEN jsonb_build_array({expression}) ELSE '[]'::jsonb END"
    )


# One row per message: its dominant event, plus every position of the message.
_MESSAGES = f"""
    WITH m AS (
        SELECT DISTINCT ON (e.location_id, e.message_id)
               e.location_id, e.message_id AS message_key, e.stream_id AS conversation_id,
               e.event_type, e.occurred_at, e.payload AS p,
               array_agg(e.position) OVER w AS positions,
               max(e.position) OVER w AS updated_position
          FROM events e
         WHERE e.event_type IN ('InboundMessage', 'OutboundMessage')
        WINDOW w AS (PARTITION BY e.location_id, e.message_id)
         ORDER BY e.location_id, e.message_id,
                  {_RANK.replace("p->", "e.payload->")} DESC,
                  CASE jsonb_typeof(e.payload->'attachments')
                       WHEN 'array' THEN jsonb_array_length(e.payload->'attachments')
                       ELSE 0 END DESC,
                  e.position DESC
    ), messages AS (
        SELECT m.*, {_CHANNEL} AS channel,
               coalesce(lower(p->>'direction'),
                        CASE event_type WHEN 'InboundMessage' THEN 'inbound'
                        ELSE 'outbound' END) AS direction,
               left(coalesce(nullif(p->>'plainText', ''), p->>'body', ''), 160) AS preview
          FROM m
    )"""

_MERGES = """
    SELECT DISTINCT location_id, payload->>'oldConversationId', payload->>'newConversationId'
      FROM events WHERE event_type = 'ConversationUpdate'
"""


def _roots(merges: str) -> str:
    """Single-hop roots (the generator makes no chains): old -> new, new -> new."""
    return f"""
    SELECT DISTINCT ON (location_id, conversation_id) location_id, conversation_id, root_id
      FROM (SELECT location_id, old_conversation_id AS conversation_id,
                   new_conversation_id AS root_id, 0 AS o FROM {merges}
            UNION ALL
            SELECT location_id, new_conversation_id, new_conversation_id, 1 FROM {merges}) r
     ORDER BY location_id, conversation_id, o, root_id
"""


STATEMENTS: tuple[tuple[str, str], ...] = (
    (
        "timeline",
        f"""
        INSERT INTO bench_timeline_messages (
            location_id, message_key, conversation_id, contact_id, event_type, direction,
            channel, message_type, message_type_string, message_type_id, status, call_status,
            call_duration, body, plain_text, content_type, attachments, from_, "to", cc, bcc,
            subject, thread_id, email_message_id, message_id, user_id, source,
            conversation_provider_id, date_added, preview, positions, updated_position)
        {_MESSAGES}
        SELECT location_id, message_key, conversation_id, p->>'contactId', event_type,
               direction, channel, p->>'messageType', p->>'messageTypeString',
               (p->>'messageTypeId')::bigint, p->>'status', p->>'callStatus',
               (p->>'callDuration')::double precision, p->>'body', p->>'plainText',
               p->>'contentType', {_list("p->'attachments'")}, p->>'from',
               {_list("p->'to'")}, {_list("coalesce(p->'ccList', p->'cc')")},
               {_list("coalesce(p->'bccList', p->'bcc')")}, p->>'subject', p->>'threadId',
               p->>'emailMessageId', p->>'messageId', p->>'userId', p->>'source',
               p->>'conversationProviderId', occurred_at, preview, positions,
               updated_position
          FROM messages
        """,
    ),
    ("timeline", f"INSERT INTO bench_timeline_merges {_MERGES}"),
    (
        "timeline",
        "INSERT INTO bench_timeline_conversation_roots" + _roots("bench_timeline_merges"),
    ),
    (
        "contact_channels",
        f"""
        INSERT INTO bench_contact_channel_messages (
            location_id, message_key, contact_id, channel, direction, status, date_added,
            preview)
        {_MESSAGES}
        SELECT location_id, message_key, p->>'contactId', channel, direction, p->>'status',
               occurred_at, preview
          FROM messages
        """,
    ),
    (
        "contact_channels",
        """
        INSERT INTO bench_contact_channels (
            location_id, contact_id, channel, message_count, inbound_count, outbound_count,
            first_message_at, last_message_at, last_direction, last_status, last_preview,
            last_message_key)
        SELECT DISTINCT ON (location_id, contact_id, channel)
               location_id, contact_id, channel, count(*) OVER w,
               count(*) FILTER (WHERE direction = 'inbound') OVER w,
               count(*) FILTER (WHERE direction = 'outbound') OVER w,
               min(date_added) OVER w, max(date_added) OVER w,
               direction, status, preview, message_key
          FROM bench_contact_channel_messages
         WHERE contact_id IS NOT NULL
        WINDOW w AS (PARTITION BY location_id, contact_id, channel)
         ORDER BY location_id, contact_id, channel, date_added DESC NULLS LAST,
                  message_key DESC
        """,
    ),
    (
        "location_conversations",
        f"""
        INSERT INTO bench_location_conversation_messages (
            location_id, message_key, conversation_id, contact_id, channel, direction,
            status, date_added, preview)
        {_MESSAGES}
        SELECT location_id, message_key, conversation_id, p->>'contactId', channel,
               direction, p->>'status', occurred_at, preview
          FROM messages
        """,
    ),
    (
        "location_conversations",
        """
        INSERT INTO bench_location_conversation_flags (
            location_id, conversation_id, unread_count, starred, inbox, deleted, contact_id)
        SELECT DISTINCT ON (location_id, stream_id)
               location_id, stream_id, (payload->>'unreadCount')::int,
               (payload->>'starred')::boolean, (payload->>'inbox')::boolean,
               (payload->>'deleted')::boolean, payload->>'contactId'
          FROM events
         WHERE event_type = 'ConversationUnreadUpdate'
         ORDER BY location_id, stream_id, payload->>'timestamp' DESC NULLS LAST,
                  position DESC
        """,
    ),
    ("location_conversations", f"INSERT INTO bench_location_conversation_merges {_MERGES}"),
    (
        "location_conversations",
        "INSERT INTO bench_location_conversation_roots"
        + _roots("bench_location_conversation_merges"),
    ),
    (
        "location_conversations",
        """
        INSERT INTO bench_location_conversations (
            location_id, conversation_id, contact_id, last_message_at, last_message_channel,
            last_message_direction, last_message_status, last_message_preview,
            last_message_key, message_count, channels, unread_count, starred, inbox,
            deleted, merged_ids, first_message_at, sort_at, unread)
        WITH msg AS (
            SELECT l.*, coalesce(r.root_id, l.conversation_id) AS root
              FROM bench_location_conversation_messages l
              LEFT JOIN bench_location_conversation_roots r
                ON r.location_id = l.location_id AND r.conversation_id = l.conversation_id
        ), last AS (
            SELECT DISTINCT ON (location_id, root) *
              FROM msg ORDER BY location_id, root, date_added DESC NULLS LAST,
                                message_key DESC
        ), totals AS (
            SELECT location_id, root, count(*) AS message_count,
                   array_agg(DISTINCT channel ORDER BY channel) AS channels,
                   min(date_added) AS first_message_at
              FROM msg GROUP BY location_id, root
        ), merged AS (
            SELECT location_id, root_id AS root,
                   array_agg(conversation_id ORDER BY conversation_id) AS ids
              FROM bench_location_conversation_roots
             WHERE conversation_id <> root_id GROUP BY location_id, root_id
        ), keys AS (
            SELECT location_id, root FROM totals
            UNION
            SELECT f.location_id, f.conversation_id FROM bench_location_conversation_flags f
             WHERE NOT EXISTS (
                   SELECT FROM bench_location_conversation_roots r
                    WHERE r.location_id = f.location_id
                      AND r.conversation_id = f.conversation_id
                      AND r.root_id <> f.conversation_id)
        )
        SELECT k.location_id, k.root, coalesce(last.contact_id, f.contact_id),
               last.date_added, last.channel, last.direction, last.status, last.preview,
               last.message_key, coalesce(t.message_count, 0),
               coalesce(t.channels, '{}'), f.unread_count, f.starred, f.inbox, f.deleted,
               coalesce(merged.ids, '{}'), t.first_message_at,
               coalesce(last.date_added, '0001-01-01 00:00:00+00'),
               coalesce(f.unread_count, 0) > 0
          FROM keys k
          LEFT JOIN totals t ON t.location_id = k.location_id AND t.root = k.root
          LEFT JOIN last ON last.location_id = k.location_id AND last.root = k.root
          LEFT JOIN bench_location_conversation_flags f
            ON f.location_id = k.location_id AND f.conversation_id = k.root
          LEFT JOIN merged ON merged.location_id = k.location_id AND merged.root = k.root
        """,
    ),
)
"""(projection, statement), run in this order in one transaction."""
