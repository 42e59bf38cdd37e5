//! The whole evaluation's report: JSON for machines, a table for people.

use std::fmt::Write;

use serde::Serialize;

use crate::run::{ModelReport, ScoreReport};

/// One evaluation run over one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Dataset name.
    pub dataset: String,
    /// Architecture of its call numbers.
    pub arch: String,
    /// Training traces.
    pub train_traces: usize,
    /// Normal test traces.
    pub normal_traces: usize,
    /// Attack test traces.
    pub attack_traces: usize,
    /// Normal traces used only to fix a threshold (LID-DS protocol).
    pub threshold_traces: usize,
    /// Attack types with their trace counts.
    pub attack_types: Vec<(String, usize)>,
    /// Time to read and parse the dataset.
    pub load_seconds: f64,
    /// Wall time of the whole evaluation, loading included.
    pub total_seconds: f64,
    /// Per model.
    pub models: Vec<ModelReport>,
}

fn pct(v: Option<f64>) -> String {
    v.map_or("   n/a".into(), |v| format!("{:6.1}", v * 100.0))
}

fn score_cells(r: &ScoreReport, fars: &[String]) -> String {
    let mut s = match r.auc {
        Some(a) => format!("{a:6.3}"),
        None => "   n/a".into(),
    };
    for f in fars {
        let _ = write!(s, " {}", pct(r.dr_at_far.get(f).copied()));
    }
    s
}

fn far_head(fars: &[String]) -> String {
    fars.iter()
        .map(|f| {
            format!(
                " {:>6}",
                format!("DR@{}%", f.parse::<f64>().unwrap_or(0.0) * 100.0)
            )
        })
        .collect()
}

impl EvalReport {
    /// The human-readable table: one row per model and trace score.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dataset {} ({}): train {} traces; test {} normal + {} attack traces{}; loaded in {:.0} ms",
            self.dataset,
            self.arch,
            self.train_traces,
            self.normal_traces,
            self.attack_traces,
            if self.threshold_traces > 0 {
                format!("; {} threshold traces", self.threshold_traces)
            } else {
                String::new()
            },
            self.load_seconds * 1e3
        );
        let Some(first) = self.models.first() else {
            return s;
        };
        let fars: Vec<String> = first.primary().dr_at_far.keys().cloned().collect();
        let head = far_head(&fars);
        let mw = self
            .models
            .iter()
            .map(|m| m.model.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let cw = self
            .models
            .iter()
            .map(|m| m.config.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            s,
            "\n{:<mw$} {:<cw$} {:<9} {:>6}{head} | {:>8} {:>8} {:>8} | {:>6}",
            "model", "config", "score", "AUC", "train s", "test ms", "Mcalls/s", "delay"
        );
        for m in &self.models {
            for (i, name) in m.score_names.iter().enumerate() {
                let r = &m.scores[name];
                if i == 0 {
                    let _ = writeln!(
                        s,
                        "{:<mw$} {:<cw$} {:<9} {} | {:>8.2} {:>8.1} {:>8.2} | {:>6}",
                        m.model,
                        m.config,
                        name,
                        score_cells(r, &fars),
                        m.train_seconds,
                        m.test_seconds * 1e3,
                        m.calls_per_second / 1e6,
                        m.detection_delay
                            .as_ref()
                            .and_then(|d| d.median_calls)
                            .map_or("-".into(), |d| format!("{d:.0}")),
                    );
                } else {
                    let _ = writeln!(
                        s,
                        "{:<mw$} {:<cw$} {:<9} {} |",
                        "",
                        "",
                        name,
                        score_cells(r, &fars)
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "(DR = detection rate % at the false-alarm limit; delay = median calls to the first alarm at the 1% LFC threshold; threads = {})",
            first.threads
        );
        if !self.attack_types.is_empty() {
            let _ = writeln!(s, "\nper attack type (AUC and DR@1% per trace score)");
            let _ = write!(s, "{:<mw$} {:<9}", "model", "score");
            let heads: Vec<String> = self
                .attack_types
                .iter()
                .map(|(ty, n)| format!("{ty} ({n})"))
                .collect();
            for h in &heads {
                let _ = write!(s, " | {h:^w$}", w = h.len().max(13));
            }
            s.push('\n');
            for m in &self.models {
                for name in &m.score_names {
                    let _ = write!(s, "{:<mw$} {:<9}", m.model, name);
                    for ((ty, _), h) in self.attack_types.iter().zip(&heads) {
                        let w = h.len().max(13);
                        let cell = match m.per_attack.get(ty).and_then(|r| r.scores.get(name)) {
                            Some(r) => format!(
                                "{} {}",
                                r.auc.map_or("   n/a".into(), |a| format!("{a:6.3}")),
                                pct(r.dr_at_far.get("0.01").copied())
                            ),
                            None => "-".into(),
                        };
                        let _ = write!(s, " | {cell:>w$}");
                    }
                    s.push('\n');
                }
            }
        }
        for m in &self.models {
            if let Some(fixed) = &m.fixed_threshold {
                let cells: Vec<String> = m
                    .score_names
                    .iter()
                    .filter_map(|n| fixed.get(n).map(|f| (n, f)))
                    .map(|(n, f)| {
                        format!(
                            "{n} > {:.4} -> DR {:.1}% FAR {:.2}%",
                            f.threshold,
                            f.dr * 100.0,
                            f.far * 100.0
                        )
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "\n{} at the threshold fixed on held-out normals (alarm when score > threshold): {}",
                    m.model,
                    cells.join("; ")
                );
            }
        }
        let _ = writeln!(s, "\ntotal {:.0} ms", self.total_seconds * 1e3);
        s
    }
}
