//! Command line: `serve` (default), `migrate`, `reindex`, `reshard`,
//! `openapi`.

use clap::{Parser, Subcommand};

use chat_api::config::Config;
use chat_api::startup::{self, Application};

/// mimalloc: the request path allocates many small, short-lived buffers, and
/// glibc's malloc showed up at about 10% of the service's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Chat API with write-behind persistence.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the default). Runs migrations first.
    Serve {
        #[command(flatten)]
        config: Box<Config>,
        /// Do not run migrations before serving.
        #[arg(long, env = "SKIP_MIGRATIONS")]
        skip_migrations: bool,
    },
    /// Create the database if needed and apply the migrations, then exit.
    Migrate {
        #[command(flatten)]
        database: Database,
    },
    /// Rebuild the search index from MariaDB, in batches, with a progress
    /// bar: Meilisearch's with `MEILI_URL`, else the term index in MariaDB
    /// (after an upgrade from the FULLTEXT backend, this makes the stored
    /// messages searchable). Safe while the service runs: documents are
    /// replaced, and search hits are always re-read from MariaDB.
    Reindex {
        #[command(flatten)]
        config: Box<Config>,
        /// Messages per batch (one add_or_replace call, or one transaction).
        /// 5,000 reindexed 200,000 messages 1.5× to 2.5× faster than 1,000
        /// into either backend (BENCHMARKS.md, figure 20).
        #[arg(long, default_value_t = 5000)]
        batch_size: i64,
        /// Meilisearch tasks queued at once (Meilisearch merges queued
        /// batches into one indexing pass); not used by the term index.
        #[arg(long, default_value_t = chat_api::jobs::indexer::REINDEX_TASKS_IN_FLIGHT)]
        tasks_in_flight: usize,
    },
    /// Change the number of queue shards (`QUEUE_SHARDS`) of the data in
    /// Redis, from the count Redis records to `--to`. Creates are refused
    /// (503) while it runs; it waits for every queue to drain, moves each
    /// application's keys to its new shard, then records the new count.
    /// Restart every instance with `QUEUE_SHARDS` set to the new count.
    Reshard {
        #[command(flatten)]
        config: Box<Config>,
        /// The new shard count.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        to: u16,
        /// How long to wait for the queues to drain, in seconds.
        #[arg(long, default_value_t = 120)]
        drain_timeout_secs: u64,
    },
    /// Write the OpenAPI spec to a file (default `openapi/openapi.json`).
    Openapi {
        /// Where to write it.
        #[arg(long, default_value = "openapi/openapi.json")]
        out: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    startup::load_dotenv();
    chat_api::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve {
            config,
            skip_migrations,
        }) => serve(*config, !skip_migrations).await,
        None => {
            // `chat-api` alone is `chat-api serve`, with settings from the environment.
            let Cli {
                command:
                    Some(Command::Serve {
                        config,
                        skip_migrations,
                    }),
            } = Cli::parse_from(["chat-api", "serve"])
            else {
                unreachable!()
            };
            serve(*config, !skip_migrations).await
        }
        Some(Command::Migrate {
            database: Database { database_url },
        }) => {
            let database_url =
                chat_api::config::secret_from_file("DATABASE_URL", |n| std::env::var(n).ok())?
                    .unwrap_or(database_url);
            chat_api::store::ensure_database(&database_url).await?;
            let pool = chat_api::store::connect_lazy(&database_url, 2)?;
            chat_api::store::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Some(Command::Reindex {
            mut config,
            batch_size,
            tasks_in_flight,
        }) => {
            config.read_secret_files()?;
            reindex(&config, batch_size, tasks_in_flight).await
        }
        Some(Command::Reshard {
            mut config,
            to,
            drain_timeout_secs,
        }) => {
            config.read_secret_files()?;
            reshard(&config, to, drain_timeout_secs).await
        }
        Some(Command::Openapi { out }) => {
            std::fs::write(&out, chat_api::http::spec_json() + "\n")?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

async fn serve(mut config: Config, migrate: bool) -> anyhow::Result<()> {
    config.read_secret_files()?;
    let app = Application::build(config, migrate).await?;
    app.run_until(startup::shutdown_signal()).await
}

async fn reshard(config: &Config, to: u16, drain_timeout_secs: u64) -> anyhow::Result<()> {
    use chat_api::writebehind::keys::Keys;
    let pool = startup::redis_pool(config)?;
    let prefix = config.redis_key_prefix.clone();
    let probe = chat_api::writebehind::Buffer::new(
        pool,
        Keys::new(prefix.clone()),
        std::time::Duration::from_secs(60),
        u64::MAX,
    );
    let recorded: Option<String> = probe.raw_get(&probe.keys().shard_count_key()).await?;
    let from: u16 = match recorded.as_deref() {
        None => anyhow::bail!("Redis records no shard count under {prefix}: nothing to reshard"),
        Some(chat_api::writebehind::shards::RESHARDING) => anyhow::bail!(
            "a reshard was interrupted: set {prefix}queue-shards back to the old count, then run reshard again"
        ),
        Some(n) => n.parse()?,
    };
    if from == to {
        println!("the data is already in {to} shards");
        return Ok(());
    }
    let report = chat_api::writebehind::shards::reshard(
        &probe,
        &Keys::with_shards(prefix.clone(), from),
        &Keys::with_shards(prefix, to),
        std::time::Duration::from_secs(3),
        std::time::Duration::from_secs(drain_timeout_secs),
    )
    .await?;
    println!(
        "resharded from {from} to {to} shards: {} applications, {} idempotency keys, {} dirty marks moved; start the instances with QUEUE_SHARDS={to}",
        report.apps, report.idempotency_keys, report.dirty_marks
    );
    Ok(())
}

/// The MariaDB URL of the commands that need nothing else.
#[derive(clap::Args)]
struct Database {
    /// MariaDB connection URL (or the file `DATABASE_URL_FILE` names).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = chat_api::config::DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    database_url: String,
}

async fn reindex(config: &Config, batch_size: i64, tasks_in_flight: usize) -> anyhow::Result<()> {
    use chat_api::store::search::meili::MeiliSearch;
    let meili = match &config.meili_url {
        Some(url) => {
            let meili = MeiliSearch::new(url, config.meili_api_key.as_deref(), &config.meili_index)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            meili.ensure_index().await?;
            Some(meili)
        }
        None => None,
    };
    let pool = chat_api::store::connect_lazy(&config.database_url, 2)?;
    let total = chat_api::store::messages::count_live(&pool).await?;
    let bar = indicatif::ProgressBar::new(total.max(0) as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} messages ({per_sec}, eta {eta})",
        )?,
    );
    let started = std::time::Instant::now();
    let indexed =
        chat_api::jobs::indexer::reindex(&pool, meili.as_ref(), batch_size, tasks_in_flight, |n| {
            bar.inc(n)
        })
        .await?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    let rate = indexed as f64 / secs.max(1e-3);
    match &meili {
        Some(_) => println!(
            "reindexed {indexed} messages into Meilisearch index `{}` in {secs:.1} s ({rate:.0} messages/s)",
            config.meili_index
        ),
        None => println!(
            "reindexed {indexed} messages into the term index in MariaDB in {secs:.1} s ({rate:.0} messages/s)"
        ),
    }
    Ok(())
}
