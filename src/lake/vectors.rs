//! A fast path for the lake's vector columns. A `FixedSizeList<Float32, d>` column is stored in
//! Parquet, as the format requires, as a repeated field: every float carries a repetition and a
//! definition level, and the Arrow reader decodes both per element, builds validity bitmaps and
//! list offsets, and copies the values twice. Here the pages of such a column are read directly:
//! the level sections are checked run by run (they compress to a few bytes: every value present,
//! a new list every d values) and the PLAIN float values are copied once. The files stay plain
//! Parquet that any engine reads; a column laid out any other way (dictionary or non-PLAIN
//! values, nulls, lists of another length) returns None and the caller uses the Arrow reader.

use std::fs::File;

use anyhow::Result;
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::Page;
use parquet::file::reader::{FileReader, SerializedFileReader};

/// Reads the `d`-wide vectors of column `name` in row group `row_group` of an open file,
/// row-major; None when the column is not laid out as saerl writes it.
pub fn read_vectors(
    reader: &SerializedFileReader<File>,
    row_group: usize,
    name: &str,
    d: usize,
) -> Result<Option<Vec<f32>>> {
    let Some(col) = plain_vector_column(reader, name) else {
        return Ok(None);
    };
    if d == 0 {
        return Ok(None);
    }
    let rows = reader.metadata().row_group(row_group).num_rows() as usize;
    let mut out: Vec<f32> = Vec::with_capacity(rows * d);
    let mut pages = reader
        .get_row_group(row_group)?
        .get_column_page_reader(col)?;
    // Position in the column chunk, in values: a list starts wherever it is a multiple of d.
    let mut pos = 0usize;
    while let Some(page) = pages.get_next_page()? {
        let Some(PageParts {
            rep,
            def,
            values,
            n,
        }) = page_parts(&page)
        else {
            return Ok(None);
        };
        // Every value present; repetition level 0 exactly where a list of d starts, so a run
        // of ones must stay inside one list.
        let list_runs = |start: usize, count: usize, level: u8| {
            let s = (pos + start) % d;
            match level {
                0 => count == 1 && s == 0,
                _ => s != 0 && s + count <= d,
            }
        };
        if values.len() != n * 4
            || !levels_match(def, n, |_, _, level| level == 1)
            || !levels_match(rep, n, list_runs)
        {
            return Ok(None);
        }
        let start = out.len();
        out.resize(start + n, 0.0);
        let dest: &mut [u8] = bytemuck::cast_slice_mut(&mut out[start..]);
        if cfg!(target_endian = "little") {
            dest.copy_from_slice(values);
        } else {
            for (o, b) in out[start..].iter_mut().zip(values.chunks_exact(4)) {
                *o = f32::from_le_bytes(b.try_into().unwrap());
            }
        }
        pos += n;
    }
    if out.len() != rows * d {
        return Ok(None);
    }
    Ok(Some(out))
}

/// The leaf column of list column `name` when it holds plain non-null f32 items (one
/// definition and one repetition level).
fn plain_vector_column(reader: &SerializedFileReader<File>, name: &str) -> Option<usize> {
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let col = (0..schema.num_columns()).find(|&i| {
        let path = schema.column(i).path().parts().to_vec();
        path.len() == 3 && path[0] == name
    })?;
    let descr = schema.column(col);
    (descr.physical_type() == PhysicalType::FLOAT
        && descr.max_def_level() == 1
        && descr.max_rep_level() == 1)
        .then_some(col)
}

/// A data page's level and value sections.
struct PageParts<'a> {
    rep: &'a [u8],
    def: &'a [u8],
    values: &'a [u8],
    /// Values in the page (nulls included).
    n: usize,
}

/// The sections of a PLAIN-encoded data page (V1 with RLE levels, or V2 without nulls); None
/// for any other page, which the caller leaves to the Arrow reader.
fn page_parts(page: &Page) -> Option<PageParts<'_>> {
    match page {
        Page::DataPage {
            buf,
            num_values,
            encoding,
            def_level_encoding,
            rep_level_encoding,
            ..
        } => {
            if *encoding != Encoding::PLAIN
                || *def_level_encoding != Encoding::RLE
                || *rep_level_encoding != Encoding::RLE
            {
                return None;
            }
            let (rep, rest) = length_prefixed(buf)?;
            let (def, values) = length_prefixed(rest)?;
            Some(PageParts {
                rep,
                def,
                values,
                n: *num_values as usize,
            })
        }
        Page::DataPageV2 {
            buf,
            num_values,
            encoding,
            num_nulls,
            def_levels_byte_len,
            rep_levels_byte_len,
            ..
        } => {
            let (r, dl) = (*rep_levels_byte_len as usize, *def_levels_byte_len as usize);
            if *encoding != Encoding::PLAIN || *num_nulls != 0 || buf.len() < r + dl {
                return None;
            }
            Some(PageParts {
                rep: &buf[..r],
                def: &buf[r..r + dl],
                values: &buf[r + dl..],
                n: *num_values as usize,
            })
        }
        Page::DictionaryPage { .. } => None,
    }
}

/// Splits a V1 page section `[u32 length][bytes]` off the front of `buf`.
fn length_prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    (buf.len() >= end).then(|| (&buf[4..end], &buf[end..]))
}

/// Walks the first `n` one-bit levels of an RLE/bit-packed hybrid section as runs
/// `(start, count, level)` (a bit-packed level is a run of one), stopping at the first run
/// `ok` refuses; false then, or when the section is malformed.
fn levels_match(bytes: &[u8], n: usize, mut ok: impl FnMut(usize, usize, u8) -> bool) -> bool {
    let (mut i, mut at) = (0usize, 0usize);
    while at < n {
        let Some((header, used)) = uleb128(bytes.get(i..).unwrap_or(&[])) else {
            return false;
        };
        i += used;
        if header & 1 == 1 {
            // Bit-packed: (header >> 1) groups of 8 levels, one bit each.
            let count = (header >> 1) as usize * 8;
            let Some(packed) = bytes.get(i..i + count / 8) else {
                return false;
            };
            for j in 0..count.min(n - at) {
                if !ok(at + j, 1, (packed[j / 8] >> (j % 8)) & 1) {
                    return false;
                }
            }
            i += count / 8;
            at += count;
        } else {
            let count = ((header >> 1) as usize).min(n - at);
            let Some(&value) = bytes.get(i) else {
                return false;
            };
            i += 1;
            if count == 0 || value > 1 || !ok(at, count, value) {
                return false;
            }
            at += count;
        }
    }
    true
}

/// An unsigned LEB128 varint: (value, bytes used).
fn uleb128(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, ListArray, RecordBatch};
    use arrow::datatypes::{DataType, Field, Float32Type, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::read_vectors;
    use crate::lake::read::open;
    use crate::lake::{writer_properties, Table};

    fn write(path: &std::path::Path, batch: &RecordBatch, props: WriterProperties) {
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(path).unwrap(),
            batch.schema(),
            Some(props),
        )
        .unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    fn vectors(rows: usize, d: usize) -> (RecordBatch, Vec<f32>) {
        let values: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let col = FixedSizeListArray::try_new(
            item.clone(),
            d as i32,
            Arc::new(Float32Array::from(values.clone())),
            None,
        )
        .unwrap();
        let schema = Schema::new(vec![Field::new("w_dec", col.data_type().clone(), false)]);
        (
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(col)]).unwrap(),
            values,
        )
    }

    #[test]
    fn the_lakes_vectors_read_page_by_page_as_arrow_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.parquet");
        // More rows than a row group and lists that straddle pages.
        let (rows, d) = (9000, 37);
        let (batch, values) = vectors(rows, d);
        write(&path, &batch, writer_properties(Table::Features));
        let reader = open(&path).unwrap();
        use parquet::file::reader::FileReader;
        let mut got = Vec::new();
        for rg in 0..reader.metadata().num_row_groups() {
            got.extend(
                read_vectors(&reader, rg, "w_dec", d)
                    .unwrap()
                    .expect("fast path"),
            );
        }
        assert_eq!(got, values);
        // The wrong width is not taken for a vector column.
        assert!(read_vectors(&reader, 0, "w_dec", d + 1).unwrap().is_none());
    }

    #[test]
    fn other_layouts_fall_back_to_the_arrow_reader() {
        let dir = tempfile::tempdir().unwrap();
        // Dictionary-encoded, compressed: written by another engine's defaults.
        let path = dir.path().join("dict.parquet");
        let (batch, _) = vectors(100, 8);
        write(
            &path,
            &batch,
            WriterProperties::builder()
                .set_dictionary_enabled(true)
                .build(),
        );
        let reader = open(&path).unwrap();
        let r = read_vectors(&reader, 0, "w_dec", 8).unwrap();
        if let Some(v) = r {
            let back = crate::lake::read_parquet(&path).unwrap();
            let col = back[0].column(0).as_fixed_size_list();
            assert_eq!(
                v,
                col.values().as_primitive::<Float32Type>().values().to_vec()
            );
        }
        // Lists of varying length whose total happens to be rows × d are not vectors.
        let path = dir.path().join("ragged.parquet");
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let lists = ListArray::new(
            item,
            arrow::buffer::OffsetBuffer::from_lengths([3, 5, 4, 4]),
            Arc::new(Float32Array::from(vec![1.0f32; 16])),
            None,
        );
        let schema = Schema::new(vec![Field::new("w_dec", lists.data_type().clone(), false)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(lists)]).unwrap();
        write(&path, &batch, writer_properties(Table::Features));
        let reader = open(&path).unwrap();
        assert!(read_vectors(&reader, 0, "w_dec", 4).unwrap().is_none());
    }
}
