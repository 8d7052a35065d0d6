//! Connecting, and creating the streams that do not exist yet.

use super::*;

impl NatsQueue {
    /// Connects and creates the streams that do not exist yet. `spill`:
    /// the engine's state folder, where accepted events wait while
    /// JetStream elects a leader (`spill_after_ms`); none for an operator's
    /// command, which must not forward what a running engine keeps.
    pub(crate) async fn open(
        nats: &NatsConfig,
        settings: &QueueSettings,
        spill: Option<&std::path::Path>,
    ) -> Result<Arc<NatsQueue>, QueueError> {
        let client = connect(&nats.url, nats.credentials.as_deref(), true).await?;
        let connect = |reason: String, source: Option<async_nats::Error>| QueueError::Connect {
            url: nats.url.clone(),
            reason,
            source: source.map(Arc::from),
        };
        let room = settings.max_record_bytes;
        let max_payload = client.server_info().max_payload;
        if max_payload < room {
            tracing::warn!(
                "the NATS server takes messages of up to {max_payload} bytes: deliveries with \
                 bodies near max_body_bytes will fail to queue; raise max_payload in \
                 nats-server's configuration to at least {room}"
            );
        }
        let js = jetstream::new(client);
        let p = &nats.prefix;
        let replicas = nats.replicas;
        let make = |name: &str, subjects: Vec<String>| stream::Config {
            name: format!("{p}_{name}"),
            subjects,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let dead_age = settings.dead_letter_age;
        let configs = [
            stream::Config {
                retention: stream::RetentionPolicy::WorkQueue,
                ..make("DELIVERIES", vec![format!("{p}.d.*"), format!("{p}.h.*")])
            },
            stream::Config {
                max_age: dead_age,
                ..make("DEAD", vec![format!("{p}.x.>")])
            },
            stream::Config {
                // Each engine purges past `history_hours` hourly; this is
                // the backstop, and one copy per delivery.
                max_age: settings.history.delivered.max(Duration::from_secs(3600))
                    + Duration::from_secs(3600),
                max_messages_per_subject: 1,
                ..make("DELIVERED", vec![format!("{p}.o.*.*")])
            },
            make("JOURNAL", vec![format!("{p}.j")]),
            stream::Config {
                max_messages_per_subject: 1,
                ..make("KEYS", vec![format!("{p}.k.*")])
            },
        ];
        let mut opened = Vec::new();
        for config in configs {
            let name = config.name.clone();
            // A cluster that is still forming (no leader yet, peers not all
            // known) refuses for a while: wait for it, up to a deadline.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut pause = Duration::from_millis(100);
            let stream = loop {
                match js.get_or_create_stream(config.clone()).await {
                    Ok(stream) => break stream,
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(
                            "cannot create or open the stream {name} yet ({e}); retrying"
                        );
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        return Err(connect(
                            format!(
                                "cannot create or open the stream {name} within 30 s (with \
                                 replicas = {replicas}, the cluster needs that many JetStream \
                                 servers)"
                            ),
                            Some(e.into()),
                        ));
                    }
                }
            };
            opened.push(stream);
        }
        let [deliveries, dead, mut delivered, journal, keys] =
            <[stream::Stream; 5]>::try_from(opened).unwrap();
        // Created by an engine that keeps less: keep as long as this one.
        let keep = settings.history.delivered + Duration::from_secs(3600);
        let current = delivered.cached_info().config.max_age;
        if !current.is_zero() && current < keep {
            let mut config = delivered.cached_info().config.clone();
            config.max_age = keep;
            match js.update_stream(config).await {
                Ok(_) => {
                    delivered = js.get_stream(format!("{p}_DELIVERED")).await.map_err(|e| {
                        connect(
                            "cannot open the stream of delivered deliveries".into(),
                            Some(e.into()),
                        )
                    })?
                }
                Err(e) => tracing::warn!(
                    "the stream {p}_DELIVERED keeps delivered deliveries less than \
                     delivery.history_hours, and cannot be changed: {e}"
                ),
            }
        }
        let streams = Streams {
            prefix: p.clone(),
            deliveries,
            dead,
            delivered,
            journal,
            keys,
        };
        let ack_wait = Duration::from_millis(nats.ack_wait_ms);
        let election_wait = Duration::from_millis(nats.election_wait_ms);
        // Opened with the spill off too, if a file is there: what an earlier
        // run kept is forwarded (and run again) still.
        let spill = match spill {
            Some(dir) if nats.spill_after_ms > 0 || dir.join(spill::SPILL_FILE).exists() => {
                Some(Arc::new(spill::Spill::open(
                    dir,
                    Duration::from_millis(nats.spill_after_ms),
                    election_wait,
                )?))
            }
            _ => None,
        };
        let queue = Arc::new_cyclic(|weak: &std::sync::Weak<NatsQueue>| {
            let me = weak.clone();
            let weak = weak.clone();
            let renew = tokio::spawn(async move {
                let every = ack_wait / 3;
                loop {
                    tokio::time::sleep(every).await;
                    let Some(queue) = weak.upgrade() else { return };
                    queue.renew().await;
                    if let Err(e) = queue.free_expired().await {
                        tracing::warn!("cannot requeue deliveries whose engine died: {e}");
                    }
                }
            });
            NatsQueue {
                js,
                streams,
                ack_wait,
                lease_ms: nats.ack_wait_ms + settings.attempt_timeout.as_millis() as u64,
                history: settings.history,
                state: Mutex::new(State::default()),
                released: watch::channel(false).0,
                renew,
                archive: tokio::sync::OnceCell::new(),
                election_wait,
                stall: Mutex::default(),
                spill,
                forward: Mutex::new(None),
                me: me.clone(),
            }
        });
        // Started once the queue exists: a task started inside
        // `new_cyclic` may run before it is built, find nothing to upgrade,
        // and end (which left kept events unforwarded until a restart).
        if let Some(spill) = queue.spill.clone() {
            let forward = tokio::spawn(NatsQueue::forward(Arc::downgrade(&queue), spill));
            *queue.forward.lock().unwrap() = Some(forward);
        }
        Ok(queue)
    }
}

/// A connection to NATS at `url` (servers comma-separated), with the
/// credentials file if given, up within 10 s or a clear error; it
/// reconnects by itself afterwards. Shared by the queue and the hooks
/// bucket.
///
/// `retry_first`: keep trying a first connection that fails, in the
/// background, for ever. Then a connection that is not up within the 10 s
/// is an error here but goes on trying: for a caller that connects once.
/// A caller that tries again itself passes `false`, so that no attempt
/// outlives its error.
pub(crate) async fn connect(
    url: &str,
    credentials: Option<&std::path::Path>,
    retry_first: bool,
) -> Result<async_nats::Client, QueueError> {
    let connect = |reason: String, source: Option<async_nats::Error>| QueueError::Connect {
        url: url.to_owned(),
        reason,
        source: source.map(Arc::from),
    };
    let mut options = async_nats::ConnectOptions::new()
        .name("wasmhooks")
        .max_reconnects(None);
    if retry_first {
        options = options.retry_on_initial_connect();
    }
    if let Some(creds) = credentials {
        options = options.credentials_file(creds).await.map_err(|e| {
            connect(
                format!("cannot read the credentials file {}", creds.display()),
                Some(e.into()),
            )
        })?;
    }
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    // A first connection within a few seconds, or a clear error.
    let client = tokio::time::timeout(Duration::from_secs(10), options.connect(servers))
        .await
        .map_err(|_| {
            connect(
                "no answer within 10 s: is nats-server running there, with JetStream (-js)?".into(),
                None,
            )
        })?
        .map_err(|e| connect("cannot connect".into(), Some(e.into())))?;
    tokio::time::timeout(Duration::from_secs(10), async {
        while client.connection_state() != async_nats::connection::State::Connected {
            client.flush().await.ok();
        }
    })
    .await
    .map_err(|_| {
        connect(
            "no answer within 10 s: is nats-server running there, with JetStream (-js)?".into(),
            None,
        )
    })?;
    Ok(client)
}
