-- Rooms, their participants, invitations and messages: all derived from the
-- room aggregates in tidings.events, and rebuilt from them. A direct
-- conversation is a room of kind 'direct' with its two users as members.

CREATE TABLE rooms (
    id                uuid PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('group', 'direct')),
    name              text NOT NULL,
    description       text,
    avatar_url        text,
    -- `json`, not `jsonb`: kept as the text the API wrote, so it reads back
    -- as written (jsonb's numbers can print as a number the API's JSON
    -- reader takes as out of range, and the projector would stop there).
    settings          json NOT NULL DEFAULT '{}',
    is_private        boolean NOT NULL,
    max_participants  integer NOT NULL,
    owner_id          uuid,
    -- Kept exact by the projector, one join or departure at a time.
    participant_count integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
-- The discoverable rooms, newest first (the cursor is (created_at, id)).
CREATE INDEX rooms_public ON rooms (created_at DESC, id DESC) WHERE kind = 'group' AND NOT is_private;

-- Who is in a room, with what role, and how far each has read (the
-- ordinal of the last message read: unread counts and receipts).
CREATE TABLE room_members (
    room_id           uuid NOT NULL,
    user_id           uuid NOT NULL,
    role              text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at         timestamptz NOT NULL,
    last_read         bigint NOT NULL DEFAULT 0,
    last_read_message uuid,
    read_at           timestamptz,
    PRIMARY KEY (room_id, user_id)
);
-- A user's rooms, newest joined first.
CREATE INDEX room_members_user ON room_members (user_id, joined_at DESC, room_id DESC);

-- Open invitations to private rooms (used up by the join).
CREATE TABLE room_invites (
    room_id    uuid NOT NULL,
    user_id    uuid NOT NULL,
    invited_by uuid NOT NULL,
    invited_at timestamptz NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- A deleted message keeps its row and place (a tombstone): its text is
-- gone, `deleted_at` says when.
CREATE TABLE room_messages (
    id         uuid PRIMARY KEY,
    room_id    uuid NOT NULL,
    author_id  uuid NOT NULL,
    ordinal    bigint NOT NULL,
    text       text,
    media_ids  uuid[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL,
    edited_at  timestamptz,
    deleted_at timestamptz,
    deleted_by uuid
);
-- History newest first, the `before` cursor, and unread counts (ordinals
-- after a member's last read).
CREATE UNIQUE INDEX room_messages_room_ordinal ON room_messages (room_id, ordinal DESC);
