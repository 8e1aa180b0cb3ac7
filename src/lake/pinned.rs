//! What a reader of a lake sees: the files of one commit, whole.
//!
//! Every published file is named after the commit record that published it (`c<N>-name`), and
//! a partition's files of older records are deleted only after a newer record replaced them
//! (`store.rs`: on an object store a while after, on a directory within the commit). So at any
//! moment a partition directory may hold the files of several records: the ones a record still
//! being published is copying in, the ones it replaces, and a straggler's late copy. A reader
//! pinned at commit `H` takes, in each directory, the files of the newest record up to `H` —
//! exactly the partition as commit `H` left it. Saerl's own listings go through `visible`;
//! DataFusion's go through `PinnedStore`, which applies the same rule to the store it lists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// The commit a process's readers see; shared by the lake handle and its SQL engine's store.
/// (No `Default`: a pin at 0 would hide every published file.)
#[derive(Debug)]
pub struct Pin(AtomicU64);

impl Pin {
    const UNPINNED: u64 = u64::MAX;

    pub fn unpinned() -> Self {
        Self(AtomicU64::new(Self::UNPINNED))
    }

    /// The pinned commit, if any.
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::SeqCst)).filter(|&n| n != Self::UNPINNED)
    }

    pub fn set(&self, commit: u64) {
        self.0.store(commit, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.0.store(Self::UNPINNED, Ordering::SeqCst);
    }
}

/// The name staged file `name` gets in its partition when record `n` publishes it.
pub fn published_name(n: u64, name: &str) -> String {
    format!("c{n:020}-{name}")
}

/// The record that published a partition's file (0 for a name without one: a file of a lake
/// written before names carried it).
fn published_by(name: &str) -> u64 {
    name.strip_prefix('c')
        .and_then(|rest| rest.split_once('-'))
        .filter(|(digits, _)| digits.len() == 20)
        .and_then(|(digits, _)| digits.parse().ok())
        .unwrap_or(0)
}

/// Splits `a/b/name` into its directory and the record that published it.
pub fn dir_and_record(path: &str) -> (&str, u64) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    (dir, published_by(name))
}

/// Of `items` (named by `path`), those a reader pinned at `pin` sees (`None`: the newest): in
/// each directory, the files of the newest record up to the pin.
pub fn visible<T>(items: Vec<T>, pin: Option<u64>, path: impl Fn(&T) -> &str) -> Vec<T> {
    let pin = pin.unwrap_or(u64::MAX);
    let mut newest = std::collections::HashMap::<String, u64>::new();
    for item in &items {
        let (dir, record) = dir_and_record(path(item));
        if record <= pin {
            let n = newest.entry(dir.to_string()).or_default();
            *n = (*n).max(record);
        }
    }
    items
        .into_iter()
        .filter(|item| {
            let (dir, record) = dir_and_record(path(item));
            record <= pin && newest.get(dir) == Some(&record)
        })
        .collect()
}

/// An object store whose listings show what a reader pinned at `pin` sees (for DataFusion's
/// listing tables); everything else passes through.
#[derive(Debug)]
pub struct PinnedStore {
    inner: Arc<dyn ObjectStore>,
    pin: Arc<Pin>,
}

impl PinnedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, pin: Arc<Pin>) -> Self {
        Self { inner, pin }
    }
}

impl std::fmt::Display for PinnedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pinned({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for PinnedStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    // The inner store's own range reads and renames (the local file system reads all ranges of
    // a file in one blocking task), not the trait's generic ones.
    async fn get_ranges(
        &self,
        location: &ObjPath,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    async fn rename_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
        let pin = self.pin.get();
        let all = self.inner.list(prefix);
        // A directory's files may arrive in any order: the whole listing decides.
        futures::stream::once(async move {
            let metas: Vec<ObjectMeta> = all.try_collect().await?;
            let shown = visible(metas, pin, |m| m.location.as_ref());
            Ok::<_, object_store::Error>(futures::stream::iter(shown.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        let mut listing = self.inner.list_with_delimiter(prefix).await?;
        listing.objects = visible(listing.objects, self.pin.get(), |m| m.location.as_ref());
        Ok(listing)
    }

    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_names_carry_their_record_and_sort_by_it() {
        let (a, b) = (
            published_name(7, "part-0.parquet"),
            published_name(12, "part-0.parquet"),
        );
        assert_eq!((published_by(&a), published_by(&b)), (7, 12));
        assert!(a < b, "a newer record's file sorts last");
        // Files of a lake written before names carried the record count as older than any.
        assert_eq!(published_by("part-0.parquet"), 0);
        assert_eq!(published_by("c12-part-0.parquet"), 0);
    }

    #[test]
    fn a_pinned_reader_sees_each_partition_as_its_commit_left_it() {
        let file = |dir: &str, n: u64, name: &str| format!("{dir}/{}", published_name(n, name));
        let listing = vec![
            // Replaced by record 5, whose old files are still there.
            file("t/p=a", 2, "part-00000.parquet"),
            file("t/p=a", 2, "part-00001.parquet"),
            file("t/p=a", 5, "part-00000.parquet"),
            // Record 9 is being published: one of its files has landed.
            file("t/p=b", 3, "part-0.parquet"),
            file("t/p=b", 9, "part-0.parquet"),
            // A partition only record 9 writes, and one from before names carried records.
            file("t/p=c", 9, "part-0.parquet"),
            "t/p=d/part-0.parquet".to_string(),
        ];
        let seen = |pin| visible(listing.clone(), pin, |s: &String| s.as_str());
        assert_eq!(
            seen(Some(8)),
            [&listing[2], &listing[3], &listing[6]].map(String::clone)
        );
        assert_eq!(
            seen(Some(2)),
            [&listing[0], &listing[1], &listing[6]].map(String::clone)
        );
        assert_eq!(
            seen(None),
            [&listing[2], &listing[4], &listing[5], &listing[6]].map(String::clone)
        );
    }
}
