//! PNG plots of benchmark results, drawn with plotters (text in DejaVu
//! Sans, from Debian's fonts-dejavu-core).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::modes::Run;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT} (apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("cannot load {FONT}"))?;
    let _ = DONE.set(());
    Ok(())
}

/// One histogram of latency samples per entry (`samples_ms` of a summary).
pub fn latency_histogram(entries: &[(&str, &serde_json::Value)], path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 320)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, entries.len().max(1)));
    for ((title, summary), panel) in entries.iter().zip(panels) {
        let samples: Vec<f64> =
            summary["samples_ms"].as_array().into_iter().flatten().filter_map(serde_json::Value::as_f64).collect();
        let max = samples.iter().copied().fold(1.0, f64::max) * 1.05;
        let buckets = 30usize;
        let width = max / buckets as f64;
        let mut counts = vec![0u32; buckets];
        for s in &samples {
            counts[((s / width) as usize).min(buckets - 1)] += 1;
        }
        let top = counts.iter().copied().max().unwrap_or(1) as f64 * 1.1;
        let mut chart = ChartBuilder::on(&panel)
            .caption(format!("{title} (n={})", samples.len()), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..max, 0.0..top)?;
        chart.configure_mesh().x_desc("ms").y_desc("count").disable_mesh().draw()?;
        chart.draw_series(counts.iter().enumerate().map(|(i, c)| {
            let x0 = i as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width * 0.9, *c as f64)], BLUE.mix(0.6).filled())
        }))?;
    }
    root.present()?;
    Ok(())
}

/// Figures against a size, one panel per figure: `rows` are (size,
/// figures), `panels` are (title, unit) for each figure in order.
pub fn growth(rows: &[(f64, Vec<f64>)], panels: &[(&str, &str)], x_desc: &str, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (400 * panels.len() as u32, 320)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len()));
    let max_n = rows.iter().map(|r| r.0).fold(1.0, f64::max) * 1.05;
    for (i, ((title, unit), area)) in panels.iter().zip(areas).enumerate() {
        let get = |r: &(f64, Vec<f64>)| r.1.get(i).copied().unwrap_or_default();
        let top = rows.iter().map(get).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .caption(*title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_n, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(*unit)
            .x_labels(5)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .disable_mesh()
            .draw()?;
        // Linear growth from the smallest size, for comparison.
        if let Some(first) = rows.first().filter(|r| r.0 > 0.0) {
            let slope = get(first) / first.0;
            let end = (max_n, slope * max_n);
            let end = if end.1 > top { (top / slope.max(f64::MIN_POSITIVE), top) } else { end };
            chart.draw_series(LineSeries::new([(0.0, 0.0), end], RGBColor(170, 170, 170).stroke_width(1)))?;
        }
        chart.draw_series(LineSeries::new(rows.iter().map(|r| (r.0, get(r))), BLUE.stroke_width(2)))?;
        chart.draw_series(rows.iter().map(|r| Circle::new((r.0, get(r)), 4, BLUE.filled())))?;
    }
    root.present()?;
    Ok(())
}

/// Requests per second and failures over time, one panel per apply mode,
/// both loads drawn, changes marked.
pub fn apply_modes(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 300 * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((runs.len(), 1));
    let per_second = |series: &[(u64, u64)]| series.iter().map(|(ok, err)| (ok + err) * 10).max().unwrap_or(1);
    let top = runs.iter().map(|r| per_second(&r.max.series).max(per_second(&r.fixed.series))).max().unwrap_or(1) as f64;
    let top = top * 1.1;
    let max_t = runs.iter().map(|r| r.seconds).fold(1.0, f64::max);
    let fixed_color = RGBColor(0, 150, 60);
    for (run, panel) in runs.iter().zip(panels) {
        let title = format!(
            "{}: {} failed of {} (closed loop), {} of {} ({} req/s); {} reloads, {} runtime applies",
            run.mode,
            run.max.failed,
            run.max.requests,
            run.fixed.failed,
            run.fixed.requests,
            run.rate,
            run.reloads,
            run.runtime_applies
        );
        let mut chart = ChartBuilder::on(&panel)
            .caption(title, ("sans-serif", 17))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_t, 0.0..top)?;
        chart.configure_mesh().x_desc("seconds").y_desc("requests/s").disable_mesh().draw()?;
        for (t, what) in &run.events {
            let color = if what.contains("service") { RGBColor(200, 140, 0) } else { RGBColor(170, 170, 170) };
            chart.draw_series(LineSeries::new([(*t, 0.0), (*t, top)], color.stroke_width(1)))?;
        }
        for (outcome, color) in [(&run.max, BLUE), (&run.fixed, fixed_color)] {
            let ok = outcome.series.iter().enumerate().map(|(i, (ok, _))| (i as f64 / 10.0, *ok as f64 * 10.0));
            chart.draw_series(LineSeries::new(ok, color.stroke_width(1)))?;
            let failed = outcome.series.iter().enumerate().filter(|(_, (_, err))| *err > 0);
            chart.draw_series(
                failed.map(|(i, (_, err))| Circle::new((i as f64 / 10.0, *err as f64 * 10.0), 4, RED.filled())),
            )?;
        }
    }
    root.present()?;
    Ok(())
}
