//! A grouped horizontal bar chart written by hand: xtask has no plotting dependency, and the figure is simple.

use std::fmt::Write as _;

const COLORS: [&str; 4] = ["#2b6cb0", "#c05621", "#2f855a", "#718096"];

/// An SVG with one group of bars per `(label, [(series, value)])`, bars scaled to the largest value.
pub fn bars(title: &str, groups: &[(String, Vec<(&str, f64)>)]) -> String {
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(_, x)| *x))
        .fold(1.0_f64, f64::max);
    let bar_h = 16.0;
    let group_h = bar_h * 4.0 + 30.0;
    let height = 60.0 + group_h * groups.len() as f64;
    let (left, width) = (330.0, 520.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = left + width + 90.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="24" font-size="16">{}</text>"#,
        escape(title)
    );
    for (g, (label, values)) in groups.iter().enumerate() {
        let y0 = 50.0 + g as f64 * group_h;
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{}</text>"#,
            y0 + 14.0,
            escape(label)
        );
        for (i, (series, value)) in values.iter().enumerate() {
            let y = y0 + 20.0 + i as f64 * bar_h;
            let w = width * value / max;
            let color = COLORS[i % COLORS.len()];
            let _ = writeln!(
                s,
                r#"<text x="{tx}" y="{ty}" text-anchor="end">{series}</text><rect x="{left}" y="{y}" width="{w:.1}" height="{bh}" fill="{color}"/><text x="{vx:.1}" y="{ty}">{value:.0}</text>"#,
                tx = left - 6.0,
                ty = y + 12.0,
                bh = bar_h - 3.0,
                vx = left + w + 4.0,
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
