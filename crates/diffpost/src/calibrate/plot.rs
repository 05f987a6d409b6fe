//! `calibration.png`: per statistic, its rank histogram (bars; the uniform expectation as a line)
//! above its ECDF difference `F(z) - z` with the simultaneous 95% band (darker grey) and the
//! family-wise band of the verdict (lighter, wider). A statistic that leaves the family-wise band
//! is drawn in red, one that leaves only its own 95% band in orange.

use std::path::Path;

use plotters::prelude::*;

use super::CalibrationResult;
use crate::studies::{plot_err, register_font};
use crate::Result;

const CELL: (u32, u32) = (360, 330);

pub(super) fn plot(path: &Path, res: &CalibrationResult) -> Result<()> {
    let labels = register_font();
    let err = |e: &dyn std::fmt::Display| plot_err(path, e);
    let s = &res.summary;
    let n = s.statistics.len().max(1);
    let cols = n.min(4);
    let rows = n.div_ceil(cols);
    let title_h = if labels { 40 } else { 0 };
    let size = (CELL.0 * cols as u32, CELL.1 * rows as u32 + title_h);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, body) = root.split_vertically(title_h);
    if labels {
        let verdict = if s.passed {
            "every statistic inside the band".to_string()
        } else {
            format!("outside the family-wise band: {}", s.failed.join(", "))
        };
        top.titled(
            &format!(
                "SBC of {} : R = {}, L = {}, sampler eta x {} ; {}",
                res.sampler,
                s.replicates,
                res.options.samples,
                res.options.sampler_eta_scale,
                verdict
            ),
            ("sans-serif", 18),
        )
        .map_err(|e| err(&e))?;
    }
    let cells = body.split_evenly((rows, cols));
    let l = res.options.samples as f64;
    for (st, cell) in s.statistics.iter().zip(cells.iter()) {
        // Red: outside the family-wise band (the verdict); orange: outside its own 95% band only.
        let color = if s.failed.contains(&st.name) {
            RED
        } else if st.leaves_band {
            RGBColor(230, 140, 0)
        } else {
            BLACK
        };
        let (hist_area, ecdf_area) = cell.split_vertically(CELL.1 / 2);
        let hmax = st
            .histogram
            .iter()
            .map(|&c| c as f64)
            .chain(s.bins.iter().map(|b| b.expected))
            .fold(1.0, f64::max)
            * 1.15;
        let mut b = ChartBuilder::on(&hist_area);
        b.margin(6)
            .x_label_area_size(if labels { 18 } else { 2 })
            .y_label_area_size(if labels { 34 } else { 2 });
        if labels {
            let c = st
                .contraction
                .map(|c| format!(", contraction {c:.2}"))
                .unwrap_or_default();
            b.caption(
                format!("{}{c}", st.name),
                ("sans-serif", 15).into_font().color(&color),
            );
        }
        let mut chart = b
            .build_cartesian_2d(0f64..l + 1.0, 0f64..hmax)
            .map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_mesh().x_labels(5).y_labels(4);
        if !labels {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| err(&e))?;
        chart
            .draw_series(s.bins.iter().zip(&st.histogram).map(|(bin, &c)| {
                Rectangle::new(
                    [(bin.lo as f64, 0.0), (bin.hi as f64, c as f64)],
                    BLUE.mix(0.45).filled(),
                )
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(s.bins.iter().map(|bin| {
                PathElement::new(
                    [(bin.lo as f64, bin.expected), (bin.hi as f64, bin.expected)],
                    BLACK.stroke_width(2),
                )
            }))
            .map_err(|e| err(&e))?;

        let band = &s.band;
        let lim = band
            .family_lower
            .iter()
            .chain(&band.family_upper)
            .chain(&st.ecdf_diff)
            .fold(0.02f64, |a, v| a.max(v.abs()))
            * 1.1;
        let mut b = ChartBuilder::on(&ecdf_area);
        b.margin(6)
            .x_label_area_size(if labels { 18 } else { 2 })
            .y_label_area_size(if labels { 34 } else { 2 });
        let mut chart = b
            .build_cartesian_2d(0f64..1.0, -lim..lim)
            .map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_mesh().x_labels(5).y_labels(4);
        if !labels {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| err(&e))?;
        let polygon = |lo: &[f64], hi: &[f64]| {
            let mut poly: Vec<(f64, f64)> = vec![(0.0, 0.0)];
            poly.extend(band.z.iter().zip(hi).map(|(&z, &u)| (z, u)));
            poly.push((1.0, 0.0));
            poly.extend(band.z.iter().zip(lo).rev().map(|(&z, &v)| (z, v)));
            poly
        };
        // The family-wise band (the verdict) light, each statistic's own 95% band darker.
        chart
            .draw_series([
                Polygon::new(
                    polygon(&band.family_lower, &band.family_upper),
                    BLACK.mix(0.08).filled(),
                ),
                Polygon::new(polygon(&band.lower, &band.upper), BLACK.mix(0.15).filled()),
            ])
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 0.0)],
                BLACK.mix(0.4).stroke_width(1),
            ))
            .map_err(|e| err(&e))?;
        let mut line: Vec<(f64, f64)> = vec![(0.0, 0.0)];
        line.extend(band.z.iter().zip(&st.ecdf_diff).map(|(&z, &v)| (z, v)));
        line.push((1.0, 0.0));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
