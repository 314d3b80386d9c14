//! The SVG figures of BENCHMARKS.md, drawn with `plotters` from the JSON the
//! figures write (issue 24), so that a reader sees a trend at a glance
//! beside the tables:
//!
//! - `create-rate-per-run.svg`: figure 1's create rate of the service, the
//!   ceiling and the baseline in each run (req/s);
//! - `pending-depth.svg`: the pending depth each second (records) of the
//!   sustained runs: figure 4 (closed loop) and each rate figure 9 held;
//! - `flush-rate-vs-stored.svg`: figure 8's flush rate (rows/s) against the
//!   rows already stored, with each search index.
//!
//! `bench all` and `bench flush-text` draw them into `<out>/figures/` (and
//! into `bench/figures/`, which BENCHMARKS.md shows, with
//! `--write-benchmarks-md`); `bench plot` draws them again from saved JSON.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

/// Width and height of every figure, in SVG pixels.
const SIZE: (u32, u32) = (860, 460);

/// One colour per series, in order (colour-blind safe: Okabe and Ito's palette).
const COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// A named line of `(x, y)` points.
pub struct Series {
    /// The legend's text.
    pub name: String,
    /// The points, in the order they are joined.
    pub points: Vec<(f64, f64)>,
}

/// `v` rounded, with thin spaces between groups of three digits (`17 815`).
fn grouped(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    if v < -0.5 { format!("-{out}") } else { out }
}

/// A line chart of `series` (markers on the points of short series) into the SVG file
/// `path`, both axes from 0 (x from its smallest point when
/// `x_from_zero` is false); x labels are printed only at whole numbers
/// when `whole_x` is set (run numbers). Errors: the file cannot be written.
pub fn lines(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[Series],
    whole_x: bool,
) -> anyhow::Result<()> {
    let xs = || series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (mut x_min, mut x_max) = (
        xs().fold(f64::INFINITY, f64::min),
        xs().fold(f64::NEG_INFINITY, f64::max),
    );
    if !x_min.is_finite() {
        (x_min, x_max) = (0.0, 1.0);
    }
    if whole_x {
        (x_min, x_max) = (x_min - 0.5, x_max + 0.5);
    } else {
        x_min = x_min.min(0.0);
        if x_max <= x_min {
            x_max = x_min + 1.0;
        }
    }
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1.0)
        // Headroom above the highest point for the legend (one line a series).
        * (1.1 + 0.07 * series.len() as f64);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(14)
        .margin_right(44)
        .x_label_area_size(42)
        .y_label_area_size(78)
        .build_cartesian_2d(x_min..x_max, 0f64..y_max)?;
    let x_format = |x: &f64| {
        if !whole_x {
            grouped(*x)
        } else if (x - x.round()).abs() < 1e-9 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    let y_format = |y: &f64| grouped(*y);
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&x_format)
        .y_label_formatter(&y_format)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        // Markers only where points are few (runs, stored levels), not on
        // a line of one point a second.
        if s.points.len() <= 20 {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Numbers of a JSON array (others skipped).
fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// `(1, v₁), (2, v₂), …`: values against their run or second, from 1.
fn numbered(values: &[f64]) -> Vec<(f64, f64)> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| ((i + 1) as f64, v))
        .collect()
}

/// Draws the figures of `bench all`'s results (`results.json`) that it
/// holds into `dir` (created); returns the files written. Errors: `dir`
/// or a file cannot be written.
pub fn render_results(results: &Value, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let runs = &results["create_throughput"]["per_run"];
    if runs.is_object() {
        let series: Vec<Series> = [
            ("service", "the service"),
            ("ceiling", "ceiling: bare poem-openapi 201"),
            ("baseline", "baseline: one INSERT per request"),
        ]
        .iter()
        .map(|(key, name)| Series {
            name: (*name).into(),
            points: numbered(&numbers(&runs[*key])),
        })
        .collect();
        let path = dir.join("create-rate-per-run.svg");
        lines(
            &path,
            "Figure 1: create rate in each run (closed loop)",
            ("run", "creates per second"),
            &series,
            true,
        )?;
        written.push(path);
    }
    let mut depth = Vec::new();
    let balance = &results["sustained_balance"];
    if balance["pending_depth_per_second"].is_array() {
        depth.push(Series {
            name: format!(
                "figure 4: closed loop, {} req/s",
                grouped(balance["rps"].as_f64().unwrap_or(0.0))
            ),
            points: numbered(&numbers(&balance["pending_depth_per_second"])),
        });
    }
    for step in results["sustainable"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if step["depth_per_second"].is_array() {
            depth.push(Series {
                name: format!(
                    "figure 9: paced at {} req/s ({})",
                    grouped(step["rate"].as_f64().unwrap_or(0.0)),
                    if step["bounded"].as_bool() == Some(true) {
                        "bounded"
                    } else {
                        "not bounded"
                    }
                ),
                points: numbered(&numbers(&step["depth_per_second"])),
            });
        }
    }
    if !depth.is_empty() {
        let path = dir.join("pending-depth.svg");
        lines(
            &path,
            "Figures 4 and 9: pending messages each second of the sustained runs",
            ("second", "pending records"),
            &depth,
            false,
        )?;
        written.push(path);
    }
    Ok(written)
}

/// Draws figure 8 of `bench flush-text`'s results (`flush_text.json`) into
/// `dir` (created); returns the files written. Errors: `dir` or the file
/// cannot be written.
pub fn render_flush_text(d: &Value, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let at_levels = |pick: &dyn Fn(&str) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = d["none"]
            .as_object()
            .into_iter()
            .flat_map(|levels| levels.keys())
            .filter_map(|level| Some((level.parse::<f64>().ok()?, pick(level)?)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let series = vec![
        Series {
            name: "FULLTEXT kept up in the flush (before)".into(),
            points: at_levels(&|l| d["fulltext"][l].as_f64()),
        },
        Series {
            name: "term index: the flush".into(),
            points: at_levels(&|l| d["terms"][l]["flush"].as_f64()),
        },
        Series {
            name: "term index: flush and indexing combined".into(),
            points: at_levels(&|l| d["terms"][l]["combined"].as_f64()),
        },
        Series {
            name: "no index in MariaDB (Meilisearch)".into(),
            points: at_levels(&|l| d["none"][l].as_f64()),
        },
    ];
    let path = dir.join("flush-rate-vs-stored.svg");
    lines(
        &path,
        "Figure 8: flush rate with message text against the rows stored",
        ("messages already stored", "rows flushed per second"),
        &series,
        false,
    )?;
    Ok(vec![path])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_three_digits() {
        assert_eq!(grouped(0.0), "0");
        assert_eq!(grouped(999.4), "999");
        assert_eq!(grouped(17815.0), "17\u{2009}815");
        assert_eq!(grouped(10_000_000.0), "10\u{2009}000\u{2009}000");
        assert_eq!(grouped(-1500.0), "-1\u{2009}500");
    }

    #[test]
    fn a_results_file_draws_its_figures_with_every_series() {
        let dir = std::env::temp_dir().join(format!("plots-{}", std::process::id()));
        let results = serde_json::json!({
            "create_throughput": {"per_run": {"service": [15000.0, 16000.0], "ceiling": [30000.0, 31000.0], "baseline": [1200.0, 1100.0]}},
            "sustained_balance": {"rps": 15500.0, "pending_depth_per_second": [100, 4000, 2500]},
            "sustainable": {"steps": [{"rate": 8000, "bounded": true, "depth_per_second": [10, 20, 15]}]}
        });
        let written = render_results(&results, &dir).unwrap();
        assert_eq!(written.len(), 2);
        let depth = std::fs::read_to_string(dir.join("pending-depth.svg")).unwrap();
        assert!(depth.starts_with("<svg"), "{depth:.100}");
        assert!(depth.contains("figure 9: paced at 8\u{2009}000 req/s (bounded)"));
        let runs = std::fs::read_to_string(dir.join("create-rate-per-run.svg")).unwrap();
        assert!(runs.contains("baseline: one INSERT per request"));
        let flush = serde_json::json!({
            "fulltext": {"0": 17815.0, "1000000": 6969.0},
            "terms": {"0": {"flush": 40000.0, "index": 30000.0, "combined": 17000.0},
                      "1000000": {"flush": 39000.0, "index": 29000.0, "combined": 16500.0}},
            "none": {"0": 36185.0, "1000000": 44513.0}
        });
        render_flush_text(&flush, &dir).unwrap();
        let svg = std::fs::read_to_string(dir.join("flush-rate-vs-stored.svg")).unwrap();
        assert!(svg.contains("no index in MariaDB (Meilisearch)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
