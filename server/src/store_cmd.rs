//! What the store commands (`images`, `loaders`, `releases`) print alike: a progress bar on a
//! terminal, and the result of a `verify`.

use std::fmt::Display;
use std::io::IsTerminal;

/// A progress bar labelled `label` when stderr is a terminal; `None` otherwise, where callers
/// print plain log lines instead (CI logs stay readable). `msg_width`: room for the stage or
/// file name it shows.
pub fn terminal_bar(label: &str, msg_width: usize) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{prefix}} {{msg:{msg_width}}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(label.to_string());
        b
    })
}

/// Prints each mismatch a `verify` found, or that all published `what` match their SHA256SUMS;
/// returns the exit code (1 on any mismatch).
pub fn report_verify(mismatches: &[impl Display], what: &str) -> i32 {
    for m in mismatches {
        println!("MISMATCH {m}");
    }
    if mismatches.is_empty() {
        println!("all published {what} match their SHA256SUMS");
        0
    } else {
        1
    }
}
