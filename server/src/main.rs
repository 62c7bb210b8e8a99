//! The `pxeforge` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use pxeforge_server::{build_cmd, check, cli, config, serve};
use std::path::PathBuf;
use std::process::ExitCode;

// The serve path allocates many small, short-lived objects per request (headers, the template
// context, the rendered body); mimalloc's thread-local free lists beat glibc's arenas there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pxeforge",
    version,
    about = "PXE/iPXE boot server and image builder for CentOS Stream fleets",
    long_about = "pxeforge serves network boots (proxyDHCP or reservation DHCP, TFTP, HTTP iPXE scripts, \
                  kickstarts, assets and images) from a site directory of TOML profiles and hosts, and \
                  builds the images it serves.\n\n\
                  `serve` also runs the admin API on a listener of its own (the [admin] settings, \
                  default 127.0.0.1:8081, a bearer token in the state directory). The operator's \
                  commands hosts, events, pause, resume and reinstall are its clients: they find it \
                  through --site's pxeforge.toml, or --server URL and --token-file PATH \
                  (PXEFORGE_ADMIN_URL, PXEFORGE_ADMIN_TOKEN_FILE)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the site: HTTP (scripts, kickstarts, assets, images, events), TFTP and DHCP
    Serve {
        /// Site directory (holds pxeforge.toml, profiles/, hosts/, templates/, kickstarts/)
        #[arg(long, default_value = ".")]
        site: PathBuf,
        #[command(flatten)]
        overrides: config::Overrides,
    },
    /// Validate the whole site and render every template for every host; exit 1 on any error
    Check {
        /// Site directory
        #[arg(long, default_value = ".")]
        site: PathBuf,
    },
    /// Print what a host would be served (same code path as the server)
    Render {
        /// What to render
        #[arg(value_enum)]
        what: check::What,
        /// The host's MAC address (any common spelling)
        #[arg(long)]
        mac: Option<String>,
        /// iPXE platform the script is for (pcbios or efi); default from the profile's firmware
        #[arg(long)]
        platform: Option<String>,
        /// Base URL to render with (default: server.base_url, or http://<server.http>)
        #[arg(long)]
        base_url: Option<String>,
        /// State directory to read (a machine a match rule claimed is remembered there; default:
        /// the site's server.state_dir)
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Site directory
        #[arg(long, default_value = ".")]
        site: PathBuf,
    },
    /// Build images (images/NAME.toml) for their hardware profiles and publish them atomically
    Build(build_cmd::BuildArgs),
    /// Arm hosts to be installed again at their next network boot (admin API, or --state offline)
    #[command(long_about = pxeforge_server::reinstall_cmd::LONG_ABOUT)]
    Reinstall(pxeforge_server::reinstall_cmd::ReinstallArgs),
    /// List hosts and discovered machines; show, approve, adopt, reject or cancel one (admin API)
    #[command(long_about = cli::HOSTS_LONG_ABOUT)]
    Hosts(cli::HostsArgs),
    /// Print install and discovery events, or follow them as they arrive (admin API)
    #[command(long_about = cli::EVENTS_LONG_ABOUT)]
    Events(cli::EventsArgs),
    /// Pause installs: every host that would install boots its local disk instead (admin API)
    #[command(
        long_about = "Pause installs: from now on every host that would install (armed, or \
                      claimed by a match rule) gets its local-disk script instead, and keeps its \
                      state, until `pxeforge resume`. Installs already under way go on. For a \
                      bad image or kickstart found while a rack is re-imaging."
    )]
    Pause(cli::PauseArgs),
    /// Resume installs after `pxeforge pause` (admin API)
    Resume(cli::PauseArgs),
    /// Inspect the image store: list, verify checksums, collect old builds
    Images(build_cmd::ImagesArgs),
    /// Sync CentOS Stream boot media verified by their .treeinfo; list, verify, collect them
    Releases(pxeforge_server::releases_cmd::ReleasesArgs),
    /// The loaders store (first-stage boot files TFTP serves): sync from [loaders] sources, list,
    /// verify, gc
    Loaders(pxeforge_server::loaders_cmd::LoadersArgs),
    /// Boot a profile's host in a QEMU VM on a private network and report each boot stage (root)
    VmTest(pxeforge_vmtest::VmTestArgs),
    /// Boot a simulated fleet against a real server on loopback and report its capacity
    FleetSim(pxeforge_fleetsim::FleetSimArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PXEFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pxeforge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { site, overrides } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let served = rt.block_on(serve::run(site, overrides));
            // `serve` already gave connections in flight their grace period; the HTTP worker
            // threads it leaves behind end with the process.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { site } => Ok(if check::check(&site) == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Render {
            what,
            mac,
            platform,
            base_url,
            state,
            site,
        } => {
            let overrides = config::Overrides {
                base_url,
                state,
                ..Default::default()
            };
            let out =
                check::render_one(&site, what, mac.as_deref(), platform.as_deref(), &overrides)?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(args) => {
            build_cmd::build(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reinstall(args) => pxeforge_server::reinstall_cmd::reinstall(&args),
        Command::Hosts(args) => cli::hosts(&args),
        Command::Events(args) => cli::events(&args),
        Command::Pause(args) => cli::pause(&args.admin, true),
        Command::Resume(args) => cli::pause(&args.admin, false),
        Command::Images(args) => Ok(ExitCode::from(build_cmd::images(&args)? as u8)),
        Command::Releases(args) => Ok(ExitCode::from(
            pxeforge_server::releases_cmd::releases(&args)?.clamp(0, 255) as u8,
        )),
        Command::Loaders(args) => Ok(ExitCode::from(
            pxeforge_server::loaders_cmd::loaders(&args)? as u8,
        )),
        Command::VmTest(args) => Ok(ExitCode::from(
            pxeforge_vmtest::run(&args)?.clamp(0, 255) as u8
        )),
        // Must run before any thread or runtime exists: as root it moves into its own namespace.
        Command::FleetSim(args) => Ok(ExitCode::from(
            pxeforge_fleetsim::run(&args)?.clamp(0, 255) as u8
        )),
    }
}
