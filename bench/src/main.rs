//! # tidings-bench
//!
//! The benchmark suite of Tidings: one command that runs every scenario
//! against a running stack, each beside the limit it is compared with,
//! measured in the same run on the same cores (machines are shared and
//! noisy: the ratios carry the conclusion). It prints a table and writes
//! `results.json`, `results.md` and PNG plots. `scripts/bench` builds
//! everything, brings the stack up and runs it.
//!
//! It is a black-box client: HTTP and WebSocket to Tidings, `/proc` for CPU
//! and memory, rdkafka, sqlx and argon2 for the limits. It depends on no
//! Tidings crate.
//!
//! # Layout
//!
//! - `plan`: the command line and the sizes of a full or `--quick` run;
//! - `tidings`: the REST client, and the `tidings serve` process the bench
//!   starts with its own database, topic and Redis prefixes;
//! - `ws`: sockets (Tidings, npm `ws`, `socket.io`), the echo server, and
//!   the tracker that matches each frame to the write that caused it;
//! - `peers`: the npm servers of `bench/peers/`;
//! - `limits`: produce + commit, raw produce rate, broker round trip, raw
//!   argon2id rate;
//! - `scenarios/`: one file per scenario, what they share in `mod.rs`;
//! - `procfs`, `stats`, `report`, `plots`: measuring and telling.
//!
//! Start reading at [`run`], then `scenarios/write_to_frame.rs`.

#![forbid(unsafe_code)]

mod limits;
mod peers;
mod plan;
mod plots;
mod procfs;
mod report;
mod scenarios;
mod stats;
mod tidings;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;

use crate::plan::{Args, Plan, SCENARIOS};
use crate::plots::Plots;
use crate::report::{Report, Scenario};
use crate::scenarios::Ctx;
use crate::tidings::{Api, Engine, Managed, Target, User};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    tokio::select! {
        outcome = run(args, &run_id) => match outcome {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("tidings-bench: {e:#}");
                ExitCode::from(2)
            }
        },
        // The run is dropped: the processes it started are killed with it
        // (kill_on_drop); what they made is removed here.
        () = interrupted() => {
            eprintln!("tidings-bench: interrupted; removing this run's databases and keys");
            if let Err(e) = tidings::clean_up_run(&run_id).await {
                eprintln!("tidings-bench: cleaning up: {e:#}");
            }
            ExitCode::from(130)
        }
    }
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Runs the suite; whether every scenario ran (a scenario that could not
/// run is in the report with its error, and fails the command: CI runs
/// `--quick` to prove the bench works, and asserts nothing about speed).
async fn run(args: Args, run_id: &str) -> anyhow::Result<bool> {
    let plan = Plan::new(&args);
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if plan.quick {
            "bench/results/quick"
        } else {
            "bench/results"
        })
    });
    // Each socket is a descriptor in this process and one in the server.
    let wanted = (plan
        .sockets
        .max(plan.fanout_sockets)
        .max(plan.gateway_sockets)
        + plan.burst
        + 4_096) as u64;
    let files = procfs::raise_open_files(wanted)?;
    let started_at = chrono::Utc::now();
    let machine = procfs::Machine::read();
    let mut setup = plan.describe();
    eprintln!(
        "tidings-bench ({} run) on {}; results in {}",
        if plan.quick { "quick" } else { "full" },
        machine.describe(),
        out.display()
    );
    if files < wanted {
        setup.push(format!(
            "open files limited to {files} (wanted {wanted}): sockets past it fail"
        ));
    }
    setup.push(machine_state(&args.kafka).await);
    let peers = peers::installed(&args.peers);
    if let Err(why) = &peers {
        setup.push(why.clone());
    }

    let mut scenarios = Vec::new();
    let mut plots = Plots::default();
    let selected: Vec<&str> = SCENARIOS
        .into_iter()
        .filter(|s| Plan::runs(&args, s))
        .collect();
    let primary = match &args.tidings_bin {
        Some(_) => Engine::Durable,
        None => args.engine,
    };
    let (found, drawn, lines) = run_target(
        &args,
        &plan,
        primary,
        &args.kafka,
        &selected,
        run_id,
        peers.clone(),
    )
    .await;
    scenarios.extend(found);
    plots.merge(drawn);
    setup.extend(lines);

    // The memory engine's throughput, on a Tidings of its own against the
    // memory-engine broker (only when the bench starts Tidings itself).
    if args.tidings_bin.is_some() && selected.contains(&"throughput") {
        if args.memory_kafka == "none" {
            setup.push("memory-engine throughput left out (--memory-kafka none)".into());
        } else if listening(&args.memory_kafka).await {
            let (found, drawn, lines) = run_target(
                &args,
                &plan,
                Engine::Memory,
                &args.memory_kafka,
                &["throughput"],
                run_id,
                peers.clone(),
            )
            .await;
            scenarios.extend(found);
            plots.merge(drawn);
            setup.extend(lines);
        } else {
            setup.push(format!(
                "memory-engine throughput left out: nothing listens on {} (scripts/stack test-broker-up)",
                args.memory_kafka
            ));
        }
    }

    let report = Report {
        mode: if plan.quick { "quick" } else { "full" }.to_owned(),
        started_at: started_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        finished_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        commit: args.commit.clone(),
        machine,
        setup,
        scenarios,
    };
    report.write(&out)?;
    let drawn = match plots::load_font() {
        Ok(()) => plots.draw(&out)?,
        Err(why) => {
            eprintln!("tidings-bench: {why}: no plots");
            Vec::new()
        }
    };
    if let Some(readme) = &args.readme {
        report.update_readme(readme, &out, &drawn)?;
        eprintln!("tidings-bench: {} updated", readme.display());
    }
    println!("\n{}", report.text_table());
    for scenario in &report.scenarios {
        for note in &scenario.notes {
            println!("- {}: {note}", scenario.title);
        }
    }
    println!(
        "\nwritten: {}",
        [out.join("results.json"), out.join("results.md")]
            .iter()
            .chain(&drawn)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(report.scenarios.iter().all(|s| s.error.is_none()))
}

/// What else the machine is doing before the run: the figures are read
/// with it (the brokers and cores are shared).
async fn machine_state(broker: &str) -> String {
    let broker_pid = procfs::find_broker(broker).ok();
    let pids: Vec<(&str, u32)> = broker_pid.iter().map(|p| ("broker", *p)).collect();
    let watch = procfs::CpuWatch::start(&pids);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = watch.stop();
    format!(
        "before the run: the machine {:.0} % busy, the broker on {broker} at {}, {} other tidings processes running",
        cpu.machine_busy_pct,
        cpu.pct("broker")
            .map_or_else(|| "?".to_owned(), |p| format!("{p:.0} % of a core")),
        procfs::tidings_running()
    )
}

async fn listening(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Runs `selected` scenarios against one Tidings (started here with
/// `--tidings-bin`, else the one at `--base`); a scenario that fails is
/// reported with its error and the others still run.
async fn run_target(
    args: &Args,
    plan: &Plan,
    engine: Engine,
    broker: &str,
    selected: &[&str],
    run_id: &str,
    peers: Result<PathBuf, String>,
) -> (Vec<Scenario>, Plots, Vec<String>) {
    let mut setup = Vec::new();
    let mut managed = None;
    let prepared = prepare(args, plan, engine, broker, run_id, &mut managed, &mut setup).await;
    let mut scenarios = Vec::new();
    let mut plots = Plots::default();
    match prepared {
        Err(e) => {
            let mut failed = Scenario::new(
                &format!("setup-{}", engine.label()),
                &format!("Setup, {} engine", engine.label()),
            );
            failed.error = Some(format!("{e:#}"));
            eprintln!(
                "tidings-bench: setup of the {} engine failed: {e:#}",
                engine.label()
            );
            scenarios.push(failed);
        }
        Ok((target, users, scratch)) => {
            // The memory-engine broker, for the scenarios that start
            // Tidings processes of their own on it too.
            let memory_kafka = (args.tidings_bin.is_some()
                && engine == Engine::Durable
                && args.memory_kafka != "none"
                && listening(&args.memory_kafka).await)
                .then(|| args.memory_kafka.clone());
            let ctx = Ctx {
                plan: plan.clone(),
                target,
                users: Arc::new(users),
                scratch,
                peers,
                run: format!("{run_id}{}", &engine.label()[..1]),
                run_id: run_id.to_owned(),
                tidings_bin: args.tidings_bin.clone(),
                memory_kafka,
                plots: Mutex::new(Plots::default()),
            };
            for id in selected {
                eprintln!("tidings-bench: {id} ({} engine)…", engine.label());
                let started = Instant::now();
                let result = if procfs::cpu_seconds(ctx.target.pid).is_some() {
                    let (waited, busy) = settle(&ctx.target.api, ctx.target.pid, plan.settle).await;
                    if busy.is_some() || waited > Duration::from_secs(5) {
                        eprintln!(
                            "  waited {:.0} s for Tidings to go quiet{}",
                            waited.as_secs_f64(),
                            busy.as_deref()
                                .map(|b| format!(" ({b})"))
                                .unwrap_or_default()
                        );
                    }
                    // A Tidings whose roles own no partition (its group
                    // rebalancing after an overload) answers no write: what
                    // a scenario would measure then is a timeout.
                    match ctx.target.api.wait_ready(plan.settle).await {
                        Ok(()) => run_scenario(&ctx, id).await,
                        Err(e) => Err(e.context(format!(
                            "Tidings is not ready (GET /ready){}",
                            managed
                                .as_ref()
                                .map(|m| format!("; its log: {}", m.log.display()))
                                .unwrap_or_default()
                        ))),
                    }
                    .map(|mut s| {
                        if let Some(busy) = &busy {
                            s.notes.push(format!(
                                "when it started, after {:.0} s of waiting, Tidings had not worked off what came before: {busy}",
                                waited.as_secs_f64()
                            ));
                        }
                        s
                    })
                } else {
                    Err(anyhow::anyhow!(
                        "the Tidings under test (pid {}) is gone{}",
                        ctx.target.pid,
                        managed
                            .as_ref()
                            .map(|m| format!("; its log: {}", m.log.display()))
                            .unwrap_or_default()
                    ))
                };
                let mut scenario = result.unwrap_or_else(|e| {
                    let mut failed = Scenario::new(id, id);
                    failed.error = Some(format!("{e:#}"));
                    failed
                });
                scenario.seconds = started.elapsed().as_secs_f64();
                if let Some(error) = &scenario.error {
                    eprintln!("tidings-bench: {id} did not run: {error}");
                }
                scenarios.push(scenario);
            }
            if let Err(e) = ctx.scratch.drop().await {
                eprintln!("tidings-bench: dropping the scratch database: {e:#}");
            }
            plots = ctx.plots.into_inner().unwrap_or_default();
        }
    }
    if let Some(managed) = managed {
        if let Err(e) = managed.stop().await {
            eprintln!("tidings-bench: cleaning up after Tidings: {e:#}");
        }
    }
    (scenarios, plots, setup)
}

/// Below this share of a core over a second, Tidings counts as quiet (it
/// idles at a few per cent: heartbeats, parked fetches).
const QUIET_PCT: f64 = 15.0;

/// Waits until Tidings is quiet and has decided and projected everything
/// (its lag metrics at 0), `within` at most: a scenario must not pay for
/// the backlog the previous one left. How long it waited, and what was
/// still left if it gave up.
pub(crate) async fn settle(api: &Api, pid: u32, within: Duration) -> (Duration, Option<String>) {
    let started = Instant::now();
    loop {
        let watch = procfs::CpuWatch::start(&[("tidings", pid)]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu = watch.stop().pct("tidings").unwrap_or(0.0);
        let (commands, events) = api.lag().await.unwrap_or((0.0, 0.0));
        if cpu < QUIET_PCT && commands == 0.0 && events == 0.0 {
            return (started.elapsed(), None);
        }
        if started.elapsed() >= within {
            return (
                started.elapsed(),
                Some(format!(
                    "{cpu:.0} % of a core busy, {commands} commands not decided, {events} events not projected"
                )),
            );
        }
    }
}

async fn run_scenario(ctx: &Ctx, id: &str) -> anyhow::Result<Scenario> {
    use crate::scenarios::*;
    match id {
        "unloaded" => unloaded::run(ctx).await,
        "write-to-frame" => write_to_frame::run(ctx).await,
        "throughput" => throughput::run(ctx).await,
        "idle" => idle::run(ctx).await,
        "registrations" => registrations::run(ctx).await,
        "sockets" => sockets::run(ctx).await,
        "fanout" => fanout::run(ctx).await,
        "gateways" => gateways::run(ctx).await,
        "social" => social::run(ctx).await,
        "rooms" => rooms::run(ctx).await,
        other => anyhow::bail!("no scenario {other}"),
    }
}

/// The Tidings to measure (started if the bench has the binary), its
/// broker's pid, the scratch topic and table, and the users registered
/// before the scenarios.
async fn prepare(
    args: &Args,
    plan: &Plan,
    engine: Engine,
    broker: &str,
    run_id: &str,
    managed: &mut Option<Managed>,
    setup: &mut Vec<String>,
) -> anyhow::Result<(Target, Vec<User>, limits::Scratch)> {
    let (base, pid, prefix) = match &args.tidings_bin {
        Some(bin) => {
            let name = format!("tidings_bench_{run_id}_{}", engine.label());
            let started = Managed::start(bin, broker, &name).await?;
            let found = (started.base.clone(), started.pid(), started.name.clone());
            setup.push(format!(
                "{} engine: Tidings {} started by the bench on {} (broker {broker}, prefix {})",
                engine.label(),
                bin.display(),
                started.base,
                started.name
            ));
            *managed = Some(started);
            found
        }
        None => {
            let base = args.base.clone().context("--base or --tidings-bin")?;
            let port = Api::new(&base)?.port();
            let pid = match args.tidings_pid {
                Some(pid) => pid,
                None => procfs::find_tidings(port)?,
            };
            setup.push(format!(
                "{} engine: the running Tidings at {base} (pid {pid}, broker {broker})",
                engine.label()
            ));
            (base, pid, args.topic_prefix.clone())
        }
    };
    let broker_pid = match args.broker_pid {
        Some(pid) if engine == Engine::Durable || args.tidings_bin.is_none() => pid,
        _ => procfs::find_broker(broker)?,
    };
    let api = Api::new(&base)?;
    api.wait_ready(Duration::from_secs(60)).await?;
    let scratch = limits::Scratch::create(
        broker,
        &format!("tidings_bench_{run_id}_{}", engine.label()),
    )
    .await?;
    let users = register_users(&api, plan, &format!("p{run_id}{}", &engine.label()[..1])).await?;
    let target = Target {
        engine,
        api,
        pid,
        broker: broker.to_owned(),
        broker_pid,
        topic_prefix: prefix,
    };
    Ok((target, users, scratch))
}

/// The users the writes are spread over, registered a few at a time
/// (password hashing is bounded to the cores; a refusal is retried).
async fn register_users(api: &Api, plan: &Plan, prefix: &str) -> anyhow::Result<Vec<User>> {
    let started = Instant::now();
    let users: Vec<anyhow::Result<User>> = futures_util::stream::iter(0..plan.users)
        .map(|i| {
            let name = format!("{prefix}_{i}");
            async move { Ok(api.register(&name).await?.user) }
        })
        .buffered(plan.register_concurrency)
        .collect()
        .await;
    let users = users.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!(
        "tidings-bench: {} users registered in {:.1} s",
        users.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(users)
}
