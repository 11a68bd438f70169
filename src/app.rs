//! The daemon's top: signals, the admin endpoint, the systemd conversation (READY, STATUS,
//! watchdog, STOPPING) and the exit code. The stages and their order belong to
//! [`Pipeline`]: `run` starts it, waits for a signal or a failure, and stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::auth::{Authenticator, GrpcPolicy};
use crate::budget::Budget;
use crate::columnar::SchemaDir;
use crate::config::Config;
use crate::pipeline::{Pipeline, Security, Shared};
use crate::telemetry::admin::{Admin, AdminState};
use crate::telemetry::{Heartbeats, Notifier, Stats};

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Clean shutdown: everything flushed.
    Clean,
    /// A second signal or the grace period ran out before everything was flushed.
    Forced,
}

/// Checks, before anything starts, everything the config names that is not in the config
/// itself: creates `node.data_dir`, checks the declared columns against the stored schemas
/// (a declared type that files do not hold), reads the security files and the bridges' files. A failure
/// here is the config's fault (a path, a credential that was not loaded): `fleetlake run` exits
/// 78 with [`explain`]'s message, which the unit does not restart.
pub fn prepare(config: &Config) -> Result<Security> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "node.data_dir: cannot create {} (a relative path is taken from the working directory)",
            config.data_dir.display()
        )
    })?;
    let stored = SchemaDir::open(&config.data_dir)?.load()?;
    for declared in &config.declared {
        if let Some(schema) = stored.get(&declared.table) {
            declared.check_stored(schema).map_err(anyhow::Error::msg)?;
        }
    }
    let (mqtt, grpc) = load_security(config)?;
    for b in &config.bridges {
        crate::bridge::check_files(b).with_context(|| format!("bridge `{}`", b.name))?;
    }
    Ok(Security { mqtt, grpc })
}

/// The error's whole chain on one line, with what to do when the cause is a systemd credential
/// that was never loaded (its directory under `/run/credentials` is then missing or mode 000,
/// so the read fails with "No such file" or "Permission denied").
pub fn explain(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    match credential_name(&text) {
        Some(name) => format!(
            "{text} — this is a systemd credential that was not loaded: create \
             /etc/fleetlake/credentials/{name}, then add \
             `LoadCredential={name}:/etc/fleetlake/credentials/{name}` to the unit \
             (`systemctl edit fleetlake`; the unit has the line commented out), or point the \
             config key at a file the service can read"
        ),
        None => text,
    }
}

/// `name` of the first `/run/credentials/{unit}/{name}` in `text`.
fn credential_name(text: &str) -> Option<&str> {
    let rest = &text[text.find("/run/credentials/")? + "/run/credentials/".len()..];
    let (_unit, rest) = rest.split_once('/')?;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ':' || c == ',' || c == ')')
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|n| !n.is_empty())
}

/// Reads the security files of `[mqtt.auth]`, `[mqtt.tls]`, `[grpc.auth]` and `[grpc.tls]`
/// (a bad file stops the start, naming it).
pub fn load_security(config: &Config) -> Result<(Authenticator, GrpcPolicy)> {
    let a = &config.mqtt.auth;
    let auth = Authenticator::load(
        a.password_file.as_deref(),
        a.acl_file.as_deref(),
        a.allow_anonymous,
        a.identity,
    )
    .context("reading mqtt.auth")?;
    if let Some(tls) = &config.mqtt.tls {
        tls.files
            .build()
            .context("reading mqtt.tls (cert, key, client_ca)")?;
    }
    let g = &config.grpc.auth;
    let tokens = match &g.tokens_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading grpc.auth.tokens_file {}", path.display()))?;
            let tokens = crate::auth::Tokens::parse(&text)
                .with_context(|| format!("grpc.auth.tokens_file {}", path.display()))?;
            Some(tokens)
        }
        None => None,
    };
    if let Some(files) = &config.grpc.tls {
        files
            .build()
            .context("reading grpc.tls (cert, key, client_ca)")?;
    }
    let policy = GrpcPolicy::new(tokens, g.services.clone(), g.allow_anonymous);
    Ok((auth, policy))
}

/// On each SIGHUP, reads the TLS certificates, keys and client CAs again: new handshakes use
/// them, open connections keep theirs. A bad file is logged and the old config kept. Without
/// TLS, SIGHUP is logged and ignored (never the default: ending the process).
fn reload_on_sighup(
    configs: Vec<Arc<crate::tls::ServerTls>>,
) -> Result<impl std::future::Future<Output = ()>> {
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    Ok(async move {
        while hup.recv().await.is_some() {
            if configs.is_empty() {
                tracing::info!("SIGHUP: nothing to reload (no mqtt.tls, no grpc.tls)");
            }
            for tls in &configs {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS files unusable; keeping the old certificate");
                    }
                }
            }
        }
    })
}

/// Runs the daemon until SIGTERM/SIGINT (or a pipeline failure: an error, so the process
/// exits non-zero and a supervisor restarts it; the restart replays the WAL).
pub async fn run(config: Config, security: Security) -> Result<Exit> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let shared = Shared {
        budget: Budget::new(config.memory_budget),
        stats: Arc::new(Stats::default()),
        heartbeats: Heartbeats::new(),
        notifier: Arc::new(Notifier::from_env()),
    };
    // Up before the WAL replay: /healthz answers and /readyz says 503 until ready.
    let admin = start_admin(&config, &shared).await?;
    let mut pipeline = Pipeline::start(&config, shared.clone(), security).await?;
    tokio::spawn(reload_on_sighup(pipeline.tls.clone())?);
    let stopping = Arc::new(AtomicBool::new(false));
    announce_ready(&config, &pipeline, &shared, &admin, &stopping);

    let failure = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = int.recv() => { tracing::info!("SIGINT: shutting down"); None }
        failure = pipeline.failed() => Some(failure),
    };
    stopping.store(true, Ordering::Relaxed);
    admin.state.ready.store(false, Ordering::Relaxed);
    shared.notifier.stopping();
    if let Some(failure) = failure {
        tracing::error!(error = %failure, "the pipeline failed: exiting so that a restart replays the log");
        pipeline.abandon();
        log_stopped(&shared);
        anyhow::bail!(
            "the pipeline failed; unacknowledged messages were not stored, acknowledged ones are in the WAL"
        );
    }
    let clean = pipeline
        .stop(config.shutdown_grace, second_signal(&mut term, &mut int))
        .await;
    log_stopped(&shared);
    // Stopped: `systemctl status` shows no stale "stopping" line.
    shared.notifier.status("");
    Ok(if clean { Exit::Clean } else { Exit::Forced })
}

/// A second SIGTERM or SIGINT during shutdown.
async fn second_signal(term: &mut Signal, int: &mut Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The last log line: counters, CPU, peak RSS, and the budget still held (0 after a clean
/// stop: every holding was given back).
fn log_stopped(shared: &Shared) {
    let (cpu_seconds, peak_rss_kib) = crate::telemetry::process_usage().unwrap_or_default();
    tracing::info!(
        stats = ?shared.stats,
        cpu_seconds,
        peak_rss_kib,
        budget_used_bytes = shared.budget.in_use(),
        "fleetlake stopped"
    );
}

/// The admin endpoint, if configured, and the state it reports.
struct AdminHandle {
    state: Arc<AdminState>,
    addr: Option<std::net::SocketAddr>,
}

async fn start_admin(config: &Config, shared: &Shared) -> Result<AdminHandle> {
    let state = Arc::new(AdminState {
        stats: shared.stats.clone(),
        budget: shared.budget.clone(),
        ready: AtomicBool::new(false),
    });
    let Some(listen) = config.admin_listen else {
        return Ok(AdminHandle { state, addr: None });
    };
    let admin = Admin::bind(listen, state.clone())
        .await
        .with_context(|| format!("binding admin.listen {listen}"))?;
    let addr = admin.local_addr()?;
    tokio::spawn(admin.run());
    tracing::info!(admin_listen = %addr, "admin endpoint listening");
    Ok(AdminHandle {
        state,
        addr: Some(addr),
    })
}

/// Marks the daemon ready (admin, systemd, the "fleetlake ready" log line) and starts the
/// status line and the watchdog.
fn announce_ready(
    config: &Config,
    pipeline: &Pipeline,
    shared: &Shared,
    admin: &AdminHandle,
    stopping: &Arc<AtomicBool>,
) {
    let off =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    let addrs = pipeline.addrs;
    let (mqtt, tls, grpc) = (off(addrs.mqtt), off(addrs.mqtt_tls), off(addrs.grpc));
    admin.state.ready.store(true, Ordering::Relaxed);
    shared.notifier.ready(&format!(
        "recovered {} WAL records; MQTT on {mqtt}, TLS on {tls}; gRPC on {grpc}",
        pipeline.recovered_records
    ));
    let summary = {
        let (stats, budget) = (shared.stats.clone(), shared.budget.clone());
        move || status_line(&stats, &budget)
    };
    let notifier = shared.notifier.clone();
    if let Some(timeout) = notifier.watchdog_timeout() {
        let beats = shared.heartbeats.clone();
        let summary = summary.clone();
        tokio::spawn(feed_watchdog(
            notifier.clone(),
            beats,
            timeout,
            stopping.clone(),
            summary,
        ));
    }
    tokio::spawn(refresh_status(notifier, stopping.clone(), summary));
    tracing::info!(
        mqtt_listen = %mqtt,
        mqtt_tls_listen = %tls,
        grpc_listen = %grpc,
        admin_listen = %off(admin.addr),
        output = %config.output.describe(),
        node = %config.node_id,
        "fleetlake ready"
    );
}

/// Sends `STATUS=` within [`STATUS_EVERY`] of a change (only when the line changed) until
/// shutdown starts.
async fn refresh_status(
    notifier: Arc<Notifier>,
    stopping: Arc<AtomicBool>,
    summary: impl Fn() -> String,
) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut last = String::new();
    loop {
        tick.tick().await;
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        let line = summary();
        if line != last {
            notifier.status(&line);
            last = line;
        }
    }
}

/// How often the `STATUS=` line is checked for a change.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The `STATUS=` line after startup: a summary for `systemctl status`.
fn status_line(stats: &Stats, budget: &Budget) -> String {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mqtt = load(&stats.messages_qos0) + load(&stats.messages_qos1) + load(&stats.messages_qos2);
    let spooled = match load(&stats.spool_files) {
        0 => String::new(),
        n => format!("; {n} files waiting for upload"),
    };
    format!(
        "ready; {} MQTT connections; {mqtt} MQTT messages, {} gRPC points; {} files ({} rows) published{spooled}; memory budget {}% used",
        load(&stats.connections_open),
        load(&stats.grpc_points),
        load(&stats.files_published),
        load(&stats.rows_published),
        budget.in_use() * 100 / budget.total().max(1),
    )
}

/// Beats older than this mean a stage is stuck (stages beat at least once a second).
const STALL: Duration = Duration::from_millis(2500);

/// Sends `WATCHDOG=1` (with a fresh `STATUS=` line) every half `timeout` while every stage
/// beats; stops (so systemd restarts the service) when one is stuck. During shutdown stages
/// end on purpose: keep feeding then.
async fn feed_watchdog(
    notifier: Arc<Notifier>,
    heartbeats: Arc<Heartbeats>,
    timeout: Duration,
    stopping: Arc<AtomicBool>,
    summary: impl Fn() -> String,
) {
    let mut tick = tokio::time::interval(timeout / 2);
    let mut reported = false;
    loop {
        tick.tick().await;
        match heartbeats.stalled(STALL) {
            Some((stage, age)) if !stopping.load(Ordering::Relaxed) => {
                if !reported {
                    reported = true;
                    tracing::error!(
                        stage,
                        stalled_ms = age.as_millis() as u64,
                        "a pipeline stage is stuck: watchdog pings stop, systemd will restart fleetlake"
                    );
                }
            }
            _ => {
                reported = false;
                // The status rides along: `systemctl status` shows live figures.
                notifier.send(&format!("WATCHDOG=1\nSTATUS={}", summary()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_name_is_read_from_a_run_credentials_path() {
        let text =
            "reading mqtt.auth: /run/credentials/fleetlake.service/mqtt.passwd: Permission denied";
        assert_eq!(credential_name(text), Some("mqtt.passwd"));
        assert_eq!(
            credential_name("open /run/credentials/x.service/tls.key (No such file)"),
            Some("tls.key")
        );
        assert_eq!(
            credential_name("reading /etc/fleetlake/mqtt.acl: line 1"),
            None
        );
        assert_eq!(credential_name("/run/credentials/fleetlake.service/"), None);
    }
}
