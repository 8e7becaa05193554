//! The command line: `run`, `check-config`, `migrate`, `keys` and
//! `campaign watch`. Each subcommand loads and validates the config first; a
//! bad config exits 64 before anything is opened or bound.

// The command line's output is its interface (see `print_stdout` in Cargo.toml).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod campaign_watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::app::{self, App, Control, StartError};
use crate::config::{Config, LogFormat, Profiles};
use crate::secrets::KeyMode;
use crate::store::{Store, Window};

#[derive(Debug, Parser)]
#[command(
    name = "agentline",
    version,
    about = "Voice agents on the phone network"
)]
pub struct Cli {
    /// Daemon config file; with no file the daemon runs on its defaults.
    /// Every key can also be set with AGENTLINE_<TABLE>__<KEY>.
    #[arg(
        long,
        global = true,
        default_value = "agentline.toml",
        env = "AGENTLINE_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run,
    /// Validate the config and the SIP profiles, and print what would run.
    CheckConfig,
    /// Apply the store's migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Follow outbound campaigns.
    #[command(subcommand)]
    Campaign(CampaignCommand),
}

#[derive(Debug, Subcommand)]
enum CampaignCommand {
    /// Show a campaign's live progress (contacts by state, attempts, answer
    /// rate, ETA), read from the store every second, until it is completed
    /// or canceled, or Ctrl-C.
    Watch {
        /// Campaign id (`cmp_...`).
        id: String,
        /// Stop watching after this many seconds anyway.
        #[arg(long, default_value_t = 86_400)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it once.
    Create {
        #[arg(long)]
        name: String,
        /// Make an `al_test_` key.
        #[arg(long)]
        test: bool,
        /// Requests per minute for this key (default: the daemon's).
        #[arg(long)]
        rate_limit: Option<u32>,
        /// What the key may do: `admin` (everything, the default for a key
        /// made here), `calls` (calls, agents, numbers, campaigns; reads the
        /// rest) or `read` (GET routes and the event stream).
        #[arg(long, default_value = "admin", value_parser = ["admin", "calls", "read"])]
        scope: String,
    },
    /// List keys (prefixes only).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The config file path is given explicitly, so it must exist; the default
    // path may be absent (the daemon then runs on defaults).
    let explicit = std::env::args_os()
        .any(|a| a == "--config" || a.to_string_lossy().starts_with("--config="))
        || std::env::var_os("AGENTLINE_CONFIG").is_some();
    let config = match Config::load(&cli.config, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agentline: invalid configuration: {e}");
            return ExitCode::from(64);
        }
    };
    init_logging(&config, matches!(cli.command, Command::Run));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentline: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run => run(config).await,
            Command::CheckConfig => check_config(&config),
            Command::Migrate => {
                let store = open_store(&config).await?;
                println!("migrations applied to the {} store", store.backend());
                Ok(())
            }
            Command::Keys(cmd) => keys(&config, cmd).await,
            Command::Campaign(cmd) => campaign(&config, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentline: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(config: &Config, daemon: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| {
            let level = if daemon {
                config.log.level.as_str()
            } else {
                "warn"
            };
            tracing_subscriber::EnvFilter::new(level)
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: Config) -> Result<(), StartError> {
    let metrics = match crate::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed");
            None
        }
    };
    crate::memory::start_trimming();
    let app = App::build(config, metrics).await?;
    let (control, control_rx) = watch::channel(Control::Run);
    let signals = app::watch_signals(control, app.reloader())
        .await
        .map_err(|source| StartError::Bind {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
    tokio::spawn(signals);
    app.run(control_rx).await
}

fn check_config(config: &Config) -> Result<(), StartError> {
    let profiles = Profiles::load_dir(&config.profiles.dir)?;
    println!("config is valid");
    println!("  api.listen        {}", config.api.listen);
    println!("  sip.listen        {} (udp, tcp)", config.sip.listen);
    let public = if config.sip.public_address.is_empty() {
        "(the listening address)"
    } else {
        config.sip.public_address.as_str()
    };
    println!("  sip.public        {public}");
    println!(
        "  rtp ports         {}-{}",
        config.sip.rtp_ports.low, config.sip.rtp_ports.high
    );
    println!("  store             {}", redact_url(&config.store.url));
    let node = [&config.cluster.node_id, &config.store.node]
        .into_iter()
        .find(|n| !n.is_empty())
        .map_or_else(
            || {
                let kept = config.cluster.data_dir.join(crate::cluster::NODE_ID_FILE);
                format!("(kept in {})", kept.display())
            },
            Clone::clone,
        );
    println!("  node              {node}");
    println!(
        "  profiles          {} ({} trunks)",
        config.profiles.dir.display(),
        profiles.by_name.len()
    );
    for p in profiles.by_name.values() {
        let reg = p
            .registration
            .as_ref()
            .map_or("no registration".to_string(), |r| {
                format!(
                    "registers {}@{} every {} s",
                    r.username, r.registrar, r.expires
                )
            });
        let out = p
            .outbound
            .as_ref()
            .map_or("no outbound".to_string(), |o| match o.ping_seconds {
                Some(s) => format!("outbound via {} (OPTIONS every {s} s)", o.proxy),
                None => format!("outbound via {}", o.proxy),
            });
        println!(
            "    {:<16} {reg}; {out}; inbound from {} networks; max {} calls, {} cps",
            p.name,
            p.inbound.allow.len(),
            p.limits.max_calls,
            p.limits.cps
        );
    }
    Ok(())
}

/// Hides the password of a store URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

async fn open_store(config: &Config) -> Result<Store, StartError> {
    let store = Store::connect(&config.store.url).await?;
    store.migrate().await?;
    Ok(store)
}

async fn keys(config: &Config, cmd: KeysCommand) -> Result<(), StartError> {
    let store = open_store(config).await?;
    match cmd {
        KeysCommand::Create {
            name,
            test,
            rate_limit,
            scope,
        } => {
            let mode = if test { KeyMode::Test } else { KeyMode::Live };
            let scope = crate::api::Scope::parse(&scope).ok_or_else(|| {
                StartError::Config(crate::config::ConfigError::new(
                    "-",
                    "scope",
                    "must be admin, calls or read",
                ))
            })?;
            let (record, secret) =
                crate::api::create_api_key(&store, &name, mode, scope, rate_limit.map(i64::from))
                    .await?;
            audit_cli(&store, "create", &record.id, "keys create").await;
            eprintln!(
                "created {} ({}, scope {}); the key is shown only now:",
                record.id, record.name, record.scope
            );
            println!("{secret}");
        }
        KeysCommand::List => {
            let page = store
                .list_api_keys(Window {
                    limit: i64::MAX,
                    offset: 0,
                })
                .await?;
            for k in page.items {
                let state = k.revoked_at.map_or("active".to_string(), |t| {
                    format!("revoked {}", t.to_rfc3339())
                });
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{state}",
                    k.id, k.prefix, k.mode, k.scope, k.name
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let k = store.revoke_api_key(&id).await.map_err(|e| match e {
                crate::store::StoreError::NotFound => StartError::Config(
                    crate::config::ConfigError::new("-", "id", format!("no API key {id}")),
                ),
                e => e.into(),
            })?;
            audit_cli(&store, "delete", &k.id, "keys revoke").await;
            println!("revoked {} ({})", k.id, k.prefix);
        }
    }
    Ok(())
}

/// Writes a key change made on the command line to the audit log, as the
/// API's middleware writes its own (`actor` `cli`, no key, no address). The
/// change is made already: a failure is told, not fatal.
async fn audit_cli(store: &crate::store::Store, action: &str, key_id: &str, command: &str) {
    let row = crate::store::audit::NewAudit {
        id: &crate::api::new_audit_id(),
        key_id: None,
        action,
        object_type: "api-keys",
        object_id: Some(key_id),
        method: "CLI",
        route: command,
        status: 0,
        client_addr: None,
        request_id: None,
        actor: "cli",
    };
    if let Err(e) = store.insert_audit(row).await {
        eprintln!("warning: the audit event was not written: {e}");
    }
}

async fn campaign(config: &Config, cmd: CampaignCommand) -> Result<(), StartError> {
    let store = open_store(config).await?;
    match cmd {
        CampaignCommand::Watch { id, timeout } => {
            let ended = campaign_watch::watch(&store, &id, Duration::from_secs(timeout))
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::NotFound => StartError::Config(
                        crate::config::ConfigError::new("-", "id", format!("no campaign {id}")),
                    ),
                    e => e.into(),
                })?;
            match ended {
                campaign_watch::Ended::Finished => {}
                campaign_watch::Ended::Interrupted => eprintln!("stopped watching"),
                campaign_watch::Ended::TimedOut => eprintln!("stopped watching after {timeout} s"),
            }
        }
    }
    Ok(())
}
