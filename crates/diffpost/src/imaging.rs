//! Image I/O for users: PNG in and out, sample grids. Images are `[C, H, W]` f64 in a stated range
//! (`[-1, 1]` unless said otherwise), C = 1 (grey) or 3 (RGB).

use std::path::Path;

use crate::{Error, Result};

/// Maps `v` from `[lo, hi]` to `0..=255` (clamped).
pub fn to_u8(v: f64, lo: f64, hi: f64) -> u8 {
    let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
    (t * 255.0).round() as u8
}

/// Reads a PNG as `[C, H, W]` in `[-1, 1]`, converted to `channels` (1: luma, 3: RGB); the file's
/// size must be `h x w` (no silent resizing).
pub fn load_png(path: &Path, channels: usize, h: usize, w: usize) -> Result<Vec<f64>> {
    let ferr = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    crate::io::file_len(path).map_err(ferr)?;
    // The format from the extension, as `image::open` does; the size from the header first, so a
    // wrong-sized (or hostile, huge) image is refused before it is decoded. Decoding itself runs
    // under the image crate's default memory limits.
    let reader = || {
        image::ImageReader::open(path).map_err(|e| {
            ferr(format!(
                "cannot read image: {}",
                crate::io::describe_io_error(&e)
            ))
        })
    };
    let (iw, ih) = reader()?
        .into_dimensions()
        .map_err(|e| ferr(format!("cannot read image: {e}")))?;
    if iw as usize != w || ih as usize != h {
        return Err(ferr(format!(
            "image is {iw}x{ih} (WxH), the model expects {w}x{h}"
        )));
    }
    let img = reader()?
        .decode()
        .map_err(|e| ferr(format!("cannot read image: {e}")))?;
    if img.width() != iw || img.height() != ih {
        return Err(ferr("image size changed while reading".into()));
    }
    let have = img.color().channel_count() as usize;
    if have != channels {
        crate::io::note_conversion(format!(
            "{}: {:?} converted to the model's {channels} channel(s){}",
            path.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            img.color(),
            if channels == 1 { " (luminance)" } else { "" }
        ));
    }
    let out = match channels {
        1 => img
            .to_luma8()
            .pixels()
            .map(|p| p.0[0] as f64 / 127.5 - 1.0)
            .collect(),
        3 => {
            let rgb = img.to_rgb8();
            let mut out = vec![0.0; 3 * h * w];
            for (i, p) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    out[c * h * w + i] = p.0[c] as f64 / 127.5 - 1.0;
                }
            }
            out
        }
        c => return Err(Error::param("channels", format!("1 or 3, got {c}"))),
    };
    Ok(out)
}

/// A grid of `[C, H, W]` images (row-major tiles, `cols` per row, 1-pixel gaps), each mapped from
/// `[lo, hi]` to 8 bits, written as PNG atomically.
pub fn save_grid(
    path: &Path,
    images: &[Vec<f64>],
    shape: [usize; 3],
    cols: usize,
    lo: f64,
    hi: f64,
) -> Result<()> {
    let [c, h, w] = shape;
    if images.is_empty() || cols == 0 {
        return Err(Error::param("images", "nothing to draw"));
    }
    if c != 1 && c != 3 {
        return Err(Error::param("channels", format!("1 or 3, got {c}")));
    }
    if let Some(bad) = images.iter().position(|im| im.len() != c * h * w) {
        return Err(Error::shape(
            format!("grid image {bad}"),
            format!("[{c}, {h}, {w}]"),
            &[images[bad].len()],
        ));
    }
    let rows = images.len().div_ceil(cols);
    let (gw, gh) = (cols * (w + 1) + 1, rows * (h + 1) + 1);
    let mut buf = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    for (n, im) in images.iter().enumerate() {
        let (r0, c0) = ((n / cols) * (h + 1) + 1, (n % cols) * (w + 1) + 1);
        for i in 0..h {
            for j in 0..w {
                let px = if c == 1 {
                    let v = to_u8(im[i * w + j], lo, hi);
                    [v, v, v]
                } else {
                    [0, 1, 2].map(|k| to_u8(im[k * h * w + i * w + j], lo, hi))
                };
                buf.put_pixel((c0 + j) as u32, (r0 + i) as u32, image::Rgb(px));
            }
        }
    }
    crate::io::atomic_write(path, |tmp| {
        buf.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| Error::File {
                path: path.to_path_buf(),
                reason: format!("cannot write PNG: {e}"),
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_round_trip() {
        let dir = std::env::temp_dir().join(format!("diffpost-imaging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let im: Vec<f64> = (0..12).map(|i| i as f64 / 11.0 * 2.0 - 1.0).collect();
        let p = dir.join("one.png");
        save_grid(&p, std::slice::from_ref(&im), [1, 3, 4], 1, -1.0, 1.0).unwrap();
        // The grid has a 1-pixel border: crop it back.
        let g = image::open(&p).unwrap().to_luma8();
        assert_eq!((g.width(), g.height()), (6, 5));
        for i in 0..3 {
            for j in 0..4 {
                let v = g.get_pixel(1 + j, 1 + i).0[0] as f64 / 127.5 - 1.0;
                assert!((v - im[(i * 4 + j) as usize]).abs() <= 1.0 / 127.5);
            }
        }
        assert!(load_png(&p, 1, 3, 4).is_err()); // wrong size is an error, not a resize
        assert!(save_grid(&p, &[vec![0.0; 5]], [1, 3, 4], 1, -1.0, 1.0).is_err());
    }
}
