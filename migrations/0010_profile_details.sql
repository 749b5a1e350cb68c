-- The extended profile of an account (phone number, address, education,
-- location, website, birthday) and which of its fields the owner shows to
-- others. Derived from `account.details_updated`, whose data is the whole
-- extended profile after the change, and rebuilt from the log with
-- `accounts`. An account without a row has no details and shows none.
CREATE TABLE account_details (
    user_id       uuid PRIMARY KEY,
    phone_number  text,
    address       text,
    education     text,
    location      text,
    website       text,
    birthday      date,
    -- Names of the fields others see (`GET /api/users/{id}`); the rest only
    -- the owner does.
    public_fields text[] NOT NULL DEFAULT '{}',
    updated_at    timestamptz NOT NULL,
    -- The account's event sequence this row reflects: it orders the cache's
    -- writes (a row read before the change never overwrites one after it).
    version       bigint NOT NULL
);
