//! Accuracy-vs-bits plots (SVG and PNG) of a sweep, with the seed's published curves.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::results::{Mode, Results, SEED_PTQ, SEED_QAT};

const SIZE: (u32, u32) = (900, 600);

/// One curve of a plot.
struct Curve {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBAColor,
    dashed: bool,
}

/// Writes `accuracy.svg` and `accuracy.png` into `dir`: PTQ and QAT of one sweep with the
/// seed's published curves.
pub fn plot(results: &Results, dir: &Path) -> Result<()> {
    let mut settings = match results.config.ema_momentum {
        Some(m) => format!(", EMA {m} observers"),
        None => String::new(),
    };
    if results.config.lsq {
        settings.push_str(", LSQ");
    }
    if results.config.symmetric_weights {
        settings.push_str(", symmetric per-channel weights");
    }
    if results.config.integer_logits {
        settings.push_str(", integer logits");
    }
    let title = format!(
        "{} on MNIST: integer-engine accuracy vs bits ({}{settings})",
        results.model, results.backend
    );
    let mut curves = vec![
        curve(
            "PTQ (burn-quant)",
            ours(results, Mode::Ptq),
            BLUE.to_rgba(),
            false,
        ),
        curve(
            "QAT (burn-quant)",
            ours(results, Mode::Qat),
            RED.to_rgba(),
            false,
        ),
    ];
    curves.extend(seed_curves());
    draw_files(&title, &curves, results.float_accuracy, dir, "accuracy")
}

/// Writes `methods.svg` and `methods.png` into `dir`: every method's PTQ (dashed) and QAT
/// (solid) curves, with the seed's published curves (gray).
pub fn plot_methods(methods: &[(&str, &Results)], dir: &Path) -> Result<()> {
    const COLORS: [RGBColor; 6] = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    let mut curves = Vec::new();
    for (i, (name, results)) in methods.iter().enumerate() {
        let color = COLORS[i % COLORS.len()].to_rgba();
        curves.push(curve(
            &format!("{name} QAT"),
            ours(results, Mode::Qat),
            color,
            false,
        ));
        curves.push(curve(
            &format!("{name} PTQ"),
            ours(results, Mode::Ptq),
            color,
            true,
        ));
    }
    curves.extend(seed_curves().into_iter().map(|c| Curve {
        color: if c.name.starts_with("QAT") {
            BLACK.mix(0.6).to_rgba()
        } else {
            BLACK.mix(0.3).to_rgba()
        },
        ..c
    }));
    let first = methods.first().map(|(_, r)| *r);
    let title = format!(
        "{} on MNIST: integer-engine accuracy vs bits, by method ({})",
        first.map_or("", |r| r.model.as_str()),
        first.map_or("", |r| r.backend.as_str())
    );
    draw_files(
        &title,
        &curves,
        first.and_then(|r| r.float_accuracy),
        dir,
        "methods",
    )
}

fn curve(name: &str, points: Vec<(f64, f64)>, color: RGBAColor, dashed: bool) -> Curve {
    Curve {
        name: name.to_string(),
        points,
        color,
        dashed,
    }
}

/// Integer-engine accuracy (%) per bit width of `mode`.
fn ours(results: &Results, mode: Mode) -> Vec<(f64, f64)> {
    results
        .rows
        .iter()
        .filter_map(|r| r.get(mode).map(|m| (r.bits as f64, 100.0 * m.integer)))
        .collect()
}

/// The seed article's PTQ and QAT curves (dashed).
fn seed_curves() -> Vec<Curve> {
    let seed = |table: &[f64; 8]| -> Vec<(f64, f64)> {
        table
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64 + 1.0, *v))
            .collect()
    };
    vec![
        curve(
            "PTQ (seed article)",
            seed(&SEED_PTQ),
            BLUE.mix(0.5).to_rgba(),
            true,
        ),
        curve(
            "QAT (seed article)",
            seed(&SEED_QAT),
            RED.mix(0.5).to_rgba(),
            true,
        ),
    ]
}

/// Draws `curves` into `dir/stem.svg` and `dir/stem.png`.
fn draw_files(
    title: &str,
    curves: &[Curve],
    float: Option<f64>,
    dir: &Path,
    stem: &str,
) -> Result<()> {
    let svg = dir.join(format!("{stem}.svg"));
    draw(
        title,
        curves,
        float,
        SVGBackend::new(&svg, SIZE).into_drawing_area(),
    )?;
    let png = dir.join(format!("{stem}.png"));
    draw(
        title,
        curves,
        float,
        BitMapBackend::new(&png, SIZE).into_drawing_area(),
    )
}

fn draw<DB: DrawingBackend>(
    title: &str,
    curves: &[Curve],
    float: Option<f64>,
    root: DrawingArea<DB, Shift>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..8.5f64, 0f64..100f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("bits")
        .y_desc("test accuracy (%)")
        .x_labels(8)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(err)?;
    for c in curves {
        let color = c.color;
        let style = color.stroke_width(2);
        if c.dashed {
            chart
                .draw_series(DashedLineSeries::new(c.points.clone(), 8, 5, style))
                .map_err(err)?
        } else {
            chart
                .draw_series(LineSeries::new(c.points.clone(), style))
                .map_err(err)?
        }
        .label(c.name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(c.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    if let Some(float) = float {
        let gray = BLACK.mix(0.4);
        chart
            .draw_series(LineSeries::new(
                vec![(0.5, 100.0 * float), (8.5, 100.0 * float)],
                gray.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("float ({:.2} %)", 100.0 * float))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], gray.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::{config, result};

    #[test]
    fn writes_an_svg_and_a_decodable_png() {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Results::new(config(), "abc".into(), "cmd".into());
        r.float_accuracy = Some(0.98);
        for bits in 1..=8 {
            r.record(bits, Mode::Ptq, result(0.1 * bits as f64), 1.0);
            r.record(bits, Mode::Qat, result(0.11 * bits as f64), 1.0);
        }
        plot(&r, &dir).unwrap();
        let svg = std::fs::read_to_string(dir.join("accuracy.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("QAT (seed article)") && svg.contains("bits"));
        plot_methods(&[("seed", &r), ("lsq", &r)], &dir).unwrap();
        let svg = std::fs::read_to_string(dir.join("methods.svg")).unwrap();
        assert!(svg.contains("lsq QAT") && svg.contains("seed PTQ"));
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(dir.join("accuracy.png")).unwrap(),
        ));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), SIZE);
        std::fs::remove_dir_all(&dir).ok();
    }
}
