//! compose.yaml cannot run here (no Docker engine), so its structure is
//! checked: the services and roles, ports, health checks, dependencies and
//! settings, read against what `scripts/stack` runs.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

fn compose() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/compose.yaml")).unwrap();
    let mut value: Value = serde_yaml_ng::from_str(&text).expect("compose.yaml is YAML");
    value.apply_merge().expect("merge keys resolve");
    value
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    }
}

#[test]
fn compose_runs_the_same_stack_as_the_stack_script() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for needed in [
        "kafka",
        "postgres",
        "redis",
        "init",
        "api",
        "deciders",
        "projector",
    ] {
        assert!(
            names.contains(needed),
            "compose.yaml has no {needed} service"
        );
    }

    // Every role of `tidings serve` runs in some service.
    let mut roles = BTreeSet::new();
    for (_, service) in services {
        let command = strings(&service["command"]);
        if let Some(i) = command.iter().position(|c| c == "--roles") {
            roles.extend(command[i + 1].split(',').map(str::to_owned));
        }
    }
    assert_eq!(
        roles,
        ["api", "deciders", "projector", "realtime", "webhooks"]
            .map(String::from)
            .into(),
        "roles run by compose"
    );

    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(
            !service["image"].is_null() || !service["build"].is_null(),
            "{name} has neither image nor build"
        );
        if let Some(depends) = service["depends_on"].as_mapping() {
            for (target, condition) in depends {
                let target = target.as_str().unwrap();
                assert!(names.contains(target), "{name} depends on unknown {target}");
                match condition["condition"].as_str() {
                    Some("service_healthy") => assert!(
                        !services[target]["healthcheck"]["test"].is_null(),
                        "{name} waits for {target} to be healthy, but it has no health check"
                    ),
                    Some("service_completed_successfully" | "service_started") => {}
                    other => panic!("{name} → {target}: unknown condition {other:?}"),
                }
            }
        }
    }
    for name in ["kafka", "postgres", "redis", "api"] {
        assert!(
            !services[name]["healthcheck"]["test"].is_null(),
            "{name} has no health check"
        );
    }
    assert!(strings(&services["api"]["healthcheck"]["test"])
        .iter()
        .any(|t| t.contains("/ready")));

    // Kafka in KRaft mode, topics made by `tidings topics` (never auto-created),
    // the log kept forever like the durable log of scripts/stack.
    let kafka = &services["kafka"]["environment"];
    assert!(kafka["KAFKA_PROCESS_ROLES"]
        .as_str()
        .unwrap()
        .contains("controller"));
    assert_eq!(
        kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].as_str(),
        Some("false")
    );
    assert_eq!(kafka["KAFKA_LOG_RETENTION_MS"].as_str(), Some("-1"));
    let init = strings(&services["init"]["entrypoint"]).join(" ");
    assert!(
        init.contains("tidings migrate") && init.contains("tidings topics"),
        "{init}"
    );

    // The same ports as scripts/stack, and the API published on loopback.
    let stack =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack")).unwrap();
    for (service, port) in [("postgres", "5432"), ("redis", "6379"), ("kafka", "9092")] {
        assert!(stack.contains(port), "scripts/stack does not use {port}");
        let settings = services["api"]["environment"].as_mapping().unwrap();
        let mentioned = settings
            .values()
            .filter_map(Value::as_str)
            .any(|v| v.contains(&format!("{service}:{port}")));
        assert!(
            mentioned,
            "the Tidings services do not reach {service}:{port}"
        );
    }
    assert!(strings(&services["api"]["ports"])
        .iter()
        .any(|p| p == "127.0.0.1:8080:8080"));

    // TLS terminated by nginx in front of the API, WebSocket upgrade included.
    let proxy = &services["proxy"];
    assert!(
        !proxy["depends_on"]["api"].is_null(),
        "the proxy does not wait for the API"
    );
    let mount = strings(&proxy["volumes"])
        .into_iter()
        .find(|v| v.contains("nginx.conf"))
        .expect("nginx.conf mounted");
    let local = mount.split(':').next().unwrap();
    let nginx =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(local))
            .unwrap();
    for needed in [
        "listen 443 ssl",
        "location /ws",
        "proxy_set_header Upgrade $http_upgrade",
        "$connection_upgrade",
        "server api:8080",
    ] {
        assert!(nginx.contains(needed), "deploy/nginx.conf lacks {needed}");
    }

    // Every TIDINGS_* variable compose sets is a real setting.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    for (name, service) in services {
        for key in service["environment"]
            .as_mapping()
            .into_iter()
            .flat_map(|m| m.keys())
        {
            let key = key.as_str().unwrap();
            if key.starts_with("TIDINGS_") {
                assert!(
                    example.contains(&format!("{key}=")),
                    "{} sets unknown {key}",
                    name.as_str().unwrap()
                );
            }
        }
    }
}
