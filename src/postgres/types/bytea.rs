//! bytea in hex format to a base64 string.

use base64::Engine as _;

use super::{hex_value, write_json_string};

/// Hex-format bytea to a base64 string (standard alphabet, padded).
pub(super) fn write_bytea(text: &[u8], out: &mut Vec<u8>) {
    let mark = out.len();
    let written = (|| {
        let hex = text.strip_prefix(b"\\x")?;
        if hex.len() % 2 != 0 {
            return None;
        }
        out.push(b'"');
        // Decode and encode in chunks of a multiple of 3 bytes so that only
        // the last chunk is padded.
        let mut raw = [0u8; 768];
        for chunk in hex.chunks(raw.len() * 2) {
            let n = chunk.len() / 2;
            for (dst, pair) in raw.iter_mut().zip(chunk.chunks_exact(2)) {
                *dst = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
            }
            let start = out.len();
            out.resize(start + base64::encoded_len(n, true)?, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(&raw[..n], &mut out[start..])
                .ok()?;
            out.truncate(start + written);
        }
        out.push(b'"');
        Some(())
    })();
    if written.is_none() {
        out.truncate(mark);
        write_json_string(text, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::types::tests::{parsed, to_json};
    use crate::postgres::types::TypeKind;
    use serde_json::json;

    #[test]
    fn bytea_is_base64() {
        let b = TypeKind::Bytea;
        assert_eq!(to_json(&b, "\\x0102ff"), r#""AQL/""#);
        assert_eq!(to_json(&b, "\\x"), r#""""#);
        assert_eq!(to_json(&b, "\\xDEADbeef"), r#""3q2+7w==""#);
        let raw: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let expected = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(parsed(&b, &format!("\\x{hex}")), json!(expected));
        // Not hex format: the text.
        assert_eq!(to_json(&b, "\\x0"), r#""\\x0""#);
        assert_eq!(to_json(&b, "\\xzz"), r#""\\xzz""#);
        assert_eq!(to_json(&b, "abc"), r#""abc""#);
    }
}
