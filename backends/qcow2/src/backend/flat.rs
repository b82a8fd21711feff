//! [`FlatDisk`] over a qcow2 chain: a standalone sparse qcow2 stream for export.

use std::io::Write;
use std::path::{Path, PathBuf};

use boxlite_api::{Error, FlatDisk, Result};

use super::store::Store;
use crate::image::{Chain, FlattenPlan};

/// A chain opened for flattening, with its exact output size computed up front.
pub(crate) struct Flat {
    chain: Chain,
    path: PathBuf,
    size_bytes: u64,
    virtual_size: u64,
}

impl Flat {
    /// Open the chain at `path` (inside the store) and compute its flattened layout.
    pub fn new(store: &Store, path: &Path) -> Result<Flat> {
        let chain = store.open(path)?;
        let plan = FlattenPlan::new(&chain)?;
        let (size_bytes, virtual_size) = (plan.size_bytes(), plan.virtual_size());
        drop(plan);
        Ok(Flat {
            chain,
            path: path.to_owned(),
            size_bytes,
            virtual_size,
        })
    }
}

impl FlatDisk for Flat {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64> {
        // The layout is recomputed from the same immutable chain, so it is identical.
        let plan = FlattenPlan::new(&self.chain)?;
        if plan.size_bytes() != self.size_bytes {
            return Err(Error::corrupt(
                &self.path,
                "the disk changed between planning and streaming the export",
            ));
        }
        let mut out = out;
        Ok(plan.write_to(&mut out)?)
    }
}
