//! PNG plots of benchmark results, drawn with plotters (text in DejaVu
//! Sans, from Debian's fonts-dejavu-core).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::modes::Run;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT} (apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("cannot load {FONT}"))
}

/// Requests per second and failures over time, one panel per apply mode,
/// changes marked.
pub fn apply_modes(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 300 * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((runs.len(), 1));
    let max_rps = runs.iter().flat_map(|r| r.series.iter().map(|(ok, err)| (ok + err) * 10)).max().unwrap_or(1) as f64;
    let max_t = runs.iter().map(|r| r.seconds).fold(1.0, f64::max);
    for (run, panel) in runs.iter().zip(panels) {
        let title = format!(
            "{}: {} requests, {} failed, {} reloads, {} runtime applies",
            run.mode, run.requests, run.failed, run.reloads, run.runtime_applies
        );
        let mut chart = ChartBuilder::on(&panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_t, 0.0..max_rps * 1.1)?;
        chart.configure_mesh().x_desc("seconds").y_desc("requests/s").disable_mesh().draw()?;
        for (t, what) in &run.events {
            let color = if what.contains("service") { RGBColor(200, 140, 0) } else { RGBColor(160, 160, 160) };
            chart.draw_series(LineSeries::new([(*t, 0.0), (*t, max_rps * 1.1)], color.stroke_width(1)))?;
        }
        let ok = run.series.iter().enumerate().map(|(i, (ok, _))| (i as f64 / 10.0, *ok as f64 * 10.0));
        chart.draw_series(LineSeries::new(ok, BLUE.stroke_width(1)))?;
        let failed = run.series.iter().enumerate().filter(|(_, (_, err))| *err > 0);
        chart.draw_series(
            failed.map(|(i, (_, err))| Circle::new((i as f64 / 10.0, *err as f64 * 10.0), 4, RED.filled())),
        )?;
    }
    root.present()?;
    Ok(())
}
