//! The protobuf wire format as Switchyard's decoder reads it: field keys, varints, fixed-width
//! numbers and length-delimited payloads, read from a byte slice with bounds checked at every
//! step. Errors are plain reasons; the message decoder adds the path of the field being read.

/// How a field's value is laid out on the wire (the low three bits of its key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wire {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

impl Wire {
    pub(super) fn name(self) -> &'static str {
        match self {
            Wire::Varint => "varint",
            Wire::Fixed64 => "64-bit",
            Wire::Len => "length-delimited",
            Wire::Fixed32 => "32-bit",
        }
    }
}

/// A cursor over one message's bytes.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// A base-128 varint of at most ten bytes.
    pub(super) fn varint(&mut self) -> Result<u64, String> {
        let mut value: u64 = 0;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            // The tenth byte may carry only the top bit of a 64-bit value.
            if i == 9 && b > 1 {
                return Err("varint overflows 64 bits".into());
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        if self.buf.len() >= 10 {
            Err("varint overflows 64 bits".into())
        } else {
            Err("truncated varint".into())
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!(
                "truncated: {n} bytes expected, {} left",
                self.buf.len()
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(super) fn fixed64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().expect("take returned 8 bytes"),
        ))
    }

    /// A length-prefixed payload.
    pub(super) fn len_delimited(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        let len =
            usize::try_from(len).map_err(|_| format!("length {len} does not fit in memory"))?;
        self.take(len)
    }

    /// A field key: the field number and wire type. Groups (wire types 3 and 4), deprecated and
    /// never written by Kubernetes, are refused.
    pub(super) fn key(&mut self) -> Result<(u32, Wire), String> {
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint,
            1 => Wire::Fixed64,
            2 => Wire::Len,
            5 => Wire::Fixed32,
            w => return Err(format!("unsupported wire type {w}")),
        };
        let tag = key >> 3;
        if tag == 0 || tag > (1 << 29) - 1 {
            return Err(format!("invalid field number {tag}"));
        }
        Ok((
            u32::try_from(tag).expect("field numbers are below 2^29"),
            wire,
        ))
    }

    /// Step over a value of a field the schema does not know.
    pub(super) fn skip(&mut self, wire: Wire) -> Result<(), String> {
        match wire {
            Wire::Varint => self.varint().map(drop),
            Wire::Fixed64 => self.take(8).map(drop),
            Wire::Len => self.len_delimited().map(drop),
            Wire::Fixed32 => self.take(4).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_up_to_sixty_four_bits() {
        assert_eq!(Reader::new(&[0x96, 0x01]).varint(), Ok(150));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max).varint(), Ok(u64::MAX));
    }

    #[test]
    fn truncated_and_overlong_varints_are_errors() {
        assert!(Reader::new(&[0x96]).varint().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .varint()
                .is_err()
        );
    }

    #[test]
    fn a_length_beyond_the_buffer_is_an_error() {
        assert!(Reader::new(&[0x05, b'a', b'b']).len_delimited().is_err());
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(Reader::new(&huge).len_delimited().is_err());
    }

    #[test]
    fn groups_and_field_zero_are_refused() {
        assert!(Reader::new(&[0x0b]).key().is_err()); // field 1, start group
        assert!(Reader::new(&[0x00]).key().is_err()); // field 0
        assert_eq!(Reader::new(&[0x1a]).key(), Ok((3, Wire::Len)));
    }
}
