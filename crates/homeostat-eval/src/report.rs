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

impl EvalReport {
    /// The human-readable table.
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
        let fars: Vec<String> = first.scores["max_lfc"].dr_at_far.keys().cloned().collect();
        let far_head: String = fars
            .iter()
            .map(|f| {
                format!(
                    " {:>6}",
                    format!("DR@{}%", f.parse::<f64>().unwrap_or(0.0) * 100.0)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "\n{:<7} {:>3} {:>4} | max LFC: {:>6}{far_head} | rate: {:>6}{far_head} | {:>8} {:>8} {:>8} | {:>6}",
            "model", "w", "L", "AUC", "AUC", "train ms", "test ms", "Mcalls/s", "delay"
        );
        for m in &self.models {
            let _ = writeln!(
                s,
                "{:<7} {:>3} {:>4} |          {} |       {} | {:>8.1} {:>8.1} {:>8.1} | {:>6}",
                m.model,
                m.window,
                m.locality,
                score_cells(&m.scores["max_lfc"], &fars),
                score_cells(&m.scores["rate"], &fars),
                m.train_seconds * 1e3,
                m.test_seconds * 1e3,
                m.calls_per_second / 1e6,
                m.detection_delay
                    .median_calls
                    .map_or("-".into(), |d| format!("{d:.0}")),
            );
        }
        let _ = writeln!(
            s,
            "(DR = detection rate % at the false-alarm limit; delay = median calls to the first alarm at the 1% LFC threshold; threads = {})",
            first.threads
        );
        if !self.attack_types.is_empty() {
            let _ = writeln!(
                s,
                "\nper attack type (max LFC score: AUC{})",
                fars.iter()
                    .map(|f| format!(", DR@{}%", f.parse::<f64>().unwrap_or(0.0) * 100.0))
                    .collect::<String>()
            );
            let _ = write!(s, "{:<20} {:>6}", "attack", "traces");
            for m in &self.models {
                let _ = write!(s, " | {:^27}", m.model);
            }
            s.push('\n');
            for (ty, n) in &self.attack_types {
                let _ = write!(s, "{ty:<20} {n:>6}");
                for m in &self.models {
                    match m.per_attack.get(ty) {
                        Some(r) => {
                            let _ = write!(s, " | {}", score_cells(&r.max_lfc, &fars));
                        }
                        None => {
                            let _ = write!(s, " | {:^27}", "-");
                        }
                    }
                }
                s.push('\n');
            }
        }
        for m in &self.models {
            if let Some(fixed) = &m.fixed_threshold {
                let _ = writeln!(
                    s,
                    "\n{} at the threshold fixed on held-out normals (alarm when score > threshold): max LFC > {} -> DR {:.1}% FAR {:.2}%; rate > {:.4} -> DR {:.1}% FAR {:.2}%",
                    m.model,
                    fixed["max_lfc"].threshold,
                    fixed["max_lfc"].dr * 100.0,
                    fixed["max_lfc"].far * 100.0,
                    fixed["rate"].threshold,
                    fixed["rate"].dr * 100.0,
                    fixed["rate"].far * 100.0,
                );
            }
        }
        let _ = writeln!(s, "\ntotal {:.0} ms", self.total_seconds * 1e3);
        s
    }
}
