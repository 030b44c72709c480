//! Mutual TLS for the store's gRPC port (DESIGN.md §11). One cluster CA signs every party's
//! certificate; the party's role is a DNS name in its certificate (`store.tollgate` for store
//! nodes, `gateway.tollgate` for gateways, `admin.tollgate` for operators and billing tools).
//! Store nodes serve with their certificate and require a client certificate from the same CA
//! on every connection; clients verify the store by the name `store.tollgate`, whatever address
//! they dial. Services then check the caller's roles ([`require_role`]): Raft RPCs only from
//! store nodes, quota RPCs (config watch, leases, usage) only from gateways, admin writes and
//! membership from admin or store certificates, admin reads also from gateways — on top of the
//! tokens each already requires. A certificate that names several roles has each of them.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Who holds a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Store,
    Gateway,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Store, Role::Gateway, Role::Admin];

    /// The DNS name a certificate of this role carries.
    pub fn dns_name(self) -> &'static str {
        match self {
            Role::Store => "store.tollgate",
            Role::Gateway => "gateway.tollgate",
            Role::Admin => "admin.tollgate",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Store => "store",
            Role::Gateway => "gateway",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A party's TLS files: the cluster CA certificate and its own certificate and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading the {what} {}: {e}", path.display()))
}

impl TlsFiles {
    /// From three optional paths: all three, or none (no TLS); anything else is an error
    /// naming the flags (`flag` prefix, e.g. `--tls` or `--store`).
    pub fn from_parts(
        flag: &str,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, String> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
            _ => Err(format!(
                "pass all of {flag}-ca, {flag}-cert and {flag}-key (mutual TLS), or none of them"
            )),
        }
    }

    fn identity(&self) -> Result<Identity, String> {
        Ok(Identity::from_pem(
            read("certificate", &self.cert)?,
            read("private key", &self.key)?,
        ))
    }

    fn ca_cert(&self) -> Result<Certificate, String> {
        Ok(Certificate::from_pem(read("CA certificate", &self.ca)?))
    }

    /// For a client of the store (a peer, a gateway, the CLI): trusts the cluster CA, verifies
    /// the server as `store.tollgate`, presents its own certificate.
    pub fn client_config(&self) -> Result<ClientTlsConfig, String> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(self.ca_cert()?)
            .identity(self.identity()?)
            .domain_name(Role::Store.dns_name()))
    }

    /// For a store node's listener: its certificate, and a client certificate from the
    /// cluster CA required on every connection.
    pub fn server_config(&self) -> Result<ServerTlsConfig, String> {
        Ok(ServerTlsConfig::new()
            .identity(self.identity()?)
            .client_ca_root(self.ca_cert()?))
    }
}

/// The roles the caller's (already CA-verified) client certificate names; none without one.
pub fn caller_roles<T>(req: &tonic::Request<T>) -> Vec<Role> {
    let Some(certs) = req.peer_certs() else {
        return Vec::new();
    };
    let Some(cert) = certs
        .first()
        .and_then(|leaf| webpki::EndEntityCert::try_from(leaf).ok())
    else {
        return Vec::new();
    };
    Role::ALL
        .into_iter()
        .filter(|r| {
            rustls_pki_types::ServerName::try_from(r.dns_name())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .collect()
}

/// Refuses a caller whose certificate is of none of the roles `allowed` when the listener runs
/// mutual TLS (`tls`); without TLS there is no certificate and tokens alone decide.
#[allow(clippy::result_large_err)]
pub fn require_role<T>(
    req: &tonic::Request<T>,
    tls: bool,
    allowed: &[Role],
) -> Result<(), tonic::Status> {
    if !tls {
        return Ok(());
    }
    let names = |roles: &[Role]| {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let held = caller_roles(req);
    if held.iter().any(|r| allowed.contains(r)) {
        return Ok(());
    }
    Err(tonic::Status::permission_denied(if held.is_empty() {
        format!(
            "this call needs a client certificate of role {}",
            names(allowed)
        )
    } else {
        format!(
            "a {} certificate may not make this call (it needs a {} certificate)",
            names(&held),
            names(allowed)
        )
    }))
}

/// An endpoint for dialing a store at `dial` (`host:port`): `https` with the client side of
/// mutual TLS when `tls` is given, else plain `http`.
pub fn store_endpoint(
    dial: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{dial}"))
        .map_err(|e| format!("'{dial}' is not a valid store address (host:port): {e}"))?;
    match tls {
        Some(t) => ep
            .tls_config(t.clone())
            .map_err(|e| format!("TLS settings for {dial}: {e}")),
        None => Ok(ep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_all_three_or_none() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(TlsFiles::from_parts("--tls", None, None, None), Ok(None));
        assert!(TlsFiles::from_parts("--tls", p("ca"), p("c"), p("k")).is_ok_and(|f| f.is_some()));
        let e = TlsFiles::from_parts("--store", p("ca"), None, p("k")).expect_err("partial");
        assert!(
            e.contains("--store-ca, --store-cert and --store-key"),
            "{e}"
        );
    }

    #[test]
    fn roles_round_trip_and_name_their_certificates() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert!(r.dns_name().ends_with(".tollgate"));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn without_tls_tokens_alone_decide() {
        let req = tonic::Request::new(());
        assert!(require_role(&req, false, &[Role::Store]).is_ok());
        let denied = require_role(&req, true, &[Role::Store]).expect_err("no certificate");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    }
}
