//! Secrets janus hands to the nodes it starts: admin tokens and seeds from the operating system's
//! random source (an error when it has none, never a weaker fallback).

/// Fills `buf` from the OS's random source (`getrandom(2)`, or `/dev/urandom` on kernels without it).
pub fn random_bytes(buf: &mut [u8]) -> anyhow::Result<()> {
    entropy_or_error(getrandom::fill(buf))
}

fn entropy_or_error(result: Result<(), getrandom::Error>) -> anyhow::Result<()> {
    result.map_err(|e| {
        anyhow::anyhow!(
            "the operating system gave no random bytes ({e}); janus makes admin tokens and seeds \
             only from the OS's random source, so it stops here"
        )
    })
}

/// `n` random bytes as `2n` lowercase hex characters.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    random_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new admin token: 128 random bits as 32 hex characters.
pub fn random_token() -> anyhow::Result<String> {
    random_hex(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = random_token().expect("entropy");
        let b = random_token().expect("entropy");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn no_entropy_is_an_error_that_says_so() {
        let e = entropy_or_error(Err(getrandom::Error::UNSUPPORTED)).expect_err("no fallback");
        assert!(e.to_string().contains("no random bytes"), "{e}");
    }
}
