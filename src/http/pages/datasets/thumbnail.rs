//! Small previews of example images for the dataset page.

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};
use std::io::Cursor;
use std::path::Path;

/// Longest side of a thumbnail, in pixels.
pub(super) const MAX_SIDE: u32 = 160;

/// An encoded thumbnail.
pub(super) struct Thumb {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

/// Why there is no thumbnail.
#[derive(Debug)]
pub(super) enum ThumbError {
    /// The file does not exist.
    Missing,
    /// The file exists but is not an image this service decodes.
    Unreadable(String),
    /// Encoding the thumbnail failed (our fault, not the file's).
    Encode(String),
}

/// Decodes `path` and shrinks it, aspect kept, to at most `max_side` on its longer side (a
/// smaller image keeps its size); JPEG, or PNG where the image has transparency.
pub(super) fn thumbnail(path: &Path, max_side: u32) -> Result<Thumb, ThumbError> {
    if !path.is_file() {
        return Err(ThumbError::Missing);
    }
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| ThumbError::Unreadable(e.to_string()))?
        .decode()
        .map_err(|e| ThumbError::Unreadable(e.to_string()))?;
    let img = if img.width().max(img.height()) > max_side {
        img.resize(max_side, max_side, FilterType::Triangle)
    } else {
        img
    };
    let mut bytes = Vec::new();
    let content_type = if img.color().has_alpha() {
        img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .map_err(|e| ThumbError::Encode(e.to_string()))?;
        "image/png"
    } else {
        let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
            .encode_image(&rgb)
            .map_err(|e| ThumbError::Encode(e.to_string()))?;
        "image/jpeg"
    };
    Ok(Thumb {
        bytes,
        content_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(t: &Thumb) -> DynamicImage {
        image::load_from_memory(&t.bytes).unwrap()
    }

    #[test]
    fn a_large_image_shrinks_to_the_longest_side_keeping_its_aspect() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wide.png");
        image::RgbImage::new(320, 80).save(&p).unwrap();
        let t = thumbnail(&p, 160).unwrap();
        assert_eq!(t.content_type, "image/jpeg");
        let img = decoded(&t);
        // 320 x 80 halves to 160 x 40
        assert_eq!((img.width(), img.height()), (160, 40));
    }

    #[test]
    fn a_small_image_keeps_its_size_and_transparency_stays_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small.png");
        image::RgbaImage::new(48, 30).save(&p).unwrap();
        let t = thumbnail(&p, 160).unwrap();
        assert_eq!(t.content_type, "image/png");
        let img = decoded(&t);
        assert_eq!((img.width(), img.height()), (48, 30));
    }

    #[test]
    fn missing_and_corrupt_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            thumbnail(&dir.path().join("gone.png"), 160),
            Err(ThumbError::Missing)
        ));
        let bad = dir.path().join("bad.jpg");
        std::fs::write(&bad, b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
        assert!(matches!(
            thumbnail(&bad, 160),
            Err(ThumbError::Unreadable(_))
        ));
    }
}
