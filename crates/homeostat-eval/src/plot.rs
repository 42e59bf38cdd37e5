//! ROC curves of several models in one SVG.
//!
//! Written by hand: a line chart is a few dozen lines of SVG, and a plotting crate
//! would pull font-rendering libraries into a security tool's build for no gain.

use std::fmt::Write;

use crate::run::ModelReport;

const W: f64 = 1100.0;
const H: f64 = 520.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 50.0;
const SIDE: f64 = 400.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG document with the ROC curve of each model: solid for its primary score,
/// dashed for the others.
pub fn roc_svg(title: &str, models: &[ModelReport]) -> String {
    let mut s = String::new();
    // Room for every legend line (18 px each) below the top margin.
    let entries: usize = models.iter().map(|m| m.score_names.len()).sum();
    let h = H.max(TOP + 30.0 + 18.0 * entries as f64);
    let x = |far: f64| LEFT + far * SIDE;
    let y = |dr: f64| TOP + (1.0 - dr) * SIDE;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="25" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + SIDE / 2.0,
        esc(title)
    );
    for i in 0..=10 {
        let v = f64::from(i) / 10.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{yv}" x2="{x1}" y2="{yv}" stroke="#eee"/><line x1="{xv}" y1="{y0}" x2="{xv}" y2="{y1}" stroke="#eee"/>"##,
            x0 = x(0.0),
            x1 = x(1.0),
            yv = y(v),
            xv = x(v),
            y0 = y(0.0),
            y1 = y(1.0)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{v:.1}</text><text x="{}" y="{}" text-anchor="end">{v:.1}</text>"#,
            x(v),
            y(0.0) + 16.0,
            x(0.0) - 6.0,
            y(v) + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{}" width="{SIDE}" height="{SIDE}" fill="none" stroke="#333"/>"##,
        x(0.0),
        y(1.0)
    );
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#bbb" stroke-dasharray="2,3"/>"##,
        x(0.0),
        y(0.0),
        x(1.0),
        y(1.0)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">false-alarm rate (normal traces)</text>"#,
        x(0.5),
        y(0.0) + 36.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">detection rate (attack traces)</text>"#,
        LEFT - 45.0,
        y(0.5)
    );
    let mut legend_y = TOP + 10.0;
    for (i, m) in models.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        for (j, score) in m.score_names.iter().enumerate() {
            let dash = if j == 0 {
                ""
            } else {
                r#" stroke-dasharray="6,4""#
            };
            let Some(r) = m.scores.get(score) else {
                continue;
            };
            let pts: Vec<String> = r
                .roc
                .iter()
                .map(|&(f, d)| format!("{:.2},{:.2}", x(f), y(d)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                pts.join(" ")
            );
            let auc = r.auc.map_or("n/a".to_string(), |a| format!("{a:.3}"));
            let label = format!("{} {} {score} AUC {auc}", m.model, m.config);
            let lx = x(1.0) + 15.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
                lx + 24.0,
                lx + 30.0,
                legend_y + 4.0,
                esc(&label)
            );
            legend_y += 18.0;
        }
    }
    s.push_str("</svg>\n");
    s
}
