//! The JSON Schemas of the log and the WebSocket protocol, as files under
//! `schemas/json/` embedded into the binary. Anyone can validate against the
//! files without Tidings; the integration tests validate every event they
//! cause against them.

/// The schema of the event envelope.
pub const EVENT_ENVELOPE: &str = include_str!("../json/event-envelope.v2.json");

/// The schema of the command envelope on `tidings.commands`.
pub const COMMAND_ENVELOPE: &str = include_str!("../json/command-envelope.v2.json");

include!(concat!(env!("OUT_DIR"), "/schema_files.rs"));

/// `(type, version, schema)` of every event's `data`: the files named
/// `events/<type>.v<version>.json`.
pub fn events() -> impl Iterator<Item = (&'static str, u32, &'static str)> {
    FILES.iter().filter_map(|(path, schema)| {
        let name = path.strip_prefix("events/")?.strip_suffix(".json")?;
        let (event_type, version) = name.rsplit_once(".v")?;
        Some((event_type, version.parse().ok()?, *schema))
    })
}

/// A schema file by its path under `schemas/json/`.
pub fn file(path: &str) -> Option<&'static str> {
    FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, schema)| *schema)
}

/// Every published schema file, `<sha256>  <path>` per line (as `sha256sum`
/// prints it, runnable as `cd schemas/json && sha256sum -c ../published.sha256`).
/// A published file is never edited: a change is a new version (a new file,
/// and for an event an upcaster from the old one). A test holds every file
/// to its line, and every file to having one.
pub const PUBLISHED: &str = include_str!("../published.sha256");

/// The schema of an event's `data`, by type and version.
pub fn event_data(event_type: &str, version: u32) -> Option<&'static str> {
    events()
        .find(|(t, v, _)| *t == event_type && *v == version)
        .map(|(_, _, schema)| schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelopes_and_every_event_are_embedded() {
        assert_eq!(file("event-envelope.v2.json"), Some(EVENT_ENVELOPE));
        assert_eq!(file("command-envelope.v2.json"), Some(COMMAND_ENVELOPE));
        assert!(events().any(|(t, v, _)| t == "account.registered" && v == 1));
    }

    #[test]
    fn every_command_type_has_a_payload_schema_and_no_other() {
        let envelope: serde_json::Value = serde_json::from_str(COMMAND_ENVELOPE).unwrap();
        let mut types: Vec<&str> = envelope["properties"]["command"]["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        types.sort_unstable();
        let mut schemas: Vec<&str> = FILES
            .iter()
            .filter_map(|(path, _)| path.strip_prefix("commands/")?.strip_suffix(".v1.json"))
            .collect();
        schemas.sort_unstable();
        assert_eq!(types, schemas);
    }

    #[test]
    fn no_published_schema_ever_changes_and_every_schema_is_published() {
        use sha2::{Digest, Sha256};
        let published: std::collections::BTreeMap<&str, &str> = PUBLISHED
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let (hash, path) = line.split_once("  ").expect("<sha256>  <path>");
                (path.trim(), hash.trim())
            })
            .collect();
        for (path, hash) in &published {
            let schema = file(path).unwrap_or_else(|| {
                panic!("schemas/json/{path} was published and is gone: published schemas stay")
            });
            let digest: String = Sha256::digest(schema.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                &digest, hash,
                "schemas/json/{path} was published and has changed: a published schema is never edited; \
                 write the change as a new version (and, for an event, an upcaster from the old one)"
            );
        }
        for (path, _) in FILES {
            assert!(
                published.contains_key(path),
                "schemas/json/{path} is not published: add its line to schemas/published.sha256 \
                 (cd schemas/json && sha256sum {path} >> ../published.sha256)"
            );
        }
    }

    #[test]
    fn every_embedded_schema_is_json_with_an_id() {
        for schema in FILES.iter().map(|f| f.1) {
            let value: serde_json::Value = serde_json::from_str(schema).expect("schema is JSON");
            assert!(value["$id"].is_string(), "schema without $id: {schema}");
        }
    }
}
