//! AWS's event-stream framing (`application/vnd.amazon.eventstream`), as
//! InvokeEndpointWithResponseStream sends it: each message is a prelude (total and header
//! lengths, big-endian), its CRC-32, string headers, the payload and the CRC-32 of all
//! that came before.

/// One `PayloadPart` event carrying `bytes`.
pub(crate) fn payload_part(bytes: &[u8]) -> Vec<u8> {
    message(
        &[(":event-type", "PayloadPart"), (":content-type", "application/octet-stream"), (":message-type", "event")],
        bytes,
    )
}

/// A modelled error in the middle of a stream (`ModelStreamError`).
pub(crate) fn model_stream_error(message_text: &str) -> Vec<u8> {
    let payload = serde_json::json!({ "Message": message_text, "ErrorCode": "ModelStreamError" }).to_string();
    message(
        &[
            (":exception-type", "ModelStreamError"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.as_bytes(),
    )
}

fn message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::new();
    for (name, value) in headers {
        encoded.push(name.len() as u8);
        encoded.extend_from_slice(name.as_bytes());
        // Type 7: a string, its length in two bytes.
        encoded.push(7);
        encoded.extend_from_slice(&(value.len() as u16).to_be_bytes());
        encoded.extend_from_slice(value.as_bytes());
    }
    let total = 12 + encoded.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(payload);
    let message_crc = crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// CRC-32 (IEEE 802.3, as zlib computes it).
fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u32; 256];
        for (n, slot) in table.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        table
    });
    !bytes.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_message_frames_its_headers_and_payload() {
        let m = payload_part(b"hello");
        let total = u32::from_be_bytes(m[0..4].try_into().unwrap()) as usize;
        let headers = u32::from_be_bytes(m[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, m.len());
        assert_eq!(u32::from_be_bytes(m[8..12].try_into().unwrap()), crc32(&m[..8]));
        assert_eq!(&m[12 + headers..total - 4], b"hello");
        assert_eq!(u32::from_be_bytes(m[total - 4..].try_into().unwrap()), crc32(&m[..total - 4]));
        assert_eq!(m[12] as usize, ":event-type".len());
    }
}
