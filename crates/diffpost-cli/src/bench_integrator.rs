//! `diffpost bench integrator`: Euler against the exact-likelihood integrator on exact
//! posteriors (`diffpost::bench_integrator`); prints the table and writes `integrator.md`,
//! `integrator.json` and `integrator.png` (sliced W2 / floor against evaluations, log-log).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use diffpost::bench_integrator::{self, IntegratorRow, TARGET};
use plotters::prelude::*;

use crate::commands::stage;
use diffpost::commit::Replace;

pub fn run(quick: bool, out: &Path) -> Result<()> {
    let t0 = Instant::now();
    let staging = stage(
        out,
        Replace::Outputs {
            names: &["integrator.md", "integrator.json", "integrator.png"],
            suffixes: &[],
        },
    )?;
    println!(
        "diffpost bench integrator{}: evaluations per sample to {TARGET}x the sliced-W2 floor, n = 1000, seed 7",
        if quick { " --quick" } else { "" }
    );
    let rows = bench_integrator::run(quick, |r: &IntegratorRow| {
        println!(
            "  {:<20} eta {:<6} {:<19} {:<17} {}",
            r.problem,
            r.eta,
            r.sampler,
            r.integrator,
            r.cell()
        )
    })?;
    let md = format!(
        "{}\n`diffpost bench integrator{}`, {:.0} s.\n",
        bench_integrator::markdown(&rows),
        if quick { " --quick" } else { "" },
        t0.elapsed().as_secs_f64()
    );
    print!("\n{md}");
    staging.write_bytes("integrator.md", md.as_bytes())?;
    staging.write_bytes(
        "integrator.json",
        serde_json::to_string_pretty(&rows)?.as_bytes(),
    )?;
    plot(&staging.path().join("integrator.png"), &rows)?;
    staging.commit()?;
    println!("wrote {}/integrator.{{md,json,png}}", out.display());
    Ok(())
}

fn plot(path: &Path, rows: &[IntegratorRow]) -> Result<()> {
    let labels = crate::tradeoff::register_font();
    let hi = rows
        .iter()
        .flat_map(|r| r.curve.iter().map(|c| c.1))
        .filter(|v| v.is_finite())
        .fold(2.0, f64::max)
        * 1.3;
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut b = ChartBuilder::on(&root);
    b.margin(12)
        .x_label_area_size(if labels { 40 } else { 5 })
        .y_label_area_size(if labels { 60 } else { 5 });
    if labels {
        b.caption(
            "sliced W2 / floor against score evaluations per sample (each line stops at 1.2x)",
            ("sans-serif", 17),
        );
    }
    let mut chart = b.build_cartesian_2d((30f64..15000.0).log_scale(), (0.8f64..hi).log_scale())?;
    let mut mesh = chart.configure_mesh();
    if labels {
        mesh.x_desc("evaluations per sample")
            .y_desc("sliced W2 / floor");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    chart.draw_series(LineSeries::new(
        [(30.0, TARGET), (15000.0, TARGET)],
        BLACK.mix(0.4),
    ))?;
    let mut labelled = [false, false];
    for r in rows {
        let k = usize::from(r.integrator != "euler");
        let color = if k == 0 { RED } else { BLUE };
        let pts: Vec<(f64, f64)> = r
            .curve
            .iter()
            .map(|&(e, v)| (e as f64, if v.is_finite() { v.max(0.8) } else { hi }))
            .collect();
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        let series = chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?;
        if labels && !labelled[k] {
            labelled[k] = true;
            series
                .label(r.integrator.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
