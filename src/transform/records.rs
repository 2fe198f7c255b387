//! An input object cut into records (`SplitType`) and records packed into request bodies
//! (`BatchStrategy`, `MaxPayloadInMB`): a batch never splits a record and never spans two
//! objects, as SageMaker's batch transform sends them.

use std::ops::Range;

/// `SplitType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    /// The whole object is one record.
    None,
    /// One record per line, its newline kept.
    Line,
    /// MXNet RecordIO frames (a multipart record's frames together).
    RecordIo,
    /// TFRecord frames (length, its CRC, the data, its CRC).
    TfRecord,
}

impl Split {
    pub(crate) fn parse(text: Option<&str>) -> Split {
        match text {
            Some("Line") => Split::Line,
            Some("RecordIO") => Split::RecordIo,
            Some("TFRecord") => Split::TfRecord,
            _ => Split::None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum RecordError {
    #[error("it is not {format}: {why} at byte {at}")]
    Malformed { format: &'static str, why: &'static str, at: usize },
    #[error(
        "record {index} is {size} bytes, more than MaxPayloadInMB ({max} bytes) allows; raise MaxPayloadInMB or split the input finer"
    )]
    TooLarge { index: usize, size: usize, max: usize },
}

const RECORDIO_MAGIC: u32 = 0xced7_230a;

/// The byte ranges of the records of `bytes`. Empty lines are not records.
pub(crate) fn split(bytes: &[u8], split: Split) -> Result<Vec<Range<usize>>, RecordError> {
    match split {
        Split::None => Ok(if bytes.is_empty() { Vec::new() } else { std::iter::once(0..bytes.len()).collect() }),
        Split::Line => {
            let mut records = Vec::new();
            let mut start = 0;
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'\n' {
                    if !bytes[start..i].iter().all(|c| *c == b'\r') {
                        records.push(start..i + 1);
                    }
                    start = i + 1;
                }
            }
            if start < bytes.len() {
                records.push(start..bytes.len());
            }
            Ok(records)
        }
        Split::RecordIo => recordio(bytes),
        Split::TfRecord => tfrecord(bytes),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn recordio(bytes: &[u8]) -> Result<Vec<Range<usize>>, RecordError> {
    let malformed = |why, at| RecordError::Malformed { format: "RecordIO", why, at };
    let mut records = Vec::new();
    let (mut at, mut record_start) = (0, None);
    while at < bytes.len() {
        if u32_at(bytes, at) != Some(RECORDIO_MAGIC) {
            return Err(malformed("no magic number", at));
        }
        let header = u32_at(bytes, at + 4).ok_or_else(|| malformed("a cut header", at))?;
        let (flag, length) = (header >> 29, (header & ((1 << 29) - 1)) as usize);
        let end = at + 8 + length.div_ceil(4) * 4;
        if end > bytes.len() {
            return Err(malformed("a record longer than the object", at));
        }
        match flag {
            0 => records.push(at..end),
            1 => record_start = Some(at),
            2 => {}
            _ => records.push(record_start.take().unwrap_or(at)..end),
        }
        at = end;
    }
    Ok(records)
}

fn tfrecord(bytes: &[u8]) -> Result<Vec<Range<usize>>, RecordError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let length = bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or(RecordError::Malformed { format: "TFRecord", why: "a cut length", at })?;
        let end = usize::try_from(length).ok().and_then(|l| at.checked_add(16)?.checked_add(l));
        match end {
            Some(end) if end <= bytes.len() => {
                records.push(at..end);
                at = end;
            }
            _ => return Err(RecordError::Malformed { format: "TFRecord", why: "a record longer than the object", at }),
        }
    }
    Ok(records)
}

/// Records (by their sizes) packed into batches: `SingleRecord` one each, `MultiRecord` as
/// many as fit in `max` bytes (`None`: no limit). Each batch is a range of record indexes.
pub(crate) fn batches(sizes: &[usize], multi: bool, max: Option<usize>) -> Result<Vec<Range<usize>>, RecordError> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut total = 0;
    for (i, size) in sizes.iter().copied().enumerate() {
        if let Some(max) = max
            && size > max
        {
            return Err(RecordError::TooLarge { index: i + 1, size, max });
        }
        let fits = max.is_none_or(|m| total + size <= m);
        if i > start && (!multi || !fits) {
            out.push(start..i);
            start = i;
            total = 0;
        }
        total += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = RECORDIO_MAGIC.to_le_bytes().to_vec();
        out.extend_from_slice(&((flag << 29) | payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    #[test]
    fn lines_keep_their_newline_and_skip_empty_ones() {
        let text = b"a,1\n\nb,2\nc,3";
        let got: Vec<&[u8]> = split(text, Split::Line).unwrap().into_iter().map(|r| &text[r]).collect();
        assert_eq!(got, [&b"a,1\n"[..], b"b,2\n", b"c,3"]);
    }

    #[test]
    fn recordio_frames_and_multipart_records_are_whole_records() {
        let mut bytes = frame(0, b"one");
        bytes.extend(frame(1, b"two-a"));
        bytes.extend(frame(2, b"two-b"));
        bytes.extend(frame(3, b"two-c"));
        bytes.extend(frame(0, b"three"));
        let records = split(&bytes, Split::RecordIo).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0], 0..12);
        assert_eq!(records[2].end, bytes.len());
        assert!(split(b"junk", Split::RecordIo).is_err());
    }

    #[test]
    fn tfrecords_are_length_framed() {
        let mut bytes = Vec::new();
        for data in [&b"ab"[..], b"cde"] {
            bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            bytes.extend_from_slice(data);
            bytes.extend_from_slice(&[0; 4]);
        }
        assert_eq!(split(&bytes, Split::TfRecord).unwrap(), vec![0..18, 18..37]);
    }

    #[test]
    fn multi_record_batches_fill_up_to_the_limit_and_never_split_a_record() {
        assert_eq!(batches(&[4, 4, 4, 4, 4], true, Some(10)).unwrap(), vec![0..2, 2..4, 4..5]);
        assert_eq!(batches(&[4, 4], false, Some(10)).unwrap(), vec![0..1, 1..2]);
        assert_eq!(batches(&[4, 4], true, None).unwrap(), vec![0..2]);
        let err = batches(&[4, 11], true, Some(10)).unwrap_err();
        assert_eq!(err, RecordError::TooLarge { index: 2, size: 11, max: 10 });
    }
}
