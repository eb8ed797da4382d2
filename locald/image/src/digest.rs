//! Content digests: the names of everything in the image store.
//!
//! A [`Digest`] is `sha256:` and 64 lowercase hex digits, checked when it is
//! parsed, so it is safe to use as a file name (`blobs/sha256/<hex>`) and
//! two spellings of one digest cannot exist. Only SHA-256 is accepted: it is
//! what every registry and tool in use writes, and a store with one
//! algorithm has one name per blob. [`Hasher`] computes a digest over bytes
//! as they stream by, so verification never needs a second read.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A SHA-256 content digest (`sha256:<64 lowercase hex>`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

/// Why a string is not a digest locald accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not of the form `algorithm:hex`.
    #[error("{digest:?} is not a digest: {why}")]
    Malformed {
        /// The text given.
        digest: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A well-formed digest of an algorithm other than SHA-256.
    #[error("digest algorithm {algorithm:?} is not supported (locald stores sha256 content only)")]
    Unsupported {
        /// The algorithm named.
        algorithm: String,
    },
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex digits>`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let malformed = |why| DigestError::Malformed {
            digest: s.to_owned(),
            why,
        };
        let (algorithm, hex) = s
            .split_once(':')
            .ok_or_else(|| malformed("it has no `algorithm:` prefix"))?;
        if algorithm.is_empty()
            || !algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        {
            return Err(malformed(
                "the algorithm must be lowercase letters and digits",
            ));
        }
        if algorithm != "sha256" {
            return Err(DigestError::Unsupported {
                algorithm: algorithm.to_owned(),
            });
        }
        if hex.len() != 64 {
            return Err(malformed("a sha256 digest has exactly 64 hex digits"));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(malformed("a sha256 digest is lowercase hex (0-9, a-f)"));
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        let mut h = Hasher::new();
        h.update(data);
        h.finish()
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `docker images` shows an id.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;

    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, Self::Error> {
        Digest::parse(d.as_ref())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// SHA-256 over bytes as they pass, with a count of them.
#[derive(Default)]
pub struct Hasher {
    sha: sha2::Sha256,
    len: u64,
}

impl Hasher {
    /// An empty hasher.
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.len += data.len() as u64;
    }

    /// How many bytes were added.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was added yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.sha.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_bytes_matches_the_known_value() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        let mut h = Hasher::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.len(), 3);
        assert_eq!(h.finish(), Digest::of(b"abc"));
    }

    #[test]
    fn parses_and_prints_back() {
        let d = Digest::parse(EMPTY).expect("valid");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.short(), "e3b0c44298fc");
        let json = serde_json::to_string(&d).expect("serialize");
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("back"), d);
    }

    #[test]
    fn refuses_what_could_not_be_a_file_name() {
        for bad in [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:../../etc/passwd",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ":e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            let e = Digest::parse(bad).expect_err(bad);
            assert!(matches!(e, DigestError::Malformed { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn names_an_unsupported_algorithm() {
        let e = Digest::parse(&format!("sha512:{}", "a".repeat(128))).expect_err("sha512");
        assert_eq!(
            e.to_string(),
            "digest algorithm \"sha512\" is not supported (locald stores sha256 content only)"
        );
    }
}
