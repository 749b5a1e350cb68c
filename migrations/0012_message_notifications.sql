-- Rooms notify: a message tells the other participants who are offline,
-- one `message` notification per participant and room, pointing at the
-- first message they have not read, until their read marker passes it
-- (then it is read, and the next message starts another); an invitation
-- tells the invitee (`invite`).
ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
    CHECK (kind IN ('like', 'reaction', 'comment', 'follow', 'mention', 'message', 'invite'));
ALTER TABLE notifications ADD COLUMN room_id uuid, ADD COLUMN message_id uuid;
-- At most one unread `message` notification per participant and room.
CREATE UNIQUE INDEX notifications_unread_message ON notifications (user_id, room_id)
    WHERE kind = 'message' AND read_at IS NULL;
