//! The SVG chart of a run: handshake latency percentiles per kind (top, log scale) and throughput (bottom) per
//! second, phases shaded and named. SVG only: no fonts or image libraries to install.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Report;

/// Drawing failed (usually: the file cannot be written).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart {path}: {message}")]
pub struct ChartError {
    path: String,
    message: String,
}

const SHADES: [RGBColor; 3] = [
    RGBColor(220, 235, 250),
    RGBColor(250, 225, 220),
    RGBColor(225, 245, 225),
];

/// Writes the chart of `report` to `path`, titled `title`.
pub fn write_svg(report: &Report, title: &str, path: &Path) -> Result<(), ChartError> {
    let err = |e: &dyn std::fmt::Display| ChartError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    draw(report, title, &root).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Reads one count out of a second of the series.
type PerSecond = Box<dyn Fn(&crate::report::SecondReport) -> u64>;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(report: &Report, title: &str, root: &DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult {
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(440);
    let phase_end: f64 = report.phases.iter().map(|p| p.duration_s).sum();
    let x_max = (report.series.len() as f64).max(phase_end).max(1.0);

    // Latency, ms, log scale.
    let mut max_ms: f64 = 1.0;
    for s in &report.series {
        for p in s.handshake_us.values() {
            max_ms = max_ms.max(p.p999 as f64 / 1000.0);
        }
    }
    let mut chart = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (0.05f64..max_ms * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("handshake from intended start, ms")
        .draw()?;
    shade_phases(&mut chart, report, 0.05, max_ms * 2.0)?;
    let kinds: Vec<&str> = report.kinds.keys().copied().collect();
    let mut color_index = 0;
    for kind in &kinds {
        for (label, pick) in [("p50", 0usize), ("p99", 1), ("p999", 2)] {
            let color = Palette99::pick(color_index).to_rgba();
            color_index += 1;
            let points: Vec<(f64, f64)> = report
                .series
                .iter()
                .filter_map(|s| {
                    let p = s.handshake_us.get(kind)?;
                    let us = [p.p50, p.p99, p.p999][pick];
                    Some((s.t as f64 + 0.5, (us as f64 / 1000.0).max(0.05)))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("{kind} {label}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // Throughput.
    let max_rate = report
        .series
        .iter()
        .map(|s| s.offered.max(s.ok).max(s.errors.values().sum()))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..max_rate * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("connections per second")
        .draw()?;
    shade_phases(&mut chart, report, 0.0, max_rate * 1.1)?;
    let lines: [(&str, RGBColor, PerSecond); 4] = [
        ("offered", RGBColor(120, 120, 120), Box::new(|s| s.offered)),
        ("completed", RGBColor(20, 120, 40), Box::new(|s| s.ok)),
        ("resumed", RGBColor(40, 80, 200), Box::new(|s| s.resumed)),
        (
            "errors",
            RGBColor(200, 30, 30),
            Box::new(|s| s.errors.values().sum()),
        ),
    ];
    for (label, color, value) in lines {
        let points: Vec<(f64, f64)> = report
            .series
            .iter()
            .map(|s| (s.t as f64 + 0.5, value(s) as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn shade_phases<Y>(
    chart: &mut ChartContext<
        '_,
        SVGBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    report: &Report,
    y_min: f64,
    y_max: f64,
) -> DrawResult
where
    Y: Ranged<ValueType = f64>,
{
    let mut start = 0.0;
    for (i, phase) in report.phases.iter().enumerate() {
        let end = start + phase.duration_s;
        let shade = SHADES[i % SHADES.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(start, y_min), (end, y_max)],
            shade.mix(0.6).filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            phase.name.clone(),
            (start + 0.1, y_max),
            ("sans-serif", 14).into_font().color(&BLACK),
        )))?;
        start = end;
    }
    Ok(())
}
