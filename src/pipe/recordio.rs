//! SageMaker's RecordIO wrapping (`RecordWrapperType: RecordIO`, DESIGN §13): each record is
//! `u32 LE 0xCED7230A`, `u32 LE (flag << 29) | length`, the payload, and zeros to the next
//! multiple of 4. The length has 29 bits, so a payload of 512 MiB or more is cut into parts:
//! flag 1 for the first, 2 for the middle ones, 3 for the last (flag 0: a whole record).
//! Readers join a multipart record's payloads as they are, with nothing between them (AWS's
//! `PipeModeDataset` does).

/// The magic number that starts every record.
pub(crate) const MAGIC: u32 = 0xCED7_230A;

/// The largest part of a multipart record: the largest 29-bit length that is a multiple of
/// 4, so no part but the last is padded.
pub(crate) const MAX_PART: u64 = (1 << 29) - 4;

/// What a record's header says of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flag {
    Whole = 0,
    First = 1,
    Middle = 2,
    Last = 3,
}

/// The 8 bytes before a payload of `length` bytes (at most 2^29 - 1).
pub(crate) fn header(flag: Flag, length: u32) -> [u8; 8] {
    debug_assert!(length < (1 << 29));
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..].copy_from_slice(&(((flag as u32) << 29) | length).to_le_bytes());
    out
}

/// The zeros after a payload of `length` bytes.
pub(crate) fn padding(length: u64) -> &'static [u8] {
    &[0u8; 3][..((4 - length % 4) % 4) as usize]
}

/// The parts a payload of `size` bytes is framed as: (flag, length) in order.
pub(crate) fn parts(size: u64) -> Vec<(Flag, u32)> {
    if size < (1 << 29) {
        return vec![(Flag::Whole, size as u32)];
    }
    let count = size.div_ceil(MAX_PART);
    (0..count)
        .map(|i| {
            let length = (size - i * MAX_PART).min(MAX_PART) as u32;
            let flag = match i {
                0 => Flag::First,
                i if i == count - 1 => Flag::Last,
                _ => Flag::Middle,
            };
            (flag, length)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader written from the format, as a container's would be.
    fn read(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        let mut current = Vec::new();
        while !bytes.is_empty() {
            let magic = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            assert_eq!(magic, MAGIC);
            let word = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
            let (flag, length) = (word >> 29, (word & ((1 << 29) - 1)) as usize);
            current.extend_from_slice(&bytes[8..8 + length]);
            let padded = length.div_ceil(4) * 4;
            assert!(bytes[8 + length..8 + padded].iter().all(|b| *b == 0));
            bytes = &bytes[8 + padded..];
            if flag == 0 || flag == 3 {
                records.push(std::mem::take(&mut current));
            }
        }
        records
    }

    fn frame(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            let mut at = 0;
            for (flag, length) in parts(p.len() as u64) {
                out.extend_from_slice(&header(flag, length));
                out.extend_from_slice(&p[at..at + length as usize]);
                out.extend_from_slice(padding(length as u64));
                at += length as usize;
            }
        }
        out
    }

    #[test]
    fn records_are_magic_length_payload_and_padding() {
        let framed = frame(&[b"abcde", b"", b"wxyz"]);
        assert_eq!(&framed[..8], &[0x0A, 0x23, 0xD7, 0xCE, 5, 0, 0, 0]);
        assert_eq!(&framed[8..16], b"abcde\0\0\0");
        assert_eq!(framed.len(), 16 + 8 + 12);
        assert_eq!(read(&framed), vec![b"abcde".to_vec(), vec![], b"wxyz".to_vec()]);
    }

    #[test]
    fn a_payload_of_512_mib_or_more_is_cut_into_flagged_parts() {
        assert_eq!(parts((1 << 29) - 1), vec![(Flag::Whole, (1 << 29) - 1)]);
        let two = parts(1 << 29);
        assert_eq!(two, vec![(Flag::First, MAX_PART as u32), (Flag::Last, 4)]);
        let three = parts(600 << 20);
        assert_eq!(three.iter().map(|p| p.0).collect::<Vec<_>>(), [Flag::First, Flag::Last]);
        assert_eq!(three.iter().map(|p| p.1 as u64).sum::<u64>(), 600 << 20);
        let many = parts(3 * MAX_PART + 1);
        assert_eq!(many.iter().map(|p| p.0).collect::<Vec<_>>(), [Flag::First, Flag::Middle, Flag::Middle, Flag::Last]);
        assert_eq!(header(Flag::Last, 4)[7] >> 5, 3);
    }
}
