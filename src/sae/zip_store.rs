//! The uncompressed ("stored") zip archives that `torch.save` writes.
//!
//! Hand-written rather than the `zip` crate: torch pads entries to 64-byte alignment with an
//! extra field that zip 9.8 (used by candle's reader) rejects as an invalid central directory,
//! while PyTorch and Python's zipfile accept it. We only need stored entries, so we read the
//! central directory ourselves, tolerate any extra fields, and verify every CRC.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

const EOCD: u32 = 0x0605_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

/// `n` bytes at `at`: every offset comes from the file, so the arithmetic is checked.
fn bytes_at(b: &[u8], at: usize, n: usize) -> Result<&[u8]> {
    at.checked_add(n).and_then(|end| b.get(at..end)).context(
        "archive ends inside a header, or a header points outside the file (truncated or corrupt?)",
    )
}
fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(bytes_at(b, at, 2)?.try_into().unwrap()))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(bytes_at(b, at, 4)?.try_into().unwrap()))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(bytes_at(b, at, 8)?.try_into().unwrap()))
}
/// `a + b` for offsets read from the file.
fn add(a: usize, b: usize) -> Result<usize> {
    a.checked_add(b)
        .context("an offset in the archive overflows: the file is corrupt")
}
fn offset(v: u64) -> Result<usize> {
    usize::try_from(v).context("an offset in the archive is too large: the file is corrupt")
}

/// A zip archive held in memory; entries are borrowed slices of it.
pub struct ZipStore {
    bytes: Vec<u8>,
    /// name → (data offset, size)
    entries: BTreeMap<String, (usize, usize)>,
}

impl ZipStore {
    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let b = &bytes;
        if b.len() < 22 || u32_at(b, 0)? != LOCAL {
            bail!("not a zip archive (PyTorch .pt files since 1.6 are zip archives); the file may be truncated or of another format");
        }
        let search_from = b.len().saturating_sub(22 + 65_535);
        let eocd = (search_from..=b.len() - 22)
            .rev()
            .find(|&i| u32_at(b, i).ok() == Some(EOCD))
            .context("no end-of-central-directory record: the archive is truncated")?;
        let (mut count, mut cd_off) = (u16_at(b, eocd + 10)? as u64, u32_at(b, eocd + 16)? as u64);
        if (count == 0xFFFF || cd_off == 0xFFFF_FFFF)
            && eocd >= 20
            && u32_at(b, eocd - 20)? == ZIP64_LOCATOR
        {
            let z = offset(u64_at(b, eocd - 20 + 8)?)?;
            if u32_at(b, z)? != ZIP64_EOCD {
                bail!("bad zip64 end-of-central-directory record");
            }
            count = u64_at(b, add(z, 32)?)?;
            cd_off = u64_at(b, add(z, 48)?)?;
        }
        let mut entries = BTreeMap::new();
        let mut at = offset(cd_off)?;
        for _ in 0..count {
            if u32_at(b, at)? != CENTRAL {
                bail!("corrupt central directory at byte {at}");
            }
            // A central header is 46 bytes: past the check above, `at + 46` is in the file.
            let header = bytes_at(b, at, 46).context("truncated central directory")?;
            let method = u16_at(header, 10)?;
            let crc = u32_at(header, 16)?;
            let mut csize = u32_at(header, 20)? as u64;
            let mut size = u32_at(header, 24)? as u64;
            let (name_len, extra_len, comment_len) = (
                u16_at(header, 28)? as usize,
                u16_at(header, 30)? as usize,
                u16_at(header, 32)? as usize,
            );
            let mut local = u32_at(header, 42)? as u64;
            let name = bytes_at(b, at + 46, name_len).context("truncated central directory")?;
            let name = String::from_utf8_lossy(name).into_owned();
            let extra = bytes_at(b, at + 46 + name_len, extra_len)
                .context("truncated central directory")?;
            zip64_sizes(extra, [&mut size, &mut csize, &mut local])?;
            if method != 0 {
                bail!("entry {name} is compressed (method {method}); only stored entries, as torch.save writes them, are supported");
            }
            let local = offset(local)?;
            let lh = bytes_at(b, local, 30)
                .with_context(|| format!("entry {name}: local header outside the file"))?;
            if u32_at(lh, 0)? != LOCAL {
                bail!("entry {name}: bad local header at byte {local}");
            }
            let data = add(
                local + 30,
                u16_at(lh, 26)? as usize + u16_at(lh, 28)? as usize,
            )?;
            let size = offset(size)?;
            let slice = bytes_at(b, data, size).with_context(|| {
                format!("entry {name} runs past the end of the file (truncated?)")
            })?;
            if crc32fast::hash(slice) != crc {
                bail!("entry {name} fails its CRC check: the file is corrupt");
            }
            entries.insert(name, (data, size));
            at = add(at + 46 + name_len + extra_len, comment_len)?;
        }
        Ok(Self { bytes, entries })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    /// Where entry `name`'s data starts in the archive.
    pub fn offset(&self, name: &str) -> Option<usize> {
        self.entries.get(name).map(|&(o, _)| o)
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries.get(name).map(|&(o, n)| &self.bytes[o..o + n])
    }
}

/// Applies a zip64 extended-information extra field (id 1) to sizes/offsets that overflowed.
/// The field order is fixed: uncompressed size, compressed size, local header offset.
fn zip64_sizes(extra: &[u8], fields: [&mut u64; 3]) -> Result<()> {
    let mut fields = fields;
    let mut i = 0;
    while i + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, i)?, u16_at(extra, i + 2)? as usize);
        if id == 1 {
            let mut p = i + 4;
            for field in fields.iter_mut() {
                if **field == 0xFFFF_FFFF && p + 8 <= i + 4 + len {
                    // `extra` is at most 64 KiB: these sums cannot overflow.
                    **field = u64_at(extra, p)?;
                    p += 8;
                }
            }
        }
        i += 4 + len;
    }
    Ok(())
}

/// Writes a stored zip archive, aligning each entry's data to 64 bytes as torch.save does.
pub struct ZipWriter {
    out: Vec<u8>,
    central: Vec<u8>,
    count: u16,
}

const ALIGN: usize = 64;

impl ZipWriter {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            central: Vec::new(),
            count: 0,
        }
    }

    /// Adds a stored entry. Entries and archives past 4 GiB would need zip64, which this writer
    /// does not do: it refuses them rather than write sizes that wrap.
    pub fn add(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let offset = self.out.len();
        if data.len() > u32::MAX as usize
            || offset > u32::MAX as usize - data.len()
            || self.count == u16::MAX
        {
            bail!("{name}: the archive would pass 4 GiB or 65,535 entries (zip64 is not written)");
        }
        let crc = crc32fast::hash(data);
        let header_end = offset + 30 + name.len() + 4;
        let pad = (ALIGN - header_end % ALIGN) % ALIGN;
        let mut local = Vec::with_capacity(34 + name.len() + pad);
        local.extend(LOCAL.to_le_bytes());
        local.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
        local.extend(crc.to_le_bytes());
        local.extend((data.len() as u32).to_le_bytes());
        local.extend((data.len() as u32).to_le_bytes());
        local.extend((name.len() as u16).to_le_bytes());
        local.extend(((4 + pad) as u16).to_le_bytes());
        local.extend(name.as_bytes());
        local.extend(0x4246u16.to_le_bytes()); // "FB": torch's padding field
        local.extend((pad as u16).to_le_bytes());
        local.extend(std::iter::repeat_n(b'Z', pad));
        self.out.extend(local);
        self.out.extend(data);

        let c = &mut self.central;
        c.extend(CENTRAL.to_le_bytes());
        c.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // made by, needed, flags, method, time, date
        c.extend(crc.to_le_bytes());
        c.extend((data.len() as u32).to_le_bytes());
        c.extend((data.len() as u32).to_le_bytes());
        c.extend((name.len() as u16).to_le_bytes());
        c.extend([0u8; 12]); // extra len, comment len, disk, internal attrs, external attrs
        c.extend((offset as u32).to_le_bytes());
        c.extend(name.as_bytes());
        self.count += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        let cd_off = self.out.len() as u32;
        let cd_len = self.central.len() as u32;
        self.out.extend(&self.central);
        self.out.extend(EOCD.to_le_bytes());
        self.out.extend([0u8; 4]);
        self.out.extend(self.count.to_le_bytes());
        self.out.extend(self.count.to_le_bytes());
        self.out.extend(cd_len.to_le_bytes());
        self.out.extend(cd_off.to_le_bytes());
        self.out.extend([0u8; 2]);
        self.out
    }
}

impl Default for ZipWriter {
    fn default() -> Self {
        Self::new()
    }
}
