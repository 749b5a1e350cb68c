-- Posts, comments, reactions, follows and notifications: all derived from
-- the post, follow and inbox aggregates in tidings.events, and rebuilt from
-- them. Who may see a followers-only post is answered from `follows`.

-- A deleted post keeps its row (`deleted_at`) so that every read can hide it
-- and everything that points to it (comments, reactions, notifications).
CREATE TABLE posts (
    id            uuid PRIMARY KEY,
    author_id     uuid NOT NULL,
    text          text NOT NULL,
    visibility    text NOT NULL CHECK (visibility IN ('public', 'followers')),
    created_at    timestamptz NOT NULL,
    deleted_at    timestamptz,
    -- Kept exact by the projector, one reaction and one comment at a time.
    like_count    bigint NOT NULL DEFAULT 0,
    comment_count bigint NOT NULL DEFAULT 0
);
-- A user's posts and the home feed, newest first (the cursor is
-- (created_at, id)).
CREATE INDEX posts_author_created ON posts (author_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;

-- Each user's one reaction to a post.
CREATE TABLE post_reactions (
    post_id    uuid NOT NULL,
    user_id    uuid NOT NULL,
    reaction   text NOT NULL,
    reacted_at timestamptz NOT NULL,
    PRIMARY KEY (post_id, user_id)
);

CREATE TABLE comments (
    id         uuid PRIMARY KEY,
    post_id    uuid NOT NULL,
    author_id  uuid NOT NULL,
    text       text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX comments_post_created ON comments (post_id, created_at, id);

CREATE TABLE follows (
    follower_id uuid NOT NULL,
    followee_id uuid NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX follows_followee ON follows (followee_id, created_at DESC);
CREATE INDEX follows_follower_created ON follows (follower_id, created_at DESC);

-- What a user is told about: a like, a comment, a follow or a mention. The
-- id derives from the event that caused it, so projecting again adds none.
CREATE TABLE notifications (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('like', 'reaction', 'comment', 'follow', 'mention')),
    actor_id   uuid NOT NULL,
    post_id    uuid,
    comment_id uuid,
    -- For a `reaction`: which one.
    reaction   text,
    created_at timestamptz NOT NULL,
    read_at    timestamptz
);
CREATE INDEX notifications_user_created ON notifications (user_id, created_at DESC, id DESC);
CREATE INDEX notifications_user_unread ON notifications (user_id) WHERE read_at IS NULL;
