//! The customer listener serves HTTPS with rustls when a certificate is configured, and refuses
//! plain HTTP on that port.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_gateway::Settings;

#[tokio::test]
async fn https_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.path().join("tls.crt"), &cert_pem).expect("write cert");
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).expect("key");
    // no store is listening there: the gateway starts, is alive, and not ready
    let mut s = Settings::new(
        "127.0.0.1:0".parse().expect("addr"),
        vec!["127.0.0.1:1".into()],
        dir.path().join("gw"),
    );
    s.tls_cert = Some(dir.path().join("tls.crt"));
    s.tls_key = Some(dir.path().join("tls.key"));
    let gw = tollgate_gateway::start(s).await.expect("start");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    tls.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-request-id"), "{out}");

    // plain HTTP on the TLS port gets no HTTP answer
    let mut plain = TcpStream::connect(gw.addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_certificate_without_a_key_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Settings::new(
        "127.0.0.1:0".parse().expect("addr"),
        vec!["127.0.0.1:1".into()],
        dir.path().join("gw"),
    );
    s.tls_cert = Some(dir.path().join("missing.crt"));
    let err = tollgate_gateway::start(s).await.err().expect("refused");
    assert!(err.to_string().contains("--tls-key"), "{err}");
}
