//! Progress bars for long work, drawn on stderr only when it is a terminal (indicatif
//! hides them otherwise, so pipes and CI logs stay clean).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `total` units described by `what` (e.g. "calls", "files").
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    let template = format!(
        "{{msg:>10}} [{{bar:40}}] {{human_pos}}/{{human_len}} {what} ({{per_sec}}, {{eta}} left)"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}
