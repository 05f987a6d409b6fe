//! The exact 28x28 suite (`diffpost bench posterior --suite images`): multimodal posteriors at
//! image scale whose answer is known in closed form. The priors are mixtures of probabilistic
//! PCA fitted to MNIST and Fashion-MNIST (`data/mnist28_gmm.npz`, `data/fashion28_gmm.npz`, made
//! by `diffpost fit-gmm`); the ground truths are held-out test images (`data/*_test256.npy`).
//! Each problem names an operator, a noise level and a test image whose exact posterior puts at
//! least two components at weight >= 0.1 ([`MIN_MODE_WEIGHT`]); the suite refuses a problem that
//! is not multimodal (so a refitted prior cannot silently turn the suite unimodal).
//! [`find_multimodal`] is how the images were chosen: the first test image, from 0, whose posterior
//! has two components at weight >= 0.1 and none above [`MAX_TOP_WEIGHT`].

use std::path::Path;

use serde_json::json;

use super::bench_posterior::BenchProblem;
use super::{image_operator, spec};
use crate::prior::GaussianMixture;
use crate::sampler::spec::SamplerSpec;
use crate::{Error, Result};

/// The smallest weight that counts as a mode.
pub const MIN_MODE_WEIGHT: f64 = 0.1;
/// The largest weight of the main mode of a suite problem (so the weights are a real question).
pub const MAX_TOP_WEIGHT: f64 = 0.75;

/// One problem of the suite: prior file, test images, operator (TOML), eta, test image.
pub struct ImageCase {
    pub name: &'static str,
    pub prior: &'static str,
    pub images: &'static str,
    pub operator: &'static str,
    pub eta: f64,
    pub index: usize,
    pub note: &'static str,
}

/// The suite's problems (indices found by [`find_multimodal`] on the shipped priors).
pub const CASES: &[ImageCase] = &[
    ImageCase {
        name: "mnist-rows8",
        prior: "mnist28_gmm.npz",
        images: "mnist_test256.npy",
        operator: "kind = \"box\"\ntop = 8\nleft = 0\nheight = 20\nwidth = 28",
        eta: 0.1,
        index: 13,
        note: "MNIST test image 13, top 8 rows seen, eta = 0.1; posterior 0.72 / 0.27 on two components",
    },
    ImageCase {
        name: "mnist-inpaint",
        prior: "mnist28_gmm.npz",
        images: "mnist_test256.npy",
        operator: "kind = \"box\"\ntop = 0\nleft = 0\nheight = 28\nwidth = 16",
        eta: 0.1,
        index: 38,
        note: "MNIST test image 38, left 16 columns hidden, eta = 0.1; posterior 0.66 / 0.32",
    },
    ImageCase {
        name: "mnist-sr4",
        prior: "mnist28_gmm.npz",
        images: "mnist_test256.npy",
        operator: "kind = \"superres\"\nfactor = 4",
        eta: 0.2,
        index: 6,
        note: "MNIST test image 6, 4x super-resolution (7x7 seen), eta = 0.2; posterior 0.61 / 0.29 / 0.09",
    },
    ImageCase {
        name: "fashion-sr2",
        prior: "fashion28_gmm.npz",
        images: "fashion_mnist_test256.npy",
        operator: "kind = \"superres\"\nfactor = 2",
        eta: 0.2,
        index: 39,
        note: "Fashion-MNIST test image 39, 2x super-resolution (14x14 seen), eta = 0.2; posterior 0.52 / 0.48",
    },
];

fn load(data: &Path, c: &ImageCase, index: usize) -> Result<(BenchProblem, Vec<f64>)> {
    let prior = GaussianMixture::from_npz(data.join(c.prior))?;
    let op = image_operator(c.operator)?;
    let inst = crate::problem::image_instance(prior, &data.join(c.images), index, &op, c.eta, 0)?;
    let (w, _) = inst
        .prior
        .posterior_weights(inst.op.as_ref(), &inst.y, inst.eta)?;
    Ok((
        BenchProblem {
            name: c.name.into(),
            note: c.note.into(),
            prior: inst.prior,
            op: inst.op,
            y: inst.y,
            eta: inst.eta,
        },
        w,
    ))
}

/// Components at weight >= [`MIN_MODE_WEIGHT`].
pub fn modes(weights: &[f64]) -> usize {
    weights.iter().filter(|w| **w >= MIN_MODE_WEIGHT).count()
}

/// The suite's problems from the folder `data`, each checked multimodal.
pub fn problems(data: &Path) -> Result<Vec<BenchProblem>> {
    CASES
        .iter()
        .map(|c| {
            let (p, w) = load(data, c, c.index)?;
            if modes(&w) < 2 {
                return Err(Error::param(
                    "bench posterior --suite images",
                    format!(
                        "{}: test image {} has a unimodal exact posterior under {} (weights {:?}); \
                         choose another with find_multimodal",
                        c.name, c.index, c.prior, w
                    ),
                ));
            }
            Ok(p)
        })
        .collect()
}

/// The first test image, from `start`, whose exact posterior under case `c`'s prior, operator and
/// noise has at least two components at weight >= [`MIN_MODE_WEIGHT`] and none above
/// [`MAX_TOP_WEIGHT`]; with its weights.
pub fn find_multimodal(
    data: &Path,
    c: &ImageCase,
    start: usize,
    end: usize,
) -> Result<(usize, Vec<f64>)> {
    for i in start..end {
        let (_, w) = load(data, c, i)?;
        if modes(&w) >= 2 && w.iter().all(|v| *v <= MAX_TOP_WEIGHT) {
            return Ok((i, w));
        }
    }
    Err(Error::param(
        "find_multimodal",
        format!(
            "no multimodal posterior among test images {start}..{end} for {}",
            c.name
        ),
    ))
}

/// The samplers of the image suite: SMC with Gibbs moves at its defaults, the field's references
/// at stated budgets (`budget` evaluations per sample; likelihood-tempered SMC at its defaults).
pub fn samplers(budget: u64) -> Result<Vec<(String, SamplerSpec)>> {
    let b = budget as usize;
    let init = 200usize.min(b / 4);
    let v = vec![
        ("exact", json!({"kind": "exact"})),
        ("smc-gibbs", json!({"kind": "smc-gibbs"})),
        ("smc", json!({"kind": "smc"})),
        (
            "annealed",
            json!({"kind": "annealed", "init_steps": init, "steps_per_stage": ((b - init) / 19).max(1)}),
        ),
        ("dps", json!({"kind": "dps", "steps": (b / 2).max(1)})),
        (
            "daps",
            json!({"kind": "daps", "stages": 50, "ode_steps": (b / 50).max(1)}),
        ),
        (
            "mala",
            json!({"kind": "mala", "init_steps": init, "steps": b - init - 1}),
        ),
    ];
    v.into_iter()
        .map(|(n, t)| Ok((n.to_string(), spec(t)?)))
        .collect()
}
