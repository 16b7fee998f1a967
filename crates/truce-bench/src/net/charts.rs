//! PNG charts of a `peers` run, one file per workload: throughput by system
//! (closed loop) beside the latency percentiles by system (closed loop and
//! open loop at 50 % of each peak). plotters' bitmap backend draws them; text
//! goes through ab_glyph with a TTF font read from the usual system places, so
//! no fontconfig is needed (without a font, no chart is drawn and the run says so).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::System;
use super::report::{Mode, Row};

/// Where a sans-serif TTF font usually is (Debian's fonts-dejavu-core,
/// fonts-liberation; other distributions).
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// The chart size in pixels.
const SIZE: (u32, u32) = (960, 400);

/// The colour of each system.
fn color(system: System) -> RGBColor {
    match system {
        System::Truce => RGBColor(0x2a, 0x9d, 0x8f),
        System::Postgres => RGBColor(0x33, 0x67, 0x91),
        System::Redis => RGBColor(0xd8, 0x2c, 0x20),
        System::Sqlite => RGBColor(0x88, 0x88, 0x88),
    }
}

/// Registers the first font found as plotters' "sans-serif", once.
fn load_font() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = FONT_PATHS
                .iter()
                .find_map(|path| std::fs::read(path).ok())
                .ok_or_else(|| {
                    format!(
                        "no TTF font found (looked for {}); install fonts-dejavu-core",
                        FONT_PATHS.join(", ")
                    )
                })?;
            plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .map_err(|_| "the font could not be read".to_string())
        })
        .clone()
}

/// Draws `<out>/<workload>.png` for every workload in `rows`.
pub fn draw(rows: &[Row], out: &Path) -> Result<Vec<PathBuf>, String> {
    load_font()?;
    let mut workloads: Vec<&'static str> = Vec::new();
    for row in rows {
        if !workloads.contains(&row.workload) {
            workloads.push(row.workload);
        }
    }
    workloads
        .into_iter()
        .map(|workload| {
            let path = out.join(format!("{workload}.png"));
            let of_workload: Vec<&Row> = rows.iter().filter(|r| r.workload == workload).collect();
            draw_workload(workload, &of_workload, &path)
                .map(|()| path)
                .map_err(|e| format!("{workload}: {e}"))
        })
        .collect()
}

fn draw_workload(workload: &str, rows: &[&Row], path: &Path) -> Result<(), Box<dyn Error>> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let clients = rows.first().map_or(0, |r| r.clients);
    let root = root.titled(&format!("{workload}, {clients} clients"), ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(SIZE.0 * 2 / 5);
    throughput(&left, rows)?;
    latency(&right, rows)?;
    root.present()?;
    Ok(())
}

/// Bars of closed-loop ops/s, one per system, each labelled with its value.
fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    rows: &[&Row],
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let closed: Vec<&Row> = rows.iter().copied().filter(|r| r.mode == Mode::Closed).collect();
    let top = closed.iter().map(|r| r.ops_s).fold(1.0, f64::max) * 1.15;
    let names: Vec<&str> = closed.iter().map(|r| r.system.name()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption("throughput (ops/s, closed loop)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(64)
        // A segmented 0..k has a segment for k too: end at the last bar.
        .build_cartesian_2d(
            (0u32..(closed.len() as u32).max(2) - 1).into_segmented(),
            0f64..top,
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).map_or(String::new(), |n| n.to_string()),
            _ => String::new(),
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .draw()?;
    chart.draw_series(
        Histogram::vertical(&chart)
            .margin(14)
            .style_func(|segment, _| {
                let i = match segment {
                    SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => *i as usize,
                    SegmentValue::Last => 0,
                };
                closed.get(i).map_or(BLACK, |r| color(r.system)).filled()
            })
            .data(closed.iter().enumerate().map(|(i, r)| (i as u32, r.ops_s))),
    )?;
    chart.draw_series(closed.iter().enumerate().map(|(i, r)| {
        Text::new(
            format!("{:.0}", r.ops_s),
            (SegmentValue::CenterOf(i as u32), r.ops_s + top * 0.03),
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
        )
    }))?;
    Ok(())
}

/// Height of one legend entry, and of the legend box's padding, in pixels.
const LEGEND_ENTRY_PX: f64 = 20.0;
const LEGEND_PADDING_PX: f64 = 16.0;

/// Pixels of the latency panel's height that are not plot: caption, margins,
/// the x labels.
const LATENCY_FRAME_PX: f64 = 90.0;

/// The latency axis (µs, log scale) for `rows` on a panel `panel_px` high:
/// the values with room around them, and below the p99 and p99.9 columns room
/// for the legend in the lower right corner, so that it hides no line.
fn latency_range(rows: &[&Row], panel_px: f64) -> (f64, f64) {
    let positive = |v: &u64| *v > 0;
    let all = rows
        .iter()
        .flat_map(|r| [r.p50_us, r.p99_us, r.p999_us])
        .filter(positive);
    let (low, high) = all.fold((u64::MAX, 1), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (low, high) = ((low.min(high) as f64 / 2.0).max(1.0), high as f64 * 2.0);
    let Some(right) = rows
        .iter()
        .flat_map(|r| [r.p99_us, r.p999_us])
        .filter(positive)
        .min()
    else {
        return (low, high);
    };
    // The lowest value the legend sits under must stay above it:
    // ln(right) - ln(low) >= share * (ln(high) - ln(low)).
    let share = legend_share(rows.len(), panel_px);
    let under_legend = (((right as f64).ln() - share * high.ln()) / (1.0 - share)).exp();
    (low.min(under_legend).max(1.0), high)
}

/// The share of the latency plot's height the legend of `entries` lines takes
/// on a panel `panel_px` high (at most half).
fn legend_share(entries: usize, panel_px: f64) -> f64 {
    let legend_px = LEGEND_ENTRY_PX * entries as f64 + LEGEND_PADDING_PX;
    legend_px / (panel_px - LATENCY_FRAME_PX).max(2.0 * legend_px)
}

/// p50, p99 and p99.9 of every row, one line each, on a log scale.
fn latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    rows: &[&Row],
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let (low, high) = latency_range(rows, f64::from(area.dim_in_pixel().1));
    let mut chart = ChartBuilder::on(area)
        .caption(
            "latency (µs, log scale): peak and at 50 % of peak",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.3f64..2.3f64, (low..high).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(3)
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&|x| {
            let near = x.round();
            match ((x - near).abs() < 1e-6).then_some(near as i64) {
                Some(0) => "p50".into(),
                Some(1) => "p99".into(),
                Some(2) => "p99.9".into(),
                _ => String::new(),
            }
        })
        .y_label_formatter(&|v| {
            if *v >= 1000.0 {
                format!("{:.0} ms", v / 1000.0)
            } else {
                format!("{v:.0} µs")
            }
        })
        .label_style(("sans-serif", 13))
        .draw()?;
    for row in rows {
        let points: Vec<(f64, f64)> = [row.p50_us, row.p99_us, row.p999_us]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64, (*v as f64).max(1.0)))
            .collect();
        let c = color(row.system);
        let (label, width) = match row.mode {
            Mode::Closed => (format!("{} peak", row.system.name()), 3),
            Mode::Open { target_ops_s } => (format!("{} @{target_ops_s:.0}/s", row.system.name()), 1),
        };
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(width)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(width)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use std::time::Duration;

    /// A recorder of `ok` operations whose latencies are `us`.
    fn recorder(ok: u64, us: [u64; 3]) -> Recorder {
        let mut totals = Recorder::default();
        totals.ok = ok;
        for us in us {
            totals.latency(Duration::from_micros(us));
        }
        totals
    }

    #[test]
    fn the_legend_hides_no_latency_line() {
        let fast = recorder(100, [400, 800, 2_000]);
        let slow = recorder(100, [7_000, 50_000, 80_000]);
        let second = Duration::from_secs(1);
        let rows: Vec<Row> = [System::Truce, System::Postgres, System::Redis]
            .into_iter()
            .flat_map(|system| {
                let totals = if system == System::Postgres { &slow } else { &fast };
                [
                    Row::new("hot-counter", system, Mode::Closed, 32, totals, second),
                    Row::new(
                        "hot-counter",
                        system,
                        Mode::Open { target_ops_s: 1.0 },
                        32,
                        totals,
                        second,
                    ),
                ]
            })
            .collect();
        let rows: Vec<&Row> = rows.iter().collect();
        let panel_px = f64::from(SIZE.1);
        let (low, high) = latency_range(&rows, panel_px);
        let lowest_right = rows.iter().map(|r| r.p99_us.min(r.p999_us)).min().unwrap() as f64;
        // Where that value is drawn, as a share of the plot's height from the
        // bottom, against the legend's share.
        let at = (lowest_right.ln() - low.ln()) / (high.ln() - low.ln());
        let legend = legend_share(rows.len(), panel_px);
        assert!(
            at >= legend - 1e-9,
            "the lowest p99 is drawn at {at:.2}, the legend reaches {legend:.2}"
        );
        assert!(
            (1.0..=400.0 / 2.0).contains(&low) && high >= 160_000.0,
            "{low}..{high}"
        );
    }

    #[test]
    fn draws_one_png_per_workload() {
        let totals = recorder(1000, [300, 900, 5000]);
        let second = Duration::from_secs(1);
        let rows = vec![
            Row::new("hot-counter", System::Truce, Mode::Closed, 32, &totals, second),
            Row::new(
                "hot-counter",
                System::Redis,
                Mode::Closed,
                32,
                &totals,
                second * 2,
            ),
            Row::new(
                "hot-counter",
                System::Truce,
                Mode::Open { target_ops_s: 500.0 },
                32,
                &totals,
                second * 2,
            ),
            Row::new("heartbeats", System::Postgres, Mode::Closed, 32, &totals, second),
        ];
        let out = tempfile::tempdir().expect("a temp dir");
        match draw(&rows, out.path()) {
            Ok(files) => {
                assert_eq!(files.len(), 2);
                for file in files {
                    let png = std::fs::read(&file).expect("written");
                    assert!(png.starts_with(b"\x89PNG"), "{}", file.display());
                }
            }
            Err(e) => assert!(e.starts_with("no TTF font"), "{e}"),
        }
    }
}
