//! Where a lake's tables live, and the one commit protocol over them. A lake is a directory
//! (`object_store`'s local file system) or a prefix of an object store (`--lake
//! s3://bucket/prefix`); both hold the hive-partitioned tables at the same paths, so any engine
//! reads them in place, and beside them `_saerl/`, which makes commits atomic:
//! - `_saerl/staging/<txn>/<table>/<partition>/<files>`: a writer's staged partitions (on a
//!   directory, written there; on an object store, uploaded from the writer's cache);
//! - `_saerl/log/<n>.json`: commit record n, created only if absent (`PutMode::Create`: a hard
//!   link on a directory, a conditional PUT on a store), so of two writers racing for number n
//!   exactly one wins; the loser re-reads the lake, re-checks its destinations and tries n + 1.
//!   Creating the record is the commit point;
//! - `_saerl/log/<n>.done`: written once record n is published (its staged files copied to their
//!   partitions as `c<n>-<name>`; a hard link on a directory). Any reader or writer that finds a
//!   record without its marker completes it first (idempotent), so a writer killed
//!   mid-publication is rolled forward, and a writer killed before its record leaves the lake as
//!   it was. Published names carry the record's number because two processes may publish one
//!   record at once, and because readers pick files by it: a reader pinned at commit `H` sees in
//!   each partition the files of the newest record up to `H` (`pinned.rs`), so a statement sees
//!   every commit whole or not at all;
//! - `_saerl/log/<n>.clean`: the files record n replaced are deleted (and this marker written)
//!   once n has been published for the store's retention, by whichever saerl process rolls the
//!   lake forward next. On an object store that is `RETAIN`, so statements still reading them
//!   can finish; on a directory it is at once, as the lake lock keeps statements out while a
//!   commit is published (`lock.rs`).
//!
//! On an object store, commands that compute in Rust (train, eval, stats, the SQL providers) read
//! partitions through a local cache of the files they touch (`SAERL_LAKE_CACHE`, default
//! `~/.cache/saerl/lakes/<bucket>/<prefix>`), which also keeps their resumable work; the cache is
//! refreshed by ETag, so it never serves a replaced partition.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::partition::PartitionKey;
use super::pinned::{dir_and_record, published_name, visible, Pin, PinnedStore};
use super::schema::Table;

/// Object-store requests in flight at once when listing, uploading, publishing, deleting or
/// reading footers.
pub const CONCURRENCY: usize = 16;

/// How long the files a commit replaced stay on the store after it is published: a statement
/// that began before it and reads them for longer fails (the file is gone) rather than mixing
/// two commits.
const RETAIN: Duration = Duration::from_secs(10 * 60);

/// One file on the store.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// Relative to the lake prefix: `features/chain=a/stage=b/layer=6/k=32/part-0.parquet`.
    pub rel: String,
    pub size: u64,
    pub e_tag: Option<String>,
    /// When the store last wrote it.
    pub modified: SystemTime,
}

/// What commit record n publishes: each staged partition directory replaces its destination.
#[derive(Serialize, Deserialize, Debug)]
pub struct Record {
    pub txn: String,
    pub moves: Vec<Move>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Move {
    /// Directories relative to the lake prefix.
    pub staged: String,
    pub dest: String,
    /// The staged file names; the destination holds them as `published_name(n, name)` once
    /// published, and nothing of older records.
    pub files: Vec<String>,
}

/// Where writers stage partitions, relative to the lake (and, on an object store, to the cache).
pub const STAGING: &str = "_saerl/staging";

/// A table's data files, as one pin sees them.
type Listing = Arc<Vec<StoredFile>>;

pub struct Store {
    /// `s3://bucket/prefix`, or the lake directory.
    url: String,
    bucket: String,
    /// For a lake directory, its path: staged files are already in place, and what is written
    /// is made durable with fsync (the local file system's client does not).
    local: Option<PathBuf>,
    prefix: ObjPath,
    store: Arc<dyn ObjectStore>,
    /// The commit this process reads (see `snapshot`), and the table listings read at a pin.
    pin: Arc<Pin>,
    listings: Mutex<HashMap<Table, (u64, Listing)>>,
    retain: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

/// The object-store client's own runtime: lake code is synchronous and may run inside another
/// runtime (the SQL engine's), where blocking on a future is not allowed. Never dropped.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("saerl-object-store")
            .enable_all()
            .build()
            .expect("starting the object-store runtime")
    })
}

fn block<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // A plain channel, not a JoinHandle polled here: inside the SQL engine's runtime, tokio's
    // cooperative budget would make a foreign poll of the handle spin.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("object-store task panicked")
}

/// Whether `--lake` names an object store rather than a directory.
pub fn is_remote(location: &str) -> bool {
    location.starts_with("s3://")
}

/// An S3 client for `bucket` from the usual `AWS_*` variables (`AWS_ENDPOINT_URL` and
/// `AWS_ALLOW_HTTP` for an S3-compatible server), with conditional PUTs on.
pub fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .build()
        .with_context(|| {
            format!("configuring S3 for bucket {bucket} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_ENDPOINT_URL / AWS_ALLOW_HTTP for an S3-compatible server)")
        })?;
    Ok(Arc::new(store))
}

impl Store {
    /// `s3://bucket[/prefix]`.
    pub fn parse(location: &str) -> Result<Self> {
        let rest = location
            .strip_prefix("s3://")
            .with_context(|| format!("{location}: only s3:// object stores are supported"))?;
        let rest = rest.trim_end_matches('/');
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{location}: no bucket (use s3://BUCKET/PREFIX)");
        }
        Ok(Self::with_store(
            format!("s3://{rest}"),
            bucket,
            prefix,
            s3_store(bucket)?,
        ))
    }

    fn with_store(url: String, bucket: &str, prefix: &str, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            url,
            bucket: bucket.to_string(),
            local: None,
            prefix: ObjPath::from(prefix),
            store,
            pin: Arc::new(Pin::unpinned()),
            listings: Mutex::default(),
            retain: RETAIN,
        }
    }

    /// The lake directory `root` (which need not exist yet).
    pub fn directory(root: &Path) -> Self {
        let abs = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        // A path no URL can name (not UTF-8) fails later, at its first listing, with its name.
        let prefix = ObjPath::from_absolute_path(&abs)
            .unwrap_or_else(|_| ObjPath::from(abs.to_string_lossy().as_ref()));
        let url = root.display().to_string();
        Self {
            local: Some(abs),
            prefix,
            retain: Duration::ZERO,
            ..Self::with_store(url, "", "", Arc::new(LocalFileSystem::new()))
        }
    }

    /// Whether this is a lake directory rather than an object store.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// fsyncs `rel` (a file or directory) on a lake directory; an object store's writes are
    /// durable when they return.
    fn sync(&self, rel: &str) -> Result<()> {
        match &self.local {
            Some(root) => crate::durable::sync_path(&root.join(rel)),
            None => Ok(()),
        }
    }

    /// `s3://bucket/prefix` without a trailing slash, or the lake directory.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The prefix inside the bucket ("" for the bucket's root).
    pub fn prefix_str(&self) -> &str {
        self.prefix.as_ref()
    }

    /// Where this machine caches the files it reads and keeps resumable work.
    pub fn default_cache(&self) -> PathBuf {
        let base = std::env::var_os("SAERL_LAKE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
                PathBuf::from(home).join(".cache/saerl/lakes")
            });
        let mut dir = base.join(&self.bucket);
        for part in self.prefix.parts() {
            dir.push(part.as_ref());
        }
        dir
    }

    fn path(&self, rel: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    fn rel(&self, path: &ObjPath) -> String {
        path.prefix_match(&self.prefix)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>())
            .unwrap_or_default()
            .join("/")
    }

    fn err(&self, what: &str) -> String {
        let advice = match self.local {
            Some(_) => "is the lake directory writable, and its disk not full?",
            None => "check the AWS_* variables and that the bucket exists",
        };
        format!("{what} in {} ({advice})", self.url)
    }

    /// Every object under `rel` (recursively).
    fn list(&self, rel: &str) -> Result<Vec<StoredFile>> {
        Ok(self
            .list_many(&[rel.to_string()])?
            .pop()
            .unwrap_or_default())
    }

    /// Every object under each of `rels` (recursively), listed concurrently: a commit checks
    /// and publishes one directory per SAE or stage.
    fn list_many(&self, rels: &[String]) -> Result<Vec<Vec<StoredFile>>> {
        let jobs: Vec<_> = rels
            .iter()
            .map(|rel| {
                let (store, prefix) = (self.store.clone(), self.path(rel));
                let what = self.err(&format!("listing {rel}"));
                async move {
                    let metas: Vec<object_store::ObjectMeta> = store
                        .list(Some(&prefix))
                        .try_collect()
                        .await
                        .context(what)?;
                    anyhow::Ok(metas)
                }
            })
            .collect();
        let listings = block(async move {
            futures::stream::iter(jobs)
                .buffered(CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await
        })?;
        Ok(listings
            .into_iter()
            .map(|metas| {
                let mut out: Vec<StoredFile> = metas
                    .into_iter()
                    .map(|m| StoredFile {
                        rel: self.rel(&m.location),
                        size: m.size,
                        e_tag: m.e_tag,
                        modified: m.last_modified.into(),
                    })
                    .collect();
                out.sort_by(|a, b| a.rel.cmp(&b.rel));
                out
            })
            .collect())
    }

    /// Whether anything at all lives under the prefix (a lake or the start of one).
    pub fn exists(&self) -> Result<bool> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let listing = block(async move { store.list_with_delimiter(Some(&prefix)).await })
            .with_context(|| self.err("listing the lake"))?;
        Ok(!listing.common_prefixes.is_empty() || !listing.objects.is_empty())
    }

    /// The data files of `table` at the commit this process reads (pinned first if it is not).
    pub fn table_files(&self, table: Table) -> Result<Listing> {
        let pin = match self.pin.get() {
            Some(pin) => pin,
            None => self.snapshot()?,
        };
        // A listing read at another pin (a statement that began meanwhile moved it) is stale.
        if let Some((at, l)) = self.listings.lock().unwrap().get(&table) {
            if *at == pin {
                return Ok(l.clone());
            }
        }
        let files: Vec<StoredFile> = self
            .list(table.name())?
            .into_iter()
            .filter(|f| {
                f.rel.ends_with(".parquet") && !f.rel.split('/').any(|p| p.starts_with(['.', '_']))
            })
            .collect();
        let files = Arc::new(visible(files, Some(pin), |f| f.rel.as_str()));
        self.listings
            .lock()
            .unwrap()
            .insert(table, (pin, files.clone()));
        Ok(files)
    }

    /// Forget the pinned commit and the listings, so the next read sees commits made since.
    pub fn refresh(&self) {
        self.listings.lock().unwrap().clear();
        self.pin.clear();
    }

    /// The last commit record's number (0 for none), or the pinned one while pinned.
    pub fn generation(&self) -> Result<u64> {
        match self.pin.get() {
            Some(pin) => Ok(pin),
            None => Ok(self.log()?.head()),
        }
    }

    /// Pins reads to the last commit if every commit is complete (on a lake directory, also
    /// cleaned); `None` when one must be rolled forward first.
    pub fn pin_if_complete(&self) -> Result<Option<u64>> {
        self.refresh();
        let log = self.log()?;
        let clean = self.is_local();
        let pending = log
            .records
            .iter()
            .any(|n| !log.done.contains_key(n) || (clean && !log.clean.contains(n)));
        if pending {
            return Ok(None);
        }
        self.pin.set(log.head());
        Ok(Some(log.head()))
    }

    /// Pins reads to the last commit published with all before it, for a reader that may not
    /// roll the lake forward (one without write access): it sees the lake without the rest.
    pub fn pin_published(&self) -> Result<u64> {
        self.refresh();
        let log = self.log()?;
        let head = log
            .records
            .iter()
            .take_while(|n| log.done.contains_key(n))
            .last()
            .copied()
            .unwrap_or(0);
        self.pin.set(head);
        Ok(head)
    }

    /// Completes any interrupted commit, then pins this process's reads (and its SQL engine's
    /// listings) to the lake's last commit; returns its number.
    pub fn snapshot(&self) -> Result<u64> {
        self.refresh();
        let head = self.roll_forward()?;
        self.pin.set(head);
        Ok(head)
    }

    /// The files of one partition directory (`rel` relative to the prefix).
    pub fn partition_files(&self, table: Table, key: &PartitionKey) -> Result<Vec<StoredFile>> {
        let dir = format!("{}/", rel_str(&key.rel_dir(table)?));
        Ok(self
            .table_files(table)?
            .iter()
            .filter(|f| f.rel.starts_with(&dir) && !f.rel[dir.len()..].contains('/'))
            .cloned()
            .collect())
    }

    /// Makes `local` (the cache's copy of partition `key`) hold exactly the store's files,
    /// downloading those whose ETag changed.
    pub fn fetch_partition(&self, table: Table, key: &PartitionKey, local: &Path) -> Result<()> {
        let files = self.partition_files(table, key)?;
        std::fs::create_dir_all(local).with_context(|| format!("creating {}", local.display()))?;
        for f in &files {
            let name = f.rel.rsplit('/').next().unwrap();
            let dest = local.join(name);
            let tag_file = local.join(format!(".{name}.etag"));
            let tag = f.e_tag.clone().unwrap_or_default();
            let cached = dest.metadata().map(|m| m.len() == f.size).unwrap_or(false)
                && std::fs::read_to_string(&tag_file).ok().as_deref() == Some(tag.as_str());
            if !cached {
                self.download(&f.rel, &dest)?;
                crate::durable::write_atomic(&tag_file, tag.as_bytes())?;
            }
        }
        // Files the store no longer has (a replaced partition's extra chunks).
        for e in std::fs::read_dir(local)? {
            let p = e?.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let in_store = files
                .iter()
                .any(|f| f.rel.rsplit('/').next() == Some(&name));
            if name.ends_with(".parquet") && !in_store {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(())
    }

    /// Streams an object to a temporary file beside `dest`, then renames it into place.
    fn download(&self, rel: &str, dest: &Path) -> Result<()> {
        let tmp = crate::durable::unique_tmp(dest);
        let (store, path, tmp2) = (self.store.clone(), self.path(rel), tmp.clone());
        block(async move {
            let mut stream = store.get(&path).await?.into_stream();
            let mut file = tokio::fs::File::create(&tmp2).await?;
            while let Some(chunk) = stream.try_next().await? {
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            anyhow::Ok(())
        })
        .with_context(|| self.err(&format!("downloading {rel}")))?;
        std::fs::rename(&tmp, dest).with_context(|| format!("placing {}", dest.display()))?;
        Ok(())
    }

    /// Stages a partition written to `local`, the writer's `<root>/<STAGING>/<txn>/<dest>`:
    /// on a lake directory that is the staged partition itself, made durable; on an object
    /// store its data files are uploaded to the same path.
    pub fn stage_partition(&self, txn: &str, local: &Path, dest: &str) -> Result<Move> {
        let staged = format!("{STAGING}/{txn}/{dest}");
        let mut files = Vec::new();
        let mut uploads = Vec::new();
        for p in super::partition_files(local)? {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            uploads.push((p, format!("{staged}/{name}")));
            files.push(name);
        }
        match &self.local {
            Some(root) => {
                debug_assert_eq!(root.join(&staged), std::path::absolute(local)?);
                crate::durable::sync_tree(local)?;
            }
            None => self.upload_all(uploads)?,
        }
        Ok(Move {
            staged,
            dest: dest.to_string(),
            files,
        })
    }

    /// Uploads local files (multipart for large ones), several at a time.
    fn upload_all(&self, files: Vec<(PathBuf, String)>) -> Result<()> {
        let jobs = files.into_iter().map(|(file, rel)| {
            let (store, path) = (self.store.clone(), self.path(&rel));
            let what = self.err(&format!("uploading {} as {rel}", file.display()));
            async move {
                let mut src = tokio::fs::File::open(&file).await?;
                let mut w = object_store::buffered::BufWriter::new(store, path);
                tokio::io::copy(&mut src, &mut w).await?;
                w.shutdown().await?;
                anyhow::Ok(())
            }
            .map(move |r| r.context(what))
        });
        self.all(jobs.collect())
    }

    /// Runs object-store requests `CONCURRENCY` at a time; the first error wins.
    fn all<F>(&self, jobs: Vec<F>) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        block(async move {
            futures::stream::iter(jobs)
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
        })
        .map(|_| ())
    }

    /// The commit log: record numbers, when each published one was marked so, and which have
    /// had the files they replaced deleted.
    fn log(&self) -> Result<Log> {
        let entries: Vec<(String, SystemTime)> = match &self.local {
            // Every statement looks at the log first: on a directory, where the time a record
            // was marked done does not matter (`retain` is zero), read the names directly
            // rather than through the client's runtime (0.6 against 1.0 ms a small statement).
            Some(root) => log_names(&root.join("_saerl/log"))?
                .into_iter()
                .map(|name| (name, SystemTime::UNIX_EPOCH))
                .collect(),
            None => self
                .list("_saerl/log")?
                .into_iter()
                .map(|f| {
                    (
                        f.rel.rsplit('/').next().unwrap_or("").to_string(),
                        f.modified,
                    )
                })
                .collect(),
        };
        let mut log = Log::default();
        for (name, modified) in entries {
            let Some((n, ext)) = name.split_once('.') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match ext {
                "json" => log.records.push(n),
                "done" => {
                    log.done.insert(n, modified);
                }
                "clean" => {
                    log.clean.insert(n);
                }
                _ => {}
            }
        }
        log.records.sort();
        Ok(log)
    }

    fn record_rel(n: u64, ext: &str) -> String {
        format!("_saerl/log/{n:020}.{ext}")
    }

    /// Completes every commit whose record is not yet published, and deletes what settled
    /// commits replaced; returns the last record number (0 for none).
    pub fn roll_forward(&self) -> Result<u64> {
        let mut log = self.log()?;
        let pending: Vec<u64> = log
            .records
            .iter()
            .copied()
            .filter(|n| !log.done.contains_key(n))
            .collect();
        for &n in &pending {
            self.publish(n, &self.read_record(n)?)?;
        }
        if !pending.is_empty() {
            log = self.log()?;
        }
        if self.is_local() {
            // A lake directory's readers wait for this (`pin_if_complete`): it must happen.
            self.clean_settled(&log)?;
            self.compact(&self.log()?)?;
        } else {
            // Best effort: superseded files only cost space, as no reader picks them, and a
            // reader whose credentials may not delete still reads.
            let _ = self.clean_settled(&log);
        }
        Ok(log.head())
    }

    fn read_record(&self, n: u64) -> Result<Record> {
        let rel = Self::record_rel(n, "json");
        let (store, path) = (self.store.clone(), self.path(&rel));
        let bytes = block(async move { store.get(&path).await?.bytes().await })
            .with_context(|| self.err(&format!("reading {rel}")))?;
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{}/{rel} is not a saerl commit record; delete it to discard that commit",
                self.url
            )
        })
    }

    /// Creates commit record `n` unless another writer did first (then `Ok(false)`).
    pub fn try_record(&self, n: u64, record: &Record) -> Result<bool> {
        let rel = Self::record_rel(n, "json");
        let (store, path) = (self.store.clone(), self.path(&rel));
        let body = PutPayload::from(serde_json::to_vec(record)?);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match block(async move { store.put_opts(&path, body, opts).await }) {
            Ok(_) => {
                self.sync(&rel)?;
                self.sync("_saerl/log")?;
                Ok(true)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| self.err(&format!("writing the commit record {rel}"))),
        }
    }

    /// Publishes record `n`: copies, then the `.done` marker, then the staged files go (what it
    /// replaces goes later, in `clean_settled`). Safe to repeat after a crash at any point, and
    /// while another process publishes it too.
    pub fn publish(&self, n: u64, record: &Record) -> Result<()> {
        let staging = format!("{STAGING}/{}", record.txn);
        let mut staged: HashSet<String> = self.list(&staging)?.into_iter().map(|f| f.rel).collect();
        let mut sources = Vec::new();
        let mut copies = Vec::new();
        for m in &record.moves {
            for name in &m.files {
                let from = format!("{}/{name}", m.staged);
                // Not there: copied before, and the staged copy already removed.
                if let Some(from) = staged.take(&from) {
                    sources.push(from.clone());
                    let to = format!("{}/{}", m.dest, published_name(n, name));
                    let (store, a, b) = (self.store.clone(), self.path(&from), self.path(&to));
                    let what = self.err(&format!("publishing {to}"));
                    copies.push(async move {
                        match store.copy(&a, &b).await {
                            // Another reader or writer published this record meanwhile and
                            // removed the staged copy (it does so only after the marker).
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(e).context(what),
                        }
                        crate::fault::point("commit.publish");
                        Ok(())
                    });
                }
            }
        }
        self.all(copies)?;
        let mut dests: Vec<&str> = record.moves.iter().map(|m| m.dest.as_str()).collect();
        dests.dedup();
        for d in dests {
            self.sync(d)?;
        }
        self.mark(n, "done")?;
        self.sync("_saerl/log")?;
        crate::fault::point("commit.published");
        // Only the record's files: the rest of a writer's staging directory (its owner lock on
        // a lake directory) goes with the writer.
        self.delete_all(sources)?;
        self.refresh();
        Ok(())
    }

    /// For every record published at least `retain` ago whose replaced files are not yet
    /// deleted: deletes, in each partition it published to, the files of records older than
    /// the newest settled one there. Records still being published, or published within
    /// `retain`, protect what they replace: a statement pinned before them may be reading it.
    fn clean_settled(&self, log: &Log) -> Result<()> {
        let now = SystemTime::now();
        let settled: HashSet<u64> = log
            .done
            .iter()
            .filter(|(_, &at)| {
                self.retain.is_zero() || now.duration_since(at).is_ok_and(|age| age >= self.retain)
            })
            .map(|(&n, _)| n)
            .collect();
        let mut due: Vec<u64> = settled.difference(&log.clean).copied().collect();
        due.sort_unstable();
        for n in due {
            let record = self.read_record(n)?;
            let dests: Vec<String> = record.moves.iter().map(|m| m.dest.clone()).collect();
            let mut stale = Vec::new();
            for (m, listing) in record.moves.iter().zip(self.list_many(&dests)?) {
                let files: Vec<(u64, String)> = listing
                    .into_iter()
                    .filter_map(|f| {
                        let (dir, by) = dir_and_record(&f.rel);
                        (dir == m.dest).then(|| (by, f.rel.clone()))
                    })
                    .collect();
                let newest = files
                    .iter()
                    .map(|(by, _)| *by)
                    .filter(|by| *by == 0 || settled.contains(by))
                    .max()
                    .unwrap_or(0);
                stale.extend(
                    files
                        .into_iter()
                        .filter(|(by, _)| *by < newest)
                        .map(|(_, rel)| rel),
                );
            }
            self.delete_all(stale)?;
            self.mark(n, "clean")?;
        }
        Ok(())
    }

    /// Deletes the log entries of cleaned records before the last, so every statement's look
    /// at the log stays small. Only on a lake directory, under the lake lock: there nobody can
    /// be publishing one of them. (Deleting the record first, a crash leaves at most markers
    /// without a record, which nothing reads.)
    fn compact(&self, log: &Log) -> Result<()> {
        let head = log.head();
        let mut old: Vec<u64> = log.clean.iter().copied().filter(|&n| n < head).collect();
        old.sort_unstable();
        for n in old {
            for ext in ["json", "done", "clean"] {
                self.delete_all(vec![Self::record_rel(n, ext)])?;
            }
        }
        Ok(())
    }

    /// Writes record `n`'s empty marker `<n>.<ext>`.
    fn mark(&self, n: u64, ext: &str) -> Result<()> {
        let rel = Self::record_rel(n, ext);
        let (store, path) = (self.store.clone(), self.path(&rel));
        block(async move { store.put(&path, PutPayload::from_static(b"")).await })
            .with_context(|| self.err(&format!("writing {rel}")))?;
        Ok(())
    }

    /// The first of directories `rels` that holds anything (uncached).
    pub fn first_occupied(&self, rels: &[String]) -> Result<Option<usize>> {
        Ok(self.list_many(rels)?.iter().position(|l| !l.is_empty()))
    }

    /// Whether transaction `txn` got as far as its commit record.
    pub fn has_record_of(&self, txn: &str) -> Result<bool> {
        for n in self.log()?.records {
            if self.read_record(n)?.txn == txn {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes what a writer staged before giving up (it never wrote a record).
    pub fn discard(&self, txn: &str) {
        if let Ok(files) = self.list(&format!("{STAGING}/{txn}")) {
            let _ = self.delete_all(files.into_iter().map(|f| f.rel).collect());
        }
    }

    fn delete_all(&self, rels: Vec<String>) -> Result<()> {
        let jobs = rels.into_iter().map(|rel| {
            let (store, path) = (self.store.clone(), self.path(&rel));
            let what = self.err(&format!("deleting {rel}"));
            async move {
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e).context(what),
                }
            }
        });
        self.all(jobs.collect())
    }

    /// A client of its own for DataFusion's object-store registry (connections belong to the
    /// runtime that opened them, and the SQL engine runs on another), whose listings show the
    /// commit this process reads.
    pub fn sql_store(&self) -> Result<Arc<dyn ObjectStore>> {
        let inner = match self.local {
            Some(_) => self.store.clone(),
            None => s3_store(&self.bucket)?,
        };
        Ok(Arc::new(PinnedStore::new(inner, self.pin.clone())))
    }
}

/// What `_saerl/log/` holds.
#[derive(Default)]
struct Log {
    records: Vec<u64>,
    /// Published records, and when their `.done` marker was written.
    done: HashMap<u64, SystemTime>,
    /// Records whose replaced files are deleted.
    clean: HashSet<u64>,
}

impl Log {
    /// The last record's number (0 for none).
    fn head(&self) -> u64 {
        self.records.last().copied().unwrap_or(0)
    }
}

/// The file names in a lake directory's log (none before its first commit).
fn log_names(dir: &Path) -> Result<Vec<String>> {
    Ok(super::read::dir_entries(dir)?
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect())
}

/// A relative path with `/` separators.
pub fn rel_str(p: &Path) -> String {
    p.iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    /// Commits one partition `dest` holding `part-0.parquet` with `bytes`, as a writer does
    /// (staging it where a writer on this store would: in the lake, or in a scratch cache).
    fn commit(remote: &Store, dest: &str, bytes: &[u8]) -> u64 {
        let scratch = tempfile::tempdir().unwrap();
        let txn = format!("txn-{}", bytes.len());
        let base = remote.local.clone();
        let local = base
            .as_deref()
            .unwrap_or(scratch.path())
            .join(STAGING)
            .join(&txn)
            .join(dest);
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join("part-0.parquet"), bytes).unwrap();
        let moves = vec![remote.stage_partition(&txn, &local, dest).unwrap()];
        let n = remote.snapshot().unwrap() + 1;
        let record = Record { txn, moves };
        assert!(remote.try_record(n, &record).unwrap());
        remote.publish(n, &record).unwrap();
        n
    }

    fn stored(remote: &Store, dir: &str) -> Vec<String> {
        remote
            .list(dir)
            .unwrap()
            .into_iter()
            .map(|f| f.rel)
            .collect()
    }

    #[test]
    fn readers_see_their_commit_and_replaced_files_go_once_settled() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let remote = Store::with_store("s3://bucket/lake".into(), "bucket", "lake", store.clone());
        let dest = "features/chain=a";
        let first = commit(&remote, dest, b"first");
        let second = commit(&remote, dest, b"second!");
        let names = |files: &[StoredFile]| files.iter().map(|f| f.rel.clone()).collect::<Vec<_>>();
        let file_of = |n| format!("{dest}/{}", published_name(n, "part-0.parquet"));

        // A fresh reader sees the second commit; one pinned before it, the first.
        assert_eq!(remote.snapshot().unwrap(), second);
        assert_eq!(
            names(&remote.table_files(Table::Features).unwrap()),
            [file_of(second)]
        );
        remote.refresh();
        remote.pin.set(first);
        assert_eq!(
            names(&remote.table_files(Table::Features).unwrap()),
            [file_of(first)]
        );
        // So do DataFusion's listings through the SQL engine's store.
        let sql = PinnedStore::new(store, remote.pin.clone());
        let listed = |sql: &PinnedStore| {
            block({
                let stream = sql.list(Some(&ObjPath::from("lake/features")));
                async move { stream.try_collect::<Vec<_>>().await }
            })
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect::<Vec<_>>()
        };
        assert_eq!(listed(&sql), [format!("lake/{}", file_of(first))]);
        remote.pin.set(second);
        assert_eq!(listed(&sql), [format!("lake/{}", file_of(second))]);

        // The first commit's file stays while the second is recent, so the pinned reader can
        // finish; once the second has settled, the next roll-forward deletes it, once.
        remote.roll_forward().unwrap();
        assert_eq!(stored(&remote, dest), [file_of(first), file_of(second)]);
        let settled = Store {
            retain: Duration::ZERO,
            ..Store::with_store(remote.url.clone(), "bucket", "lake", remote.store.clone())
        };
        settled.roll_forward().unwrap();
        assert_eq!(stored(&settled, dest), [file_of(second)]);
        assert_eq!(settled.log().unwrap().clean, HashSet::from([first, second]));
        assert!(stored(&settled, "_saerl/staging").is_empty());
    }

    #[test]
    fn a_lake_directory_commits_by_the_same_records_and_cleans_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Store::directory(dir.path());
        let dest = "features/chain=a";
        let file_of = |n| format!("{dest}/{}", published_name(n, "part-0.parquet"));
        let first = commit(&lake, dest, b"first");
        // Published but not yet cleaned: a reader must roll forward before it pins.
        assert_eq!(lake.pin_if_complete().unwrap(), None);
        lake.roll_forward().unwrap();
        assert_eq!(lake.pin_if_complete().unwrap(), Some(first));
        let second = commit(&lake, dest, b"second!");
        lake.roll_forward().unwrap();
        // The replaced file is gone at once; the published one is the staged file, linked.
        assert_eq!(stored(&lake, dest), [file_of(second)]);
        assert_eq!(
            std::fs::read(dir.path().join(file_of(second))).unwrap(),
            b"second!"
        );
        assert!(stored(&lake, STAGING).is_empty());
        assert_eq!(lake.generation().unwrap(), second);
        // The log keeps only the last record, so a statement's look at it stays small.
        let log = lake.log().unwrap();
        assert_eq!(
            (log.records, log.clean),
            (vec![second], HashSet::from([second]))
        );
    }
}
