//! Byte sizes as people write them: `4096`, `512M`, `1.5G`, `10TiB`.
//!
//! A size is a decimal number, optionally with a fraction, then an optional unit
//! `K`, `M`, `G` or `T` (powers of 1024, either case), then an optional `B` or,
//! after a unit, `iB`. The result must be a whole, non-zero number of bytes that
//! fits in 64 bits. [`format_size`] writes a size back in the largest unit that
//! divides it exactly, so `parse_size(&format_size(n)) == Ok(n)`.

/// Why a size does not parse; the texts complete "size `X` …".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("is not a size: write bytes, or a number with a unit K, M, G or T (powers of 1024), e.g. `512M` or `1.5G`")]
    Syntax,
    #[error("is zero: a size must be at least 1 byte")]
    Zero,
    #[error("is not a whole number of bytes: write it in a smaller unit or with fewer decimals")]
    Fraction,
    #[error("is too large: a size must be below 16 EiB (2^64 bytes)")]
    TooLarge,
}

/// The units, largest first, with their multipliers.
const UNITS: [(char, u64); 4] = [
    ('T', 1 << 40),
    ('G', 1 << 30),
    ('M', 1 << 20),
    ('K', 1 << 10),
];

/// Parses a size such as `2G` into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let number_end = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let multiplier = unit_multiplier(suffix)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(fraction) || number.ends_with('.') {
        return Err(SizeError::Syntax);
    }
    // value = whole.fraction × multiplier, computed exactly as
    // (whole ‖ fraction) × multiplier / 10^len(fraction).
    let digits = format!("{whole}{fraction}");
    let mantissa = parse_u128(&digits)?;
    let scale = u32::try_from(fraction.len())
        .ok()
        .and_then(|n| 10u128.checked_pow(n))
        .ok_or(SizeError::TooLarge)?;
    let scaled = mantissa
        .checked_mul(u128::from(multiplier))
        .ok_or(SizeError::TooLarge)?;
    if scaled % scale != 0 {
        return Err(SizeError::Fraction);
    }
    match u64::try_from(scaled / scale) {
        Ok(0) => Err(SizeError::Zero),
        Ok(bytes) => Ok(bytes),
        Err(_) => Err(SizeError::TooLarge),
    }
}

/// `""`, `B`, or a unit letter followed by nothing, `B` or `iB`.
fn unit_multiplier(suffix: &str) -> Result<u64, SizeError> {
    if suffix.is_empty() || suffix == "B" {
        return Ok(1);
    }
    let mut chars = suffix.chars();
    let letter = chars.next().map(|c| c.to_ascii_uppercase());
    let rest = chars.as_str();
    let multiplier = UNITS
        .iter()
        .find(|(unit, _)| Some(*unit) == letter)
        .map(|(_, m)| *m)
        .ok_or(SizeError::Syntax)?;
    match rest {
        "" | "B" | "iB" => Ok(multiplier),
        _ => Err(SizeError::Syntax),
    }
}

fn parse_u128(digits: &str) -> Result<u128, SizeError> {
    digits.bytes().try_fold(0u128, |acc, b| {
        acc.checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(b - b'0')))
            .ok_or(SizeError::TooLarge)
    })
}

/// Writes `bytes` in the largest unit that divides it exactly: `2147483648` is
/// `2G`, 1536 MiB is `1536M`, `4097` stays `4097`.
pub fn format_size(bytes: u64) -> String {
    for (unit, multiplier) in UNITS {
        if bytes != 0 && bytes.is_multiple_of(multiplier) {
            return format!("{}{unit}", bytes / multiplier);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_numbers_and_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert_eq!(parse_size("10T"), Ok(10 << 40));
        assert_eq!(parse_size("007M"), Ok(7 << 20));
    }

    #[test]
    fn parses_exact_fractions() {
        assert_eq!(parse_size("1.5G"), Ok(1536 << 20));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("1.0"), Ok(1));
        assert_eq!(parse_size("0.25T"), Ok(256 << 30));
        assert_eq!(parse_size("1.1K"), Err(SizeError::Fraction));
        assert_eq!(parse_size("1.5"), Err(SizeError::Fraction));
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        for bad in [
            "", "G", "B", "iB", ".5G", "1.", "1..5G", "1.2.3", "-1G", "+1G", "1 G", "1X", "1GX",
            "1GiBB", "4096iB", "1e3", "1Gi", "0x10",
        ] {
            assert_eq!(parse_size(bad), Err(SizeError::Syntax), "{bad:?}");
        }
        assert_eq!(parse_size("0"), Err(SizeError::Zero));
        assert_eq!(parse_size("0.0G"), Err(SizeError::Zero));
        assert_eq!(parse_size("16777216T"), Err(SizeError::TooLarge));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("18446744073709551616"), Err(SizeError::TooLarge));
        let many_digits = format!("1.{}", "0".repeat(60));
        assert_eq!(parse_size(&many_digits), Err(SizeError::TooLarge));
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_size(2147483648), "2G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1024), "1K");
        assert_eq!(format_size(4097), "4097");
        assert_eq!(format_size(3 << 40), "3T");
        assert_eq!(format_size(1 << 50), "1024T");
        assert_eq!(format_size(0), "0");
        for n in [1, 512, 1023, 1025, 1 << 20, (1 << 30) + 1024, u64::MAX] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        }
    }
}
