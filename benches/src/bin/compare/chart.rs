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
        // One faint line between labelled ones: 0 underflows in plotters 0.3.7 (a panic in a
        // debug build, an endless loop in a release one).
        .max_light_lines(1)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(mode: &str, ops_per_sec: f64) -> Summary {
        let run = crate::results::RunResult {
            mode: mode.to_owned(),
            round: 1,
            ops: 10,
            reads: 9,
            writes: 1,
            seconds: 1.0,
            ops_per_sec,
            read_p50_us: 1.0,
            read_p99_us: 2.0,
            read_p999_us: 3.0,
            write_p50_us: 10.0,
            write_p99_us: 20.0,
            write_p999_us: 30.0,
            read_queries: 1,
            write_queries: 1,
            hit_ratio: 0.9,
            best_hit_ratio: 0.9,
            redis_commands: 0,
            redis_cmds_per_op: 0.0,
            cpu_us_per_op: 50.0,
            cpu_process_us_per_op: 30.0,
            cpu_postgres_us_per_op: 15.0,
            cpu_redis_us_per_op: 5.0,
            cpu_busy: 0.9,
            cpu_steal: 0.0,
            rss_bytes: 1 << 20,
            rss_setup_bytes: 1 << 20,
            stampede_loader_runs: 1,
            violations: 0,
            stale_max_ms: 0.0,
            errors: 0,
            first_error: None,
            timed_out: false,
            late: 0,
        };
        Summary::of(mode, &[run]).unwrap()
    }

    #[test]
    fn one_bar_per_mode_labelled_with_its_name() {
        let dir = std::env::temp_dir().join(format!("compare-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for modes in [
            &["tiercache"][..],
            &crate::args::Mode::ALL.map(|m| m.name())[..],
        ] {
            let summaries: Vec<Summary> = modes
                .iter()
                .enumerate()
                .map(|(i, mode)| summary(mode, 1_000.0 * (i + 1) as f64))
                .collect();
            let path = dir.join("chart.svg");
            draw(&path, &summaries).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            for mode in modes {
                assert!(svg.contains(&format!(">\n{mode}\n<")), "{mode} missing");
            }
        }
        draw(&dir.join("none.svg"), &[]).unwrap();
        assert!(!dir.join("none.svg").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
