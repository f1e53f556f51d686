//! Start-up: database, catalog, keys, writer, spool and its drainer, router, listener — in
//! that order — and a graceful stop that stops the drainer, then drains the writer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use std::collections::HashMap;

use crate::config::Settings;
use crate::connector::{Connector, LoadOptions};
use crate::domain::ClickKeyRing;
use crate::http::{AppState, router};
use crate::mapping::MappingSet;
use crate::pipeline::Pipeline;
use crate::pipeline::{Hook, Hooks};
use crate::store::catalog::Catalog;
use crate::store::{self, Conn, Db, Store, StoreError, catalog, writer};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the database")]
    Store(#[from] StoreError),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Definitions(Vec<crate::connector::ConfigError>),
    #[error("cannot open the spool")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("cannot start the delivery worker")]
    Worker(#[from] crate::delivery::worker::WorkerError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A built gateway, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    header_timeout: std::time::Duration,
    state: AppState,
    writer_task: tokio::task::JoinHandle<()>,
    checkpoint_task: Option<tokio::task::JoinHandle<()>>,
    worker: Option<crate::delivery::worker::RunningWorker>,
    drainer: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        // Before anything records: metrics sent before the recorder exists are lost.
        crate::telemetry::metrics();
        let store::Opened {
            writer: mut target,
            read,
            checkpointer,
        } = store::open(&settings.server.database_url, settings.writer.connections).await?;
        let (keys, mut snapshot) = match &mut target {
            Db::Sqlite(conn) => prepare(&mut Conn::from(conn), settings).await?,
            Db::Postgres(_) => {
                // From the read pool: the writer pool's connections belong to the writer.
                let Db::Postgres(pool) = &read else {
                    return Err(StoreError::Corrupt("mixed backends".into()).into());
                };
                let mut conn = pool.acquire().await.map_err(StoreError::from)?;
                prepare(&mut Conn::from(&mut *conn), settings).await?
            }
        };
        snapshot.postbacks = Arc::new(settings.outbound.postbacks.clone());
        let hooks = load_hooks(settings, &snapshot)?;
        // New deliveries' first attempts go from the writer straight to this process's
        // worker; their apalis jobs are the fallback (`outbound::handoff`).
        let (handoff, handoffs) = match (settings.outbound.worker, settings.outbound.handoff_grace)
        {
            (true, Some(grace)) => {
                let (handoff, rx) = crate::outbound::Handoff::channel(
                    crate::outbound::handoff::QUEUE_PER_SLOT * settings.outbound.concurrency,
                    grace,
                );
                (Some(handoff), Some(rx))
            }
            _ => (None, None),
        };
        let (writer, writer_task) = writer::spawn(target, settings.writer.max_batch, handoff);
        let checkpoint_task = checkpointer.map(|conn| {
            tokio::spawn(store::sqlite::checkpoint_loop(
                conn,
                std::time::Duration::from_secs(1),
            ))
        });

        // The delivery worker shares the database; apalis' tables were created by
        // `store::open`, so the writer can enqueue before the worker runs.
        let outbound_pool = store::worker_pool(&settings.server.database_url, 2).await?;
        let worker = if settings.outbound.worker {
            // The attempts' row loader keeps one connection (and on PostgreSQL the outcome
            // recorder another); apalis' polls and acks, the leases and put-backs share the
            // other four.
            let pool = store::delivery_pool(&settings.server.database_url, 6).await?;
            Some(crate::delivery::worker::spawn(
                pool,
                &settings.outbound,
                handoffs,
                Some(writer.clone()),
            )?)
        } else {
            None
        };

        let addr = settings.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?
            .port();
        let spool = if settings.spool.enabled {
            Some(crate::spool::Spool::open(&settings.spool)?)
        } else {
            None
        };
        let pipeline = Pipeline {
            catalog: Arc::new(ArcSwap::from_pointee(snapshot)),
            keys: Arc::new(keys),
            store: Store::new(read, writer),
            hooks: Arc::new(hooks),
            spool: spool.clone(),
        };
        // The drainer replays through its own clone of the pipeline (and so holds a writer
        // handle): it must stop before the writer can.
        let drainer = spool.map(|spool| {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(crate::spool::drain::run(spool, pipeline.clone(), stopped));
            (stop, task)
        });
        let state = AppState {
            pipeline,
            admin_token: settings.server.admin_token.as_deref().map(Arc::from),
            client_ip_header: settings.server.client_ip_header.as_deref().map(Arc::from),
            max_body_bytes: settings.server.max_body_bytes,
            deliveries: crate::delivery::admin::Deliveries::new(outbound_pool),
            worker: worker.as_ref().map(|w| w.health()),
        };
        Ok(Self {
            listener,
            port,
            header_timeout: settings.server.header_timeout,
            state,
            writer_task,
            checkpoint_task,
            worker,
            drainer,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests and waits for the
    /// writer to commit everything queued.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(port = self.port, "Listening.");
        crate::http::serve::serve(
            self.listener,
            router(self.state),
            self.header_timeout,
            shutdown,
        )
        .await?;
        // What is still spooled waits on disk for the next start.
        if let Some((stop, task)) = self.drainer {
            let _ = stop.send(());
            if let Err(e) = task.await {
                tracing::error!(error = %e, "Spool drainer ended abnormally.");
            }
        }
        // In-flight attempts finish and are recorded (through the writer, on SQLite);
        // queued ones wait in the database.
        if let Some(worker) = self.worker {
            worker.stop().await;
        }
        // The router, the drainer and the worker (and with them every writer handle) are
        // gone: the writer drains and stops.
        if let Err(e) = self.writer_task.await {
            tracing::error!(error = %e, "Writer task ended abnormally.");
        }
        if let Some(task) = self.checkpoint_task {
            task.abort();
        }
        Ok(())
    }
}

/// Writes the configured catalog, then reads it back with the click-ID keys.
async fn prepare(
    conn: &mut Conn<'_>,
    settings: &Settings,
) -> Result<(ClickKeyRing, Catalog), StoreError> {
    catalog::upsert_from_settings(conn, settings).await?;
    let keys = store::click_keys(conn, settings).await?;
    let snapshot =
        catalog::load(conn, settings.network_currency, settings.fx_rates.clone()).await?;
    Ok((keys, snapshot))
}

/// Compiles every connector and mapping file; any error stops start-up. Enabled connectors
/// get their secrets; the others are compiled with placeholders, so a broken file is found
/// now rather than the day it is enabled. A gateway without `[[hooks]]` and without the
/// directories needs neither.
pub fn load_hooks(settings: &Settings, catalog: &Catalog) -> Result<Hooks, StartupError> {
    let dirs = &settings.hooks;
    if dirs.enabled.is_empty() && !dirs.connectors_dir.is_dir() && !dirs.mappings_dir.is_dir() {
        return Ok(Hooks::default());
    }
    let options = LoadOptions {
        env: settings.hooks.env.clone(),
        ..LoadOptions::default()
    };
    let mut errors = Vec::new();
    if dirs.connectors_dir.is_dir() {
        let offline = LoadOptions {
            env: crate::connector::Env::ProcessOrPlaceholder,
            ..LoadOptions::default()
        };
        match crate::connector::definition_files(&dirs.connectors_dir) {
            Ok(files) => {
                let enabled = |path: &std::path::Path| {
                    let stem = path.file_stem();
                    dirs.enabled
                        .iter()
                        .any(|spec| stem.is_some_and(|s| *s == *spec.connector.as_str()))
                };
                for path in files.iter().filter(|p| !enabled(p)) {
                    if let Err(e) = Connector::load(path, &offline) {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let mut sources = HashMap::new();
    for spec in &settings.hooks.enabled {
        let path = settings
            .hooks
            .connectors_dir
            .join(format!("{}.toml", spec.connector));
        let Some(advertiser) = catalog.advertiser_by_key(&spec.advertiser) else {
            errors.push(crate::connector::ConfigError::new(
                &settings.path,
                0,
                format!("hooks: no advertiser {:?}", spec.advertiser),
            ));
            continue;
        };
        match Connector::load(&path, &options) {
            Ok(connector) => {
                sources.insert(
                    spec.connector.clone(),
                    Hook {
                        connector,
                        advertiser_id: advertiser.id,
                    },
                );
            }
            Err(e) => errors.push(e),
        }
    }
    let mappings = if dirs.enabled.is_empty() && !dirs.mappings_dir.is_dir() {
        Ok(MappingSet::default())
    } else {
        MappingSet::load_dir(&dirs.mappings_dir)
    };
    let mappings = match mappings {
        Ok(m) => Some(m),
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    };
    match (errors.is_empty(), mappings) {
        (true, Some(mappings)) => {
            for (name, hook) in &mut sources {
                hook.connector.prune_to(mappings.json_paths(name));
            }
            Ok(Hooks { sources, mappings })
        }
        _ => Err(StartupError::Definitions(errors)),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("Shutting down: finishing in-flight requests.");
}
