//! PNG plots of benchmark results, drawn with plotters (text in DejaVu
//! Sans, from Debian's fonts-dejavu-core).
//!
//! Every plot has a title over the whole figure, a title per panel that
//! carries the figure that matters (computed by the caller from the same
//! data), axis descriptions with units, and a legend naming every series
//! and every marked event.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "pixel, bucket and label arithmetic on small non-negative values"
)]

use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::modes::Run;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FAMILY: &str = "sans-serif";
const TITLE_SIZE: u32 = 22;
const CAPTION_SIZE: u32 = 17;
const LABEL_SIZE: u32 = 13;
const DESC_SIZE: u32 = 14;
const LEGEND_SIZE: u32 = 13;
const GREY: RGBColor = RGBColor(150, 150, 150);
const ORANGE: RGBColor = RGBColor(220, 130, 0);
const GREEN: RGBColor = RGBColor(0, 150, 60);
const DARK_RED: RGBColor = RGBColor(200, 0, 0);

fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT} (apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("cannot load {FONT}"))?;
    let _ = DONE.set(());
    Ok(())
}

/// An integer with thousands separated: 483706 → "483,706".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A tick label: no needless ".0", thousands separated, at most three decimals.
fn tick(v: f64) -> String {
    if v.abs() >= 1000.0 || (v - v.round()).abs() < 1e-9 {
        let s = thousands(v.abs().round() as u64);
        if v < -0.5 { format!("-{s}") } else { s }
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let exp = 10f64.powf(raw.log10().floor());
    let m = raw / exp;
    let m = if m <= 1.0 + 1e-9 {
        1.0
    } else if m <= 2.0 + 1e-9 {
        2.0
    } else if m <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    m * exp
}

/// The figure with its title drawn, ready to be split into panels.
fn figure<'a>(path: &'a Path, size: (u32, u32), title: &str) -> anyhow::Result<DrawingArea<BitMapBackend<'a>, Shift>> {
    register_font()?;
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let style = fitting(&root, title, TITLE_SIZE, 30)?;
    let root = root.titled(title, style)?.margin(4, 0, 0, 0);
    Ok(root)
}

/// The font for `text` on `area`: `size`, or smaller until it fits (not below 11).
fn fitting<'s>(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    text: &str,
    size: u32,
    padding: u32,
) -> anyhow::Result<TextStyle<'s>> {
    let width = area.dim_in_pixel().0.saturating_sub(padding);
    let mut size = size;
    while size > 11 {
        let style: TextStyle<'s> = (FAMILY, size).into_font().into();
        if area.estimate_text_size(text, &style)?.0 <= width {
            break;
        }
        size -= 1;
    }
    Ok((FAMILY, size).into_font().into())
}

fn legend_line(color: RGBColor, width: u32) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
}

fn legend_box(color: RGBAColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.filled())
}

/// One histogram panel: its title (the figure that matters, e.g. "start →
/// routed: p50 65 ms, p99 100 ms (n=30)") and a summary from
/// [`crate::stats::Summary`] as JSON (`samples_ms`, `p50_ms`, `p99_ms`).
pub struct Histogram<'a> {
    pub title: String,
    pub summary: &'a serde_json::Value,
}

/// One histogram of latency samples per panel, p50 and p99 marked.
pub fn latency_histogram(title: &str, panels: &[Histogram<'_>], path: &Path) -> anyhow::Result<()> {
    let root = figure(path, (600 * panels.len().max(1) as u32, 420), title)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(areas) {
        let summary = panel.summary;
        let samples: Vec<f64> =
            summary["samples_ms"].as_array().into_iter().flatten().filter_map(serde_json::Value::as_f64).collect();
        let p50 = summary["p50_ms"].as_f64().filter(|_| !samples.is_empty());
        let p99 = summary["p99_ms"].as_f64().filter(|_| !samples.is_empty());
        let largest = samples.iter().copied().chain(p99).fold(1.0, f64::max);
        let width = nice_step(largest / 30.0);
        let buckets = ((largest / width).floor() as usize + 1).max(1);
        let mut counts = vec![0u32; buckets];
        for s in &samples {
            counts[((s / width).max(0.0) as usize).min(buckets - 1)] += 1;
        }
        let most = counts.iter().copied().max().unwrap_or(0).max(1);
        // Headroom above the tallest bar for the legend.
        let top = (f64::from(most) * 1.6).ceil() as u32 + 1;
        let max_x = buckets as f64 * width;
        // The percentile marks end below the legend.
        let mark_top = (f64::from(most) * 1.25).ceil() as u32;
        let caption = fitting(&area, &panel.title, CAPTION_SIZE, 20)?;
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, caption)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..max_x, 0u32..top)?;
        chart
            .configure_mesh()
            .x_desc("latency (ms)")
            .y_desc(format!("samples per {} ms bucket", tick(width)))
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| thousands(u64::from(*y)))
            .label_style((FAMILY, LABEL_SIZE))
            .axis_desc_style((FAMILY, DESC_SIZE))
            .disable_mesh()
            .draw()?;
        let bar = BLUE.mix(0.6);
        chart
            .draw_series(counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| {
                let x0 = i as f64 * width;
                Rectangle::new([(x0, 0), (x0 + width * 0.9, *c)], bar.filled())
            }))?
            .label(format!("samples (n={})", samples.len()))
            .legend(legend_box(bar));
        for (name, value, color) in [("p50", p50, GREEN), ("p99", p99, DARK_RED)] {
            if let Some(v) = value {
                chart
                    .draw_series([PathElement::new(vec![(v, 0), (v, mark_top)], color.stroke_width(2))])?
                    .label(format!("{name} {} ms", tick_ms(v)))
                    .legend(legend_line(color, 2));
            }
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    root.present()?;
    Ok(())
}

/// Draws the chart's legend at `position`, in the report's style.
fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, position: SeriesLabelPosition) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: Send + Sync + 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font((FAMILY, LEGEND_SIZE))
        .draw()?;
    Ok(())
}

/// Milliseconds as the report writes them: one decimal below 100.
fn tick_ms(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// One panel of [`growth`]: its title (the figure that matters, e.g.
/// "RSS: 95.6 MiB at 30,000"), the y axis with its unit, and what the
/// measured series is.
pub struct GrowthPanel<'a> {
    pub title: String,
    pub y_desc: &'a str,
    pub series: &'a str,
}

/// Figures against a size, one panel per figure, three panels a row:
/// `rows` are (size, figures), `panels` describe each figure in order.
/// Each panel also draws linear growth from the smallest size, for
/// comparison.
pub fn growth(
    title: &str,
    rows: &[(f64, Vec<f64>)],
    panels: &[GrowthPanel<'_>],
    x_desc: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let cols = panels.len().clamp(1, 3);
    let lines = panels.len().div_ceil(cols).max(1);
    let root = figure(path, (500 * cols as u32, 400 * lines as u32 + 40), title)?;
    let areas = root.split_evenly((lines, cols));
    let max_n = rows.iter().map(|r| r.0).fold(1.0, f64::max) * 1.08;
    for (i, (panel, area)) in panels.iter().zip(areas).enumerate() {
        let get = |r: &(f64, Vec<f64>)| r.1.get(i).copied().unwrap_or_default();
        // Headroom above the highest point for the legend.
        let top = rows.iter().map(get).fold(1.0, f64::max) * 1.5;
        let caption = fitting(&area, &panel.title, CAPTION_SIZE, 20)?;
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, caption)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_n, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(panel.y_desc)
            .x_labels(5)
            .y_labels(6)
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .label_style((FAMILY, LABEL_SIZE))
            .axis_desc_style((FAMILY, DESC_SIZE))
            .disable_mesh()
            .draw()?;
        if let Some(first) = rows.first().filter(|r| r.0 > 0.0 && get(r) > 0.0) {
            let slope = get(first) / first.0;
            let end = (max_n, slope * max_n);
            let end = if end.1 > top { (top / slope, top) } else { end };
            chart
                .draw_series(LineSeries::new([(0.0, 0.0), end], GREY.stroke_width(1)))?
                .label(format!("linear growth from {}", tick(first.0)))
                .legend(legend_line(GREY, 1));
        }
        chart
            .draw_series(LineSeries::new(rows.iter().map(|r| (r.0, get(r))), BLUE.stroke_width(2)))?
            .label(panel.series)
            .legend(legend_line(BLUE, 2));
        chart.draw_series(rows.iter().map(|r| Circle::new((r.0, get(r)), 4, BLUE.filled())))?;
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    root.present()?;
    Ok(())
}

/// Requests per second and failures over time, one panel per apply mode,
/// both loads drawn (the closed loop on the left axis, the fixed rate on
/// the right), the changes marked.
pub fn apply_modes(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    let cycles = runs.first().map_or(0, |r| r.events.iter().filter(|(_, what)| what == "new service").count());
    let title = format!(
        "Requests through HAProxy while hello scales 1→10→1 and a second service comes and goes, {cycles} times"
    );
    let root = figure(path, (1300, 420 * runs.len().max(1) as u32 + 40), &title)?;
    let areas = root.split_evenly((runs.len().max(1), 1));
    // Answered or failed in 100 ms, per second.
    let per_second = |n: u64| n as f64 * 10.0;
    let most = |series: &[(u64, u64)]| series.iter().map(|(ok, err)| ok.max(err)).max().copied().unwrap_or(0);
    let top_max = runs.iter().map(|r| per_second(most(&r.max.series))).fold(1.0, f64::max) * 1.6;
    let top_fixed =
        runs.iter().map(|r| per_second(most(&r.fixed.series)).max(f64::from(r.rate))).fold(1.0, f64::max) * 1.6;
    let max_t = runs.iter().map(|r| r.seconds).fold(1.0, f64::max);
    for (run, area) in runs.iter().zip(areas) {
        let caption = format!(
            "{}: {} of {} closed-loop requests failed, {} of {} at {} req/s; {} reloads, {} runtime applies",
            run.mode,
            thousands(run.max.failed),
            thousands(run.max.requests),
            thousands(run.fixed.failed),
            thousands(run.fixed.requests),
            run.rate,
            run.reloads,
            run.runtime_applies
        );
        let style = fitting(&area, &caption, CAPTION_SIZE, 20)?;
        let mut chart = ChartBuilder::on(&area)
            .caption(&caption, style)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0.0..max_t, 0.0..top_max)?
            .set_secondary_coord(0.0..max_t, 0.0..top_fixed);
        chart
            .configure_mesh()
            .x_desc("time since the loads started (s)")
            .y_desc("closed loop: requests/s")
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .label_style((FAMILY, LABEL_SIZE))
            .axis_desc_style((FAMILY, DESC_SIZE))
            .disable_mesh()
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("fixed rate: requests/s")
            .y_label_formatter(&|y| tick(*y))
            .label_style((FAMILY, LABEL_SIZE))
            .axis_desc_style((FAMILY, DESC_SIZE))
            .draw()?;
        // Events are "scale 1→10", "scale 10→1", "new service" and "service gone".
        let marks = [("scale 1→10 or 10→1", GREY, true), ("second service started or stopped", ORANGE, false)];
        for (label, color, scale) in marks {
            let times: Vec<f64> =
                run.events.iter().filter(|(_, what)| what.starts_with("scale") == scale).map(|(t, _)| *t).collect();
            if times.is_empty() {
                continue;
            }
            chart
                .draw_series(times.iter().map(|t| PathElement::new(vec![(*t, 0.0), (*t, top_max)], color.mix(0.8))))?
                .label(label)
                .legend(legend_line(color, 1));
        }
        let ok = |series: &[(u64, u64)]| -> Vec<(f64, f64)> {
            series.iter().enumerate().map(|(i, (ok, _))| (i as f64 / 10.0, per_second(*ok))).collect()
        };
        let failed = |series: &[(u64, u64)]| -> Vec<(f64, f64)> {
            series
                .iter()
                .enumerate()
                .filter(|(_, (_, err))| *err > 0)
                .map(|(i, (_, err))| (i as f64 / 10.0, per_second(*err)))
                .collect()
        };
        chart
            .draw_series(LineSeries::new(ok(&run.max.series), BLUE.stroke_width(1)))?
            .label(format!("closed loop ({} connections), answered (left axis)", run.connections))
            .legend(legend_line(BLUE, 2));
        chart
            .draw_secondary_series(LineSeries::new(ok(&run.fixed.series), GREEN.stroke_width(1)))?
            .label(format!("fixed rate ({} req/s), answered (right axis)", run.rate))
            .legend(legend_line(GREEN, 2));
        let failed_max = failed(&run.max.series);
        if !failed_max.is_empty() {
            chart
                .draw_series(failed_max.into_iter().map(|p| Cross::new(p, 6, RED.stroke_width(2))))?
                .label("closed loop, failed (left axis)")
                .legend(|(x, y)| Cross::new((x + 10, y), 5, RED.stroke_width(2)));
        }
        let failed_fixed = failed(&run.fixed.series);
        if !failed_fixed.is_empty() {
            chart
                .draw_secondary_series(failed_fixed.into_iter().map(|p| Circle::new(p, 5, RED.filled())))?
                .label("fixed rate, failed (right axis)")
                .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font((FAMILY, LEGEND_SIZE))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::load::Outcome;

    #[test]
    fn labels() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(483_706), "483,706");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(
            (tick(0.0), tick(2.5), tick(4000.0), tick(0.125)),
            ("0".into(), "2.5".into(), "4,000".into(), "0.125".into())
        );
        assert_eq!((nice_step(0.53), nice_step(3.4), nice_step(7.0), nice_step(0.0)), (1.0, 5.0, 10.0, 1.0));
    }

    fn summary(samples: &[f64]) -> serde_json::Value {
        let samples: Vec<std::time::Duration> =
            samples.iter().map(|ms| std::time::Duration::from_secs_f64(ms / 1e3)).collect();
        serde_json::to_value(crate::stats::Summary::of(&samples)).unwrap()
    }

    fn outcome(seconds: usize, ok: u64, failing_at: &[usize]) -> Outcome {
        let series: Vec<(u64, u64)> = (0..seconds * 10)
            .map(|i| (ok + (i as u64 * 7919) % (ok / 2 + 1), u64::from(failing_at.contains(&i))))
            .collect();
        Outcome {
            requests: series.iter().map(|(ok, err)| ok + err).sum(),
            failed: series.iter().map(|(_, err)| err).sum(),
            series,
            ..Outcome::default()
        }
    }

    /// Draws every plot from small made-up data into a directory of its
    /// own (or into `$PLOTS_DIR`, kept, to look at them).
    #[test]
    fn draws_every_plot() {
        let keep = std::env::var_os("PLOTS_DIR").map(std::path::PathBuf::from);
        let dir =
            keep.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("portolan-plots-{}", std::process::id())));
        std::fs::create_dir_all(&dir).unwrap();

        let fast = summary(&(0..50).map(|i| 5.0 + f64::from(i % 11) * 0.9).collect::<Vec<_>>());
        let slow =
            summary(&(0..30).map(|i| 55.0 + f64::from(i * 7 % 30) + f64::from(i / 29) * 40.0).collect::<Vec<_>>());
        let empty = summary(&[]);
        latency_histogram(
            "made-up latencies",
            &[
                Histogram { title: "fast (n=50)".into(), summary: &fast },
                Histogram { title: "slow, one far (n=30)".into(), summary: &slow },
                Histogram { title: "none: no samples".into(), summary: &empty },
            ],
            &dir.join("made-up-latency.png"),
        )
        .unwrap();

        let rows = vec![(1000.0, vec![90.0, 11.0]), (10_000.0, vec![700.0, 26.0]), (30_000.0, vec![4400.0, 95.0])];
        let panels = [
            GrowthPanel { title: "first apply: 4,400 ms at 30,000".into(), y_desc: "time (ms)", series: "measured" },
            GrowthPanel { title: "RSS: 95 MiB at 30,000".into(), y_desc: "RSS (MiB)", series: "measured" },
        ];
        growth("made-up growth", &rows, &panels, "instances in Consul", &dir.join("made-up-growth.png")).unwrap();
        growth("no rows", &[], &panels, "instances in Consul", &dir.join("made-up-growth-empty.png")).unwrap();

        let events: Vec<(f64, String)> = (0..3)
            .flat_map(|c| {
                let t = 1.0 + f64::from(c) * 3.0;
                [(t, "scale 1→10"), (t + 0.6, "new service"), (t + 1.2, "scale 10→1"), (t + 1.6, "service gone")]
            })
            .map(|(t, what)| (t, what.to_owned()))
            .collect();
        let runs: Vec<Run> = [("runtime", vec![]), ("sf", vec![23, 51])]
            .into_iter()
            .map(|(mode, failing)| Run {
                mode: mode.into(),
                max: outcome(10, 300, &failing),
                connections: 8,
                fixed: outcome(10, 20, &failing),
                rate: 200,
                reloads: 6.0,
                runtime_applies: 12.0,
                seconds: 10.0,
                events: events.clone(),
            })
            .collect();
        apply_modes(&runs, &dir.join("made-up-apply-modes.png")).unwrap();

        for name in ["made-up-latency.png", "made-up-growth.png", "made-up-growth-empty.png", "made-up-apply-modes.png"]
        {
            let len = std::fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0);
            assert!(len > 10_000, "{name}: {len} bytes");
        }
        if keep.is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
