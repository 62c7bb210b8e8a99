//! pxeforge's boot service: the site model, selection, rendering, HTTP, events, and the glue
//! that runs TFTP and DHCP beside them in one process.

pub mod build_cmd;
pub mod check;
pub mod dhcp_view;
pub mod events;
pub mod fleetsim;
pub mod http;
pub mod images;
pub mod mac;
pub mod metrics;
pub mod render;
pub mod select;
pub mod serve;
pub mod site;
pub mod vmtest;
