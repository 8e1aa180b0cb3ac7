//! Draws a query result as the header says: line, bar, scatter or heatmap, one panel per facet
//! value, one colour and legend entry per series. SVG or PNG by the output's extension.

use std::path::Path;
use std::sync::Once;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use plotters::chart::{ChartContext, SeriesAnno};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::header::{Chart, Header};

const PANEL_W: u32 = 560;
const PANEL_H: u32 = 400;
const TITLE_H: u32 = 48;
/// Wide enough for a title on one line even with a single panel.
const MIN_W: u32 = 820;

/// A value on the x axis: numeric axes are drawn to scale, anything else as categories.
#[derive(Debug, Clone)]
enum Axis {
    Num(Vec<f64>),
    Cat(Vec<String>),
}

struct Columns {
    x: Axis,
    y: Vec<Option<f64>>,
    value: Vec<Option<f64>>,
    series: Vec<String>,
    facet: Vec<String>,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::ArrayRef> {
    batch.column_by_name(name).with_context(|| {
        let have: Vec<_> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        format!(
            "the plot header names column {name:?}, but the query returns {}",
            have.join(", ")
        )
    })
}

fn numbers(a: &dyn Array) -> Result<Vec<Option<f64>>> {
    let a = cast(a, &DataType::Float64)?;
    Ok(a.as_primitive::<Float64Type>().iter().collect())
}

fn texts(a: &dyn Array) -> Result<Vec<String>> {
    let f = ArrayFormatter::try_new(a, &FormatOptions::default())?;
    Ok((0..a.len()).map(|i| f.value(i).to_string()).collect())
}

fn collect(batch: &RecordBatch, h: &Header, chart: Chart) -> Result<Columns> {
    let n = batch.num_rows();
    let x_name =
        h.x.as_deref()
            .context("the plot header needs `-- x: COLUMN`")?;
    let x_col = column(batch, x_name)?;
    let x = if x_col.data_type().is_numeric() && chart != Chart::Bar && chart != Chart::Heatmap {
        Axis::Num(
            numbers(x_col)?
                .into_iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect(),
        )
    } else {
        Axis::Cat(texts(x_col)?)
    };
    let y_name =
        h.y.as_deref()
            .context("the plot header needs `-- y: COLUMN`")?;
    let y_col = column(batch, y_name)?;
    let (y, value) = if chart == Chart::Heatmap {
        let v = h
            .value
            .as_deref()
            .context("a heatmap needs `-- value: COLUMN` for the cell colour")?;
        (
            texts(y_col)?.iter().map(|_| None).collect(),
            numbers(column(batch, v)?)?,
        )
    } else {
        (numbers(y_col)?, vec![None; n])
    };
    let series = match &h.series {
        Some(s) => texts(column(batch, s)?)?,
        None => vec![String::new(); n],
    };
    let facet = match &h.facet {
        Some(f) => texts(column(batch, f)?)?,
        None => vec![String::new(); n],
    };
    let mut cols = Columns {
        x,
        y,
        value,
        series,
        facet,
    };
    if chart == Chart::Heatmap {
        // Heatmap rows are the y categories; keep them beside the x categories.
        cols.series = texts(y_col)?;
    }
    Ok(cols)
}

/// Distinct labels in natural order, so `ppo_step10` < `ppo_step100` and `6` < `12`.
fn sorted_labels(values: &[String]) -> Vec<String> {
    let mut v: Vec<String> = values.to_vec();
    v.sort_by(|a, b| {
        natural_key(a)
            .partial_cmp(&natural_key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    v.dedup();
    v
}

/// Runs of digits compare as numbers, everything else as text.
fn natural_key(s: &str) -> Vec<(String, f64)> {
    if let Ok(x) = s.parse::<f64>() {
        return vec![(String::new(), x)];
    }
    let mut key = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            key.push((String::new(), rest[..digits].parse::<f64>().unwrap_or(0.0)));
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            key.push((rest[..text].to_string(), 0.0));
            rest = &rest[text..];
        }
    }
    key
}

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Draws `batch` to `out` (`.svg` or `.png`).
/// What a figure needs: the columns, chart kind, facets, and the grid and pixel size.
struct Layout {
    cols: Columns,
    chart: Chart,
    facets: Vec<String>,
    grid: (u32, u32),
    size: (u32, u32),
}

fn layout(batch: &RecordBatch, h: &Header) -> Result<Layout> {
    register_fonts();
    let chart = h.chart.unwrap_or(Chart::Line);
    if batch.num_rows() == 0 {
        bail!("the query returned no rows: nothing to plot");
    }
    let cols = collect(batch, h, chart)?;
    let facets = sorted_labels(&cols.facet);
    let ncols = (facets.len() as f64).sqrt().ceil() as u32;
    let nrows = (facets.len() as u32).div_ceil(ncols);
    let size = ((PANEL_W * ncols).max(MIN_W), PANEL_H * nrows + TITLE_H);
    Ok(Layout {
        cols,
        chart,
        facets,
        grid: (nrows, ncols),
        size,
    })
}

pub fn draw(batch: &RecordBatch, h: &Header, out: &Path) -> Result<()> {
    let l = layout(batch, h)?;
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "svg" => render(
            SVGBackend::new(out, l.size).into_drawing_area(),
            &l.cols,
            h,
            l.chart,
            &l.facets,
            l.grid,
        ),
        "png" => render(
            BitMapBackend::new(out, l.size).into_drawing_area(),
            &l.cols,
            h,
            l.chart,
            &l.facets,
            l.grid,
        ),
        _ => bail!(
            "unknown figure format {:?}: name the output .svg or .png",
            out.display()
        ),
    }
    .with_context(|| format!("drawing {}", out.display()))
}

/// The figure as an SVG document (for inlining in HTML).
pub fn draw_svg(batch: &RecordBatch, h: &Header) -> Result<String> {
    let l = layout(batch, h)?;
    let mut svg = String::new();
    render(
        SVGBackend::with_string(&mut svg, l.size).into_drawing_area(),
        &l.cols,
        h,
        l.chart,
        &l.facets,
        l.grid,
    )?;
    Ok(svg)
}

fn render<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    cols: &Columns,
    h: &Header,
    chart: Chart,
    facets: &[String],
    grid: (u32, u32),
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    let title = h.title.clone().unwrap_or_default();
    let (top, body) = root.split_vertically(TITLE_H);
    top.titled(
        &title,
        ("sans-serif", 22).into_font().style(FontStyle::Bold),
    )
    .map_err(plot_err)?;
    let panels = body.split_evenly((grid.0 as usize, grid.1 as usize));
    for (panel, facet) in panels.iter().zip(facets) {
        let rows: Vec<usize> = (0..cols.facet.len())
            .filter(|&i| &cols.facet[i] == facet)
            .collect();
        let caption = match &h.facet {
            Some(f) => format!("{f} = {facet}"),
            None => String::new(),
        };
        match chart {
            Chart::Heatmap => heatmap(panel, cols, h, &rows, &caption)?,
            Chart::Bar => bars(panel, cols, h, &rows, &caption)?,
            Chart::Line | Chart::Scatter => {
                lines(panel, cols, h, &rows, &caption, chart == Chart::Line)?
            }
        }
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn range(values: impl Iterator<Item = f64>, include_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.06
    } else {
        lo.abs().max(1.0) * 0.1
    };
    (lo - pad, hi + pad)
}

/// The label of category index `v` when `v` sits on an integer position, else nothing.
fn category_label(labels: &[String], v: f64) -> String {
    let i = v.round();
    if (v - i).abs() < 1e-6 && i >= 0.0 {
        labels.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

type Panel<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One facet's chart area with its caption and axis ranges.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    y_label_area: u32,
) -> Result<Panel<'a, DB>>
where
    DB::ErrorType: 'static,
{
    ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(x, y)
        .map_err(plot_err)
}

/// Gives a drawn series its legend entry (unnamed series get none).
fn label_series<'a, DB: DrawingBackend + 'a>(
    drawn: &mut SeriesAnno<'a, DB>,
    name: &str,
    c: RGBColor,
) {
    if !name.is_empty() {
        drawn
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 14, y + 4)], c.filled()));
    }
}

fn draw_legend<'a, DB: DrawingBackend + 'a>(ch: &mut Panel<'a, DB>, names: &[String]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    if names.iter().any(|n| !n.is_empty()) {
        ch.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

fn series_names(cols: &Columns, rows: &[usize]) -> Vec<String> {
    sorted_labels(
        &rows
            .iter()
            .map(|&i| cols.series[i].clone())
            .collect::<Vec<_>>(),
    )
}

fn color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

fn lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    cols: &Columns,
    h: &Header,
    rows: &[usize],
    caption: &str,
    connect: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // Categorical x for lines: positions 0..n in label order.
    let (xs, labels): (Vec<f64>, Vec<String>) = match &cols.x {
        Axis::Num(v) => (rows.iter().map(|&i| v[i]).collect(), Vec::new()),
        Axis::Cat(v) => {
            let labels = sorted_labels(&rows.iter().map(|&i| v[i].clone()).collect::<Vec<_>>());
            (
                rows.iter()
                    .map(|&i| labels.iter().position(|l| *l == v[i]).unwrap() as f64)
                    .collect(),
                labels,
            )
        }
    };
    let (x0, x1) = range(xs.iter().copied(), false);
    let (y0, y1) = range(rows.iter().filter_map(|&i| cols.y[i]), false);
    let mut ch = panel(area, caption, x0..x1, y0..y1, 70)?;
    let label_fmt = |x: &f64| -> String {
        if labels.is_empty() {
            format!("{x}")
        } else {
            category_label(&labels, *x)
        }
    };
    ch.configure_mesh()
        .x_desc(h.x.clone().unwrap_or_default())
        .y_desc(h.y.clone().unwrap_or_default())
        .x_label_formatter(&label_fmt)
        .x_labels(if labels.is_empty() {
            8
        } else {
            labels.len().max(2)
        })
        .draw()
        .map_err(plot_err)?;
    let names = series_names(cols, rows);
    for (si, name) in names.iter().enumerate() {
        let c = color(si);
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .zip(&xs)
            .filter(|(&i, _)| &cols.series[i] == name)
            .filter_map(|(&i, &x)| cols.y[i].map(|y| (x, y)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if connect {
            ch.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(plot_err)?;
        }
        let drawn = ch
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(plot_err)?;
        label_series(drawn, name, c);
    }
    draw_legend(&mut ch, &names)
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    cols: &Columns,
    h: &Header,
    rows: &[usize],
    caption: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let Axis::Cat(xv) = &cols.x else {
        unreachable!("bars use categorical x")
    };
    let cats = sorted_labels(&rows.iter().map(|&i| xv[i].clone()).collect::<Vec<_>>());
    let names = series_names(cols, rows);
    let (y0, y1) = range(rows.iter().filter_map(|&i| cols.y[i]), true);
    let mut ch = panel(area, caption, -0.5f64..cats.len() as f64 - 0.5, y0..y1, 70)?;
    let label_fmt = |x: &f64| category_label(&cats, *x);
    ch.configure_mesh()
        .disable_x_mesh()
        .x_desc(h.x.clone().unwrap_or_default())
        .y_desc(h.y.clone().unwrap_or_default())
        .x_label_formatter(&label_fmt)
        .x_labels(cats.len().max(2))
        .draw()
        .map_err(plot_err)?;
    let width = 0.8 / names.len() as f64;
    for (si, name) in names.iter().enumerate() {
        let c = color(si);
        let bars: Vec<Rectangle<(f64, f64)>> = rows
            .iter()
            .filter(|&&i| &cols.series[i] == name)
            .filter_map(|&i| {
                let ci = cats.iter().position(|l| *l == xv[i])? as f64;
                let left = ci - 0.4 + si as f64 * width;
                Some(Rectangle::new(
                    [(left, 0.0), (left + width * 0.95, cols.y[i]?)],
                    c.filled(),
                ))
            })
            .collect();
        let drawn = ch.draw_series(bars).map_err(plot_err)?;
        label_series(drawn, name, c);
    }
    draw_legend(&mut ch, &names)
}

/// Blue (low) through white to red (high).
fn diverging(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64, u: f64| (a + (b - a) * u) as u8;
    if t < 0.5 {
        let u = t / 0.5;
        RGBColor(
            lerp(33.0, 247.0, u),
            lerp(102.0, 247.0, u),
            lerp(172.0, 247.0, u),
        )
    } else {
        let u = (t - 0.5) / 0.5;
        RGBColor(
            lerp(247.0, 178.0, u),
            lerp(247.0, 24.0, u),
            lerp(247.0, 43.0, u),
        )
    }
}

fn heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    cols: &Columns,
    h: &Header,
    rows: &[usize],
    caption: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let Axis::Cat(xv) = &cols.x else {
        unreachable!("heatmaps use categorical x")
    };
    let xs = sorted_labels(&rows.iter().map(|&i| xv[i].clone()).collect::<Vec<_>>());
    let ys = series_names(cols, rows);
    let (lo, hi) = range(rows.iter().filter_map(|&i| cols.value[i]), false);
    let caption = format!(
        "{caption}{}colour: {} ({lo:.3} … {hi:.3})",
        if caption.is_empty() { "" } else { " — " },
        h.value.clone().unwrap_or_default()
    );
    let mut ch = panel(
        area,
        &caption,
        -0.5f64..xs.len() as f64 - 0.5,
        -0.5f64..ys.len() as f64 - 0.5,
        90,
    )?;
    ch.configure_mesh()
        .disable_mesh()
        .x_desc(h.x.clone().unwrap_or_default())
        .y_desc(h.y.clone().unwrap_or_default())
        .x_label_formatter(&|v| category_label(&xs, *v))
        .y_label_formatter(&|v| category_label(&ys, *v))
        .x_labels(xs.len().max(2))
        .y_labels(ys.len().max(2))
        .draw()
        .map_err(plot_err)?;
    let cells = rows.iter().filter_map(|&i| {
        let (cx, cy) = (
            xs.iter().position(|l| *l == xv[i])? as f64,
            ys.iter().position(|l| *l == cols.series[i])? as f64,
        );
        let t = (cols.value[i]? - lo) / (hi - lo);
        Some(Rectangle::new(
            [(cx - 0.5, cy - 0.5), (cx + 0.5, cy + 0.5)],
            diverging(t).filled(),
        ))
    });
    ch.draw_series(cells).map_err(plot_err)?;
    Ok(())
}
