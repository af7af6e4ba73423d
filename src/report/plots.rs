//! Charts drawn with `plotters` into an in-memory RGB buffer and written as PNG by the
//! `image` crate (so `plotters` needs no image encoder of its own). Text is set in
//! DejaVu Sans, embedded in the binary and registered with `plotters`' `ab_glyph`
//! renderer on first use: no system fonts or fontconfig are needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::{ReportError, save_rgb};

/// One named line of a [`line_chart`].
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// The font family every chart uses (registered from the embedded DejaVu Sans).
const FONT: &str = "sans-serif";

/// Line-chart size in pixels.
const LINE_SIZE: (u32, u32) = (900, 500);
/// Scatter-plot size in pixels (the legend takes the right-hand `LEGEND_WIDTH`).
const SCATTER_SIZE: (u32, u32) = (960, 720);
const LEGEND_WIDTH: u32 = 200;
/// Centre of the first legend row and the distance between rows, in pixels.
const LEGEND_TOP: usize = 60;
const LEGEND_ROW: usize = 24;

/// matplotlib's `tab10` colours, then `plotters`' 99-colour palette.
const TAB10: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The colour of series or class `i`.
pub fn color(i: usize) -> RGBColor {
    match TAB10.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b),
        None => {
            let c = Palette99::pick(i - TAB10.len()).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// Registers the embedded font once; `false` if it could not be parsed.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok())
}

/// `[lo, hi]` of the values padded by 5% (a unit span around a single value).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * lo.abs().max(1.0) {
        let half = (lo.abs() * 0.05).max(0.5);
        return (lo - half, hi + half);
    }
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// A tick label: integers without a decimal point, other values with up to three
/// decimals (trailing zeros dropped), very large or small magnitudes in exponent form.
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// Draws with `draw` on a white canvas of `size`, then writes the PNG.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(
        &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    ) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(), ReportError> {
    let plot_err = |message: String| ReportError::Plot {
        path: path.to_path_buf(),
        message,
    };
    if !font_ready() {
        return Err(plot_err("the embedded font cannot be read".into()));
    }
    let (w, h) = (size.0 as usize, size.1 as usize);
    let mut buf = vec![255u8; w * h * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        draw(&root).map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    save_rgb(path, w, h, buf)
}

/// A line chart of `series` (one colour and legend entry each) with `title` above and
/// `x_label` under the x axis, written to `path` as a 900×500 PNG. Non-finite points
/// are skipped; empty series are listed in the legend but draw nothing.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
) -> Result<(), ReportError> {
    line_chart_with_x(path, title, x_label, series, &tick)
}

/// [`line_chart`] with the x tick labels from `x_tick` (a log axis: plot `log10 x` and
/// label the ticks `10^v`).
pub fn line_chart_with_x(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
    x_tick: &dyn Fn(&f64) -> String,
) -> Result<(), ReportError> {
    draw_lines(path, title, x_label, series, x_tick, false)
}

/// [`line_chart_with_x`] with a dot on every point, so a series of one point shows
/// (a sweep's metric against a swept value).
pub fn marked_line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
    x_tick: &dyn Fn(&f64) -> String,
) -> Result<(), ReportError> {
    draw_lines(path, title, x_label, series, x_tick, true)
}

/// The tick labels of [`line_chart`]'s axes, for a caller's own `x_tick`.
pub fn tick_label(v: &f64) -> String {
    tick(v)
}

fn draw_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
    x_tick: &dyn Fn(&f64) -> String,
    markers: bool,
) -> Result<(), ReportError> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all = || series.iter().flat_map(|s| s.points.iter().filter(finite));
    let (x0, x1) = padded_range(all().map(|p| p.0));
    let (y0, y1) = padded_range(all().map(|p| p.1));
    render(path, LINE_SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .x_label_formatter(x_tick)
            .y_label_formatter(&tick)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().filter(finite).copied(),
                    c.stroke_width(2),
                ))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            if markers {
                chart.draw_series(
                    s.points
                        .iter()
                        .filter(finite)
                        .map(|&p| Circle::new(p, 4, c.filled())),
                )?;
            }
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}

/// A scatter plot of `points`, point `i` coloured by class `classes[i]`, with a legend
/// of `class_names` (a class without a name is shown as its number; classes beyond what
/// fits are counted on the last row) to the right;
/// written to `path` as a 960×720 PNG. Non-finite points are skipped.
pub fn scatter(
    path: &Path,
    title: &str,
    points: &[(f32, f32)],
    classes: &[u32],
    class_names: &[String],
) -> Result<(), ReportError> {
    if points.len() != classes.len() {
        return Err(ReportError::Input(format!(
            "{} points but {} class labels",
            points.len(),
            classes.len()
        )));
    }
    let finite = |p: &(f32, f32)| p.0.is_finite() && p.1.is_finite();
    let (x0, x1) = padded_range(points.iter().filter(|p| finite(p)).map(|p| p.0 as f64));
    let (y0, y1) = padded_range(points.iter().filter(|p| finite(p)).map(|p| p.1 as f64));
    let n_classes = classes
        .iter()
        .map(|&c| c as usize + 1)
        .max()
        .unwrap_or(0)
        .max(class_names.len());
    render(path, SCATTER_SIZE, |root| {
        let (plot, legend) = root.split_horizontally(SCATTER_SIZE.0 - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, (FONT, 22))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style((FONT, 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        chart.draw_series(points.iter().zip(classes).filter(|(p, _)| finite(p)).map(
            |(&(x, y), &c)| {
                Circle::new(
                    (x as f64, y as f64),
                    3,
                    color(c as usize).mix(0.75).filled(),
                )
            },
        ))?;
        // As many legend rows as fit; the rest are summarised on the last row.
        let fit = ((SCATTER_SIZE.1 as usize - LEGEND_TOP) / LEGEND_ROW).max(1);
        let shown = if n_classes > fit { fit - 1 } else { n_classes };
        for c in 0..shown {
            let y = (LEGEND_TOP + LEGEND_ROW * c) as i32;
            legend.draw(&Circle::new((16, y), 6, color(c).filled()))?;
            let name = class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
            legend.draw(&Text::new(name, (30, y - 9), (FONT, 16).into_font()))?;
        }
        if shown < n_classes {
            let y = (LEGEND_TOP + LEGEND_ROW * shown) as i32;
            let more = format!("… {} more classes", n_classes - shown);
            legend.draw(&Text::new(more, (10, y - 9), (FONT, 16).into_font()))?;
        }
        Ok(())
    })
}
