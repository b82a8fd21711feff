//! Mapping of image-layer errors onto the API's error kinds, so hosts match on
//! `boxlite_api::Error` whatever failed underneath.

use boxlite_api::Error;

use crate::image::ImageError;

impl From<ImageError> for Error {
    /// I/O errors keep their OS error (ENOSPC becomes [`Error::NoSpace`]); refused features
    /// become [`Error::Unsupported`] with the image layer's advice; invalid or inconsistent
    /// images and refused backing chains become [`Error::Corrupt`]. The path is kept.
    fn from(e: ImageError) -> Self {
        let path = e.path().to_path_buf();
        if e.is_io() {
            if let ImageError::Io { source, .. } = e {
                return Error::io(path, source);
            }
            return Error::corrupt(path, "I/O error");
        }
        if e.is_unsupported() {
            return Error::Unsupported {
                what: e.to_string(),
                path: Some(path),
                hint: "convert the image with `qemu-img convert -O qcow2` to a plain qcow2 v3 file"
                    .into(),
            };
        }
        Error::corrupt(path, e.to_string())
    }
}
