//! One password check or hash, computed in memory the caller keeps: argon2's memory (19 MiB for the
//! default parameters) is allocated once per worker and reused, rather than allocated and freed on
//! every check by whichever thread happens to run it.

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

use crate::HashError;

/// The most memory a stored hash may ask for (256 MiB); a hash asking for more is refused rather than
/// let anyone who can store a hash make every check allocate it.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// Is this an argon2 PHC string or a bcrypt hash (as opposed to a plain password)?
pub fn is_password_hash(text: &str) -> bool {
    is_bcrypt(text) || (text.starts_with("$argon2") && PasswordHash::new(text).is_ok())
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// Checks `password` against a stored argon2 or bcrypt hash, using (and growing, once) `memory`.
pub fn verify(hash: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    if is_bcrypt(hash) {
        // bcrypt's state is 4 KiB: nothing to reuse.
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    verify_argon2(hash, password, memory).unwrap_or(false)
}

fn verify_argon2(hash: &str, password: &[u8], memory: &mut Vec<Block>) -> Result<bool, HashError> {
    let parsed = PasswordHash::new(hash).map_err(HashError::invalid)?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(HashError::invalid)?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(HashError::invalid)?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(HashError::invalid)?;
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(HashError::TooCostly(params.m_cost()));
    }
    let salt = parsed.salt.ok_or(HashError::Invalid("no salt".into()))?;
    let expected = parsed.hash.ok_or(HashError::Invalid("no hash".into()))?;
    let mut salt_bytes = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes).map_err(HashError::invalid)?;
    let mut out = vec![0u8; expected.len()];
    compute(&Argon2::new(algorithm, version, params), password, salt, &mut out, memory)?;
    Ok(bool::from(out.as_slice().ct_eq(expected.as_bytes())))
}

/// An argon2id PHC string for `password` with a fresh random salt and argon2's default parameters.
pub fn hash(password: &[u8], memory: &mut Vec<Block>) -> Result<String, HashError> {
    let params = Params::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut salt_bytes).map_err(HashError::invalid)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    compute(&argon, password, raw_salt, &mut out, memory)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(HashError::invalid)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(HashError::invalid)?),
    };
    Ok(phc.to_string())
}

fn compute(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Vec<Block>,
) -> Result<(), HashError> {
    let blocks = argon.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    argon.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks]).map_err(HashError::invalid)
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[test]
    fn hashes_verify_both_ways_with_the_argon2_crate() {
        let mut memory = Vec::new();
        let ours = hash(b"s3cret", &mut memory).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"s3cret", &parsed).is_ok());
        assert!(ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{ours}");

        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default().hash_password(b"hunter2", &salt).unwrap().to_string();
        assert!(verify(&theirs, b"hunter2", &mut memory));
        assert!(!verify(&theirs, b"hunter3", &mut memory));
        assert!(verify(&ours, b"s3cret", &mut memory));
        assert!(!verify(&ours, b"", &mut memory));
        assert_eq!(memory.len(), Params::default().block_count(), "one allocation, reused");
    }

    #[test]
    fn other_argon2_variants_bcrypt_and_nonsense() {
        let mut memory = Vec::new();
        let params = Params::new(1024, 1, 2, None).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x10, params).hash_password(b"pw", &salt).unwrap();
        assert!(verify(&argon2i.to_string(), b"pw", &mut memory));
        assert!(!verify(&argon2i.to_string(), b"pW", &mut memory));
        let bcrypt = bcrypt::hash("pw", 4).unwrap();
        assert!(verify(&bcrypt, b"pw", &mut memory));
        assert!(!verify(&bcrypt, b"px", &mut memory));
        assert!(!verify("plain", b"plain", &mut memory));
        assert!(!verify("$argon2id$v=19$m=999999999,t=1,p=1$c2FsdHNhbHQ$aGFzaA", b"x", &mut memory));
        assert!(is_password_hash(&bcrypt) && is_password_hash(&argon2i.to_string()) && !is_password_hash("plain"));
    }
}
