//! pxeforge's boot service and its command line, in layers, each using only the ones above it:
//!
//! 1. `config`: `pxeforge.toml` + flags → the configuration in force (paths, base-URL policy);
//! 2. `templates`, `contexts`, `catalog`: the site (from `pxeforge-site`), the compiled
//!    templates, the recipes and the caches, as one value per load;
//! 3. `select`: facts → the script choice and the kickstart choice;
//! 4. `images`, `render`: the template context and the rendered scripts and kickstarts;
//! 5. `check`: loading with the whole-site render check (`check::load`, which every command
//!    uses), and the `check` / `render` commands;
//! 6. `events`, `metrics`, `handlers`: the state the endpoints write, and one handler per HTTP
//!    endpoint on the `pxeforge-httpd` transport;
//! 7. `serve`, `dhcp_view`, `build_cmd`: the long-running service (HTTP, TFTP, DHCP in one
//!    process) and the image commands.

pub mod admin;
pub mod build_cmd;
pub mod buildstate;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod contexts;
pub mod dhcp_view;
pub mod events;
pub mod handlers;
pub mod images;
pub mod lifecycle;
pub mod loaders;
pub mod loaders_cmd;
pub mod media;
pub mod metrics;
pub mod operate;
pub mod privileges;
pub mod ratelimit;
pub mod reinstall_cmd;
pub mod releases_cmd;
pub mod render;
pub mod script_cache;
pub mod select;
pub mod serve;
pub mod store_cmd;
pub mod templates;
