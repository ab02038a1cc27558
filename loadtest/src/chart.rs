//! The run over time as an SVG chart: changes committed each second above,
//! the latency percentiles of those changes below (log scale).

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Percentiles, Report};

const SIZE: (u32, u32) = (1000, 720);

/// One percentile of a second.
type Pick = fn(&Percentiles) -> f64;

pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(SIZE.1 * 2 / 5);
    let seconds = report.seconds.len().max(1) as f64;

    let peak = report
        .seconds
        .iter()
        .map(|s| s.committed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut rate = ChartBuilder::on(&upper)
        .caption(
            format!(
                "sluice-loadtest {:?} into {}: {:.0} changes/s asked",
                report.scenario, report.sink, report.target_rate
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..peak * 1.1)?;
    rate.configure_mesh()
        .x_desc("second of the run (by commit)")
        .y_desc("changes committed")
        .draw()?;
    rate.draw_series(LineSeries::new(
        report
            .seconds
            .iter()
            .map(|s| (s.second as f64, s.committed as f64)),
        &BLUE,
    ))?;

    // Seconds in which changes arrived, and their percentiles (the log
    // scale starts at 0.1 ms).
    let measured: Vec<_> = report
        .seconds
        .iter()
        .filter(|s| s.latency_ms.count > 0)
        .collect();
    let highest = measured
        .iter()
        .map(|s| s.latency_ms.max)
        .fold(1.0f64, f64::max);
    let mut latency = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, (0.1f64..highest * 2.0).log_scale())?;
    latency
        .configure_mesh()
        .x_desc("second of the run (by commit)")
        .y_desc("latency, ms")
        .draw()?;
    let lines: [(&str, Pick, RGBColor); 4] = [
        ("p50", |p| p.p50, GREEN),
        ("p90", |p| p.p90, BLUE),
        ("p99", |p| p.p99, MAGENTA),
        ("max", |p| p.max, RED),
    ];
    for (name, value, colour) in lines {
        latency
            .draw_series(LineSeries::new(
                measured
                    .iter()
                    .map(|s| (s.second as f64, value(&s.latency_ms).max(0.1))),
                &colour,
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
