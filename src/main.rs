//! Command line: `serve` (default), `migrate`, `openapi`.

use clap::{Parser, Subcommand};

use chat_api::config::Config;
use chat_api::startup::{self, Application};

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
        /// MariaDB connection URL.
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "mysql://root@127.0.0.1:3306/chat_api"
        )]
        database_url: String,
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
        Some(Command::Migrate { database_url }) => {
            chat_api::store::ensure_database(&database_url).await?;
            let pool = chat_api::store::connect_lazy(&database_url, 2)?;
            chat_api::store::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Some(Command::Openapi { out }) => {
            std::fs::write(&out, chat_api::http::spec_json() + "\n")?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

async fn serve(config: Config, migrate: bool) -> anyhow::Result<()> {
    let app = Application::build(config, migrate).await?;
    app.run_until(startup::shutdown_signal()).await
}
