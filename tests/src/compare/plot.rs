//! The picture: one strip per variant with the peer's probe series (answered green, lost red)
//! and the run's phases marked, on one time axis from the start of the migration, so a
//! reader sees where each variant loses the network.

use std::path::Path;

use plotters::prelude::*;

use super::record::{Run, MIGRATION_STARTS};

const WIDTH: u32 = 1200;
const STRIP: u32 = 150;
const TITLE: u32 = 36;

/// Milliseconds of probe series shown before the migration starts.
const BEFORE_MS: f64 = 500.0;

/// Writes `runs` (one per variant, in order) as an SVG file.
pub fn probe_series(runs: &[&Run], title: &str, path: &Path) -> Result<(), String> {
    draw(runs, title, path).map_err(|e| format!("drawing {}: {e}", path.display()))
}

fn origin(run: &Run) -> f64 {
    run.mark(MIGRATION_STARTS).unwrap_or(0) as f64
}

fn draw(runs: &[&Run], title: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (WIDTH, TITLE + STRIP * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(TITLE);
    head.draw(&Text::new(title.to_string(), (10, 10), ("sans-serif", 18).into_font()))?;
    let end = runs
        .iter()
        .map(|r| (r.probe_ms as f64 - origin(r)) / 1000.0)
        .fold(1.0, f64::max);
    for (area, run) in body.split_evenly((runs.len(), 1)).iter().zip(runs) {
        let zero = origin(run);
        let x = |ms: u64| (ms as f64 - zero) / 1000.0;
        let caption = format!("{} {}: {}", run.variant.key(), run.variant.label(), run.summary());
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 14))
            .margin_left(10)
            .margin_right(20)
            .x_label_area_size(38)
            .build_cartesian_2d(-BEFORE_MS / 1000.0..end, 0.0..1.0)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_labels(20)
            .x_desc("s since the migration started")
            .label_style(("sans-serif", 11))
            .draw()?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x(0), 0.35), (x(run.probe_ms), 0.55)],
            GREEN.mix(0.5).filled(),
        )))?;
        chart.draw_series(
            run.lost_runs
                .iter()
                .map(|[start, len]| Rectangle::new([(x(*start), 0.3), (x(start + len), 0.6)], RED.filled())),
        )?;
        for (i, mark) in run.marks.iter().enumerate() {
            let at = x(mark.at_ms);
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(at, 0.0), (at, 1.0)],
                BLACK.mix(0.4),
            )))?;
            // Staggered so that marks close in time stay readable.
            let y = 0.95 - 0.12 * (i % 3) as f64;
            chart.draw_series(std::iter::once(Text::new(
                mark.name.clone(),
                (at, y),
                ("sans-serif", 11),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}
