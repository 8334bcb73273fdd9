//! Hexadecimal digits, read where percent-escapes (URLs, VMX values) and signatures are
//! decoded.

/// The value of one hex digit, either case.
pub(crate) fn digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    #[test]
    fn digits_of_either_case_and_nothing_else() {
        assert_eq!(super::digit(b'0'), Some(0));
        assert_eq!(super::digit(b'a'), Some(10));
        assert_eq!(super::digit(b'F'), Some(15));
        for bad in [b'g', b'G', b' ', b'-', 0xff] {
            assert_eq!(super::digit(bad), None);
        }
    }
}
