//! The PNG plots of a run (plotters): the latency distributions, writes/s
//! and p99 against concurrency, and Tidings beside the npm peers (memory
//! per socket, deliveries per CPU-second).

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::scenarios::throughput::Step;
use crate::stats::Summary;

/// The plots' font: plotters draws text with a TrueType font it is given
/// (DejaVu Sans, which Debian installs with fontconfig), `BENCH_FONT` to
/// use another.
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the font; false (and no plots) without one.
pub fn load_font() -> Result<(), String> {
    let candidates = std::env::var("BENCH_FONT")
        .ok()
        .into_iter()
        .chain(FONTS.iter().map(|f| (*f).to_owned()));
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            // plotters keeps the font for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    Err(format!(
        "no font for the plots ({}; or set BENCH_FONT to a .ttf)",
        FONTS.join(", ")
    ))
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One engine's steps, `(concurrency, writes/s, p99 ms)`, and its raw
/// produce rate.
type Engine = (String, Vec<(f64, f64, f64)>, f64);

/// What the scenarios hand over for plotting.
#[derive(Default)]
pub struct Plots {
    latencies: Vec<(String, Vec<(f64, f64)>)>,
    throughput: Vec<Engine>,
    socket_memory: Vec<(String, f64)>,
    fanout: Vec<(String, f64)>,
}

impl Plots {
    /// A latency curve to draw; a summary without one (made `brief`) adds
    /// nothing.
    pub fn latency(&mut self, label: &str, summary: &Summary) {
        if summary.n > 0 && !summary.curve.is_empty() {
            self.latencies
                .push((label.to_owned(), summary.curve.clone()));
        }
    }

    pub fn throughput(&mut self, engine: &str, steps: &[Step], raw: f64) {
        let points = steps
            .iter()
            .map(|s| (s.concurrency as f64, s.per_second, s.latency.p99))
            .collect();
        self.throughput.push((engine.to_owned(), points, raw));
    }

    /// Adds what another target's scenarios handed over.
    pub fn merge(&mut self, other: Plots) {
        self.latencies.extend(other.latencies);
        self.throughput.extend(other.throughput);
        self.socket_memory.extend(other.socket_memory);
        self.fanout.extend(other.fanout);
    }

    pub fn socket_memory(&mut self, server: &str, kib: f64) {
        self.socket_memory.push((server.to_owned(), kib));
    }

    pub fn fanout(&mut self, server: &str, per_cpu_second: f64) {
        self.fanout.push((server.to_owned(), per_cpu_second));
    }

    /// Draws what there is into `dir`; the files written.
    pub fn draw(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        if !self.latencies.is_empty() {
            let path = dir.join("latency.png");
            self.draw_latency(&path).context("latency.png")?;
            written.push(path);
        }
        if !self.throughput.is_empty() {
            let path = dir.join("throughput.png");
            self.draw_throughput(&path).context("throughput.png")?;
            written.push(path);
        }
        if !self.socket_memory.is_empty() || !self.fanout.is_empty() {
            let path = dir.join("peers.png");
            self.draw_peers(&path).context("peers.png")?;
            written.push(path);
        }
        Ok(written)
    }

    /// Latency against percentile, the tail stretched: x = -log10(1 - p),
    /// so p90, p99 and p99.9 are evenly apart.
    fn draw_latency(&self, path: &Path) -> anyhow::Result<()> {
        let root = BitMapBackend::new(path, (1100, 650)).into_drawing_area();
        root.fill(&WHITE)?;
        let stretch = |p: f64| -(1.0 - (p / 100.0).min(0.999)).log10();
        let values = self
            .latencies
            .iter()
            .flat_map(|(_, c)| c.iter().map(|(_, ms)| *ms))
            .filter(|ms| ms.is_finite());
        let (low, high) = values.fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (low, high) = ((low * 0.8).max(0.01), (high * 1.25).max(0.1));
        // No finite latency at all: an empty range would never end its
        // axis (plotters' log scale loops on it).
        if low >= high {
            root.present()?;
            return Ok(());
        }
        let mut chart = ChartBuilder::on(&root)
            .caption("Latency distribution (ms, log scale)", ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..3.0, (low..high).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(4)
            .x_label_formatter(&|x: &f64| match x.round() as i64 {
                0 => "p0".into(),
                1 => "p90".into(),
                2 => "p99".into(),
                _ => "p99.9".into(),
            })
            .x_desc("percentile")
            .y_desc("ms")
            .y_label_formatter(&|y| format!("{y}"))
            .draw()?;
        for (i, (label, curve)) in self.latencies.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = curve
                .iter()
                .filter(|(p, ms)| *p <= 99.9 && ms.is_finite())
                .map(|(p, ms)| (stretch(*p), ms.max(low)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        // Lower right: the steep tails of an overload fill the upper left.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// Writes/s and p99 against concurrency, per engine, with each engine's
    /// raw produce rate.
    fn draw_throughput(&self, path: &Path) -> anyhow::Result<()> {
        let root = BitMapBackend::new(path, (1300, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(650);
        let max_c = self
            .throughput
            .iter()
            .flat_map(|(_, p, _)| p.iter().map(|(c, _, _)| *c))
            .fold(1.0_f64, f64::max)
            * 2.0;
        let max_rate = self
            .throughput
            .iter()
            .flat_map(|(_, p, raw)| p.iter().map(|(_, r, _)| *r).chain([*raw]))
            .fold(1.0_f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&left)
            .caption("Writes accepted/s vs concurrency", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d((1.0..max_c).log_scale(), (1.0..max_rate).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("concurrent clients (closed loop)")
            .y_desc("per second")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| crate::report::figure(*y))
            .draw()?;
        for (i, (engine, points, raw)) in self.throughput.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(c, r, _)| (*c, r.max(1.0))),
                    color.stroke_width(2),
                ))?
                .label(format!("Tidings, {engine} engine"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .iter()
                    .map(|(c, r, _)| Circle::new((*c, r.max(1.0)), 4, color.filled())),
            )?;
            let faint = color.mix(0.6);
            chart
                .draw_series(LineSeries::new(
                    [(1.0, *raw), (max_c, *raw)],
                    faint.stroke_width(1),
                ))?
                .label(format!("raw produce, {engine} engine"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], faint.stroke_width(1))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;

        let max_p99 = self
            .throughput
            .iter()
            .flat_map(|(_, p, _)| p.iter().map(|(_, _, p99)| *p99))
            .fold(60.0_f64, f64::max)
            * 1.3;
        let mut chart = ChartBuilder::on(&right)
            .caption("p99 reply latency vs concurrency", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((1.0..max_c).log_scale(), (0.1..max_p99).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("concurrent clients (closed loop)")
            .y_desc("p99, ms")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y}"))
            .draw()?;
        for (i, (engine, points, _)) in self.throughput.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(c, _, p99)| (*c, p99.max(0.1))),
                    color.stroke_width(2),
                ))?
                .label(format!("{engine} engine"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .draw_series(LineSeries::new(
                [(1.0, 50.0), (max_c, 50.0)],
                RED.mix(0.7).stroke_width(1),
            ))?
            .label("50 ms")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.7)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    }

    fn draw_peers(&self, path: &Path) -> anyhow::Result<()> {
        let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        bars(
            &left,
            "Resident memory per idle WebSocket (KiB)",
            &self.socket_memory,
        )?;
        bars(
            &right,
            "Fan-out deliveries per server CPU-second",
            &self.fanout,
        )?;
        root.present()?;
        Ok(())
    }
}

fn bars(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    values: &[(String, f64)],
) -> anyhow::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let top = values.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max) * 1.2;
    let names: Vec<String> = values.iter().map(|(n, _)| n.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..values.len() as f64, 0.0..top.max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(values.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| crate::report::figure(*y))
        .draw()?;
    for (i, (_, value)) in values.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let x = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.2, 0.0), (x + 0.8, *value)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            crate::report::figure(*value),
            (x + 0.35, *value + top * 0.02),
            ("sans-serif", 15),
        )))?;
    }
    Ok(())
}
