//! `cache-server`: parses flags, loads the config, installs logging and runs the server until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use cache_server::config::{Config, Settings};
use clap::Parser;

/// gRPC cache service (cache.v1.CacheService) with Redis and an in-memory fallback tier.
///
/// Every setting can also come from the environment (names in brackets) or a TOML file (--config or
/// CACHE_CONFIG); precedence is defaults < file < env < flags.
#[derive(Debug, Parser)]
#[command(name = "cache-server", version, about, long_about)]
struct Cli {
    /// TOML config file [env: CACHE_CONFIG]
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Asks a running server's grpc.health.v1 service; exits 0 when SERVING, 1 otherwise (for Docker's
    /// HEALTHCHECK and scripts).
    HealthCheck {
        /// The server to ask.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        endpoint: String,
        /// The service to ask about ("" for the whole process).
        #[arg(long, default_value = "cache.v1.CacheService")]
        service: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s")]
        timeout: cache_server::config::HumanDuration,
    },
    /// Prints the configuration table (every setting's environment variable, flag, file key and default)
    /// in Markdown, as the documentation shows it.
    ConfigTable,
}

/// Runs `health-check`: one grpc.health.v1 Check within `timeout`.
fn health_check(endpoint: String, service: String, timeout: std::time::Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("health-check: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answer = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.clone(),
            })
            .await?
            .into_inner()
            .status;
        anyhow::Ok(status)
    });
    match answer {
        Ok(status)
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            println!("{endpoint} {service:?}: SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            let name = tonic_health::pb::health_check_response::ServingStatus::try_from(status)
                .map_or("UNKNOWN", |s| s.as_str_name());
            println!("{endpoint} {service:?}: {name}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("{endpoint} {service:?}: no answer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let malloc = cache_server::tune_malloc();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HealthCheck {
            endpoint,
            service,
            timeout,
        }) => return health_check(endpoint, service, timeout.0),
        Some(Command::ConfigTable) => {
            print!("{}", cache_server::config::table::markdown());
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let config = match Config::load(cli.settings, cli.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cache-server: {e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cache-server: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let service_name = env
            .get("OTEL_SERVICE_NAME")
            .map_or("cache-server", String::as_str);
        let endpoint = cache_server::otlp_endpoint(&env);
        let telemetry =
            cache_server::init_telemetry(config.log_format, service_name, endpoint.as_deref())?;
        tracing::debug!(?malloc, "allocator settings applied");
        let served = serve(config).await;
        telemetry.shutdown().await;
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cache-server failed");
            eprintln!("cache-server: {e:#}");
            if e.downcast_ref::<cache_server::SetupError>().is_some() {
                ExitCode::from(64)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(
        listen = %config.listen,
        mode = config.backend.as_str(),
        redis = %config.redis.display_target(),
        memory_capacity_mb = config.memory_capacity_bytes >> 20,
        max_value_bytes = config.max_value_bytes,
        "starting cache-server"
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {}: {e}", config.listen))?;
    cache_server::run(config, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
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
}
