//! FICLONE (btrfs, xfs) snapshot backend. Not built yet: issue 5 fills this crate; it registers nothing, so no runtime can select it.
