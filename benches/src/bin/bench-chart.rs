//! Draws scripts/bench-vs-rsync's scale.csv as an SVG: time vs. tree size, time per file, and
//! jailsync's peak RSS per file, one line per contender.
//!
//!     bench-chart scale.csv scale.svg

use std::collections::BTreeMap;
use std::error::Error;
use std::process::ExitCode;

use plotters::prelude::*;

type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [csv, out] = args.as_slice() else {
        eprintln!("usage: bench-chart scale.csv out.svg");
        return ExitCode::from(2);
    };
    match draw(csv, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-chart: {e}");
            ExitCode::from(2)
        }
    }
}

/// Reads columns contender,files,seconds,us_per_file,rss_bytes_per_file (header names, any order).
fn read(csv: &str) -> Result<[Series; 3], Box<dyn Error>> {
    let text = std::fs::read_to_string(csv)?;
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().ok_or("empty csv")?.split(',').collect();
    let col = |n: &str| {
        head.iter()
            .position(|h| *h == n)
            .ok_or(format!("no column {n}"))
    };
    let (c, f, s, u, r) = (
        col("contender")?,
        col("files")?,
        col("seconds")?,
        col("us_per_file")?,
        col("rss_bytes_per_file")?,
    );
    let mut out: [Series; 3] = Default::default();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let v: Vec<&str> = line.split(',').collect();
        let files: f64 = v[f].parse()?;
        for (i, k) in [s, u, r].into_iter().enumerate() {
            // Empty cells (no RSS for rsync) are simply not drawn.
            if let Ok(y) = v[k].parse::<f64>() {
                out[i].entry(v[c].to_string()).or_default().push((files, y));
            }
        }
    }
    Ok(out)
}

fn draw(csv: &str, out: &str) -> Result<(), Box<dyn Error>> {
    let data = read(csv)?;
    let panels = [
        ("Upgrade time vs. tree size", "seconds"),
        ("Time per file", "µs per file"),
        ("jailsync peak RSS per file", "bytes per file"),
    ];
    let n = if data[2].is_empty() { 2 } else { 3 };
    let root = SVGBackend::new(out, (460 * n as u32, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, n));
    let contenders: Vec<&String> = data[0].keys().collect();
    for (i, area) in areas.iter().enumerate() {
        let series = &data[i];
        let pts = series.values().flatten();
        let xmax = pts.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
        let ymax = pts.map(|p| p.1).fold(1e-9, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(panels[i].0, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("files in tree")
            .y_desc(panels[i].1)
            .x_label_formatter(&|x| format!("{}k", (x / 1000.0).round()))
            .draw()?;
        for (name, pts) in series {
            // Fixed colours per known contender so charts from different runs compare at a glance.
            let color = match name.as_str() {
                "seed" => RGBColor(230, 120, 0).to_rgba(),
                "rsync-ac" => RGBColor(30, 100, 200).to_rgba(),
                "jailsync" => RGBColor(200, 30, 50).to_rgba(),
                _ => {
                    let k = contenders.iter().position(|c| *c == name).unwrap_or(0);
                    Palette99::pick(k + 3).to_rgba()
                }
            };
            let mut pts = pts.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
