//! The comparison as a picture: ops/s and read p99 per mode, two bar charts in one SVG.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::results::Summary;

const WIDTH: u32 = 1100;
const PANEL_HEIGHT: u32 = 380;
/// Tiercache's modes in one colour, the others in another, so the eye finds them.
const TIERCACHE: RGBColor = RGBColor(31, 119, 180);
const OTHERS: RGBColor = RGBColor(160, 160, 160);

/// Draws the chart of `summaries` to `path` (nothing when there are none).
pub fn draw(path: &Path, summaries: &[Summary]) -> anyhow::Result<()> {
    if summaries.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (WIDTH, 2 * PANEL_HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(PANEL_HEIGHT);
    panel(
        &top,
        "Operations per second (median; higher is better)",
        "ops/s",
        summaries,
        |s| s.ops_per_sec,
        |v| format!("{v:.0}"),
    )?;
    panel(
        &bottom,
        "Read latency p99 in µs (median; lower is better)",
        "µs",
        summaries,
        |s| s.read_p99_us,
        |v| format!("{v:.1}"),
    )?;
    root.present()?;
    Ok(())
}

/// One bar per mode: `value` of each, labelled with `label`.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    unit: &str,
    summaries: &[Summary],
    value: fn(&Summary) -> f64,
    label: fn(f64) -> String,
) -> anyhow::Result<()> {
    let max = summaries.iter().map(value).fold(0.0, f64::max);
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        // An integer range includes its end: bars 0..=last, one segment each.
        .build_cartesian_2d(
            (0..summaries.len().saturating_sub(1)).into_segmented(),
            0.0..top,
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .max_light_lines(0)
        .x_labels(summaries.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => summaries.get(*i).map_or("", |s| &s.mode).to_owned(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc(unit)
        .draw()?;
    chart.draw_series(summaries.iter().enumerate().map(|(i, s)| {
        let colour = if s.mode.starts_with("tiercache") {
            TIERCACHE
        } else {
            OTHERS
        };
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), value(s)),
            ],
            colour.filled(),
        );
        bar.set_margin(0, 0, 18, 18);
        bar
    }))?;
    chart.draw_series(summaries.iter().enumerate().map(|(i, s)| {
        Text::new(
            label(value(s)),
            (SegmentValue::CenterOf(i), value(s) + top * 0.02),
            ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Bottom)),
        )
    }))?;
    Ok(())
}
