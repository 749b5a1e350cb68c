//! Integration tests of Tidings against real Kafka (tansu), PostgreSQL and
//! Redis, and real HTTP and WebSocket clients. `scripts/test` brings the
//! services up first. Each test has its own database, topic prefix and Redis
//! key prefix, and removes them at the end.

mod accounts;
mod analysts;
mod cache;
mod compose;
mod contract;
mod crashes;
mod demo;
mod halts;
mod idempotency;
mod limits;
mod mail;
mod media;
mod operations;
mod overload;
mod presence;
mod profile;
mod race;
mod realtime;
mod resume;
mod rooms;
mod social;
mod subscriptions;
mod support;
mod webhooks;
