use candle_core::Tensor;
use diffpost::metrics::{noise_floor, Reference};
use diffpost::operator::Dense;
use diffpost::prior::ExactSample;
use diffpost::rng::SampleStreams;
use diffpost::sampler::*;

#[test]
#[ignore]
fn explore() {
    let inst = diffpost::problem::random_gmm_instance(30, 15, 1, 0.1, 0).unwrap();
    let op = Dense::new(inst.a.clone()).unwrap();
    let y = Tensor::from_vec(
        inst.y.iter().copied().collect::<Vec<_>>(),
        15,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let post = inst.prior.posterior(&op, inst.y.as_slice(), 0.1).unwrap();
    let refs: Vec<f64> = post
        .sample_exact(&mut SampleStreams::new(999, 0..20000))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mean: Vec<f64> = post.mean().iter().copied().collect();
    let cov = post.covariance();
    let covv: Vec<f64> = (0..30)
        .flat_map(|r| (0..30).map(move |c| (r, c)))
        .map(|(r, c)| cov[(r, c)])
        .collect();
    let reference = Reference::new(refs, 30, mean, covv, 50, 1, 2000).unwrap();
    let n = 2000;
    let floors = noise_floor(
        &reference,
        |rep| {
            Ok(post
                .sample_exact(&mut SampleStreams::new(5000 + rep as u64, 0..n as u64))?
                .flatten_all()?
                .to_vec1()?)
        },
        10,
    )
    .unwrap();
    println!("floors {floors:?}");
    let problem = Problem::new(&inst.prior, &op, &y, 0.1).unwrap();
    let t = std::time::Instant::now();
    let run = |name: &str, out: diffpost::Result<Output>, t: std::time::Instant| {
        let out = out.unwrap();
        let v: Vec<f64> = out.samples.flatten_all().unwrap().to_vec1().unwrap();
        println!(
            "{name}: evals {} {:?} {:?} {:.1}s",
            out.score_evals,
            reference.evaluate(&v).unwrap(),
            out.info.acceptance,
            t.elapsed().as_secs_f64()
        );
    };
    run(
        "annealed",
        annealed::sample(
            &problem,
            Some(&inst.prior),
            &annealed::AnnealedConfig::default(),
            &mut SampleStreams::range(1, n),
            &Silent,
        ),
        t,
    );
    let t = std::time::Instant::now();
    run(
        "ula",
        ula::sample(
            &problem,
            Some(&inst.prior),
            &ula::UlaConfig::default(),
            &mut SampleStreams::range(1, n),
            &Silent,
        ),
        t,
    );
    let t = std::time::Instant::now();
    run(
        "mala",
        mala::sample(
            &problem,
            &inst.prior,
            Some(&inst.prior),
            &mala::MalaConfig::default(),
            &mut SampleStreams::range(1, n),
            &Silent,
        ),
        t,
    );
    let t = std::time::Instant::now();
    run(
        "dps",
        dps::sample(
            &problem,
            &dps::DpsConfig::default(),
            &mut SampleStreams::range(1, n),
            &Silent,
        ),
        t,
    );
    let t = std::time::Instant::now();
    run(
        "daps",
        daps::sample(
            &problem,
            &daps::DapsConfig::default(),
            &mut SampleStreams::range(1, n),
            &Silent,
        ),
        t,
    );
    let t = std::time::Instant::now();
    run(
        "ald",
        ald::sample(
            &problem,
            &ald::AldConfig::default(),
            &mut SampleStreams::range(1, n),
            &Silent,
        ),
        t,
    );
    let t = std::time::Instant::now();
    run(
        "prior",
        diffusion::sample(
            &inst.prior,
            &diffusion::DiffusionConfig::default(),
            &mut SampleStreams::range(1, n),
            &Silent,
        ),
        t,
    );
}
