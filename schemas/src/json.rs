//! The JSON Schemas of the log and the WebSocket protocol, as files under
//! `schemas/json/` embedded into the binary. Anyone can validate against the
//! files without Tidings; the integration tests validate every event they
//! cause against them.

/// The schema of the event envelope.
pub const EVENT_ENVELOPE: &str = include_str!("../json/event-envelope.v1.json");

/// The schema of the command envelope on `tidings.commands`.
pub const COMMAND_ENVELOPE: &str = include_str!("../json/command-envelope.v1.json");

/// `(type, version, schema)` of every event's `data`.
pub const EVENTS: &[(&str, u32, &str)] = &[
    (
        "account.registered",
        1,
        include_str!("../json/events/account.registered.v1.json"),
    ),
    (
        "account.profile_updated",
        1,
        include_str!("../json/events/account.profile_updated.v1.json"),
    ),
    (
        "claim.claimed",
        1,
        include_str!("../json/events/claim.claimed.v1.json"),
    ),
    (
        "claim.released",
        1,
        include_str!("../json/events/claim.released.v1.json"),
    ),
];

/// The schema of an event's `data`, by type and version.
pub fn event_data(event_type: &str, version: u32) -> Option<&'static str> {
    EVENTS
        .iter()
        .find(|(t, v, _)| *t == event_type && *v == version)
        .map(|(_, _, schema)| *schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_schema_is_json_with_an_id() {
        for schema in [EVENT_ENVELOPE, COMMAND_ENVELOPE]
            .into_iter()
            .chain(EVENTS.iter().map(|e| e.2))
        {
            let value: serde_json::Value = serde_json::from_str(schema).expect("schema is JSON");
            assert!(value["$id"].is_string(), "schema without $id: {schema}");
        }
    }
}
