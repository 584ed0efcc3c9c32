//! Accuracy-vs-bits plots (SVG and PNG) of a sweep, with the seed's published curves.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::results::{Mode, Results, SEED_PTQ, SEED_QAT};

const SIZE: (u32, u32) = (900, 600);

/// Writes `accuracy.svg` and `accuracy.png` into `dir`.
pub fn plot(results: &Results, dir: &Path) -> Result<()> {
    let svg = dir.join("accuracy.svg");
    draw(results, SVGBackend::new(&svg, SIZE).into_drawing_area())?;
    let png = dir.join("accuracy.png");
    draw(results, BitMapBackend::new(&png, SIZE).into_drawing_area())?;
    Ok(())
}

fn draw<DB: DrawingBackend>(results: &Results, root: DrawingArea<DB, Shift>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let mut observers = match results.config.ema_momentum {
        Some(m) => format!(", EMA {m} observers"),
        None => String::new(),
    };
    if results.config.lsq {
        observers.push_str(", LSQ");
    }
    if results.config.symmetric_weights {
        observers.push_str(", symmetric per-channel weights");
    }
    if results.config.integer_logits {
        observers.push_str(", integer logits");
    }
    let title = format!(
        "{} on MNIST: integer-engine accuracy vs bits ({}{observers})",
        results.model, results.backend
    );
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

    let ours = |mode: Mode| -> Vec<(f64, f64)> {
        results
            .rows
            .iter()
            .filter_map(|r| r.get(mode).map(|m| (r.bits as f64, 100.0 * m.integer)))
            .collect()
    };
    let seed = |table: &[f64; 8]| -> Vec<(f64, f64)> {
        table
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64 + 1.0, *v))
            .collect()
    };
    let series = [
        ("PTQ (burn-quant)", ours(Mode::Ptq), BLUE.to_rgba(), false),
        ("QAT (burn-quant)", ours(Mode::Qat), RED.to_rgba(), false),
        (
            "PTQ (seed article)",
            seed(&SEED_PTQ),
            BLUE.mix(0.5).to_rgba(),
            true,
        ),
        (
            "QAT (seed article)",
            seed(&SEED_QAT),
            RED.mix(0.5).to_rgba(),
            true,
        ),
    ];
    for (name, points, color, dashed) in series {
        let style = color.stroke_width(2);
        if dashed {
            chart
                .draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))
                .map_err(err)?
        } else {
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(err)?
        }
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    if let Some(float) = results.float_accuracy {
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
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(dir.join("accuracy.png")).unwrap(),
        ));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), SIZE);
        std::fs::remove_dir_all(&dir).ok();
    }
}
