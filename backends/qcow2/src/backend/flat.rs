//! [`FlatChain`]: a qcow2 chain as a [`FlatDisk`], i.e. a standalone sparse qcow2 stream for
//! export. Shared by every backend whose disks are qcow2 files.

use std::io::Write;
use std::path::{Path, PathBuf};

use boxlite_api::{Error, FlatDisk, Result};

use crate::image::{Chain, FlattenPlan, OpenOptions};

/// A chain opened for flattening, with its exact output size computed up front (one pass
/// over the allocated clusters); [`FlatDisk::write_to`] streams it in bounded memory.
pub struct FlatChain {
    chain: Chain,
    path: PathBuf,
    size_bytes: u64,
    virtual_size: u64,
}

impl FlatChain {
    /// Open the chain whose top is `path` with `opts` (give the store as the allowed root)
    /// and plan its flattened layout.
    ///
    /// Errors: the safe open's errors; I/O and corruption errors while planning.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<FlatChain> {
        let chain = Chain::open(path, opts)?;
        let plan = FlattenPlan::new(&chain)?;
        let (size_bytes, virtual_size) = (plan.size_bytes(), plan.virtual_size());
        drop(plan);
        Ok(FlatChain {
            chain,
            path: path.to_owned(),
            size_bytes,
            virtual_size,
        })
    }
}

impl FlatDisk for FlatChain {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64> {
        // The layout is recomputed from the same immutable chain, so it is identical; a
        // difference means the disk changed underneath, which is refused.
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
