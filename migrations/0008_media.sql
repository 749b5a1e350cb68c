-- Media items (images and short videos) and the posts that show them, from
-- the media and post aggregates in tidings.events. The bytes are in the
-- media store (a directory or an S3 bucket), under `object_key` and
-- `thumbnail_key`; nothing here holds them.

-- A deleted item keeps its row (`deleted_at`) until the sweeper has removed
-- its objects from the store; then the sweeper removes the row. A rebuild
-- from the log brings such rows back, and the sweeper removes them again
-- (removing an object that is gone already is harmless).
CREATE TABLE media (
    id                     uuid PRIMARY KEY,
    owner_id               uuid NOT NULL,
    content_type           text NOT NULL,
    size                   bigint NOT NULL,
    width                  integer,
    height                 integer,
    sha256                 text NOT NULL,
    object_key             text NOT NULL,
    thumbnail_key          text,
    thumbnail_content_type text,
    uploaded_at            timestamptz NOT NULL,
    -- When a post first took it: from then on it is never swept.
    attached_at            timestamptz,
    deleted_at             timestamptz
);
-- What the sweeper looks for: items no post took, oldest first.
CREATE INDEX media_unattached ON media (uploaded_at) WHERE attached_at IS NULL AND deleted_at IS NULL;
CREATE INDEX media_deleted ON media (deleted_at) WHERE deleted_at IS NOT NULL;

-- The media of a post, in the order the author gave them.
CREATE TABLE post_media (
    post_id  uuid NOT NULL,
    position smallint NOT NULL,
    media_id uuid NOT NULL,
    PRIMARY KEY (post_id, position)
);
