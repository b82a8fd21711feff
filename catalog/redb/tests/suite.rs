//! The shared catalog contract suite (`boxlite_conformance::catalog_suite`), one `#[test]` per
//! case, each against a fresh `RedbCatalog` in a fresh temporary home.

use std::path::Path;
use std::sync::Arc;

use boxlite_api::CatalogBackend;
use boxlite_catalog_redb::RedbCatalog;

fn open(home: &Path) -> boxlite_api::Result<Arc<dyn CatalogBackend>> {
    Ok(Arc::new(RedbCatalog::open_default(home)?))
}

boxlite_conformance::catalog_suite_tests!(open);
