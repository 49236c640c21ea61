//! The invite code: what it carries and how it is written.

use std::net::SocketAddr;

use iroh::{EndpointAddr, EndpointId};
use serde::{Deserialize, Serialize};

use super::{InviteError, Result, CODE_PREFIX, SECRET_LEN};

/// What an invite code says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCode {
    /// The inviter's endpoint id.
    pub inviter: [u8; 32],
    /// Where it listens.
    pub addrs: Vec<SocketAddr>,
    /// Its relay, when it uses one.
    pub relay: Option<String>,
    /// Which invite.
    pub invite: [u8; 8],
    /// The one-time secret.
    pub secret: [u8; SECRET_LEN],
}

impl InviteCode {
    /// The code as one word to paste: a prefix, then base32.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        let text = data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase();
        format!("{CODE_PREFIX}{text}")
    }

    /// Reads a code (surrounding space and case do not matter).
    pub fn parse(code: &str) -> Result<Self> {
        let code = code.trim();
        let body = code
            .strip_prefix(CODE_PREFIX)
            .ok_or_else(|| InviteError::BadCode(format!("it must start with {CODE_PREFIX}")))?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| InviteError::BadCode("it is cut short or mistyped".into()))?;
        let code: InviteCode = postcard::from_bytes(&bytes)
            .map_err(|_| InviteError::BadCode("it is cut short or mistyped".into()))?;
        EndpointId::from_bytes(&code.inviter)
            .map_err(|_| InviteError::BadCode("the inviter's id is not a valid key".into()))?;
        if code.addrs.len() > 16 || code.relay.as_ref().is_some_and(|r| r.len() > 512) {
            return Err(InviteError::BadCode("too many addresses".into()));
        }
        Ok(code)
    }

    /// The inviter's id.
    pub fn inviter_id(&self) -> Result<EndpointId> {
        EndpointId::from_bytes(&self.inviter)
            .map_err(|_| InviteError::BadCode("the inviter's id is not a valid key".into()))
    }

    /// Where to dial the inviter.
    pub fn endpoint_addr(&self) -> Result<EndpointAddr> {
        let mut addr = EndpointAddr::new(self.inviter_id()?);
        for a in &self.addrs {
            addr = addr.with_ip_addr(*a);
        }
        if let Some(r) = &self.relay {
            let url = r
                .parse()
                .map_err(|_| InviteError::BadCode("the relay address is not a URL".into()))?;
            addr = addr.with_relay_url(url);
        }
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> InviteCode {
        InviteCode {
            inviter: *iroh::SecretKey::generate().public().as_bytes(),
            addrs: vec!["127.0.0.1:4000".parse().unwrap()],
            relay: None,
            invite: rand::random(),
            secret: rand::random(),
        }
    }

    #[test]
    fn a_code_reads_back_and_a_damaged_one_is_refused() {
        let c = code();
        let text = c.encode();
        assert!(text.starts_with(CODE_PREFIX));
        assert_eq!(
            InviteCode::parse(&format!(
                "  {}\n",
                text.to_uppercase().replacen("SOVRYN1-", "sovryn1-", 1)
            ))
            .unwrap(),
            c
        );
        assert!(InviteCode::parse(&text[..text.len() - 6]).is_err());
        assert!(InviteCode::parse("sovryn1-!!!").is_err());
        assert!(InviteCode::parse("hello").is_err());
    }
}
